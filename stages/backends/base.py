"""The backend protocol: load an artifact for a device, run a preprocessed batch, say what ran."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.errors import ConfigError

Precision = Literal["fp32", "fp16", "int8"]

# name -> "module:function" loading a runner; modules are imported only when their backend is used.
BACKENDS: dict[str, str] = {
    "pytorch": "stages.backends.pytorch:load",
    "pytorch-cuda-graph": "stages.backends.pytorch:load_graph",
    "torchscript": "stages.backends.torchscript:load",
    "onnxruntime": "stages.backends.ort:load",
    "tensorrt": "stages.backends.tensorrt:load",
    "openvino": "stages.backends.openvino_rt:load",
}


class RunInfo(BaseModel):
    """What actually ran: read back from the runtime after loading, never taken from the request."""

    model_config = ConfigDict(frozen=True)

    backend: str
    provider: str  # runtime and execution provider, with versions
    device: str
    precision: str
    threads: int | None  # CPU threads the runtime uses (None on GPU)


class Runner(Protocol):
    """A loaded artifact, ready to run letterboxed N x 3 x H x W float32 batches.

    ``place`` puts a batch where the runtime reads it (device memory, a bound input), ``forward``
    runs the model on a placed batch and returns once the result is complete (CUDA synchronised),
    and ``predict`` does both and returns the raw predictions, (N, 4 + classes, anchors) float32,
    the tensor the ONNX export produces. ``batch`` is the artifact's static batch size (``None``:
    any); :func:`predict_all` cuts larger inputs to fit.
    """

    info: RunInfo
    batch: int | None

    def place(self, x: np.ndarray) -> Any: ...

    def forward(self, placed: Any) -> Any: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def open_runner(
    backend: str,
    artifact: Path,
    *,
    workspace: Path,
    device: str = "cpu",
    precision: Precision = "fp32",
    threads: int = 0,
) -> Runner:
    """Load ``artifact`` with ``backend`` on ``device``.

    Args:
        backend: A key of :data:`BACKENDS`.
        artifact: The model file (a checkpoint, ONNX file, TorchScript file, ...).
        workspace: The workspace root (Ultralytics' project-local settings live there).
        device: ``cpu`` or ``cuda`` (``cuda:N`` where the backend takes it).
        precision: What the caller expects to run; a backend that would run something else fails.
        threads: CPU threads (0: the runtime's default); recorded in ``info.threads``.

    Raises:
        ConfigError: For an unknown backend.
        BackendUnavailable: When the runtime, device or precision is not available here.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    module, function = BACKENDS[backend].split(":")
    load = getattr(importlib.import_module(module), function)
    return load(Path(artifact), device=device, precision=precision, threads=threads, workspace=Path(workspace))


def predict_all(runner: Runner, x: np.ndarray) -> np.ndarray:
    """Raw predictions for any number of images, in chunks of the runner's static batch.

    A last chunk smaller than a static batch is padded with its own last image and the padding's
    outputs are dropped.
    """
    size = runner.batch or len(x)
    outputs = []
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        short = size - len(chunk)
        if short:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
        outputs.append(runner.predict(chunk)[: size - short])
    return np.concatenate(outputs)
