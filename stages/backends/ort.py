"""ONNX Runtime: FP32 and INT8 (Q/DQ) ONNX artifacts on the CPU or CUDA execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stages.backends.base import Precision, RunInfo, TensorMeta
from stages.errors import BackendUnavailable
from stages.inference import cpu_threads, onnx_session

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


class OrtRunner:
    """An ONNX Runtime session; inputs are host arrays, which ONNX Runtime reads in place on the CPU."""

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
        import onnxruntime

        self.info = RunInfo(
            backend="onnxruntime",
            provider=f"onnxruntime {onnxruntime.__version__} {self.session.get_providers()[0]}",
            device=kind,
            precision=artifact_precision(path),
            threads=threads or None,
        )

    def place(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: np.ascontiguousarray(x, dtype=np.float16 if self.half else np.float32)}

    def forward(self, placed: dict[str, np.ndarray]) -> Any:
        return self.session.run(None, placed)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.forward(self.place(x))[0], dtype=np.float32)

    def close(self) -> None:
        del self.session


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
