"""CPU INT8 built for the CPU it runs on: VNNI or not, detected from the CPU flags or set in params.

Without VNNI, x86 U8S8 kernels add pairs of 8-bit products in 16 bits and saturate; the build for
such CPUs keeps the weights in 7 bits (ONNX Runtime ``reduce_range``, NNCF ``OverflowFix.ENABLE``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.core.config import parse_params
from stages.core.errors import ConfigError
from stages.core.fingerprint import int8_extensions
from stages.deploy.int8 import detect_target_cpu, int8_cpu, quantize
from tests.conftest import deploy_inputs, openvino_missing, smooth_images, tiny_yolo_export

IMGSZ = 64

# /proc/cpuinfo flags of real CPUs, cut to what matters here (and a few that must not matter).
HASWELL = "fpu sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2"
SKYLAKE_X = HASWELL + " avx512f avx512dq avx512cd avx512bw avx512vl"  # AVX-512 without VNNI: still saturates
ZEN3 = HASWELL + " sha_ni vaes vpclmulqdq"
CASCADE_LAKE = SKYLAKE_X + " avx512_vnni"
ALDER_LAKE = HASWELL + " avx_vnni"  # VNNI on 256-bit registers, no AVX-512
SAPPHIRE_RAPIDS = CASCADE_LAKE + " avx_vnni amx_bf16 amx_tile amx_int8"
CORTEX_A72 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"  # ARMv8.0: no dot product
GRAVITON2 = CORTEX_A72 + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp ssbs"
GRAVITON3 = GRAVITON2 + " sve i8mm bf16"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        pytest.param(HASWELL, "no-vnni", id="haswell-avx2"),
        pytest.param(SKYLAKE_X, "no-vnni", id="skylake-x-avx512-no-vnni"),
        pytest.param(ZEN3, "no-vnni", id="zen3"),
        pytest.param(CASCADE_LAKE, "vnni", id="cascade-lake-avx512-vnni"),
        pytest.param(ALDER_LAKE, "vnni", id="alder-lake-avx-vnni"),
        pytest.param(SAPPHIRE_RAPIDS, "vnni", id="sapphire-rapids-amx"),
        pytest.param(CORTEX_A72, "no-vnni", id="cortex-a72-no-dot-product"),
        pytest.param(GRAVITON2, "vnni", id="graviton2-asimddp"),
        pytest.param(GRAVITON3, "vnni", id="graviton3-i8mm"),
        # Flags unknown (no /proc/cpuinfo): the build that runs correctly everywhere.
        pytest.param("", "no-vnni", id="unknown"),
    ],
)
def test_target_cpu_is_detected_from_the_cpu_flags(flags, expected):
    assert detect_target_cpu(flags.split()) == expected


def test_only_a_whole_flag_counts():
    # Substrings of other flags ("avx512_vnni" inside a made-up "avx512_vnni_fp16") are not the flag.
    assert detect_target_cpu(["avx512_vnni_fp16", "xavx_vnni"]) == "no-vnni"
    assert int8_extensions(SAPPHIRE_RAPIDS.split()) == ["avx512_vnni", "avx_vnni", "amx_int8"]


def test_auto_follows_the_flags_and_params_override_them():
    auto_avx2 = int8_cpu("auto", HASWELL.split(), "Intel Core i7-4770")
    assert auto_avx2.target == "no-vnni" and auto_avx2.chosen_by == "this machine's CPU flags"
    assert auto_avx2.reduce_range and auto_avx2.overflow_fix == "enable"
    assert auto_avx2.machine_int8_flags == [] and auto_avx2.machine == "Intel Core i7-4770"

    auto_spr = int8_cpu("auto", SAPPHIRE_RAPIDS.split(), "Xeon")
    assert auto_spr.target == "vnni" and not auto_spr.reduce_range and auto_spr.overflow_fix == "disable"

    # Built on a VNNI machine for CPUs without it, and the other way round: params decide, the flags are recorded.
    forced = int8_cpu("no-vnni", SAPPHIRE_RAPIDS.split(), "Xeon")
    assert forced.target == "no-vnni" and forced.chosen_by == "deploy.int8.target_cpu" and forced.reduce_range
    assert forced.machine_int8_flags == ["avx512_vnni", "avx_vnni", "amx_int8"]
    assert not int8_cpu("vnni", HASWELL.split(), "i7").reduce_range


def test_target_cpu_is_a_params_key_with_three_values():
    assert parse_params({}).deploy.int8.target_cpu == "auto"
    assert parse_params({"deploy": {"int8": {"target_cpu": "no-vnni"}}}).deploy.int8.target_cpu == "no-vnni"
    with pytest.raises(ConfigError, match=r"deploy\.int8\.target_cpu"):
        parse_params({"deploy": {"int8": {"target_cpu": "avx2"}}})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained YOLO11n checkpoint and its FP32 ONNX export at 64 px (no training, no download)."""
    return tiny_yolo_export(tmp_path_factory, "tiny-int8-cpu", IMGSZ)


def _images(count: int, seed: int = 0) -> np.ndarray:
    return smooth_images(count, IMGSZ, seed)


def _conv_weight_range(path: Path) -> int:
    """The largest |value| of the INT8 convolution weights in a Q/DQ ONNX model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    largest = 0
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in dequantized:
            w = weights[dequantized[node.input[1]]]
            assert w.dtype == np.int8
            largest = max(largest, int(np.abs(w.astype(np.int32)).max()))
    return largest


def test_reduce_range_keeps_every_weight_within_7_bits(tiny, tmp_path):
    full = quantize(tiny["onnx"], tmp_path / "full.onnx", _images(8), "minmax")
    reduced = quantize(tiny["onnx"], tmp_path / "reduced.onnx", _images(8), "minmax", reduce_range=True)
    # 255 x 64 x 2 = 32,640 fits a signed 16-bit pair sum; 255 x 127 x 2 does not.
    assert _conv_weight_range(tmp_path / "full.onnx") == 127
    assert _conv_weight_range(tmp_path / "reduced.onnx") == 64
    assert "reduce_range" in reduced.scheme and "reduce_range" not in full.scheme
    assert reduced.integer_convs == full.integer_convs  # the same integer kernels run: no speed given up


def _gate_with(tiny, tmp_path, monkeypatch, target_cpu: str, flags: list[str]) -> tuple[dict, dict, Path]:
    """``build_and_gate`` for onnx-int8 with the mAPs fixed, this machine's flags replaced by ``flags``."""
    from stages.core.common import read_json
    from stages.deploy import build
    from stages.deploy.accuracy import Accuracy, Calibration, LabelledImages

    deploy_dir = tmp_path / "deploy"
    deploy_dir.mkdir(parents=True)
    shutil.copy(tiny["onnx"], deploy_dir / "model.onnx")

    def fixed_map(runner, data, imgsz, conf, iou):
        return Accuracy(map50=0.5, map50_95=0.5, images=2, instances=3)

    monkeypatch.setattr(build, "detection_map", fixed_map)
    monkeypatch.setattr(
        build, "labelled_split", lambda *a, **k: LabelledImages(paths=[], classes=[], boxes=[], names=["a"])
    )
    monkeypatch.setattr(build, "calibration_inputs", lambda *a, **k: _images(8))
    drawn = Calibration(split="train", images=8, of=8, seed=0, files_sha256="0" * 64)
    monkeypatch.setattr(build, "calibration_sample", lambda *a, **k: ([], drawn))
    monkeypatch.setattr(build, "ultralytics_map", lambda *a, **k: fixed_map(None, None, 0, 0, 0))
    monkeypatch.setattr(build, "load_inputs", lambda *a, **k: _images(2, seed=3))
    monkeypatch.setattr(build, "cpu_flags", lambda: flags)
    monkeypatch.setattr(build, "cpu_model", lambda: "Test CPU")
    params = {"deploy": {"targets": ["onnx-fp32", "onnx-int8"], "int8": {"target_cpu": target_cpu}}}
    cfg = deploy_inputs(tiny, tmp_path, deploy_dir, IMGSZ, params)
    build.build_and_gate(cfg)
    return read_json(cfg.metrics), read_json(cfg.report), deploy_dir / "model.int8.onnx"


def test_export_builds_7_bit_weights_for_a_cpu_without_vnni_and_records_why(tiny, tmp_path, monkeypatch):
    metrics, facts, int8 = _gate_with(tiny, tmp_path, monkeypatch, "auto", HASWELL.split())
    assert metrics["onnx-int8"]["deployable"] == 1
    assert facts["onnx-int8"]["int8_cpu"] == {
        "target": "no-vnni",
        "chosen_by": "this machine's CPU flags",
        "machine": "Test CPU",
        "machine_int8_flags": [],
        "reduce_range": True,
        "overflow_fix": "enable",
    }
    assert "reduce_range" in facts["onnx-int8"]["scheme"]
    assert _conv_weight_range(int8) == 64
    assert facts["onnx-fp32"]["int8_cpu"] is None


def test_params_override_the_detected_cpu_both_ways(tiny, tmp_path, monkeypatch):
    _, facts, int8 = _gate_with(tiny, tmp_path / "a", monkeypatch, "no-vnni", SAPPHIRE_RAPIDS.split())
    cpu = facts["onnx-int8"]["int8_cpu"]
    assert cpu["target"] == "no-vnni" and cpu["chosen_by"] == "deploy.int8.target_cpu"
    assert cpu["machine_int8_flags"] == ["avx512_vnni", "avx_vnni", "amx_int8"]
    assert _conv_weight_range(int8) == 64

    _, facts, int8 = _gate_with(tiny, tmp_path / "b", monkeypatch, "vnni", HASWELL.split())
    assert facts["onnx-int8"]["int8_cpu"]["target"] == "vnni" and not facts["onnx-int8"]["int8_cpu"]["reduce_range"]
    assert _conv_weight_range(int8) == 127


def _ov_conv_weight_maxima(xml: Path) -> list[int]:
    """Per convolution of an INT8 IR, the largest |value| of its INT8 weights.

    OpenVINO saves NNCF's weight quantizers as INT8 constants (``Constant i8 -> Convert -> Multiply``
    by the scale). NNCF's overflow fix (``half_range``) quantizes to 7-bit levels and exports them on
    the 8-bit grid, so a convolution's weights then stay within 64.
    """
    import openvino as ov

    maxima = []
    for op in ov.Core().read_model(str(xml)).get_ops():
        if op.get_type_name() != "Convolution":
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in ("Multiply", "Convert", "Subtract"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant" and node.get_output_element_type(0).get_type_name() == "i8":
            maxima.append(int(np.abs(node.get_data().astype(np.int32)).max()))
    return maxima


@pytest.mark.skipif(openvino_missing() is not None, reason=openvino_missing() or "")
def test_nncf_overflow_fix_halves_every_convolution_weight_range_only_without_vnni(tiny, tmp_path):
    import onnx
    import openvino as ov

    from stages.deploy.int8 import openvino_head_tail, quantize_openvino

    enabled = quantize_openvino(tiny["onnx"], tmp_path / "no-vnni" / "model.xml", _images(8), "minmax", "enable")
    disabled = quantize_openvino(tiny["onnx"], tmp_path / "vnni" / "model.xml", _images(8), "minmax", "disable")
    assert "overflow fix enable" in enabled and "overflow fix disable" in disabled
    half = _ov_conv_weight_maxima(tmp_path / "no-vnni" / "model.xml")
    full = _ov_conv_weight_maxima(tmp_path / "vnni" / "model.xml")
    assert len(half) == len(full) > 50
    assert max(half) <= 64, "every convolution's weights in half the range"
    # NNCF's default (first layer only) would leave the first convolution within 64.
    assert min(full) == 127, "no convolution's weights in half the range"

    # The head tail NNCF leaves in float is found in the converted model, its output op included
    # (OpenVINO names the final Concat after the model's output, not after the ONNX node).
    model = ov.convert_model(str(tiny["onnx"]))
    tail = openvino_head_tail(model, onnx.load(str(tiny["onnx"])))
    assert "output0" in tail and "/model.23/Sigmoid" in tail and "/model.23/dfl/conv/Conv" in tail
    assert not any("/cv2." in name or "/cv3." in name for name in tail)


def test_the_model_card_says_which_cpu_int8_was_built_for_and_warns_on_a_cpu_without_vnni():
    from stages.reporting.card_sections import int8_note

    built = int8_cpu("auto", ["avx2", "avx512_vnni"], "Xeon (test)").model_dump()
    facts = {"onnx-fp32": {"precision": "fp32"}, "onnx-int8": {"precision": "int8", "int8_cpu": built}}
    on_vnni = "\n".join(int8_note({"cpu_int8": ["avx512_vnni"]}, facts))
    assert "onnx-int8 is built for **vnni** CPUs (full 8-bit weights" in on_vnni
    assert "built on Xeon (test), INT8 flags: avx512_vnni" in on_vnni
    assert "This CPU has no VNNI" not in on_vnni
    elsewhere = "\n".join(int8_note({"cpu_int8": []}, facts))
    assert "**This CPU has no VNNI:** onnx-int8's 8-bit products can saturate here" in elsewhere
    seven = int8_cpu("no-vnni", ["avx512_vnni"], "Xeon (test)").model_dump()
    safe = "\n".join(int8_note({"cpu_int8": []}, {"onnx-int8": {"precision": "int8", "int8_cpu": seven}}))
    assert "7-bit weights, which cannot saturate; chosen by deploy.int8.target_cpu" in safe
    assert "This CPU has no VNNI" not in safe
    assert int8_note({"cpu_int8": []}, {"onnx-fp32": {"precision": "fp32"}}) == []
