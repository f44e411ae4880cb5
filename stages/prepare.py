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

Writes stay under ``paths.prepared`` (``stages/data/prepared_output.py``): every target is checked
(:func:`~stages.data.prepared_output.checked_target`) before it is
created, an existing one is never replaced (two images mapping to one file are an ``image_name_clash``),
and the folder is emptied only when it holds nothing but what ``prepare`` writes.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from stages.core.common import stage_main, write_json
from stages.core.config import Params, PrepareParams
from stages.core.errors import DatasetError
from stages.data.datasets import LABEL_SOURCES, SOURCE_PROBLEMS, SPLITS, printable
from stages.data.formats import read_source
from stages.data.formats.base import Entry
from stages.data.prepared_output import PreparedFolder, empty_output, hash_split

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
    empty_output(cfg.prepared, cfg.dataset)

    def split_of(split: str | None, rel: Path) -> str:
        return split if split is not None else hash_split(rel.as_posix(), o.seed, o.val_fraction)

    out = PreparedFolder(cfg.prepared, o.link)
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
