"""What ``validate`` reports: the stable problem codes, their severity, and one problem's record.

The codes are part of the report's contract (``reports/validate.json``): a code is never renamed,
and its severity says whether it stops the chain (``error``) or is only shown (``warning``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Severity = Literal["error", "warning"]

# Stable problem codes and their severity. Codes are part of the report's contract.
CODES: dict[str, Severity] = {
    "image_unreadable": "error",
    "image_truncated": "error",
    "image_too_large": "error",
    "path_outside_dataset": "error",
    "check_crashed": "error",
    "image_missing": "error",
    "image_name_clash": "error",
    "label_without_image": "error",
    "image_without_label": "warning",
    "annotation_malformed": "error",
    "annotation_unknown_image": "error",
    "annotation_crowd_skipped": "warning",
    "label_field_count": "error",
    "label_not_number": "error",
    "label_not_finite": "error",
    "class_not_integer": "error",
    "class_out_of_range": "error",
    "box_out_of_bounds": "error",
    "box_non_positive": "error",
    "box_mostly_outside": "error",
    "box_partly_outside": "warning",
    "box_tiny": "warning",
    "box_duplicate": "warning",
    "image_duplicate": "warning",
    "image_duplicate_across_splits": "error",
    "split_empty": "error",
    "dataset_empty": "error",
    "class_absent_from_train": "warning",
}


class Problem(BaseModel):
    """One problem found in the dataset."""

    file: str
    line: int | None
    code: str
    severity: Severity
    message: str
    # For a problem in a converted label (VOC/COCO): the annotation it came from and the image it is on.
    ref: str | None = None
    image: str | None = None


def problem(code: str, file: str, message: str, line: int | None = None) -> Problem:
    """A problem of ``code``, with the severity the code has.

    Args:
        code: One of ``CODES``.
        file: The file to show the user.
        message: What is wrong, in words.
        line: The line of ``file`` it is on, where there is one.

    Returns:
        The problem.
    """
    return Problem(file=file, line=line, code=code, severity=CODES[code], message=message)
