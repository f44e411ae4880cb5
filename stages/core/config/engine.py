"""The ``engine`` section (``stages/build_engine.py``): the TensorRT engine build."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from stages.core.config.base import _Section


class EngineParams(_Section):
    """TensorRT engine build."""

    required: bool = False
    precision: Literal["fp16", "fp32", "int8"] = "fp16"
    batch_sizes: list[PositiveInt] = Field(
        default_factory=list,
        description="batch sizes the engine's optimization profile covers (first: the one it is tuned for); "
        "empty: export.batch. More than one needs export.dynamic: true (a dynamic batch axis; the image size "
        "stays fixed); the engine never takes a batch above the largest",
    )
    workspace_gib: float = Field(2.0, gt=0.0)
    device: str = Field(
        "cuda",
        pattern=r"^cuda(:\d+)?$",
        description="the CUDA device the engine is built and gated on: cuda (the current one) or cuda:N",
    )
