"""The checks of one YOLO label file's lines: fields, numbers, class ids, box geometry, duplicates.

Pure functions of the lines (and the image's size when known); ``images`` calls them for every label
file, in worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from stages.data.validation.problems import Problem
from stages.data.validation.problems import problem as _problem


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def outside_fraction(cx: float, cy: float, w: float, h: float) -> float:
    """Share of a box's area that lies outside the unit square."""
    if cx - w / 2 >= 0.0 and cx + w / 2 <= 1.0 and cy - h / 2 >= 0.0 and cy + h / 2 <= 1.0:
        return 0.0
    inside_w = max(0.0, min(1.0, cx + w / 2) - max(0.0, cx - w / 2))
    inside_h = max(0.0, min(1.0, cy + h / 2) - max(0.0, cy - h / 2))
    # Per axis: w * h underflows to 0 for tiny boxes (1e-200 each), a division by zero.
    return 1.0 - min(1.0, inside_w / w) * min(1.0, inside_h / h)


def check_label_lines(
    lines: Iterable[str],
    file: str,
    num_classes: int,
    size: tuple[int, int] | None,
    min_box_pixels: float,
    duplicate_iou: float,
    max_outside_fraction: float = 0.5,
) -> tuple[list[tuple[int, float, float, float, float]], list[Problem]]:
    """Parse and check the lines of one YOLO label file.

    Args:
        lines: The file's lines.
        file: The file's name for the report.
        num_classes: Number of classes; ids must lie in ``[0, num_classes)``.
        size: Image (width, height) in pixels when known, for the tiny-box check.
        min_box_pixels: Boxes with a side below this many pixels are reported as tiny.
        duplicate_iou: Two boxes of one class overlapping at least this IoU are duplicates.
        max_outside_fraction: Boxes with more of their area outside the image are errors; boxes
            with less (but some) outside are warnings, since training clips them.

    Returns:
        The boxes training would use as (class, cx, cy, w, h), and the problems found.
    """
    boxes: list[tuple[int, float, float, float, float]] = []
    problems: list[Problem] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        fields = text.split()
        if len(fields) != 5:
            problems.append(
                _problem("label_field_count", file, f"expected 5 fields (class cx cy w h), got {len(fields)}", number)
            )
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            problems.append(_problem("label_not_number", file, f"not all fields are numbers: {text!r}", number))
            continue
        if not all(math.isfinite(v) for v in values):
            problems.append(_problem("label_not_finite", file, f"NaN or infinite value: {text!r}", number))
            continue
        cls_value, cx, cy, w, h = values
        if cls_value != int(cls_value):
            problems.append(_problem("class_not_integer", file, f"class id {fields[0]} is not an integer", number))
            continue
        cls = int(cls_value)
        if not 0 <= cls < num_classes:
            problems.append(
                _problem("class_out_of_range", file, f"class id {cls} outside [0, {num_classes - 1}]", number)
            )
            continue
        if w <= 0 or h <= 0:
            problems.append(_problem("box_non_positive", file, f"box width/height must be > 0, got {w}, {h}", number))
            continue
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            problems.append(
                _problem(
                    "box_out_of_bounds",
                    file,
                    f"box ({cx}, {cy}, {w}, {h}) is not normalised: every value must lie in [0, 1]",
                    number,
                )
            )
            continue
        outside = outside_fraction(cx, cy, w, h)
        if outside > 1e-6:
            code = "box_mostly_outside" if outside > max_outside_fraction else "box_partly_outside"
            problems.append(
                _problem(
                    code,
                    file,
                    f"{outside:.0%} of the box lies outside the image "
                    f"(validate.max_outside_fraction={max_outside_fraction})",
                    number,
                )
            )
            if code == "box_mostly_outside":
                continue
        if size is not None and min(w * size[0], h * size[1]) < min_box_pixels:
            problems.append(
                _problem(
                    "box_tiny",
                    file,
                    f"box is {w * size[0]:.1f}x{h * size[1]:.1f} px, below validate.min_box_pixels={min_box_pixels}",
                    number,
                )
            )
        box = (cls, cx, cy, w, h)
        for other in boxes:
            if other[0] == cls and _iou(box[1:], other[1:]) >= duplicate_iou:
                problems.append(
                    _problem(
                        "box_duplicate",
                        file,
                        f"duplicates an earlier box of class {cls} (IoU ≥ {duplicate_iou})",
                        number,
                    )
                )
                break
        else:
            boxes.append(box)
    return boxes, problems
