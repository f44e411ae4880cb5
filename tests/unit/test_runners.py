"""The Runner protocol on real tiny artifacts: named inputs and outputs as loaded, binding, close.

ONNX Runtime's CUDA path cannot run here (no GPU, CPU-only onnxruntime): its binding is the same
code as the CPU's with the device type ``cuda``, so these tests check it structurally on the CPU
(the input is an ``OrtValue`` bound on the session's device, outputs are bound there too, the
results equal ``session.run``'s). The CUDA rows run in ``tests/gpu``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.backends import open_runner
from stages.backends.base import TensorMeta, predict_all
from stages.backends.ort import Bound
from tests.conftest import smooth_images, tiny_yolo_export

IMGSZ = 64
ANCHORS = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))  # 84 at 64 px
OUTPUT = TensorMeta(name="output0", shape=[1, 84, ANCHORS], dtype="float32")  # 4 box + 80 classes


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_yolo_export(tmp_path_factory, "runners", IMGSZ)


def test_onnxruntime_names_its_tensors_binds_them_and_matches_a_plain_run(model):
    runner = open_runner("onnxruntime", model["onnx"], workspace=model["root"], threads=1)
    assert runner.inputs == [TensorMeta(name="images", shape=[1, 3, IMGSZ, IMGSZ], dtype="float32")]
    assert runner.outputs == [OUTPUT]
    assert runner.batch == runner.max_batch == 1
    x = smooth_images(1, IMGSZ)
    placed = runner.place(x)
    # model_ms's boundary: the input already on the session's device, outputs bound there, no host copy in forward.
    assert isinstance(placed, Bound)
    assert placed.value.device_name() == runner.device_type == "cpu"
    runner.forward(placed)
    (out,) = placed.binding.get_outputs()
    assert out.device_name() == "cpu" and out.shape() == OUTPUT.shape
    expected = runner.session.run(None, {"images": x})[0]
    np.testing.assert_array_equal(runner.predict(x), expected)
    np.testing.assert_array_equal(placed.binding.copy_outputs_to_cpu()[0], expected)
    runner.close()
    assert runner.session is None


def test_openvino_names_its_tensors_as_compiled(model, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (the 'openvino' extra)")
    from stages.backends.openvino_rt import convert

    ir = convert(model["onnx"], tmp_path / "model.xml")
    runner = open_runner("openvino", ir, workspace=model["root"], threads=1)
    assert runner.inputs == [TensorMeta(name="images", shape=[1, 3, IMGSZ, IMGSZ], dtype="float32")]
    assert runner.outputs == [OUTPUT]
    assert runner.batch == runner.max_batch == 1
    x = smooth_images(2, IMGSZ)
    reference = predict_all(open_runner("onnxruntime", model["onnx"], workspace=model["root"], threads=1), x)
    np.testing.assert_allclose(predict_all(runner, x), reference, atol=1e-3)
    runner.close()
    assert runner.compiled is None and runner.request is None


def test_pytorch_declares_free_batch_and_size_and_closes(model):
    runner = open_runner("pytorch", model["pt"], workspace=model["root"], threads=1)
    assert runner.inputs == [TensorMeta(name="images", shape=[None, 3, None, None], dtype="float32")]
    assert [o.name for o in runner.outputs] == ["output0"] and runner.max_batch is None
    assert runner.predict(smooth_images(2, IMGSZ)).shape == (2, 84, ANCHORS)
    runner.close()
    assert runner.module is None


def test_torchscript_declares_the_shape_it_was_traced_on(model, tmp_path):
    import torch

    from stages.backends.inference import torch_model
    from stages.backends.torchscript import trace

    module = torch_model(model["pt"], model["root"]).fuse(verbose=False)
    path = trace(module, torch.zeros(1, 3, IMGSZ, IMGSZ), tmp_path / "model.torchscript")
    runner = open_runner("torchscript", path, workspace=model["root"], threads=1)
    assert runner.inputs == [TensorMeta(name="images", shape=[1, 3, IMGSZ, IMGSZ], dtype="float32")]
    assert runner.outputs[0].shape == [1, None, None] and runner.batch == runner.max_batch == 1
    assert runner.predict(smooth_images(1, IMGSZ)).shape == (1, 84, ANCHORS)
    runner.close()
    assert runner.module is None
