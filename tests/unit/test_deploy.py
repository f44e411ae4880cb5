"""Deploy artifacts: the backend interface, CPU INT8 quantization, TorchScript, and the one mAP code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.backends import open_runner
from stages.backends.base import predict_all
from stages.backends.ort import artifact_precision
from stages.core.config import parse_params
from stages.core.errors import BackendUnavailable, ConfigError, ExportError
from stages.deploy.accuracy import LabelledImages, detection_map, letterboxed_xyxy, match
from stages.deploy.int8 import check_scores, count_convs, head_tail_nodes, quantize
from tests.conftest import deploy_inputs, openvino_missing, smooth_images, tiny_yolo_export

IMGSZ = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained YOLO11n checkpoint and its FP32 ONNX export at 64 px (no training, no download)."""
    return tiny_yolo_export(tmp_path_factory, "tiny-model", IMGSZ)


def _images(count: int, seed: int = 0) -> np.ndarray:
    return smooth_images(count, IMGSZ, seed)


def test_head_tail_is_the_detect_head_outside_its_conv_branches(tiny):
    import onnx

    model = onnx.load(str(tiny["onnx"]))
    tail = head_tail_nodes(model)
    last = max(int(n.name.split("/")[1].split(".")[1]) for n in model.graph.node if n.name.startswith("/model."))
    assert tail and all(name.startswith(f"/model.{last}/") for name in tail)
    assert not any(name.startswith((f"/model.{last}/cv2/", f"/model.{last}/cv3/")) for name in tail)
    final = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    assert final.op_type == "Concat" and final.name in tail  # the Concat whose quantization zeroes every score
    assert any(n.op_type == "Sigmoid" for n in model.graph.node if n.name in tail)
    assert any("/dfl/" in name for name in tail)


def test_int8_runs_nearly_every_convolution_as_integer_and_keeps_scores(tiny, tmp_path):
    out = tmp_path / "model.int8.onnx"
    build = quantize(tiny["onnx"], out, _images(8), "minmax")
    assert artifact_precision(out) == "int8" and artifact_precision(tiny["onnx"]) == "fp32"
    assert build.integer_conv_share >= 0.85, build  # the head's DFL convolution alone stays float
    assert build.convs - build.integer_convs <= 2
    probe = _images(4, seed=1)
    fp32 = predict_all(open_runner("onnxruntime", tiny["onnx"], workspace=tiny["root"]), probe)
    int8_runner = open_runner("onnxruntime", out, workspace=tiny["root"], precision="int8")
    assert int8_runner.info.precision == "int8" and int8_runner.info.threads
    check = check_scores(fp32, predict_all(int8_runner, probe))
    assert check.max_score_candidate > 0


def test_quantizing_the_final_concat_collapses_the_scores_and_is_refused(tiny, tmp_path):
    out = tmp_path / "everything.int8.onnx"
    quantize(tiny["onnx"], out, _images(8), "minmax", exclude=[])
    probe = _images(4, seed=1)
    fp32 = predict_all(open_runner("onnxruntime", tiny["onnx"], workspace=tiny["root"]), probe)
    int8 = predict_all(open_runner("onnxruntime", out, workspace=tiny["root"], precision="int8"), probe)
    with pytest.raises(ExportError, match="scores collapsed"):
        check_scores(fp32, int8)


def test_count_convs_reads_the_session_optimized_graph(tiny):
    convs, integer = count_convs(tiny["onnx"])
    assert convs > 50 and integer == 0


def test_check_scores_refuses_a_disagreeing_top_class():
    ref = np.zeros((1, 4 + 3, 40), dtype=np.float32)
    ref[0, 4, :] = 0.9  # FP32 is sure of class 0 everywhere
    cand = ref.copy()
    cand[0, 4, :] = 0.1
    cand[0, 5, :] = 0.8  # INT8 says class 1
    with pytest.raises(ExportError, match="agrees with FP32 on only 0% of 40 confident boxes"):
        check_scores(ref, cand)
    assert check_scores(ref, ref).top_class_agreement == 1.0
    # Three confident boxes are too few to judge by (an undertrained model): the mAP gate decides.
    few = check_scores(ref[:, :, :3], cand[:, :, :3])
    assert few.confident_anchors == 3 and few.top_class_agreement == 1.0


def test_runner_precision_must_match_the_artifact(tiny):
    with pytest.raises(BackendUnavailable, match="holds a fp32 model, not int8"):
        open_runner("onnxruntime", tiny["onnx"], workspace=tiny["root"], precision="int8")
    with pytest.raises(BackendUnavailable, match="needs CUDA"):
        open_runner("pytorch", tiny["pt"], workspace=tiny["root"], precision="fp16")
    with pytest.raises(ConfigError, match="unknown backend"):
        open_runner("tflite", tiny["onnx"], workspace=tiny["root"])


def test_pytorch_onnx_and_torchscript_runners_agree(tiny, tmp_path):
    import torch

    from stages.backends.inference import torch_model
    from stages.backends.torchscript import trace

    module = torch_model(tiny["pt"], tiny["root"], "cpu").fuse(verbose=False)
    scripted = trace(module, torch.zeros(1, 3, IMGSZ, IMGSZ), tmp_path / "model.torchscript")
    x = _images(3, seed=2)
    eager = open_runner("pytorch", tiny["pt"], workspace=tiny["root"], threads=1)
    assert eager.info.threads == 1 and eager.info.precision == "fp32"
    reference = predict_all(eager, x)
    ts = open_runner("torchscript", scripted, workspace=tiny["root"])
    assert ts.batch == 1  # the batch it was traced with, read back from the file
    onnx = open_runner("onnxruntime", tiny["onnx"], workspace=tiny["root"])
    assert onnx.batch == 1
    for runner in (ts, onnx):
        out = predict_all(runner, x)  # three images through a batch-1 artifact
        assert out.shape == reference.shape
        np.testing.assert_allclose(out, reference, atol=2e-3)


class _Oracle:
    """A runner that predicts given boxes (letterboxed centre-xywh) with one-hot scores, for every image."""

    def __init__(self, per_image: list[list[tuple[int, list[float]]]], classes: int, anchors: int = 16) -> None:
        self.per_image, self.classes, self.anchors = per_image, classes, anchors
        self.batch = 1
        self.calls = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), 4 + self.classes, self.anchors), dtype=np.float32)
        for k, (cls, xywh) in enumerate(self.per_image[self.calls]):
            out[0, :4, k] = xywh
            out[0, 4 + cls, k] = 0.9
        self.calls += 1
        return out


def _labelled(tmp_path: Path, boxes: list[list[tuple[int, list[float]]]]) -> LabelledImages:
    from PIL import Image

    paths = []
    for i in range(len(boxes)):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (128, 64), (90, 90, 90)).save(path)  # wide: letterboxed with bands above and below
        paths.append(path)
    return LabelledImages(
        paths=paths,
        classes=[[c for c, _ in image] for image in boxes],
        boxes=[[b for _, b in image] for image in boxes],
        names=["a", "b"],
    )


def _as_letterboxed_xywh(box: list[float]) -> list[float]:
    xyxy = letterboxed_xyxy(np.asarray([box]), 64, 128, IMGSZ)[0]
    return [(xyxy[0] + xyxy[2]) / 2, (xyxy[1] + xyxy[3]) / 2, xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]]


def test_map_is_one_for_perfect_predictions_and_drops_for_misplaced_ones(tmp_path):
    truth = [[(0, [0.25, 0.5, 0.2, 0.4])], [(1, [0.7, 0.4, 0.3, 0.5]), (0, [0.2, 0.3, 0.1, 0.2])]]
    data = _labelled(tmp_path, truth)
    perfect = [[(c, _as_letterboxed_xywh(b)) for c, b in image] for image in truth]
    assert detection_map(_Oracle(perfect, 2), data, IMGSZ, 0.001, 0.7).map50_95 == pytest.approx(1.0, abs=0.01)
    shifted = [[(c, [x + 0.3 * w, y, w, h]) for c, (x, y, w, h) in image] for image in perfect]
    result = detection_map(_Oracle(shifted, 2), data, IMGSZ, 0.001, 0.7)
    assert result.map50 == pytest.approx(1.0, abs=0.01)  # IoU 0.54: right at 0.5, wrong from 0.55 on
    assert 0.05 < result.map50_95 < 0.2
    wrong_class = [[(1 - c, b) for c, b in image] for image in perfect]
    assert detection_map(_Oracle(wrong_class, 2), data, IMGSZ, 0.001, 0.7).map50_95 == 0.0


def test_letterboxed_boxes_follow_the_letterbox_padding():
    # A 64 x 128 image in a 64 letterbox: scaled by 0.5 to 32 x 64, 16 px bands above and below.
    xyxy = letterboxed_xyxy(np.asarray([[0.5, 0.5, 1.0, 1.0]]), 64, 128, 64)
    np.testing.assert_allclose(xyxy, [[0, 16, 64, 48]])


def test_match_claims_each_label_once_by_confidence():
    iou = np.asarray([[0.96, 0.8, 0.6]])  # one label, three predictions in descending confidence
    correct = match(np.asarray([0, 0, 0]), np.asarray([0]), iou)
    assert correct[0].all() and not correct[1].any() and not correct[2].any()
    assert not match(np.asarray([1]), np.asarray([0]), np.asarray([[0.99]])).any()  # wrong class
    at_six = match(np.asarray([0]), np.asarray([0]), np.asarray([[0.6]]))[0]
    assert at_six.tolist() == [True, True, True, False, False, False, False, False, False, False]


def test_predict_all_pads_the_last_static_batch():
    class Twice:
        batch = 4

        def predict(self, x: np.ndarray) -> np.ndarray:
            assert len(x) == 4
            return x * 2

    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    np.testing.assert_array_equal(predict_all(Twice(), x), x * 2)


def test_deploy_targets_must_include_the_fp32_onnx_model():
    with pytest.raises(ConfigError, match="must include onnx-fp32"):
        parse_params({"deploy": {"targets": ["onnx-int8"]}})
    with pytest.raises(ConfigError, match=r"deploy\.targets"):
        parse_params({"deploy": {"targets": ["onnx-fp32", "tflite"]}})
    assert parse_params({}).deploy.max_drop.int8 == 0.01


def test_gating_marks_an_artifact_over_its_limit_not_deployable_and_removes_it(tiny, tmp_path, monkeypatch):
    """The gate logic of build_and_gate, with the measured mAPs fixed (the measuring is tested above)."""
    import shutil

    from stages.core.common import read_json
    from stages.deploy import build
    from stages.deploy.accuracy import Accuracy, Calibration

    deploy_dir = tmp_path / "deploy"
    deploy_dir.mkdir()
    shutil.copy(tiny["onnx"], deploy_dir / "model.onnx")
    maps = {"pytorch": 0.500, "onnxruntime:fp32": 0.499, "onnxruntime:int8": 0.480}

    def fixed_map(runner, data, imgsz, conf, iou):
        key = "pytorch" if runner.info.backend == "pytorch" else f"{runner.info.backend}:{runner.info.precision}"
        return Accuracy(map50=maps[key], map50_95=maps[key], images=2, instances=3)

    fake = LabelledImages(paths=[], classes=[], boxes=[], names=["a"])
    monkeypatch.setattr(build, "detection_map", fixed_map)
    monkeypatch.setattr(build, "labelled_split", lambda *a, **k: fake)
    monkeypatch.setattr(build, "calibration_inputs", lambda *a, **k: _images(4))
    drawn = Calibration(split="train", images=4, of=9, seed=0, files_sha256="0" * 64)
    monkeypatch.setattr(build, "calibration_sample", lambda *a, **k: ([], drawn))
    monkeypatch.setattr(
        build, "ultralytics_map", lambda *a, **k: Accuracy(map50=0.5, map50_95=0.5, images=2, instances=3)
    )
    monkeypatch.setattr(build, "load_inputs", lambda *a, **k: _images(2, seed=3))
    cfg = deploy_inputs(tiny, tmp_path, deploy_dir, IMGSZ, {"deploy": {"targets": ["onnx-fp32", "onnx-int8"]}})
    result = build.build_and_gate(cfg)
    assert result.deployable == ["onnx-fp32"]
    metrics, facts = read_json(cfg.metrics), read_json(cfg.report)
    assert metrics["pytorch"]["map50_95"] == 0.5 and metrics["pytorch"]["ultralytics_map50_95"] == 0.5
    assert facts["onnx-int8"]["calibration"]["seed"] == 0 and facts["onnx-fp32"]["calibration"] is None
    assert metrics["onnx-fp32"]["deployable"] == 1 and metrics["onnx-fp32"]["drop_map50_95"] == pytest.approx(0.001)
    assert metrics["onnx-int8"]["deployable"] == 0 and metrics["onnx-int8"]["drop_map50_95"] == pytest.approx(0.02)
    assert "a drop of 2.00 points, beyond the int8 limit of 1.00" in facts["onnx-int8"]["reason"]
    assert not (deploy_dir / "model.int8.onnx").exists(), "an artifact that is not deployable is not shipped"
    assert (deploy_dir / "model.onnx").is_file()


@pytest.mark.skipif(openvino_missing() is not None, reason=openvino_missing() or "")
def test_openvino_fp32_runs_in_f32_and_int8_keeps_scores(tiny, tmp_path):
    from stages.backends.openvino_rt import convert
    from stages.deploy.int8 import quantize_openvino

    xml = convert(tiny["onnx"], tmp_path / "fp32" / "model.xml")
    fp32 = open_runner("openvino", xml, workspace=tiny["root"], threads=1)
    assert fp32.info.precision == "fp32" and "f32" in fp32.info.provider and fp32.info.threads == 1
    x = _images(3, seed=4)
    reference = predict_all(open_runner("onnxruntime", tiny["onnx"], workspace=tiny["root"]), x)
    np.testing.assert_allclose(predict_all(fp32, x), reference, atol=2e-3)  # f32, not a silent bf16

    int8_xml = tmp_path / "int8" / "model.xml"
    quantize_openvino(tiny["onnx"], int8_xml, _images(8), "minmax", "disable")
    int8 = open_runner("openvino", int8_xml, workspace=tiny["root"], precision="int8")
    assert int8.info.precision == "int8"
    assert check_scores(reference, predict_all(int8, x)).max_score_candidate > 0
    with pytest.raises(BackendUnavailable, match="holds a int8 model, not fp32"):
        open_runner("openvino", int8_xml, workspace=tiny["root"])
