"""TorchScript: a traced module (``torch.jit``), the artifact LibTorch (C++) deployments load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.backends.base import Precision
from stages.backends.pytorch import TorchRunner, describe, set_cpu_threads, torch_device
from stages.core.errors import BackendUnavailable

BATCH_FILE = "batch.txt"
SHAPE_FILE = "input_shape.txt"  # N,C,H,W of the example the module was traced on


def trace(module: Any, example: Any, out: Path) -> Path:
    """Trace ``module`` (eval mode, fused) on ``example`` and save it to ``out``.

    The saved module returns the raw predictions only (the tensor the ONNX export produces).
    """
    import torch

    class _Predictions(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.inner(x)
            return y[0] if isinstance(y, (tuple, list)) else y

    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(_Predictions(module).eval(), example, strict=False, check_trace=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The trace holds the example's shape (anchors and reshapes are constants): record the batch it takes.
    shape = ",".join(str(d) for d in example.shape)
    traced.save(str(out), _extra_files={BATCH_FILE: str(example.shape[0]), SHAPE_FILE: shape})
    return out


def load(path: Path, *, device: str, precision: Precision, threads: int, workspace: Path) -> TorchRunner:
    """The TorchScript file at ``path`` on ``device`` (FP32; FP16 on CUDA)."""
    import torch

    if precision == "int8" or (precision == "fp16" and not device.startswith("cuda")):
        raise BackendUnavailable(f"the torchscript backend runs fp32 (and fp16 on CUDA), not {precision} on {device}")
    dev = torch_device(device)
    used = set_cpu_threads(dev, threads)
    extra = {BATCH_FILE: "", SHAPE_FILE: ""}
    module = torch.jit.load(str(path), map_location=dev, _extra_files=extra).eval()
    if precision == "fp16":
        module = module.half()
    runner = TorchRunner(module, dev, precision, describe("torchscript", dev, precision, used))
    runner.batch = runner.max_batch = int(extra[BATCH_FILE]) if extra[BATCH_FILE] else None
    # The traced input shape, where the file records it (files traced before it was recorded: the batch only).
    recorded = extra[SHAPE_FILE].decode() if isinstance(extra[SHAPE_FILE], bytes) else extra[SHAPE_FILE]
    shape: list[int | str | None] = [int(d) for d in recorded.split(",")] if recorded else []
    shape = shape or [runner.batch, 3, None, None]
    runner.inputs = [runner.inputs[0].model_copy(update={"shape": shape})]
    runner.outputs = [runner.outputs[0].model_copy(update={"shape": [runner.batch, None, None]})]
    return runner
