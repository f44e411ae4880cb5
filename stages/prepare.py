"""Stage ``prepare``: turn the DVC-tracked input dataset into the YOLO layout training reads.

The input under ``paths.dataset`` (YOLO, Pascal VOC or COCO; ``prepare.format``) is never modified.
The output under ``paths.prepared`` holds links to the input images (symlinks by default, so a large
dataset does not double on disk), YOLO label files (links for YOLO input, converted for VOC/COCO), a
generated ``data.yaml`` with absolute paths and no ``download`` key, and:

- ``class_map.json``: the stable mapping from source class to YOLO id;
- ``label_sources.json``: for converted labels, the source file, line and annotation of every line;
- ``source_problems.json``: problems met while reading annotations, which ``validate`` reports.

Splits: the dataset's own train/val(/test) split is kept when it has one; otherwise images are
assigned by a hash of the seed and the file's path, so adding images never moves existing ones.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from stages.common import stage_main, write_json, write_text
from stages.config import Params, PrepareParams
from stages.datasets import LABEL_SOURCES, SOURCE_PROBLEMS, SPLITS
from stages.errors import DatasetError
from stages.formats import read_source
from stages.formats.base import Entry

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
    digest = hashlib.sha256(f"{seed}:{relative}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if fraction < val_fraction else "train"


class _Linker:
    """Creates links, falling back to copies (once announced) where the filesystem refuses links."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.used = mode

    def __call__(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.used == "symlink":
            try:
                os.symlink(os.path.relpath(source, target.parent), target)
                return
            except OSError as exc:
                log.warning("symlinks are not available here (%s); copying files instead", exc)
                self.used = "copy"
        if self.used == "hardlink":
            try:
                os.link(source, target)
                return
            except OSError as exc:
                log.warning("hard links are not available here (%s); copying files instead", exc)
                self.used = "copy"
        shutil.copy2(source, target)


def _relative(path: Path, workspace: Path) -> str:
    real = path.resolve()
    return real.relative_to(workspace.resolve()).as_posix() if real.is_relative_to(workspace.resolve()) else str(real)


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
    if cfg.prepared.exists():
        shutil.rmtree(cfg.prepared)
    cfg.prepared.mkdir(parents=True)

    def split_of(split: str | None, rel: Path) -> str:
        return split if split is not None else hash_split(rel.as_posix(), o.seed, o.val_fraction)

    link = _Linker(o.link)
    counts: dict[str, SplitSummary] = {}
    label_sources: dict[str, Any] = {}
    problems = [
        {"file": _relative(p.file, cfg.workspace), "line": p.line, "code": p.code, "message": p.message}
        for p in source.problems
    ]
    placed: set[Path] = set()
    for entry in source.entries:
        split = split_of(entry.split, entry.rel)
        image_target = cfg.prepared / "images" / split / entry.rel
        if image_target in placed:
            problems.append(
                {
                    "file": _relative(entry.image, cfg.workspace),
                    "line": None,
                    "code": "image_name_clash",
                    "message": f"another image already maps to {split}/{entry.rel}; rename one of them",
                }
            )
            continue
        placed.add(image_target)
        link(entry.image, image_target)
        label_target = (cfg.prepared / "labels" / split / entry.rel).with_suffix(".txt")
        has_label = entry.label is not None or entry.boxes is not None
        if entry.label is not None:
            link(entry.label, label_target)
        elif entry.boxes is not None:
            write_text(label_target, _label_text(entry))
            assert entry.annotation is not None
            label_sources[label_target.relative_to(cfg.prepared).as_posix()] = {
                "file": _relative(entry.annotation, cfg.workspace),
                "lines": [b.line for b in entry.boxes],
                "refs": [b.ref for b in entry.boxes],
            }
        current = counts.get(split, SplitSummary(images=0, labels=0))
        counts[split] = SplitSummary(images=current.images + 1, labels=current.labels + int(has_label))
    for split, label, rel in source.orphan_labels:
        link(label, cfg.prepared / "labels" / split_of(split, rel) / rel)
    for split in counts:
        (cfg.prepared / "labels" / split).mkdir(parents=True, exist_ok=True)

    prepared_yaml = cfg.prepared / "data.yaml"
    out: dict[str, Any] = {"path": str(cfg.prepared.resolve())}
    for split in SPLITS:
        if split in counts:
            out[split] = f"images/{split}"
    out["names"] = dict(enumerate(source.names))
    write_text(prepared_yaml, yaml.safe_dump(out, sort_keys=False))
    write_json(
        cfg.prepared / "class_map.json",
        {
            "source_format": source.format,
            "classes": [
                {"id": i, "name": n, "source": source.source_ids[i] if i < len(source.source_ids) else n}
                for i, n in enumerate(source.names)
            ],
        },
    )
    write_json(cfg.prepared / LABEL_SOURCES, label_sources)
    write_json(cfg.prepared / SOURCE_PROBLEMS, problems)

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
        link=link.used,
        source_problems=len(problems),
    )
    log.info(
        "prepared %s from %s (%s split, %s): %s; %d annotation problem(s) for validate",
        cfg.prepared,
        source.format,
        split_source,
        link.used,
        ", ".join(f"{s} {c.images} images/{c.labels} labels" for s, c in counts.items()),
        len(problems),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, PrepareConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
