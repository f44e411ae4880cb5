"""The TensorRT engine path, piece by piece, where TensorRT cannot be installed (CPU).

What needs TensorRT's libraries and a GPU (building, deserializing, running an engine) is in
``tests/gpu/test_tensorrt_gpu.py``. Here: the ONNX models the engine is built from and their check
against TensorRT's Q/DQ rules, the optimization profile, the sidecar and the ONNX hash it is checked
against, the timing cache's key, the runner's shape checks, a failed build recorded as a skip, the
gate on the reference's images with the raw-output parity, and the detection of TensorRT itself.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from stages import build_engine
from stages.backends import tensorrt as trt_runtime
from stages.backends import tensorrt_build
from stages.backends.tensorrt import Sidecar, check_batch, check_origin, cuda_index, load, recorded_onnx, sidecar_path
from stages.backends.tensorrt_lint import check_qdq, qdq_problems
from stages.core.config import parse_params
from stages.core.errors import BackendUnavailable, ConfigError, EngineUnavailable
from stages.deploy.engine import PARITY_TOLERANCES, engine_onnx
from stages.deploy.int8 import quantize
from tests.conftest import smooth_images, tiny_training_workspace, tiny_yolo_export

IMGSZ = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained YOLO11n checkpoint and its FP32 ONNX export at 64 px (no training, no download)."""
    return tiny_yolo_export(tmp_path_factory, "tiny-engine", IMGSZ)


def _images(count: int, seed: int = 0) -> np.ndarray:
    return smooth_images(count, IMGSZ, seed)


# --- TensorRT itself -------------------------------------------------------------------------------


def test_the_type_stubs_alone_do_not_count_as_tensorrt(monkeypatch):
    """``tensorrt-stubs`` leaves an importable, empty ``tensorrt`` namespace: that is not TensorRT."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("neither TensorRT nor its type stubs are installed here")
    import tensorrt

    if hasattr(tensorrt, "Builder"):
        pytest.skip("TensorRT's bindings are installed here")
    reason = trt_runtime.tensorrt_missing()
    assert reason is not None and "type stubs" in reason and "'gpu' extra" in reason
    import torch

    monkeypatch.setattr(build_engine, "no_cuda_driver", lambda: False)  # the GPU half of the check passes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert build_engine.missing_prerequisite() == reason
    with pytest.raises(BackendUnavailable, match="type stubs"):
        trt_runtime.require_tensorrt()


def test_bindings_with_a_version_and_a_builder_count_as_tensorrt(monkeypatch):
    fake = types.ModuleType("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert "type stubs" in (trt_runtime.tensorrt_missing() or "")
    fake.__version__ = "11.4.0.106"  # type: ignore[attr-defined]
    fake.Builder = object  # type: ignore[attr-defined]
    assert trt_runtime.tensorrt_missing() is None


def test_without_a_cuda_driver_the_check_says_so_without_importing_pytorch():
    """No ``libcuda.so.1`` (a CPU machine): no GPU, found in a fresh process that never imports torch."""
    import subprocess

    if not sys.platform.startswith("linux"):
        pytest.skip("the driver check is Linux's libcuda.so.1")
    code = (
        "import sys; from stages import build_engine as b; "
        "print(b.no_cuda_driver(), b.missing_prerequisite(), 'torch' in sys.modules, sep='|')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    no_driver, reason, torch_imported = out.strip().split("|")
    import torch

    if no_driver == "False":
        assert reason, "a driver but no TensorRT or no visible GPU still says why"
        pytest.skip("this machine has a CUDA driver: PyTorch decides, as tested above")
    assert not torch.cuda.is_available(), "no driver and yet PyTorch sees a GPU"
    assert reason.startswith("no CUDA GPU is visible") and "libcuda.so.1" in reason
    assert torch_imported == "False"


# --- the ONNX models an engine is built from, and TensorRT's Q/DQ rules ------------------------------


def test_onnx_runtime_default_quantization_breaks_tensorrt_q_dq_rules(tiny, tmp_path):
    import onnx

    default = tmp_path / "default.int8.onnx"
    quantize(tiny["onnx"], default, _images(4), "minmax")  # U8S8, QuantizeBias: ONNX Runtime's defaults
    problems = qdq_problems(onnx.load(str(default)))
    assert any("quantized type UINT8" in p for p in problems)
    assert any("quantized type INT32" in p and "QuantizeBias" in p for p in problems)
    assert any("is not 0" in p for p in problems)  # asymmetric zero points
    with pytest.raises(EngineUnavailable, match="breaks TensorRT's Q/DQ rules"):
        check_qdq(default)
    # What the engine path wrote before: signed and symmetric, but ONNX Runtime's INT32 biases.
    signed = tmp_path / "signed.int8.onnx"
    quantize(tiny["onnx"], signed, _images(4), "minmax", symmetric=True)
    bias = [p for p in qdq_problems(onnx.load(str(signed))) if "INT32" in p]
    assert bias and len(bias) == len(qdq_problems(onnx.load(str(signed))))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_model_the_engine_path_writes_passes_the_q_dq_rules(tiny, tmp_path, precision):
    import onnx
    from onnx import numpy_helper

    out = engine_onnx(tiny["onnx"], precision, tmp_path / f"model.{precision}.onnx", _images(4))
    model = onnx.load(str(out))
    assert qdq_problems(model) == []
    if precision == "int8":
        init = {t.name: t for t in model.graph.initializer}
        dq_inputs = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        assert dq_inputs, "a Q/DQ model"
        assert not [n for n in dq_inputs if n in init and init[n].data_type == onnx.TensorProto.INT32], "float biases"
        zero_points = [init[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert all(z.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(z).any() for z in zero_points)
    if precision == "fp16":
        f16 = onnx.TensorProto.FLOAT16
        conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
        assert all(t.data_type == f16 for t in model.graph.initializer if t.name in conv_weights)
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_int8_engine_calibration_follows_the_calibration_method(tiny, tmp_path, monkeypatch):
    import stages.deploy.engine as engine_prep

    asked = []
    real = engine_prep.quantize

    def spy(source, out, images, method, **kwargs):
        asked.append((method, kwargs))
        return real(source, out, images, method, **kwargs)

    monkeypatch.setattr(engine_prep, "quantize", spy)
    cfg = build_engine.BuildEngineConfig.from_params(
        parse_params({"deploy": {"int8": {"calibration_method": "entropy"}}}), tmp_path
    )
    assert cfg.calibration_method == "entropy"  # was minmax whatever deploy.int8 said
    out = engine_onnx(tiny["onnx"], "int8", tmp_path / "entropy.onnx", _images(8), cfg.calibration_method)
    assert asked == [("entropy", {"symmetric": True, "quantize_bias": False})]
    import onnx

    assert qdq_problems(onnx.load(str(out))) == []
    with pytest.raises(EngineUnavailable, match="calibration images"):
        engine_onnx(tiny["onnx"], "int8", tmp_path / "none.onnx", None)


def _qdq_conv(tmp_path: Path, *, scale: float, zero_point: int, weight: int, q_feeds_relu: bool = False) -> Path:
    """A one-convolution Q/DQ model written with onnx.helper, breaking exactly the rules asked for."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.full((4, 3, 3, 3), weight, dtype=np.int8)
    inits = [
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(zero_point, dtype=np.int8), "z"),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, dtype=np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(4, dtype=np.int8), "w_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"], name="q"),
        helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_dq"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_dq", axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], name="conv"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if q_feeds_relu:
        nodes.append(helper.make_node("Relu", ["x_q"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.INT8, None))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])], outputs, inits
    )
    path = tmp_path / f"qdq-{scale}-{zero_point}-{weight}-{q_feeds_relu}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_the_q_dq_lint_names_each_rule_it_finds_broken(tmp_path):
    import onnx

    assert qdq_problems(onnx.load(str(_qdq_conv(tmp_path, scale=0.1, zero_point=0, weight=3)))) == []
    broken = qdq_problems(onnx.load(str(_qdq_conv(tmp_path, scale=-0.1, zero_point=2, weight=-128, q_feeds_relu=True))))
    assert any("not finite and positive" in p for p in broken)
    assert any("zero point 'z' is not 0" in p for p in broken)
    assert any("hold -128" in p for p in broken)
    assert any("QuantizeLinear 'q'" in p and "Relu" in p for p in broken)


def test_building_a_model_that_breaks_the_q_dq_rules_fails_before_tensorrt(tiny, tmp_path):
    default = tmp_path / "default.int8.onnx"
    quantize(tiny["onnx"], default, _images(4), "minmax")
    with pytest.raises(EngineUnavailable, match="breaks TensorRT's Q/DQ rules"):
        tensorrt_build.build(
            default,
            tmp_path / "model.engine",
            precision="int8",
            batch_sizes=[1],
            workspace_gib=1.0,
            timing_cache_dir=tmp_path / "cache",
            source_onnx=tiny["onnx"],
        )


def test_building_without_tensorrt_says_what_to_install(tiny, tmp_path):
    if trt_runtime.tensorrt_missing() is None:
        pytest.skip("TensorRT is installed here: tests/gpu/test_tensorrt_gpu.py builds a real engine")
    with pytest.raises(EngineUnavailable, match=r"'gpu' extra"):
        tensorrt_build.build(
            tiny["onnx"],
            tmp_path / "model.engine",
            precision="fp32",
            batch_sizes=[1],
            workspace_gib=1.0,
            timing_cache_dir=tmp_path / "cache",
            source_onnx=tiny["onnx"],
        )


# --- the optimization profile ------------------------------------------------------------------------


def _conv_model(tmp_path: Path, dims: list[int | str]) -> Path:
    """A one-convolution FP32 model whose input has ``dims`` (a name: a free axis)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).random((4, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["output0"], pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [dims[0], 4, dims[2], dims[3]])],
        [weights],
    )
    path = tmp_path / ("model-" + "x".join(map(str, dims)) + ".onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_profile_spans_the_batch_sizes_of_a_model_whose_only_free_axis_is_the_batch(tmp_path):
    from stages.backends.inference import onnx_session

    model = _conv_model(tmp_path, ["batch", 3, IMGSZ, IMGSZ])
    name, shapes = tensorrt_build.profile_shapes(model, [4, 1, 8])
    assert name == "images"
    assert shapes == {"min": [1, 3, IMGSZ, IMGSZ], "opt": [4, 3, IMGSZ, IMGSZ], "max": [8, 3, IMGSZ, IMGSZ]}
    session = onnx_session(model)
    for batch in (1, 4, 8):  # every size the profile covers runs
        assert session.run(None, {"images": _images(batch)})[0].shape[0] == batch


def test_profile_refuses_free_image_axes_and_static_batches_it_cannot_serve(tiny, tmp_path):
    name, shapes = tensorrt_build.profile_shapes(tiny["onnx"], [1])
    assert name == "images" and shapes == {k: [1, 3, IMGSZ, IMGSZ] for k in ("min", "opt", "max")}
    with pytest.raises(EngineUnavailable, match="static batch of 1"):
        tensorrt_build.profile_shapes(tiny["onnx"], [1, 8])
    # What Ultralytics' dynamic=True writes: batch, height and width all free.
    everything = _conv_model(tmp_path, ["batch", 3, "height", "width"])
    with pytest.raises(EngineUnavailable, match=r"free axes besides the batch \(height, width\)"):
        tensorrt_build.profile_shapes(everything, [1, 8])


# --- the runner's shape checks and device ------------------------------------------------------------


def test_the_runner_refuses_batches_outside_its_profile_and_shapes_tensorrt_rejects():
    profile = {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [8, 3, 64, 64]}
    check_batch((8, 3, 64, 64), profile)
    with pytest.raises(BackendUnavailable, match=r"\[9, 3, 64, 64\] is outside the engine's profile"):
        check_batch((9, 3, 64, 64), profile)
    with pytest.raises(BackendUnavailable, match="outside"):
        check_batch((2, 3, 32, 32), profile)

    class Context:
        def __init__(self, accepts: bool) -> None:
            self.accepts, self.asked = accepts, []

        def set_input_shape(self, name, shape):
            self.asked.append((name, shape))
            return self.accepts  # TensorRT answers False; it does not raise

    trt_runtime.set_input_shape(Context(True), "images", (1, 3, 64, 64))
    refusing = Context(False)
    with pytest.raises(BackendUnavailable, match=r"refused the input shape \[1, 3, 64, 64\]"):
        trt_runtime.set_input_shape(refusing, "images", (1, 3, 64, 64))
    assert refusing.asked == [("images", (1, 3, 64, 64))]


def test_the_device_comes_from_the_caller_and_params():
    assert cuda_index("cuda") is None and cuda_index("cuda:1") == 1
    for wrong in ("cpu", "cuda:x", "gpu:0"):
        with pytest.raises(BackendUnavailable, match="CUDA GPU"):
            cuda_index(wrong)
    assert parse_params({"engine": {"device": "cuda:1"}}).engine.device == "cuda:1"
    with pytest.raises(ConfigError, match=r"engine\.device"):
        parse_params({"engine": {"device": "cpu"}})


# --- the sidecar and the ONNX model it names ---------------------------------------------------------


def _sidecar(engine: Path, onnx: Path, **changes) -> Sidecar:
    from stages.core.common import file_sha256

    sidecar = Sidecar(
        tensorrt="11.4.0.106",
        gpu="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        precision="fp16",
        input_name="images",
        shapes={"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [1, 3, 64, 64]},
        onnx=recorded_onnx(engine, onnx),
        onnx_sha256=file_sha256(onnx),
    ).model_copy(update=changes)
    sidecar_path(engine).write_text(sidecar.model_dump_json())
    return sidecar


def test_a_stale_engine_of_a_retrained_model_is_refused(tmp_path):
    deploy, engines = tmp_path / "models" / "deploy", tmp_path / "models" / "engine"
    deploy.mkdir(parents=True)
    engines.mkdir()
    onnx = deploy / "model.onnx"
    onnx.write_bytes(b"the model the engine was built from")
    engine = engines / "model.engine"
    engine.write_bytes(b"an engine")
    sidecar = _sidecar(engine, onnx)
    assert sidecar.onnx == "../deploy/model.onnx"
    assert check_origin(engine, sidecar) == onnx

    onnx.write_bytes(b"a retrained model")  # the export changed, the engine did not
    with pytest.raises(BackendUnavailable, match="stale engine"):
        load(engine, device="cuda", precision="fp16", threads=0, workspace=tmp_path)
    onnx.unlink()
    with pytest.raises(BackendUnavailable, match="not there to check it against"):
        load(engine, device="cuda", precision="fp16", threads=0, workspace=tmp_path)


def test_a_deployment_folder_checks_the_engine_against_the_onnx_beside_it(tmp_path):
    workspace = tmp_path / "models"
    (workspace / "deploy").mkdir(parents=True)
    (workspace / "engine").mkdir()
    built_from = workspace / "deploy" / "model.onnx"
    built_from.write_bytes(b"model v1")
    engine = workspace / "engine" / "model.engine"
    engine.write_bytes(b"engine v1")
    sidecar = _sidecar(engine, built_from)
    production = workspace / "production"
    production.mkdir()
    for path in (engine, sidecar_path(engine), built_from):  # what promotion copies
        shutil.copy2(path, production / path.name)
    built_from.write_bytes(b"model v2: the workspace moved on")
    assert check_origin(production / "model.engine", sidecar) == production / "model.onnx"
    (production / "model.onnx").write_bytes(b"another model")
    with pytest.raises(BackendUnavailable, match="stale engine"):
        check_origin(production / "model.engine", sidecar)


def test_an_engine_is_refused_where_its_sidecar_does_not_match(tmp_path):
    from stages.backends.tensorrt import sidecar_mismatch

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"model")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(BackendUnavailable, match=r"sidecar .* is missing"):
        load(engine, device="cuda", precision="fp16", threads=0, workspace=tmp_path)
    sidecar = _sidecar(engine, onnx)
    assert sidecar_mismatch(sidecar, "11.4.0.106", "NVIDIA H100 80GB HBM3", "9.0") == []
    found = sidecar_mismatch(sidecar, "10.13.0", "NVIDIA L4", "8.9")
    assert len(found) == 3 and "this is TensorRT 10.13.0" in found[0] and "8.9" in found[1] and "L4" in found[2]
    with pytest.raises(BackendUnavailable, match="is a fp16 engine, not int8"):
        load(engine, device="cuda", precision="int8", threads=0, workspace=tmp_path)
    with pytest.raises(BackendUnavailable, match="not 'cpu'"):
        load(engine, device="cpu", precision="fp16", threads=0, workspace=tmp_path)


# --- the timing cache --------------------------------------------------------------------------------


def test_the_timing_cache_is_keyed_by_tensorrt_version_and_gpu_architecture(tmp_path):
    a = tensorrt_build.timing_cache_file(tmp_path, "10.13.0.35", "9.0")
    assert a.name == "timing-trt10.13.0.35-sm90.cache"
    assert (
        len(
            {
                a,
                tensorrt_build.timing_cache_file(tmp_path, "11.4.0.106", "9.0"),
                tensorrt_build.timing_cache_file(tmp_path, "10.13.0.35", "8.9"),
            }
        )
        == 3
    )


def test_a_rejected_timing_cache_is_replaced_by_an_empty_one(tmp_path):
    class Config:
        def __init__(self, accepts: set[bytes]) -> None:
            self.accepts, self.offered = accepts, []

        def create_timing_cache(self, data: bytes) -> bytes:
            return data

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            assert ignore_mismatch is False
            self.offered.append(cache)
            return cache in self.accepts

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"timings of another build")
    fresh = Config(accepts={b""})
    tensorrt_build.apply_timing_cache(fresh, cache)
    assert fresh.offered == [b"timings of another build", b""]
    kept = Config(accepts={b"timings of another build"})
    tensorrt_build.apply_timing_cache(kept, cache)
    assert kept.offered == [b"timings of another build"]
    with pytest.raises(EngineUnavailable, match="rejected an empty timing cache"):
        tensorrt_build.apply_timing_cache(Config(accepts=set()), cache)


# --- the stage: a failed build, the gate -------------------------------------------------------------


def _stage_workspace(tmp_path: Path, onnx: Path) -> Path:
    (tmp_path / "models" / "deploy").mkdir(parents=True)
    (tmp_path / "models" / "best.pt").write_bytes(b"weights")
    shutil.copy2(onnx, tmp_path / "models" / "deploy" / "model.onnx")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "export.json").write_text(json.dumps({"exported": 1}))
    return tmp_path


def test_a_failed_build_is_a_recorded_skip_unless_required(tiny, tmp_path, monkeypatch):
    root = _stage_workspace(tmp_path, tiny["onnx"])
    monkeypatch.setattr(build_engine, "missing_prerequisite", lambda: None)  # as on a GPU machine with TensorRT

    def parse_error(prepared, engine, **kwargs):
        assert prepared.is_file() and kwargs["source_onnx"] == root / "models" / "deploy" / "model.onnx"
        raise EngineUnavailable("TensorRT cannot parse model.fp32.onnx: In node 12 (Conv): unsupported")

    monkeypatch.setattr(tensorrt_build, "build", parse_error)
    cfg = build_engine.BuildEngineConfig.from_params(parse_params({"engine": {"precision": "fp32"}}), root)
    result = build_engine.run(cfg)
    assert result.status == "skipped" and "cannot parse" in (result.reason or "")
    assert json.loads((root / "metrics" / "engine.json").read_text())["built"] == 0
    assert "cannot parse" in json.loads((root / "reports" / "engine.json").read_text())["reason"]
    assert not (root / "models" / "engine" / "model.engine").exists()

    required = build_engine.BuildEngineConfig.from_params(
        parse_params({"engine": {"precision": "fp32", "required": True}}), root
    )
    with pytest.raises(EngineUnavailable, match="cannot parse") as err:
        build_engine.run(required)
    assert err.value.key == "engine.required"


class _FakeEngine:
    """Raw outputs computed from the images (what a runtime would return), optionally with the scores
    shuffled across boxes; stands in for an engine that cannot be built here."""

    batch = None
    max_batch = 2

    def __init__(self, shuffled: bool = False) -> None:
        self.shuffled, self.sizes, self.closed = shuffled, [], False
        self.inputs, self.outputs = [], []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(len(x))
        cells = x[:, 0, ::8, ::8]  # one anchor per 8 x 8 px cell
        n, rows, cols = cells.shape
        anchors = rows * cols
        out = np.zeros((n, 7, anchors), dtype=np.float32)
        out[:, 0] = (np.arange(anchors) % cols) * 8 + 4
        out[:, 1] = (np.arange(anchors) // cols) * 8 + 4
        out[:, 2:4] = 8
        out[:, 4] = cells.reshape(n, -1)  # class 0 scored by the image itself
        out[:, 5] = 1 - out[:, 4]
        if self.shuffled:
            out[:, 4:] = out[:, 4:, np.random.default_rng(0).permutation(anchors)]
        return out

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("shuffled", [False, True])
def test_the_engine_is_gated_by_the_deploy_gate_on_the_reference_images(tmp_path, monkeypatch, shuffled):
    import stages.backends

    root, _ = tiny_training_workspace(tmp_path)
    # As prepare writes it: split folders relative to the file, no absolute path.
    (root / "data" / "data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: a, 1: b, 2: c}\n")
    (root / "metrics").mkdir()
    (root / "metrics" / "deploy.json").write_text(json.dumps({"pytorch": {"map50": 0.0, "map50_95": 0.0}}))
    params = parse_params({"deploy": {"eval_images": 3}, "paths": {"prepared": "data", "dataset": "raw"}})
    cfg = build_engine.BuildEngineConfig.from_params(params, root)
    engine, reference = _FakeEngine(shuffled), _FakeEngine()
    opened = []

    def open_runner(backend, artifact, **kwargs):
        opened.append((backend, Path(artifact).name, kwargs.get("device"), kwargs.get("precision")))
        return engine if backend == "tensorrt" else reference

    measured = []
    real_map = build_engine.detection_map

    def detection_map(runner, data, *args):
        measured.append(len(data.paths))
        return real_map(runner, data, *args)

    monkeypatch.setattr(stages.backends, "open_runner", open_runner)
    monkeypatch.setattr(build_engine, "detection_map", detection_map)
    gate = build_engine._gate(cfg, cfg.engine_dir / "model.engine", "fp16")
    assert measured == [3], "the reference's images: the first deploy.eval_images of val, not the whole split"
    assert gate.accuracy.images == 3 and max(engine.sizes) <= engine.max_batch
    assert opened == [("tensorrt", "model.engine", "cuda", "fp16"), ("onnxruntime", "model.onnx", None, None)]
    assert engine.closed and reference.closed
    assert "against PyTorch's 0.0000" in gate.reason  # stages.deploy.build.judge's words
    assert gate.parity.images == 3
    if shuffled:
        assert gate.parity_failures and not gate.deployable and "raw outputs against ONNX Runtime FP32" in gate.reason
    else:
        assert gate.parity_failures == [] and gate.deployable and gate.parity.max_abs_diff_scores == 0.0


def test_parity_tolerances_are_stated_for_every_engine_precision():
    assert set(PARITY_TOLERANCES) == {"fp32", "fp16", "int8"}
    fp32, fp16 = PARITY_TOLERANCES["fp32"], PARITY_TOLERANCES["fp16"]
    assert fp32.max_boxes_px is not None and fp16.max_boxes_px is not None and fp32.max_boxes_px < fp16.max_boxes_px
    assert PARITY_TOLERANCES["int8"].min_top_class_agreement == 0.5


# --- the type check against TensorRT's stubs ---------------------------------------------------------


def test_the_stub_repair_makes_only_invalid_signatures_valid():
    import ast

    from stages.backends.tensorrt_typecheck import repair

    keyword = "    def get_workspace_size(self, in: list[PluginTensorDesc], out: list[PluginTensorDesc]) -> int:\n"
    ordering = "    def add_scale_nd(self, input: ITensor, shift: Weights = None, channel_axis: int) -> IScaleLayer:\n"
    fine = "    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:\n"
    for line in (keyword, ordering):
        fixed = repair(line)
        ast.parse(fixed.strip() + " ...")
        assert fixed.split("(")[0] == line.split("(")[0] and fixed.endswith("\n")
    assert "in_: list[PluginTensorDesc]" in repair(keyword)
    assert repair(fine) == fine and repair("in: int = 3\n") == "in: int = 3\n"


def test_no_backend_imports_the_deploy_package():
    """The design rule: engine preparation lives on the stage side (stages/deploy/engine.py)."""
    import ast

    backends = Path(__file__).resolve().parents[2] / "stages" / "backends"
    found = []
    for module in sorted(backends.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            found += [f"{module.name}: {n}" for n in names if n == "stages.deploy" or n.startswith("stages.deploy.")]
    assert found == []
