"""PyTorch eager: the trained checkpoint itself, Conv+BatchNorm fused as for inference, FP32 or FP16 (CUDA)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.backends.base import Precision, RunInfo, TensorMeta
from stages.backends.inference import cpu_threads, torch_model
from stages.core.errors import BackendUnavailable


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
        self.max_batch: int | None = None
        self.info = info
        dtype = "float16" if precision == "fp16" else "float32"
        # A torch module declares no shapes: the batch and image size are whatever it is given.
        self.inputs = [TensorMeta(name="images", shape=[None, 3, None, None], dtype=dtype)]
        self.outputs = [TensorMeta(name="output0", shape=[None, None, None], dtype=dtype)]

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

    def close(self) -> None:
        """Drop the module and, on CUDA, hand its cached device memory back (the benchmark opens many runners)."""
        self.module = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()


def set_cpu_threads(device: Any, threads: int) -> int | None:
    """Set PyTorch's CPU thread count (0: one per core this process may use); ``None`` on GPU."""
    import torch

    if device.type != "cpu":
        return None
    torch.set_num_threads(cpu_threads(threads))
    return torch.get_num_threads()


def load(path: Path, *, device: str, precision: Precision, threads: int, workspace: Path) -> TorchRunner:
    """The checkpoint at ``path`` as an eager module on ``device`` in ``precision`` (fp16 on CUDA only).

    ``workspace`` holds Ultralytics' project-local settings (``stages.core.runtime``), which reading a checkpoint needs.
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


def static_state(module: Any) -> list[Any]:
    """Every tensor ``module``'s submodules hold as a plain attribute: not a parameter or buffer, but
    state a forward pass builds and keeps (Ultralytics' Detect head: ``anchors``, ``strides``).

    A captured CUDA graph reads such tensors by address. The head replaces them (new tensors) whenever
    the input shape changes, which frees the old ones; a graph captured for the old shape would then
    read freed memory, which the next capture's ``empty_cache`` hands back to the driver or another
    allocation reuses. Holding the tensors each capture saw keeps every graph's inputs alive.
    """
    import torch

    held = []
    for sub in module.modules():
        for value in vars(sub).values():
            items = value if isinstance(value, (tuple, list)) else (value,)
            held.extend(v for v in items if isinstance(v, torch.Tensor))
    return held


@dataclass(frozen=True)
class Captured:
    """One input shape's CUDA graph, its static input and output, and the module state it reads."""

    graph: Any
    static_in: Any
    static_out: Any
    state: list[Any]  # the tensors the module held at capture (static_state): kept alive with the graph


class CudaGraphRunner(TorchRunner):
    """The eager module's forward pass captured once per input shape in a CUDA graph, then replayed.

    At batch 1 a small detector is about a hundred short kernels, each paying its launch cost; a
    replayed graph launches them as one. The input is copied into the graph's static buffer and the
    output is the graph's static tensor (valid until the next call). Each shape's graph keeps the
    module state it was captured with (:func:`static_state`), so capturing a second shape (the
    benchmark's batch sweep: 1 and 8) leaves the first graph's anchors where it reads them.
    """

    def __init__(self, module: Any, device: Any, precision: str, info: RunInfo) -> None:
        super().__init__(module, device, precision, info)
        self.graphs: dict[tuple[int, ...], Captured] = {}

    def _capture(self, placed: Any) -> Captured:
        import torch

        static_in = placed.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode():
            # Warm up on a side stream, as capture requires (allocator, lazy init); the head also builds
            # its anchors for this shape here, outside the graph, so capture reads them as they stand.
            for _ in range(3):
                self.module(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            static_out = self.module(static_in)
        return Captured(graph, static_in, static_out, static_state(self.module))

    def forward(self, placed: Any) -> Any:
        key = tuple(placed.shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(placed)
        captured = self.graphs[key]
        captured.static_in.copy_(placed)
        captured.graph.replay()
        self.sync()
        return captured.static_out

    def close(self) -> None:
        self.graphs.clear()  # graphs first: their memory pools go back before the module's tensors
        super().close()


def load_graph(path: Path, *, device: str, precision: Precision, threads: int, workspace: Path) -> CudaGraphRunner:
    """The checkpoint at ``path`` as a CUDA-graph runner (CUDA only; FP32 or FP16)."""
    if not device.startswith("cuda"):
        raise BackendUnavailable(f"CUDA graphs need a CUDA device, not {device!r}")
    eager = load(path, device=device, precision=precision, threads=threads, workspace=workspace)
    provider = f"{eager.info.provider} CUDA graph"
    info = eager.info.model_copy(update={"backend": "pytorch-cuda-graph", "provider": provider})
    return CudaGraphRunner(eager.module, eager.device, precision, info)
