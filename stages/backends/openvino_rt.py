"""OpenVINO on the CPU: FP32 (inference precision pinned to f32) and INT8 (NNCF post-training quantization).

OpenVINO runs a model in bf16 by default on CPUs that support it, which changes accuracy without a
word; the FP32 target pins ``INFERENCE_PRECISION_HINT`` to f32, and every runner records the
precision the compiled model reports, not the one asked for. The INT8 model is built by
``stages.deploy.int8.quantize_openvino`` (NNCF, on the same calibration images as ONNX Runtime's,
with the same head tail kept in float). ``openvino`` is optional (the ``openvino`` extra) and
imported only when a runner or a conversion asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stages.backends.base import Precision, RunInfo, TensorMeta
from stages.backends.inference import cpu_threads
from stages.core.errors import BackendUnavailable


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"OpenVINO is not installed ({exc}); install the project's 'openvino' extra") from None
    return openvino


def convert(onnx_path: Path, out: Path) -> Path:
    """The FP32 ONNX model as OpenVINO IR (``out`` is the ``.xml``; weights go beside it), weights kept FP32."""
    ov = _openvino()
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(out), compress_to_fp16=False)
    return out


def ir_precision(model: Any) -> str:
    """``int8`` when an ``openvino.Model`` holds quantization (FakeQuantize, a Convert to i8/u8), else ``fp32``."""
    for op in model.get_ops():
        if op.get_type_name() == "FakeQuantize":
            return "int8"
        if op.get_type_name() == "Convert" and str(op.get_output_element_type(0)) in ("i8", "u8"):
            return "int8"
    return "fp32"


class OpenVINORunner:
    """A model compiled for the CPU with its precision pinned to f32 and its thread count set (and recorded)."""

    def __init__(self, path: Path, threads: int) -> None:
        ov = _openvino()
        core = ov.Core()
        threads = cpu_threads(threads)
        model = core.read_model(str(path))  # read once: compiled, and inspected for its precision
        self.compiled = core.compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        )
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.inputs[0].get_partial_shape()
        self.batch = shape[0].get_length() if shape[0].is_static else None
        self.max_batch = self.batch
        self.inputs = [_meta(port) for port in self.compiled.inputs]
        self.outputs = [_meta(port) for port in self.compiled.outputs]
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type: "f32", "bf16", "f16"
        ran = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.info = RunInfo(
            backend="openvino",
            provider=f"openvino {ov.__version__.split('-')[0]} CPU (inference precision {ran})",
            device="cpu",
            precision=ir_precision(model),
            threads=int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
        )
        self.inference_precision = ran

    def place(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def forward(self, placed: np.ndarray) -> Any:
        return self.request.infer({0: placed})

    def predict(self, x: np.ndarray) -> np.ndarray:
        result = self.forward(self.place(x))
        return np.asarray(result[self.compiled.outputs[0]], dtype=np.float32)

    def close(self) -> None:
        """Release the infer request and the compiled model (its weights and thread streams)."""
        self.request = None
        self.compiled = None


def _meta(port: Any) -> TensorMeta:
    """A compiled model's input or output port as :class:`TensorMeta`."""
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    dtype = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32"}.get(
        port.get_element_type().get_type_name(), port.get_element_type().get_type_name()
    )
    return TensorMeta(name=port.get_any_name(), shape=shape, dtype=dtype)


def load(path: Path, *, device: str, precision: Precision, threads: int, workspace: Path) -> OpenVINORunner:
    """The IR at ``path`` on the CPU; fails when it holds another precision, or does not run in f32 here."""
    if device != "cpu":
        raise BackendUnavailable(f"the openvino backend runs on the CPU here, not {device!r}")
    runner = OpenVINORunner(path, threads)
    if runner.info.precision != precision:
        raise BackendUnavailable(f"{path} holds a {runner.info.precision} model, not {precision}")
    if runner.inference_precision != "f32":
        raise BackendUnavailable(f"OpenVINO runs {path} in {runner.inference_precision}, not f32")
    return runner
