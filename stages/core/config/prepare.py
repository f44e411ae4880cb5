"""The ``prepare`` section (``stages/prepare.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stages.core.config.base import _Section


class PrepareParams(_Section):
    """How the input dataset is turned into the YOLO layout that training reads."""

    format: Literal["auto", "yolo", "voc", "coco"] = "auto"
    classes: list[str] = Field(default_factory=list, description="VOC class names in id order; empty: sorted")
    include_difficult: bool = Field(False, description="keep VOC objects marked difficult")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    link: Literal["symlink", "hardlink", "copy"] = "symlink"

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("class names must be unique")
        return value
