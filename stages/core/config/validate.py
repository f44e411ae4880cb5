"""The ``validate`` section (``stages/validate.py``)."""

from __future__ import annotations

from pydantic import Field

from stages.core.config.base import _Section


class ValidateParams(_Section):
    """Dataset checks and their thresholds."""

    workers: int = Field(0, ge=0, description="processes for image checks; 0 means one per core")
    min_box_pixels: float = Field(2.0, ge=0.0, description="boxes narrower or shorter than this warn")
    max_outside_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="boxes with more of their area outside the image are errors, less warn"
    )
    duplicate_iou: float = Field(0.95, gt=0.0, le=1.0, description="IoU above which two boxes are duplicates")
    decode: bool = Field(True, description="decode every image's pixels; false: headers and end markers only")
    examples_per_code: int = Field(5, ge=1, description="files listed per problem code in the summary")
    # PIL's own default: 89.5 Mpx is 256 MiB once decoded as RGB, per image and per worker process,
    # and more than any camera or 8K frame; training shrinks images to train.imgsz anyway.
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="images with more pixels (from the header) are errors; train gets the same limit"
    )
