"""The ``evaluate`` section (``stages/evaluate.py``): validation settings and quality gates."""

from __future__ import annotations

from pydantic import Field, field_validator

from stages.core.config.base import _Section


class EvaluateParams(_Section):
    """Validation settings and the quality gates the model must pass."""

    min_map50: float = Field(0.0, ge=0.0, le=1.0)
    min_map50_95: float = Field(0.0, ge=0.0, le=1.0)
    min_class_map50: dict[str, float] = Field(default_factory=dict)
    batch: int = Field(16, ge=1)
    conf: float = Field(0.001, gt=0.0, lt=1.0)
    iou: float = Field(0.7, gt=0.0, le=1.0)
    plot_images: int = Field(8, ge=1, description="validation images drawn with their true and predicted boxes")
    plot_conf: float = Field(
        0.25, gt=0.0, lt=1.0, description="confidence of the boxes drawn and counted in the confusion matrix"
    )

    @field_validator("min_class_map50")
    @classmethod
    def _floors_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for name, floor in value.items():
            if not 0.0 <= floor <= 1.0:
                raise ValueError(f"floor for class {name!r} must be within [0, 1], got {floor}")
        return value
