"""The stage side of a TensorRT engine: the ONNX model it is built from, and its raw-output parity.

**Preparation** (:func:`engine_onnx`, no TensorRT needed). TensorRT's strongly typed networks take
their precision from the ONNX model: FP32 is the exported model as it is, FP16 is converted by ONNX
Runtime's float16 tool (inputs and outputs kept float32), INT8 is a Q/DQ model quantized by
``stages.deploy.int8.quantize`` with ``deploy.int8.calibration_method`` on train images: signed and
symmetric for activations and weights (TensorRT has no zero points), biases left in float
(``quantize_bias=False``: ONNX Runtime's default writes INT32 bias DequantizeLinear nodes, which
TensorRT's parser refuses), and the detection head's tail in float as for the CPU. Every model
written here is checked against TensorRT's Q/DQ rules (``stages.backends.tensorrt_lint``).

**Parity** (:func:`raw_parity`). The engine's raw outputs are compared with ONNX Runtime's FP32
outputs of the exported model on the same letterboxed images, through the one comparator
(``stages.backends.compare``), with a tolerance per precision (:data:`PARITY_TOLERANCES`):

- ``fp32``: boxes within 0.5 px, scores within 0.005, top class the same on 99 % of confident
  anchors. The builder turns TF32 off for FP32 engines, so only kernel order differs.
- ``fp16``: boxes within 2 px, scores within 0.05, top class the same on 95 %: half precision keeps
  about three significant digits, and box coordinates run to the image size.
- ``int8``: no bound on boxes and scores (the mAP gate judges what quantization costs), but scores
  must not collapse to zero and the top class must agree on half the confident anchors, the same
  check the CPU INT8 artifacts pass (``stages.deploy.int8.check_scores``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from stages.backends.base import Precision, Runner, predict_all
from stages.backends.compare import Comparison, Tolerance, compare, failures
from stages.backends.tensorrt_lint import check_qdq
from stages.core.errors import EngineUnavailable
from stages.deploy.int8 import Method, quantize

PARITY_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_boxes_px=0.5, max_scores=0.005, min_top_class_agreement=0.99),
    "fp16": Tolerance(max_boxes_px=2.0, max_scores=0.05, min_top_class_agreement=0.95),
    "int8": Tolerance(min_top_class_agreement=0.5),
}
PARITY_IMAGES = 16  # the first images of the gate's own: parity is a check of the runtime, the mAP is the gate


def fp16_onnx(source: Path, out: Path) -> Path:
    """An FP16 copy of ``source`` (initializers and compute in half; inputs and outputs stay float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _sort_nodes(model.graph)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def _sort_nodes(graph: Any) -> None:
    """Put ``graph``'s nodes in topological order, as ONNX requires.

    The float16 tool appends the float32-to-float16 Casts of the inputs at the end of the node list.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise EngineUnavailable(f"the FP16 model has a cycle or a dangling input at {pending[0].name}")
        for node in ready:
            available.update(node.output)
        ordered += ready
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


def engine_onnx(
    source: Path,
    precision: Precision,
    out: Path,
    calibration: np.ndarray | None = None,
    method: Method = "minmax",
) -> Path:
    """The ONNX model a strongly typed TensorRT network is built from, for ``precision``.

    Args:
        source: The FP32 ONNX model that passed the parity check.
        precision: ``fp32`` (a copy), ``fp16`` (converted) or ``int8`` (signed symmetric Q/DQ, float biases).
        out: Where to write it.
        calibration: Letterboxed train images for INT8.
        method: INT8 calibration (``deploy.int8.calibration_method``).

    Raises:
        EngineUnavailable: INT8 without calibration images, ONNX Runtime's calibration failing, or a model
            that breaks TensorRT's Q/DQ rules.
    """
    if precision == "fp32":
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out)
    elif precision == "fp16":
        fp16_onnx(source, out)
    else:
        if calibration is None or not len(calibration):
            raise EngineUnavailable("an INT8 engine needs calibration images (deploy.int8.calibration_images)")
        try:
            quantize(source, out, calibration, method, symmetric=True, quantize_bias=False)
        except ValueError as exc:
            # ONNX Runtime's calibrators raise ValueError on degenerate ranges (e.g. its histogram for
            # percentile with a symmetric range on an all-constant tensor): a build that failed, not a crash.
            raise EngineUnavailable(f"INT8 calibration ({method}) failed in ONNX Runtime: {exc}", path=source) from None
    check_qdq(out)
    return out


def raw_parity(engine: Runner, reference: Runner, images: np.ndarray, precision: str) -> tuple[Comparison, list[str]]:
    """The engine's raw outputs on ``images`` against ``reference``'s (ONNX Runtime FP32), and what is
    beyond the tolerance for ``precision`` (:data:`PARITY_TOLERANCES`; empty: within it)."""
    comparison = compare(predict_all(reference, images), predict_all(engine, images))
    return comparison, failures(comparison, PARITY_TOLERANCES[precision])
