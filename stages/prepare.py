"""Stage ``prepare``: turn the DVC-tracked input dataset into the YOLO layout training reads.

The input under ``paths.dataset`` (YOLO, Pascal VOC or COCO; ``prepare.format``) is never modified.
The output under ``paths.prepared`` holds links to the input images (symlinks by default, so a large
dataset does not double on disk), YOLO label files (links for YOLO input, converted for VOC/COCO), a
generated ``data.yaml`` (split folders relative to it, class names; no ``path``, no ``download``), and:

- ``class_map.json``: the stable mapping from source class to YOLO id;
- ``label_sources.json``: for converted labels, the source file, line and annotation of every line;
- ``source_problems.json``: problems met while reading annotations, which ``validate`` reports.

Splits: the dataset's own train/val(/test) split is kept when it has one; otherwise images are
assigned by a hash of the seed and the file's path, so adding images never moves existing ones.

Writes stay under ``paths.prepared``: every target is checked (:func:`checked_target`) before it is
created, an existing one is never replaced (two images mapping to one file are an ``image_name_clash``),
and the folder is emptied only when it holds nothing but what ``prepare`` writes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from stages.core.common import stage_main, write_json, write_text
from stages.core.config import Params, PrepareParams
from stages.core.errors import DatasetError
from stages.data.datasets import LABEL_SOURCES, SOURCE_PROBLEMS, SPLITS, is_under, printable
from stages.data.formats import read_source
from stages.data.formats.base import Entry

log = logging.getLogger(__name__)

STAGE = "prepare"


class PrepareConfig(BaseModel):
    """Inputs, outputs and options of ``prepare``."""

    model_config = ConfigDict(frozen=True)

    dataset: Path
    prepared: Path
    workspace: Path
    options: PrepareParams

    @classmethod
    def from_params(cls, params: Params, root: Path) -> PrepareConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(
            dataset=params.paths.resolve("dataset", root),
            prepared=params.paths.resolve("prepared", root),
            workspace=root,
            options=params.prepare,
        )


class SplitSummary(BaseModel):
    """How many images and label files one split holds."""

    images: int
    labels: int


class PrepareResult(BaseModel):
    """What ``prepare`` produced."""

    data_yaml: Path
    format: str
    names: list[str]
    splits: dict[str, SplitSummary]
    split_source: Literal["dataset", "hash", "mixed"]
    link: str
    source_problems: int


def hash_split(relative: str, seed: int, val_fraction: float) -> str:
    """Assign a file to ``train`` or ``val`` from its relative path alone.

    The decision depends only on the seed and the path, so it is stable across runs, machines, and
    additions of other files.
    """
    # surrogateescape: a file name that is not UTF-8 hashes as its raw bytes (valid names are unchanged).
    digest = hashlib.sha256(f"{seed}:{relative}".encode("utf-8", "surrogateescape")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if fraction < val_fraction else "train"


# What ``prepare`` writes at the top of ``paths.prepared``; a folder holding anything else is not emptied.
_OWN_ENTRIES = frozenset({"images", "labels", "data.yaml", "class_map.json", LABEL_SOURCES, SOURCE_PROBLEMS})


def checked_target(prepared: Path, target: Path, folders: AbstractSet[str] = frozenset()) -> Path:
    """``target``, once it is sure that creating it writes inside ``prepared``.

    Checked lexically (no ``..`` out) and through the links of the folders that already exist on the
    way, so neither a crafted name nor a planted link sends a write elsewhere.

    Args:
        prepared: The output folder.
        target: The file about to be created.
        folders: Folders already known to be real folders inside ``prepared`` (spares the link check).

    Raises:
        DatasetError: When ``target`` would land outside ``prepared``; names the path.
    """
    root = os.path.abspath(prepared)
    path = os.path.normpath(os.path.abspath(target))
    parent = os.path.dirname(path)
    inside = is_under(path, root) and path != root
    if not inside or (parent not in folders and not is_under(os.path.realpath(parent), os.path.realpath(root))):
        raise DatasetError(
            f"refusing to write {path}: it lies outside paths.prepared ({root})", stage=STAGE, path=target
        )
    return Path(path)


class _Output:
    """``paths.prepared`` as the only place ``prepare`` writes: every target checked, nothing replaced.

    Links fall back to copies (announced once) where the filesystem refuses them.
    """

    def __init__(self, prepared: Path, mode: str) -> None:
        self.root = os.path.abspath(prepared)
        self.folders: set[str] = {self.root}  # folders made here: real folders inside, never links
        self.used = mode

    def target(self, path: Path) -> Path:
        """``path`` checked with :func:`checked_target`."""
        return checked_target(Path(self.root), path, self.folders)

    def free(self, *targets: Path) -> bool:
        """Whether creating ``targets`` replaces nothing: no file, link or file where a folder goes."""
        for target in targets:
            if os.path.lexists(target):
                return False
            parent = os.path.dirname(target)
            while parent not in self.folders and is_under(parent, self.root):
                if os.path.lexists(parent) and (os.path.islink(parent) or not os.path.isdir(parent)):
                    return False
                parent = os.path.dirname(parent)
        return True

    def folder(self, path: Path) -> None:
        """Make the folder ``path`` (checked) and its parents."""
        folder = os.fspath(path)
        if folder not in self.folders:
            os.makedirs(self.target(path), exist_ok=True)
            while folder not in self.folders and is_under(folder, self.root):
                self.folders.add(folder)
                folder = os.path.dirname(folder)

    def write(self, target: Path, text: str) -> None:
        """Write one of ``prepare``'s own files (atomically)."""
        target = self.target(target)
        self.folder(target.parent)
        write_text(target, text)

    def link(self, source: Path, target: Path) -> None:
        """Link (or copy) ``source`` to ``target``; callers check :meth:`free` first."""
        target = self.target(target)
        self.folder(target.parent)
        if self.used == "symlink":
            try:
                os.symlink(os.path.relpath(source, target.parent), target)
                return
            except FileExistsError:
                raise  # never replaced
            except OSError as exc:
                log.warning("symlinks are not available here (%s); copying files instead", exc)
                self.used = "copy"
        if self.used == "hardlink":
            try:
                os.link(source, target)
                return
            except FileExistsError:
                raise
            except OSError as exc:
                log.warning("hard links are not available here (%s); copying files instead", exc)
                self.used = "copy"
        with source.open("rb") as src, target.open("xb") as dst:  # "x": fails rather than overwrite
            shutil.copyfileobj(src, dst)
        shutil.copystat(source, target)


def _empty_output(cfg: PrepareConfig) -> None:
    """Make ``cfg.prepared`` an empty folder, deleting only what an earlier ``prepare`` wrote there.

    Raises:
        DatasetError: When ``paths.prepared`` and ``paths.dataset`` overlap, or the folder holds
            anything ``prepare`` does not write.
    """
    prepared, dataset = os.path.realpath(cfg.prepared), os.path.realpath(cfg.dataset)
    if is_under(prepared, dataset) or is_under(dataset, prepared):
        raise DatasetError(
            f"paths.prepared ({prepared}) and paths.dataset ({dataset}) overlap: preparing would delete or "
            "write into the input",
            stage=STAGE,
            key="paths.prepared",
        )
    if os.path.lexists(cfg.prepared):
        foreign = sorted(p.name for p in cfg.prepared.iterdir() if p.name not in _OWN_ENTRIES)
        if foreign or cfg.prepared.is_symlink():
            raise DatasetError(
                f"holds {foreign[:5] or 'a link'} that 'prepare' did not write; move them away or pick another "
                "paths.prepared",
                stage=STAGE,
                path=cfg.prepared,
                key="paths.prepared",
            )
        shutil.rmtree(cfg.prepared)
    cfg.prepared.mkdir(parents=True)


def _relative(path: Path, workspace: Path) -> str:
    """``path`` for a report: relative to the workspace when inside it, links not followed.

    Not resolved: a dataset link that leaves the dataset must be shown as the link, where it is.
    """
    real = Path(os.path.abspath(path))
    root = Path(os.path.abspath(workspace))
    return printable(real.relative_to(root).as_posix() if real.is_relative_to(root) else str(real))


def _label_text(entry: Entry) -> str:
    assert entry.boxes is not None
    lines = [f"{b.box[0]} {b.box[1]:.6f} {b.box[2]:.6f} {b.box[3]:.6f} {b.box[4]:.6f}" for b in entry.boxes]
    return "\n".join(lines) + ("\n" if lines else "")


def run(cfg: PrepareConfig) -> PrepareResult:
    """Build ``cfg.prepared`` from ``cfg.dataset``.

    Args:
        cfg: Paths and options.

    Returns:
        A summary of the prepared dataset.

    Raises:
        DatasetError: When the dataset is missing, malformed, or not of the configured format.
    """
    if not cfg.dataset.is_dir():
        raise DatasetError(
            "dataset folder not found: run 'make sample-data' or put your dataset there", stage=STAGE, path=cfg.dataset
        )
    o = cfg.options
    source = read_source(cfg.dataset, o.format, o.classes, o.include_difficult)
    _empty_output(cfg)

    def split_of(split: str | None, rel: Path) -> str:
        return split if split is not None else hash_split(rel.as_posix(), o.seed, o.val_fraction)

    out = _Output(cfg.prepared, o.link)
    counts: dict[str, SplitSummary] = {}
    label_sources: dict[str, Any] = {}
    problems = [
        {"file": _relative(p.file, cfg.workspace), "line": p.line, "code": p.code, "message": p.message}
        for p in source.problems
    ]
    for entry in source.entries:
        split = split_of(entry.split, entry.rel)
        image_target = out.target(cfg.prepared / "images" / split / entry.rel)
        label_target = out.target((cfg.prepared / "labels" / split / entry.rel).with_suffix(".txt"))
        if not out.free(image_target, label_target):
            problems.append(
                {
                    "file": _relative(entry.image, cfg.workspace),
                    "line": None,
                    "code": "image_name_clash",
                    "message": f"another image already maps to {printable(f'{split}/{entry.rel.as_posix()}')} or its "
                    "label file; rename one of them",
                }
            )
            continue
        out.link(entry.image, image_target)
        has_label = entry.label is not None or entry.boxes is not None
        if entry.label is not None:
            out.link(entry.label, label_target)
        elif entry.boxes is not None:
            out.write(label_target, _label_text(entry))
            assert entry.annotation is not None
            label_sources[label_target.relative_to(cfg.prepared).as_posix()] = {
                "file": _relative(entry.annotation, cfg.workspace),
                "lines": [b.line for b in entry.boxes],
                "refs": [b.ref for b in entry.boxes],
            }
        current = counts.get(split, SplitSummary(images=0, labels=0))
        counts[split] = SplitSummary(images=current.images + 1, labels=current.labels + int(has_label))
    for split, label, rel in source.orphan_labels:
        target = out.target(cfg.prepared / "labels" / split_of(split, rel) / rel)
        if out.free(target):  # otherwise an image's own label file is already there: it wins
            out.link(label, target)
    for split in counts:
        out.folder(cfg.prepared / "labels" / split)

    prepared_yaml = cfg.prepared / "data.yaml"
    # No 'path': Ultralytics then takes the folder of the data.yaml it is given (always by absolute
    # path here), so the file pins no machine path and a moved or copied workspace keeps working.
    data_yaml: dict[str, Any] = {}
    for split in SPLITS:
        if split in counts:
            data_yaml[split] = f"images/{split}"
    data_yaml["names"] = dict(enumerate(source.names))
    out.write(prepared_yaml, yaml.safe_dump(data_yaml, sort_keys=False))
    class_map = {
        "source_format": source.format,
        "classes": [
            {"id": i, "name": n, "source": source.source_ids[i] if i < len(source.source_ids) else n}
            for i, n in enumerate(source.names)
        ],
    }
    for name, data in (("class_map.json", class_map), (LABEL_SOURCES, label_sources), (SOURCE_PROBLEMS, problems)):
        write_json(out.target(cfg.prepared / name), data)

    given = {e.split is not None for e in source.entries}
    split_source: Literal["dataset", "hash", "mixed"] = (
        "mixed" if len(given) > 1 else ("dataset" if given == {True} else "hash")
    )
    result = PrepareResult(
        data_yaml=prepared_yaml,
        format=source.format,
        names=source.names,
        splits=counts,
        split_source=split_source,
        link=out.used,
        source_problems=len(problems),
    )
    log.info(
        "prepared %s from %s (%s split, %s): %s; %d annotation problem(s) for validate",
        cfg.prepared,
        source.format,
        split_source,
        out.used,
        ", ".join(f"{s} {c.images} images/{c.labels} labels" for s, c in counts.items()),
        len(problems),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, PrepareConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
