"""CPU INT8 with ONNX Runtime's own quantization tools (and NNCF's for OpenVINO): the faster scheme, not the default.

ONNX Runtime's default static quantization (S8S8, also what Ultralytics' ``int8=True`` makes) leaves
most convolutions in float on our build machines' CPUs (AMD Zen 4) and runs slower than FP32.
What runs fast (see the README's "Deploying" for the numbers) is Q/DQ with activations QUInt8,
weights QInt8 per output channel, and the detection head's tail kept in float: the DFL, the box
decode, the final Concat and Sigmoid. Quantizing that final Concat (boxes in pixels next to scores in [0, 1], on one
scale) rounds every score to zero, so :func:`check_scores` refuses a model whose scores collapse.

**The CPU it is built for** (:func:`int8_cpu`). An x86 CPU without VNNI multiplies U8 activations by
S8 weights with ``vpmaddubsw``, which adds each pair of products into a signed 16-bit lane and
saturates: 255 x 127 x 2 = 64,770 does not fit in 32,767. ONNX Runtime's MLAS U8S8 kernels for
AVX2 and AVX-512 (without VNNI) use it (MLAS even carries a debug check for ``VPMADDUBSW``
saturation, ``saturation_check_avx2.cpp``); VNNI's ``vpdpbusd`` (and AMX) accumulate in 32 bits and
do not saturate, nor do ARM's dot-product kernels. Measured on the demo model
(``benchmarks/results/int8_cpu.md``, an AVX2 CPU emulated by qemu): 8-bit weights lose 11.6 points of
mAP50-95 there and 0.5 on a VNNI CPU. ONNX Runtime's answer, documented in ``quantize_static``'s
docstring for x86 without VNNI, is ``reduce_range``
(``quantize_static(reduce_range=True)``): in ``onnxruntime/quantization/qdq_quantizer.py`` it
applies to initializers only (the weights: ``get_qmin_qmax_for_qType`` takes INT8's reduced range
-64..64 from ``ONNX_INT_TYPE_REDUCED_RANGE``, with per-channel weights always symmetric), while
activations keep 0..255 unless a tensor override asks otherwise; 255 x 64 x 2 = 32,640 fits. It is
a build-time choice written into the weights, so it is made for the CPU the artifact will run on.
NNCF's equivalent for OpenVINO is ``AdvancedQuantizationParameters(overflow_fix=...)``
(``nncf/quantization/advanced_parameters.py``, applied in ``min_max/algorithm.py`` as
``half_range`` on weight quantizers only): ``ENABLE`` halves the weight range of every
convolution and MatMul, ``FIRST_LAYER`` (NNCF's default) only of the first convolution after each
input, ``DISABLE`` none.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.backends.compare import Comparison, compare
from stages.backends.inference import onnx_input_batch
from stages.core.errors import BackendUnavailable, ExportError
from stages.core.fingerprint import int8_extensions

Method = Literal["minmax", "entropy", "percentile"]
TargetCpu = Literal["vnni", "no-vnni"]
INTEGER_CONVS = {"QLinearConv", "ConvInteger"}
FLOAT_CONVS = {"Conv", "FusedConv"}
# A branch of the detection head that holds its convolutions (quantized); the rest of the head is its tail.
_HEAD_CONV_BRANCH = re.compile(r"^(one2one_)?cv\d+(\.\d+)?$")  # cv2, cv3.1, one2one_cv2.0
_MODULE = re.compile(r"^/model\.(\d+)/")


class Int8Cpu(BaseModel):
    """The CPU the INT8 artifacts are built for, how that was decided, and what it changes in each build.

    Recorded with every INT8 artifact in ``reports/deploy.json``.
    """

    model_config = ConfigDict(frozen=True)

    target: TargetCpu
    chosen_by: Literal["deploy.int8.target_cpu", "this machine's CPU flags"]
    machine: str  # the CPU model of the machine that built the artifacts
    machine_int8_flags: list[str]  # its flags among fingerprint.INT8_FLAGS
    reduce_range: bool  # ONNX Runtime: weights in 7 bits (-64..64)
    overflow_fix: Literal["enable", "disable"]  # NNCF: every convolution's weights in half the range, or none


def detect_target_cpu(flags: Iterable[str]) -> TargetCpu:
    """``vnni`` when ``flags`` (as ``/proc/cpuinfo`` names them) hold an INT8 dot product that accumulates in
    32 bits (x86 ``avx512_vnni``, ``avx_vnni``, ``amx_int8``; ARM ``asimddp``, ``i8mm``), else ``no-vnni``.

    No flags at all (a system without ``/proc/cpuinfo``) is ``no-vnni``, and so is an ARM CPU without
    the dot product (whose kernels were not measured): 7-bit weights run correctly everywhere, at a
    cost measured at under half a point, while 8-bit ones lost 11.6 points where products saturate.
    """
    return "vnni" if int8_extensions(flags) else "no-vnni"


def int8_cpu(setting: Literal["auto", "vnni", "no-vnni"], flags: Iterable[str], machine: str) -> Int8Cpu:
    """What the INT8 builds do for ``deploy.int8.target_cpu``: ``auto`` takes this machine's ``flags``.

    ``no-vnni`` builds weights that cannot saturate a 16-bit pair sum (ONNX Runtime ``reduce_range``,
    NNCF ``OverflowFix.ENABLE``); ``vnni`` keeps the full 8 bits (NNCF ``OverflowFix.DISABLE``, rather
    than its default ``FIRST_LAYER``, which would still halve the first convolution's range).
    """
    flags = list(flags)
    target = detect_target_cpu(flags) if setting == "auto" else setting
    saturates = target == "no-vnni"
    return Int8Cpu(
        target=target,
        chosen_by="this machine's CPU flags" if setting == "auto" else "deploy.int8.target_cpu",
        machine=machine,
        machine_int8_flags=int8_extensions(flags),
        reduce_range=saturates,
        overflow_fix="enable" if saturates else "disable",
    )


class Int8Build(BaseModel):
    """What quantization built: the scheme, and how many convolutions ONNX Runtime runs as integer ops."""

    scheme: str
    method: str
    calibration_images: int
    excluded_nodes: int
    convs: int
    integer_convs: int

    @property
    def integer_conv_share(self) -> float:
        return self.integer_convs / self.convs if self.convs else 0.0


def head_tail_nodes(model: object) -> list[str]:
    """Names of the detection head's nodes outside its convolution branches (``/model.<last>/...``).

    ``model`` is an ``onnx.ModelProto`` exported by Ultralytics, whose node names follow the module
    path; the head is the last module. For YOLO11 that is ``/model.23/``: its DFL, decode, Concats
    and Sigmoid are returned, its convolution branches (``/model.23/cv2.0/...``, ``cv3.1``, ...) are not.
    """
    nodes = list(model.graph.node)  # type: ignore[attr-defined]
    indices = [int(m.group(1)) for n in nodes if (m := _MODULE.match(n.name))]
    if not indices:
        raise ExportError("the ONNX model's node names do not follow Ultralytics' /model.N/ layout")
    prefix = f"/model.{max(indices)}/"
    tail = []
    for node in nodes:
        if node.name.startswith(prefix):
            branch = node.name[len(prefix) :].split("/")[0]
            if not _HEAD_CONV_BRANCH.match(branch):
                tail.append(node.name)
    return tail


class _Reader:
    """ONNX Runtime's calibration data reader over letterboxed images, one model-sized batch at a time."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int) -> None:
        self.input_name = input_name
        self.batches: Iterator[np.ndarray] = (images[i : i + batch] for i in range(0, len(images) - batch + 1, batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self.batches, None)
        return None if chunk is None else {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}


def quantize(
    source: Path,
    out: Path,
    images: np.ndarray,
    method: Method,
    exclude: list[str] | None = None,
    *,
    symmetric: bool = False,
    reduce_range: bool = False,
    quantize_bias: bool = True,
) -> Int8Build:
    """Build the INT8 Q/DQ model of ``source`` (U8S8, weights per channel, head tail in float).

    Args:
        source: The FP32 ONNX model that passed the parity check.
        out: Where to write the INT8 model.
        images: Letterboxed calibration images (train split, never val), N x 3 x H x W.
        method: Calibration: ``minmax``, ``entropy`` (KL divergence) or ``percentile`` (99.999 %).
        exclude: Node names to keep in float; ``None``: the head tail (:func:`head_tail_nodes`).
        symmetric: Signed, symmetric INT8 for activations and weights (S8S8, zero points 0): what
            TensorRT's strongly typed networks take. Slow on ONNX Runtime CPU; never the CPU target.
        reduce_range: Weights in 7 bits (-64..64), for x86 CPUs without VNNI (see the module's doc).
        quantize_bias: ONNX Runtime's ``QuantizeBias``: biases as INT32 behind a DequantizeLinear node
            (its default, what ONNX Runtime runs). ``False`` keeps them float, as TensorRT requires
            (``stages.backends.tensorrt_lint``).

    Raises:
        ExportError: When there are fewer calibration images than one batch of the model.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(source))
    first = model.graph.input[0]
    batch = onnx_input_batch(source) or 1
    if len(images) < batch:
        raise ExportError(f"{len(images)} calibration images, fewer than the model's batch of {batch}", path=source)
    excluded = head_tail_nodes(model) if exclude is None else exclude
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    out.parent.mkdir(parents=True, exist_ok=True)
    # No quant_pre_process: its graph optimizations rename nodes, and the head tail is excluded by name.
    # ONNX Runtime's advice to run it goes to the root logger on every call; it is dropped, nothing else is.
    advice = _DropMessage("consider to run pre-processing", "consider pre-processing")
    logging.getLogger().addFilter(advice)
    try:
        quantize_static(
            str(source),
            str(out),
            _Reader(first.name, images, batch),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            nodes_to_exclude=excluded,
            calibrate_method=calibrate,
            extra_options={
                "ActivationSymmetric": symmetric,
                "WeightSymmetric": True,
                "CalibTensorRangeSymmetric": symmetric,
                "QuantizeBias": quantize_bias,
            },
            calibration_providers=["CPUExecutionProvider"],
        )
    finally:
        logging.getLogger().removeFilter(advice)
    convs, integer = count_convs(out)
    return Int8Build(
        scheme=f"QDQ {'S8S8 symmetric' if symmetric else 'U8S8'} per-channel"
        + (", 7-bit weights (reduce_range)" if reduce_range else "")
        + ("" if quantize_bias else ", float biases")
        + (", head tail in float" if exclude is None else ""),
        method=method,
        calibration_images=len(images) // batch * batch,
        excluded_nodes=len(excluded),
        convs=convs,
        integer_convs=integer,
    )


def openvino_head_tail(ov_model: Any, onnx_model: Any) -> list[str]:
    """The OpenVINO ops of ``ov_model`` (converted from ``onnx_model``) that compute the head tail.

    The ONNX front end keeps most node names as op names, but not all: the final Concat, whose
    output is the model's, becomes an op named after that output (``output0``), and a Conv with a
    bias becomes a Convolution (``.../WithoutBiases``) and an Add. So ops are matched by the ONNX
    tensors they produce, which OpenVINO keeps as output names, as well as by name.

    Raises:
        ExportError: When the op that writes the model's output is not among them.
    """
    tail = set(head_tail_nodes(onnx_model))
    tensors = {out for node in onnx_model.graph.node if node.name in tail for out in node.output}
    names = []
    for op in ov_model.get_ordered_ops():
        produced = {name for output in op.outputs() for name in output.get_names()}
        if op.get_type_name() not in ("Constant", "Result", "Parameter") and (
            op.get_friendly_name() in tail or produced & tensors
        ):
            names.append(op.get_friendly_name())
    final = {out.get_node().input_value(0).get_node().get_friendly_name() for out in ov_model.outputs}
    if not final <= set(names):
        raise ExportError(f"the OpenVINO model's output op {sorted(final)} is not in the head tail {sorted(names)}")
    return names


def quantize_openvino(
    source: Path, out: Path, images: np.ndarray, method: Method, overflow_fix: Literal["enable", "disable"]
) -> str:
    """The INT8 OpenVINO IR of ``source`` through NNCF post-training quantization; returns its scheme.

    Three of NNCF's defaults are set, each for a reason measured on the demo model
    (``benchmarks/results/int8_cpu.md``):

    - Activation ranges follow ``deploy.int8.calibration_method`` as ONNX Runtime's do. NNCF's default
      for per-tensor activations is ``MEAN_MINMAX`` (``min_max/algorithm.py``,
      ``_get_range_estimator_parameters``): the mean over calibration batches of each batch's min and
      max, which clips every activation larger than the average batch's extreme; with it the demo
      model lost about 3 points even where nothing saturates. ``minmax`` is NNCF's ``MINMAX`` (the
      smallest min and largest max over all images, ONNX Runtime's MinMax statistic); ``percentile``
      its ``MEAN_QUANTILE`` and ``entropy`` its ``HISTOGRAM``, NNCF's nearest estimators.
    - ``overflow_fix`` is NNCF's ``OverflowFix``: ``enable`` for CPUs without VNNI (every
      convolution's weights in half the range), ``disable`` for VNNI (see the module's doc).
    - The head tail (:func:`openvino_head_tail`) stays in float through
      ``nncf.IgnoredScope(names=..., validate=True)``: NNCF raises when a name matches no node. With
      ``validate=False`` a name that matches nothing was skipped without a word, and the ONNX name
      of the final Concat never matched (OpenVINO names that op ``output0``).

    Raises:
        BackendUnavailable: When OpenVINO or NNCF is not installed.
        ExportError: When the head tail cannot be found in the converted model.
    """
    import onnx

    try:
        import nncf
        import openvino as ov
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    except ImportError as exc:
        raise BackendUnavailable(
            f"OpenVINO or NNCF is not installed ({exc}); install the project's 'openvino' extra"
        ) from None
    model = ov.convert_model(str(source))
    ignored = openvino_head_tail(model, onnx.load(str(source)))
    batch = model.inputs[0].get_partial_shape()[0]
    size = batch.get_length() if batch.is_static else 1
    chunks = [images[i : i + size] for i in range(0, len(images) - size + 1, size)]
    ranges = {
        "minmax": RangeEstimatorParametersSet.MINMAX,
        "entropy": RangeEstimatorParametersSet.HISTOGRAM,
        "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
    }[method]
    fix = {"enable": OverflowFix.ENABLE, "disable": OverflowFix.DISABLE}[overflow_fix]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(chunks),
        subset_size=len(chunks),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=True),
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fix, activations_range_estimator_params=ranges),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    half = "every convolution's weights in half the range" if overflow_fix == "enable" else "8-bit weights"
    return (
        f"NNCF post-training quantization, overflow fix {overflow_fix} ({half}), {method} activation ranges, "
        "head tail in float"
    )


class _DropMessage(logging.Filter):
    """Drops log records whose message contains one of the given phrases."""

    def __init__(self, *phrases: str) -> None:
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(p in record.getMessage() for p in self.phrases)


def count_convs(path: Path) -> tuple[int, int]:
    """Convolutions in the model ONNX Runtime actually runs (after its CPU graph fusions), and how many are integer.

    The Q/DQ file only says where quantization is allowed; whether a ``DequantizeLinear -> Conv ->
    QuantizeLinear`` group becomes an integer kernel is decided when the session optimizes the graph.
    So the session's optimized model is saved and counted.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="int8-optimized-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    integer = sum(op in INTEGER_CONVS for op in ops)
    return integer + sum(op in FLOAT_CONVS for op in ops), integer


def check_scores(reference: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Compare raw outputs of FP32 and INT8 on the same images (``stages.backends.compare``).

    Raises:
        ExportError: When the INT8 scores collapsed: all zero where FP32's are not, or the top class
            disagreeing with FP32 on most of the anchors FP32 is confident about (when there are
            enough of them to judge by; else the mAP gate alone decides).
    """
    check = compare(reference, candidate)
    if check.max_score_candidate <= 0.0 < check.max_score_reference:
        raise ExportError(
            "the INT8 model's scores collapsed: every class score is 0 "
            f"(FP32's highest is {check.max_score_reference:.3g}); the head's final Concat must stay in float"
        )
    if check.top_class_agreement < 0.5:
        raise ExportError(
            f"the INT8 model's top class agrees with FP32 on only {check.top_class_agreement:.0%} of "
            f"{check.confident_anchors} confident boxes; try deploy.int8.calibration_method or more "
            "deploy.int8.calibration_images"
        )
    return check
