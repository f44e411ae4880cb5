"""GPU tier: TensorRT engines built and run here, checked against ONNX Runtime FP32 with the stated tolerances.

Skipped without a CUDA GPU, and without TensorRT's Python bindings (the ``gpu`` extra; its type
stubs alone, which ``make install`` brings for the lint, do not count:
``stages.backends.tensorrt.tensorrt_missing``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.backends import open_runner
from stages.backends.base import predict_all
from stages.backends.tensorrt import sidecar_path, tensorrt_missing
from stages.core.errors import BackendUnavailable
from tests.conftest import cuda_available, smooth_images, tiny_yolo_export

IMGSZ = 160
_MISSING = None if not cuda_available() else tensorrt_missing()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU; none is visible to PyTorch here"),
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_yolo_export(tmp_path_factory, "tensorrt-gpu", IMGSZ)


def _build(source: Path, folder: Path, precision: str, batch_sizes: list[int]) -> Path:
    from stages.backends.tensorrt_build import build
    from stages.deploy.engine import engine_onnx

    calibration = smooth_images(8, IMGSZ, seed=5) if precision == "int8" else None
    prepared = engine_onnx(source, precision, folder / f"model.{precision}.onnx", calibration)
    engine = folder / "engine" / "model.engine"
    build(
        prepared,
        engine,
        precision=precision,
        batch_sizes=batch_sizes,
        workspace_gib=1.0,
        timing_cache_dir=folder / "cache",
        source_onnx=source,
        device="cuda:0",
    )
    return engine


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_raw_outputs_match_onnx_runtime_within_the_precision_tolerance(model, tmp_path, precision):
    import torch

    from stages.deploy.engine import raw_parity

    engine = _build(model["onnx"], tmp_path, precision, [1])
    caches = list((tmp_path / "cache").glob("timing-trt*-sm*.cache"))
    assert len(caches) == 1 and caches[0].stat().st_size > 0
    runner = open_runner("tensorrt", engine, workspace=model["root"], device="cuda:0", precision=precision)
    assert runner.info.precision == precision and runner.batch == 1 and runner.max_batch == 1
    assert runner.stream != torch.cuda.default_stream(runner.device)  # its own stream
    assert [t.dtype for t in runner.outputs] == ["float32"]  # read from the engine
    reference = open_runner("onnxruntime", model["onnx"], workspace=model["root"])
    comparison, beyond = raw_parity(runner, reference, smooth_images(4, IMGSZ, seed=1), precision)
    assert beyond == [], comparison
    runner.close()


def test_a_dynamic_batch_engine_takes_its_profile_and_nothing_larger(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).random((4, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["output0"], pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4, 32, 32])],
        [weights],
    )
    source = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(source))
    engine = _build(source, tmp_path, "fp32", [2, 1, 4])
    runner = open_runner("tensorrt", engine, workspace=tmp_path, device="cuda", precision="fp32")
    assert runner.batch is None and runner.max_batch == 4
    x = np.random.default_rng(1).random((9, 3, 32, 32), dtype=np.float32)
    reference = open_runner("onnxruntime", source, workspace=tmp_path)
    np.testing.assert_allclose(predict_all(runner, x), predict_all(reference, x), atol=1e-4)
    with pytest.raises(BackendUnavailable, match="outside the engine's profile"):
        runner.predict(x[:5])


def test_an_engine_whose_onnx_model_changed_is_refused(model, tmp_path):
    import shutil

    source = tmp_path / "deploy" / "model.onnx"
    source.parent.mkdir()
    shutil.copy2(model["onnx"], source)
    engine = _build(source, tmp_path, "fp16", [1])
    assert sidecar_path(engine).is_file()
    open_runner("tensorrt", engine, workspace=tmp_path, device="cuda", precision="fp16").close()
    source.write_bytes(source.read_bytes() + b"\0")  # a retrained model, the engine left behind
    with pytest.raises(BackendUnavailable, match="stale engine"):
        open_runner("tensorrt", engine, workspace=tmp_path, device="cuda", precision="fp16")
