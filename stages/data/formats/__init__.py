"""Readers of the dataset formats ``prepare`` accepts: YOLO, Pascal VOC and COCO.

Each reader turns a dataset folder into a :class:`~stages.data.formats.base.Source`: the class names, and
for every image its split, its path and either its YOLO label file (YOLO) or its converted boxes
(VOC, COCO), plus the problems met while reading annotations, each naming the source file.
"""

from __future__ import annotations

from pathlib import Path

from stages.core.errors import DatasetError
from stages.data.formats.base import Source
from stages.data.formats.coco import coco_annotation_files, read_coco
from stages.data.formats.voc import read_voc
from stages.data.formats.yolo import read_yolo

FORMATS = ("yolo", "voc", "coco")


def detect_format(dataset: Path) -> str:
    """Which format ``dataset`` is in, judged from its layout.

    Raises:
        DatasetError: When no format or more than one format matches, saying what was seen.
    """
    seen = []
    if (dataset / "data.yaml").is_file() and (dataset / "images").is_dir():
        seen.append("yolo (data.yaml + images/)")
    if (dataset / "Annotations").is_dir() and (dataset / "JPEGImages").is_dir():
        seen.append("voc (Annotations/ + JPEGImages/)")
    if coco_annotation_files(dataset):
        seen.append("coco (instances_*.json)")
    if len(seen) == 1:
        return seen[0].split()[0]
    if not seen:
        raise DatasetError(
            "cannot tell the dataset format: expected data.yaml + images/ (yolo), Annotations/ + JPEGImages/ "
            "(voc) or instances_*.json (coco); set prepare.format",
            stage="prepare",
            path=dataset,
            key="prepare.format",
        )
    raise DatasetError(
        f"the layout is ambiguous, it looks like {' and '.join(seen)}; set prepare.format",
        stage="prepare",
        path=dataset,
        key="prepare.format",
    )


def read_source(dataset: Path, fmt: str, classes: list[str], include_difficult: bool) -> Source:
    """Read ``dataset`` in format ``fmt`` (``auto`` detects it).

    Args:
        dataset: The input dataset folder.
        fmt: ``auto``, ``yolo``, ``voc`` or ``coco``.
        classes: Class names in id order, for VOC (empty: every name found, sorted).
        include_difficult: Keep VOC objects marked ``difficult``.

    Returns:
        The dataset's images, labels or boxes, class names and conversion problems.
    """
    if fmt == "auto":
        fmt = detect_format(dataset)
    if fmt == "yolo":
        return read_yolo(dataset)
    if fmt == "voc":
        return read_voc(dataset, classes, include_difficult)
    if fmt == "coco":
        return read_coco(dataset)
    raise DatasetError(f"unknown format {fmt!r}; use one of auto, {', '.join(FORMATS)}", key="prepare.format")
