"""The ``evaluate`` section (``stages/evaluate.py``): validation settings and quality gates."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from stages.core.config.base import _Section
from stages.core.errors import ConfigError


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


def check_class_floors(floors: dict[str, float], names: list[str], source: Path | str | None = None) -> None:
    """Refuse a per-class floor (``evaluate.min_class_map50``) naming a class the dataset does not have.

    Called before the validator runs, so a typo costs no validation; the message names the closest
    class rather than listing them all (80 names say nothing).

    Args:
        floors: The floors, by class name.
        names: The dataset's class names.
        source: The file the names come from (the prepared ``data.yaml``), to name in the message.

    Raises:
        ConfigError: For the first unknown name, with a did-you-mean where one is close.
    """
    from stages.core.config.root import did_you_mean  # root composes this section: imported when called

    for name in floors:
        if name not in names:
            where = f" ({len(names)} classes, named in {source})" if source is not None else f" ({len(names)} classes)"
            raise ConfigError(
                f"per-class floor for unknown class {name!r}{did_you_mean(name, names)}{where}",
                key=f"evaluate.min_class_map50.{name}",
            )
