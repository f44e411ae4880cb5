"""ONNX Runtime: FP32 and INT8 (Q/DQ) ONNX artifacts on the CPU or CUDA execution provider.

Inputs and outputs go through an ``IOBinding`` on the session's device: ``place`` copies the batch
there once and binds every output there too, so ``forward`` times the model alone, the same boundary
as PyTorch and TensorRT on CUDA (``session.run`` with host arrays would copy host to device and back
inside every call). On the CPU the device is host memory and the input is read in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.backends.base import Precision, RunInfo, TensorMeta
from stages.backends.inference import cpu_threads, onnx_session
from stages.core.errors import BackendUnavailable

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}


def artifact_precision(path: Path) -> str:
    """The precision an ONNX file holds: ``int8`` with quantized ops, ``fp16`` with half inputs, else ``fp32``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(node.op_type in _QUANTIZED_OPS for node in model.graph.node):
        return "int8"
    if model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
        return "fp16"
    return "fp32"


@dataclass(frozen=True)
class Bound:
    """A placed batch: the session's ``IOBinding`` and the input value it reads (kept alive with it)."""

    binding: Any
    value: Any


class OrtRunner:
    """An ONNX Runtime session whose inputs and outputs are bound on its own device (``Bound``)."""

    def __init__(self, path: Path, device: str, threads: int) -> None:
        kind = device.split(":")[0]
        if kind not in PROVIDERS:
            raise BackendUnavailable(f"onnxruntime runs on cpu or cuda, not {device!r}")
        threads = cpu_threads(threads) if kind == "cpu" else 0
        self.session = onnx_session(path, PROVIDERS[kind], threads)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.batch = first.shape[0] if isinstance(first.shape[0], int) else None
        self.max_batch = self.batch
        self.half = first.type == "tensor(float16)"
        self.inputs = [_meta(t) for t in self.session.get_inputs()]
        self.outputs = [_meta(t) for t in self.session.get_outputs()]
        # Bind where the provider computes: host memory on the CPU, the session's own GPU on CUDA.
        self.device_type = kind
        options = self.session.get_provider_options().get(PROVIDERS[kind], {})
        self.device_id = int(options.get("device_id", 0))
        import onnxruntime

        self.info = RunInfo(
            backend="onnxruntime",
            provider=f"onnxruntime {onnxruntime.__version__} {self.session.get_providers()[0]}",
            device=kind,
            precision=artifact_precision(path),
            threads=threads or None,
        )

    def place(self, x: np.ndarray) -> Bound:
        """``x`` copied to the session's device, bound as the input, with every output bound on that device."""
        import onnxruntime

        array = np.ascontiguousarray(x, dtype=np.float16 if self.half else np.float32)
        value = onnxruntime.OrtValue.ortvalue_from_numpy(array, self.device_type, self.device_id)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        for output in self.outputs:
            binding.bind_output(output.name, self.device_type, self.device_id)
        return Bound(binding, value)

    def forward(self, placed: Bound) -> Any:
        """Run on a placed batch; returns once the outputs on the device are complete."""
        self.session.run_with_iobinding(placed.binding)
        placed.binding.synchronize_outputs()
        return placed.binding

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.forward(self.place(x)).copy_outputs_to_cpu()[0], dtype=np.float32)

    def close(self) -> None:
        """Release the session (its memory arena and, on CUDA, its device memory)."""
        self.session = None


def _meta(arg: Any) -> TensorMeta:
    """An ONNX Runtime ``NodeArg`` as :class:`TensorMeta` (free axes keep their symbolic name)."""
    shape = [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None) for d in arg.shape]
    return TensorMeta(name=arg.name, shape=shape, dtype=_DTYPES.get(arg.type, arg.type))


def load(path: Path, *, device: str, precision: Precision, threads: int, workspace: Path) -> OrtRunner:
    """An ONNX Runtime runner for ``path``; fails when the file holds another precision than ``precision``."""
    runner = OrtRunner(path, device, threads)
    if runner.info.precision != precision:
        raise BackendUnavailable(f"{path} holds a {runner.info.precision} model, not {precision}")
    return runner
