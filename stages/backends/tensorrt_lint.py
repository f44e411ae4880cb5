"""Check an ONNX model against TensorRT's rules for explicit quantization, without TensorRT.

TensorRT builds a network with QuantizeLinear/DequantizeLinear (Q/DQ) nodes by *explicit
quantization*: it keeps the Q/DQ nodes' semantics and picks integer kernels around them. What its
ONNX parser accepts is narrower than what ONNX allows and what ONNX Runtime writes by default.
The rules, from NVIDIA's "Working with Quantized Types" / "Explicit Quantization" (TensorRT 10 and
11 developer guides) and the errors its parser gives for models that break them:

1. **Quantized types.** A Q node's output and a DQ node's input are INT8, FP8 (E4M3FN), INT4 or
   FP4 (E2M1): TensorRT quantizes symmetrically into signed types. UINT8 (ONNX Runtime's default
   for activations) is not among them, nor INT32: ONNX Runtime's default ``QuantizeBias=True``
   writes each convolution bias as an INT32 initializer behind a DQ node, which TensorRT refuses
   ("only activation types allowed as input to this layer").
2. **Zero points.** Absent, or all zero (symmetric quantization): TensorRT has no zero-point shift.
3. **Scales.** Float (FP32, FP16 or BF16), a build-time constant (an initializer or a Constant
   node), every value finite and positive ("scale coefficients must all be positive"), and a
   scalar (per tensor) or a 1-D vector (per channel, as long as the quantized axis).
4. **INT8 weights.** Pre-quantized INT8 weights (an initializer read by a DQ node) lie in
   [-127, 127]: TensorRT's weight range is symmetric (activations may reach -128).
5. **Q/DQ pairs.** A Q node's output feeds DQ nodes only (TensorRT fuses the pair into the
   quantized operator); a DQ node reads a Q node's output or a quantized initializer.

:func:`qdq_problems` lists every breach, naming the node; :func:`check_qdq` raises with them. Rule
of thumb: ONNX Runtime's ``quantize_static`` with ``QuantType.QInt8`` for activations and weights,
``ActivationSymmetric``/``WeightSymmetric`` true and ``QuantizeBias`` false writes a model that
passes (``stages/deploy/engine.py``); its defaults do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stages.core.errors import EngineUnavailable

Q, DQ = "QuantizeLinear", "DequantizeLinear"


def _types() -> tuple[dict[int, str], set[int]]:
    import onnx

    t = onnx.TensorProto
    quantized = {
        int(t.INT8): "INT8",
        int(t.FLOAT8E4M3FN): "FP8 E4M3FN",
        int(t.INT4): "INT4",
        int(t.FLOAT4E2M1): "FP4 E2M1",
    }
    return quantized, {int(t.FLOAT), int(t.FLOAT16), int(t.BFLOAT16)}


def qdq_problems(model: Any) -> list[str]:
    """Every way ``model`` (an ``onnx.ModelProto``) breaks TensorRT's Q/DQ rules (empty: none).

    See the module's docstring for the rules.
    """
    import onnx
    from onnx import numpy_helper

    quantized, floats = _types()
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {
        n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    }
    tensors = initializers | constants
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types |= {name: t.data_type for name, t in tensors.items()}

    # A Q node's output type: its output_dtype attribute (opset 21), else its zero point's, else UINT8 (ONNX's default).
    q_types = {}
    for node in graph.node:
        if node.op_type == Q:
            zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
            declared = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            q_types[node.output[0]] = declared or (types.get(zero_point, 0) if zero_point else onnx.TensorProto.UINT8)

    def type_name(code: int) -> str:
        return onnx.TensorProto.DataType.Name(code) if code else "unknown"

    problems = []
    for node in graph.node:
        if node.op_type not in (Q, DQ):
            continue
        where = f"{node.op_type} {node.name or node.output[0]!r}"
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        # Rule 1: the quantized side's type.
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if node.op_type == Q:
            quantized_type = q_types[node.output[0]]
        else:
            source = node.input[0]
            quantized_type = types.get(source) or q_types.get(source) or (types.get(zero_point, 0) if zero_point else 0)
        if quantized_type not in quantized:
            problems.append(
                f"{where}: quantized type {type_name(quantized_type)}, TensorRT takes "
                f"{', '.join(quantized.values())} only"
                + (
                    " (an INT32 bias DequantizeLinear: quantize with QuantizeBias off)"
                    if node.op_type == DQ and quantized_type == onnx.TensorProto.INT32
                    else ""
                )
            )
        # Rule 2: zero points.
        if zero_point:
            if zero_point not in tensors:
                problems.append(f"{where}: zero point {zero_point!r} is not a constant")
            elif np.any(numpy_helper.to_array(tensors[zero_point]).astype(np.float64) != 0):
                problems.append(f"{where}: zero point {zero_point!r} is not 0 (TensorRT quantizes symmetrically)")
        # Rule 3: scales.
        scale = node.input[1]
        if scale not in tensors:
            problems.append(f"{where}: scale {scale!r} is not a build-time constant")
        else:
            tensor = tensors[scale]
            values = numpy_helper.to_array(tensor).astype(np.float64)
            if tensor.data_type not in floats:
                problems.append(f"{where}: scale {scale!r} is {type_name(tensor.data_type)}, not FP32/FP16/BF16")
            if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
                problems.append(f"{where}: scale {scale!r} has values that are not finite and positive")
            if values.ndim > 1:
                problems.append(f"{where}: scale {scale!r} has rank {values.ndim}; per-tensor or per-channel only")
            if values.ndim == 1 and values.size > 1 and node.input[0] in tensors:
                dims = list(tensors[node.input[0]].dims)
                if not -len(dims) <= axis < len(dims) or dims[axis] != values.size:
                    problems.append(f"{where}: {values.size} per-channel scales for axis {axis} of shape {dims}")
        # Rule 4: pre-quantized INT8 weights.
        if node.op_type == DQ and node.input[0] in initializers:
            weights = initializers[node.input[0]]
            if weights.data_type == onnx.TensorProto.INT8 and np.any(numpy_helper.to_array(weights) == -128):
                problems.append(f"{where}: INT8 weights {node.input[0]!r} hold -128; TensorRT's weight range is ±127")
        # Rule 5: pairs.
        if node.op_type == Q:
            readers = consumers.get(node.output[0], [])
            others = sorted({r.op_type for r in readers if r.op_type != DQ})
            if others or node.output[0] in {o.name for o in graph.output}:
                problems.append(
                    f"{where}: its output feeds {others or ['the graph output']}, not DequantizeLinear only"
                )
        elif node.input[0] not in initializers and node.input[0] not in constants:
            source = producers.get(node.input[0])
            if source is None or source.op_type != Q:
                problems.append(f"{where}: reads {node.input[0]!r}, which no QuantizeLinear writes")
    return problems


def check_qdq(path: Path) -> None:
    """Refuse the ONNX model at ``path`` when it breaks TensorRT's Q/DQ rules (:func:`qdq_problems`).

    Raises:
        EngineUnavailable: Naming the file, how many breaches, and the first few.
    """
    import onnx

    problems = qdq_problems(onnx.load(str(path)))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise EngineUnavailable(
            f"{path.name} breaks TensorRT's Q/DQ rules in {len(problems)} places: {shown}", path=path
        )
