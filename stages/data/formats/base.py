"""What every format reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# (class id, cx, cy, w, h), normalised to the image size.
Box = tuple[int, float, float, float, float]


@dataclass(frozen=True)
class ConvertedBox:
    """A box converted from a VOC or COCO annotation, with where it came from.

    Attributes:
        box: The YOLO box; not clipped, so ``validate`` sees boxes that leave the image.
        line: Line of the annotation in the source file, where the format has lines (VOC XML).
        ref: What the annotation is in the source, e.g. ``object 2`` or ``annotation id 17``.
    """

    box: Box
    line: int | None
    ref: str


@dataclass(frozen=True)
class Entry:
    """One image of the source dataset.

    Attributes:
        split: ``train``, ``val`` or ``test``; ``None`` when the dataset has no split for it
            (``prepare`` then assigns one from a hash).
        image: The image file in the input dataset.
        rel: Path under the split folder in the prepared dataset (keeps sub-folders, avoids clashes).
        label: The YOLO label file to link (YOLO sources), or ``None``.
        boxes: Converted boxes to write as the label file (VOC/COCO sources), or ``None`` for no
            label file at all.
        annotation: The source annotation file the boxes came from (VOC/COCO sources).
    """

    split: str | None
    image: Path
    rel: Path
    label: Path | None = None
    boxes: tuple[ConvertedBox, ...] | None = None
    annotation: Path | None = None


@dataclass(frozen=True)
class SourceProblem:
    """A problem met while reading annotations; ``validate`` reports it with the others."""

    file: Path
    code: str
    message: str
    line: int | None = None


def crashed(file: Path, exc: BaseException) -> SourceProblem:
    """The problem recorded when reading ``file`` raised something no check foresaw (a bug to fix)."""
    return SourceProblem(file, "check_crashed", f"reading it raised {type(exc).__name__}: {exc}")


def outside(file: Path, where: str, exc: Exception) -> SourceProblem:
    """The problem recorded for a path in ``file`` that leaves the dataset folder (never read)."""
    return SourceProblem(file, "path_outside_dataset", f"{where}: {exc}; not read")


@dataclass
class Source:
    """A dataset read from its own format."""

    format: str
    names: list[str]
    entries: list[Entry]
    # Label files (YOLO) that no image refers to: (split or None, file, path under the split).
    orphan_labels: list[tuple[str | None, Path, Path]] = field(default_factory=list)
    problems: list[SourceProblem] = field(default_factory=list)
    # Where each class came from in the source (e.g. a COCO category id), by YOLO id.
    source_ids: list[str] = field(default_factory=list)
