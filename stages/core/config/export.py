"""The ``export`` section (``stages/export.py``): the ONNX export and its parity check."""

from __future__ import annotations

from pydantic import Field

from stages.core.config.base import _Section


class ExportParams(_Section):
    """ONNX export and the parity check against PyTorch."""

    opset: int = Field(17, ge=11)
    simplify: bool = True
    dynamic: bool = Field(
        False, description="a free batch axis (the image size stays train.imgsz); false: the static export.batch"
    )
    batch: int = Field(1, ge=1, description="static batch size of the exported model")
    parity_images: int = Field(8, ge=1, description="validation images used for the parity check")
    max_box_diff_px: float = Field(0.05, gt=0.0, description="largest allowed |ONNX - PyTorch| on box outputs, px")
    max_score_diff: float = Field(1e-3, gt=0.0, description="largest allowed |ONNX - PyTorch| on class scores")
