"""The backend protocol: load an artifact for a device, run a preprocessed batch, say what ran."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.core.errors import ConfigError

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


class TensorMeta(BaseModel):
    """One named input or output of a loaded artifact, as its runtime reports it.

    ``shape`` holds ``None`` (or the runtime's symbolic name) for a free axis; ``dtype`` is numpy's
    name (``float32``, ``float16``).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    shape: list[int | str | None]
    dtype: str


class Runner(Protocol):
    """A loaded artifact, ready to run letterboxed N x 3 x H x W float32 batches.

    ``place`` puts a batch where the runtime reads it (device memory, a bound input), ``forward``
    runs the model on a placed batch and returns once the result is complete (CUDA synchronised),
    and ``predict`` does both and returns the first output as float32 on the host: the raw head,
    (N, 4 + classes, anchors), or an NMS-free head's (N, detections, 6)
    (``stages.backends.compare.is_end_to_end``). ``inputs`` and ``outputs`` name the artifact's
    tensors with their shapes and types as loaded. ``batch`` is the artifact's static batch size
    (``None``: it takes several); ``max_batch`` the largest it takes (its static batch, an engine
    profile's maximum, ``None``: no limit): :func:`predict_all` never sends more. ``close`` frees
    what the runner holds (sessions, device memory, captured graphs); a closed runner is not used again.
    """

    info: RunInfo
    batch: int | None
    max_batch: int | None
    inputs: list[TensorMeta]
    outputs: list[TensorMeta]

    def place(self, x: np.ndarray) -> Any: ...

    def forward(self, placed: Any) -> Any: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


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


DEFAULT_CHUNK = 32  # images per call when the runner takes any batch size


def predict_all(runner: Runner, x: np.ndarray) -> np.ndarray:
    """Raw predictions for any number of images, in chunks the runner takes.

    Chunks are the runner's static batch, else at most its ``max_batch`` (and at most
    :data:`DEFAULT_CHUNK`). A last chunk smaller than a static batch is padded with its own last
    image and the padding's outputs are dropped.
    """
    size = runner.batch or min(runner.max_batch or DEFAULT_CHUNK, DEFAULT_CHUNK)
    outputs = []
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        short = size - len(chunk) if runner.batch else 0
        if short:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
        outputs.append(runner.predict(chunk)[: size - short])
    return np.concatenate(outputs)
