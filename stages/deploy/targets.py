"""The deploy targets: what file each is, which backend opens it, and in which precision."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from stages.backends.base import Precision


class Target(BaseModel):
    """One deployable artifact kind."""

    model_config = ConfigDict(frozen=True)

    name: str
    file: str  # in the deploy folder
    backend: str  # a key of stages.backends.BACKENDS
    precision: Precision


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="onnx-fp32",
            file="model.onnx",
            backend="onnxruntime",
            precision="fp32",
        ),
        Target(
            name="onnx-int8",
            file="model.int8.onnx",
            backend="onnxruntime",
            precision="int8",
        ),
        Target(
            name="torchscript-fp32",
            file="model.torchscript",
            backend="torchscript",
            precision="fp32",
        ),
    )
}
