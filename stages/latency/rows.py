"""The benchmark's rows: which backend opens which artifact on which device, and each row's name in
``metrics/deployment.json``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.backends.base import Precision
from stages.deploy.targets import TARGETS

# The rows ``benchmark.auto_gpu`` adds where they can run.
GPU_BACKENDS = ("onnxruntime-cuda", "pytorch-cuda", "pytorch-cuda-graph", "pytorch-cuda-graph-fp32", "tensorrt")


class RowSpec(BaseModel):
    """A benchmark row: which backend opens which artifact on which device."""

    model_config = ConfigDict(frozen=True)

    backend: str  # a key of stages.backends.BACKENDS
    artifact: str  # "checkpoint", "engine", or a deploy target (stages.deploy.targets)
    device: str
    precision: Precision | None = "fp32"  # None: as built (the engine's)


ROWS: dict[str, RowSpec] = {
    "onnxruntime-cpu": RowSpec(backend="onnxruntime", artifact="onnx-fp32", device="cpu"),
    "onnxruntime-cpu-int8": RowSpec(backend="onnxruntime", artifact="onnx-int8", device="cpu", precision="int8"),
    "openvino-cpu": RowSpec(backend="openvino", artifact="openvino-fp32", device="cpu"),
    "openvino-cpu-int8": RowSpec(backend="openvino", artifact="openvino-int8", device="cpu", precision="int8"),
    "torchscript-cpu": RowSpec(backend="torchscript", artifact="torchscript-fp32", device="cpu"),
    "pytorch-cpu": RowSpec(backend="pytorch", artifact="checkpoint", device="cpu"),
    "onnxruntime-cuda": RowSpec(backend="onnxruntime", artifact="onnx-fp32", device="cuda"),
    "pytorch-cuda": RowSpec(backend="pytorch", artifact="checkpoint", device="cuda"),
    "pytorch-cuda-graph": RowSpec(backend="pytorch-cuda-graph", artifact="checkpoint", device="cuda", precision="fp16"),
    "pytorch-cuda-graph-fp32": RowSpec(backend="pytorch-cuda-graph", artifact="checkpoint", device="cuda"),
    "tensorrt": RowSpec(backend="tensorrt", artifact="engine", device="cuda", precision=None),
}
# The row that times the PyTorch checkpoint on the CPU: the reference, not a deploy artifact.
REFERENCE_ROW = "pytorch-cpu"


def summary_name(row: str) -> str:
    """A row's column in ``metrics/deployment.json``: the deploy artifact it opens on the CPU (a short,
    familiar name: ``onnx-int8``), else the row's own name (``tensorrt``, ``pytorch-cuda``)."""
    spec = ROWS.get(row)
    if spec is not None and spec.device == "cpu" and spec.artifact in TARGETS:
        return spec.artifact
    return row


def summary_latency(backends: dict[str, Any]) -> dict[str, float]:
    """The forward pass's p50 of every row but the CPU reference, by :func:`summary_name`."""
    return {
        summary_name(row): numbers["model_ms"]
        for row, numbers in backends.items()
        if row != REFERENCE_ROW and "model_ms" in numbers
    }


def summary_unstable(backends: dict[str, Any]) -> list[str]:
    """The rows of :func:`summary_latency` whose measurement was flagged ``stable: 0``, by summary name."""
    return sorted(
        summary_name(row)
        for row, numbers in backends.items()
        if row != REFERENCE_ROW and "model_ms" in numbers and numbers.get("stable") == 0
    )
