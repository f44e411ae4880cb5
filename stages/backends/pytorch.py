"""PyTorch eager: the trained checkpoint itself, Conv+BatchNorm fused as for inference, FP32 or FP16 (CUDA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stages.backends.base import Precision, RunInfo
from stages.errors import BackendUnavailable
from stages.inference import cpu_threads, torch_model


def torch_device(device: str) -> Any:
    """``device`` as a ``torch.device``, or a clear error when PyTorch cannot use it here."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"PyTorch sees no CUDA GPU (asked for {device})")
    return torch.device(device)


def describe(backend: str, device: Any, precision: str, threads: int | None) -> RunInfo:
    """What a torch-based runner runs on."""
    import torch

    where = "cpu" if device.type == "cpu" else f"{device} {torch.cuda.get_device_name(device)}"
    return RunInfo(
        backend=backend,
        provider=f"torch {torch.__version__}",
        device=where,
        precision=precision,
        threads=threads,
    )


class TorchRunner:
    """A torch module (eager or scripted) on one device; ``place`` copies the batch there."""

    def __init__(self, module: Any, device: Any, precision: str, info: RunInfo) -> None:
        import torch

        self.module = module
        self.device = device
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.batch: int | None = None
        self.info = info

    def place(self, x: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)

    def forward(self, placed: Any) -> Any:
        import torch

        with torch.inference_mode():
            out = self.module(placed)
        self.sync()
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self.forward(self.place(x))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        return out.float().cpu().numpy()


def set_cpu_threads(device: Any, threads: int) -> int | None:
    """Pin PyTorch's CPU threads (0: one per core this process may use); ``None`` on GPU."""
    import torch

    if device.type != "cpu":
        return None
    torch.set_num_threads(cpu_threads(threads))
    return torch.get_num_threads()


def load(path: Path, *, device: str, precision: Precision, threads: int, workspace: Path) -> TorchRunner:
    """The checkpoint at ``path`` as an eager module on ``device`` in ``precision`` (fp16 on CUDA only).

    ``workspace`` holds Ultralytics' project-local settings (``stages.runtime``), which reading a checkpoint needs.
    """
    if precision == "int8":
        raise BackendUnavailable("the pytorch backend runs fp32 or fp16, not int8")
    dev = torch_device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise BackendUnavailable("PyTorch FP16 inference needs CUDA here (CPU half convolutions are not supported)")
    used = set_cpu_threads(dev, threads)
    module = torch_model(path, workspace, str(dev)).fuse(verbose=False)
    if precision == "fp16":
        module = module.half()
    return TorchRunner(module, dev, precision, describe("pytorch", dev, precision, used))
