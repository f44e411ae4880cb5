"""The deploy gate's reference: measured as Ultralytics' validator measures, checked against it, not foolable.

The gate's PyTorch reference must be the number Ultralytics' validator gives with square batches on
the same images (same pixels, same labels, same NMS), and the gate must fail naming both numbers
when it is not. Around it: scores shuffled across boxes fail the gate, NMS never gives up on a
time limit, an NMS-free head's outputs are read, calibration images are a seeded random draw.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.core.config import parse_params
from stages.core.errors import PipelineError
from stages.deploy.accuracy import LabelledImages, decoded_size, detection_map, labelled_split, letterboxed_xyxy
from tests.conftest import deploy_inputs, tiny_yolo_export

IMGSZ = 64
# Val images are stretched to these (width, height): wider and taller than square, smaller than the
# letterbox (scaled up) and sizes whose short side lands between two pixels (ceil and round differ).
VAL_SIZES = [(100, 77), (50, 120), (30, 40), (64, 64), (200, 90), (97, 131)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared sample dataset (12 train images) whose val JPEGs have the sizes of ``VAL_SIZES``."""
    from PIL import Image

    from stages.core.runtime import import_ultralytics
    from stages.data.sample_data import SampleSpec, generate
    from stages.prepare import PrepareConfig, run

    root = tmp_path_factory.mktemp("gate-data")
    import_ultralytics(root)
    generate(SampleSpec(out=root / "data" / "dataset", train=12, val=len(VAL_SIZES), size=IMGSZ, seed=1))
    val = sorted((root / "data" / "dataset" / "images" / "val").iterdir())
    for path, size in zip(val, VAL_SIZES, strict=True):
        with Image.open(path) as im:
            stretched = im.convert("RGB").resize(size, Image.BILINEAR)
        stretched.save(path, quality=87)  # labels are normalised: a stretched image keeps them
    # The last one is stored on its side, with the EXIF orientation that turns it upright.
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stretched.transpose(Image.Transpose.ROTATE_90).save(val[-1], quality=87, exif=exif)
    run(PrepareConfig.from_params(parse_params({}), root))
    return root


def _assert_gate_sees_what_ultralytics_validator_sees(data_yaml: Path, imgsz: int) -> None:
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset

    from stages.backends.inference import load_inputs

    data = labelled_split(data_yaml, "val")
    cfg = get_cfg(overrides={"imgsz": imgsz, "rect": False, "task": "detect", "mode": "val"})
    names = dict(enumerate(data.names))
    images_dir = data.paths[0].parent
    ultralytics_data = {"names": names, "nc": len(names), "channels": 3}
    dataset = build_yolo_dataset(cfg, str(images_dir), 8, ultralytics_data, mode="val")
    theirs = {Path(dataset[i]["im_file"]).name: dataset[i] for i in range(len(dataset))}
    assert len(theirs) == len(data.paths)
    ours = load_inputs(data.paths, imgsz)
    for k, path in enumerate(data.paths):
        item = theirs[path.name]
        expected = item["img"].numpy().astype(np.float32) / 255.0
        np.testing.assert_array_equal(ours[k], expected, err_msg=f"{path.name}: pixels differ")
        height, width = item["ori_shape"]
        assert decoded_size(path) == (height, width)
        xyxy = letterboxed_xyxy(np.asarray(data.boxes[k]).reshape(-1, 4), height, width, imgsz)
        xywh = item["bboxes"].numpy() * imgsz  # normalised to the letterbox
        expected_xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        np.testing.assert_allclose(xyxy, expected_xyxy, atol=1e-3, err_msg=f"{path.name}: labels differ")
        assert data.classes[k] == item["cls"].view(-1).int().tolist()


def test_gate_sees_the_pixels_and_labels_of_ultralytics_validator(prepared: Path):
    """Image by image, the gate's input tensor and letterboxed labels equal those Ultralytics' validator
    builds with square batches (``rect=False``): decoding, resizing, padding and label handling."""
    _assert_gate_sees_what_ultralytics_validator_sees(prepared / "data" / "prepared" / "data.yaml", IMGSZ)


def test_gate_sees_what_ultralytics_validator_sees_on_coco128(coco128: Path, tmp_path: Path):
    """The same on real photographs: JPEGs of every aspect, grayscale ones, images without labels."""
    from stages.core.runtime import import_ultralytics
    from stages.prepare import PrepareConfig, run

    import_ultralytics(tmp_path)
    shutil.copytree(coco128, tmp_path / "data" / "dataset")
    run(PrepareConfig.from_params(parse_params({}), tmp_path))
    _assert_gate_sees_what_ultralytics_validator_sees(tmp_path / "data" / "prepared" / "data.yaml", 160)


class _Oracle:
    """A runner whose raw head puts given boxes (letterboxed centre-xywh) at the first anchors with given
    per-class scores; every other anchor scores nothing."""

    def __init__(self, per_image: list[list[tuple[list[float], dict[int, float]]]], classes: int) -> None:
        self.per_image, self.classes = per_image, classes
        self.batch, self.max_batch = 1, 1
        self.calls = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((1, 4 + self.classes, 64), dtype=np.float32)
        out[0, :4] = np.asarray([[4.0], [4.0], [2.0], [2.0]])  # far from every label
        for k, (xywh, scores) in enumerate(self.per_image[self.calls]):
            out[0, :4, k] = xywh
            for cls, score in scores.items():
                out[0, 4 + cls, k] = score
        self.calls += 1
        return out


def _labelled(tmp_path: Path, truth: list[list[tuple[int, list[float]]]]) -> LabelledImages:
    from PIL import Image

    paths = []
    for i in range(len(truth)):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (IMGSZ, IMGSZ), (90, 90, 90)).save(paths[-1])
    return LabelledImages(
        paths=paths,
        classes=[[c for c, _ in image] for image in truth],
        boxes=[[b for _, b in image] for image in truth],
        names=["a", "b", "c"],
    )


def _pixels(box: list[float]) -> list[float]:
    return [v * IMGSZ for v in box]  # a square image fills its letterbox


def test_a_box_scored_for_two_classes_counts_for_both_as_in_ultralytics_validator(tmp_path: Path):
    """Ultralytics' validator keeps every class above ``conf`` per box (multi-label NMS): a box whose
    right class is its second best still finds its label. The gate's reference must count it too."""
    truth = [[(1, [0.3, 0.3, 0.3, 0.3])], [(2, [0.6, 0.5, 0.4, 0.2])]]
    data = _labelled(tmp_path, truth)
    second_best = [[(_pixels(b), {0: 0.9, c: 0.6})] for image in truth for c, b in image]
    assert detection_map(_Oracle(second_best, 3), data, IMGSZ, 0.001, 0.7).map50_95 == pytest.approx(1.0, abs=0.01)


def test_scores_shuffled_across_boxes_fail_the_gate(tmp_path: Path):
    """An artifact whose class scores sit on the wrong anchors (a misread layout) is not deployable."""
    from stages.deploy.build import judge

    rng = np.random.default_rng(0)
    truth = []
    for _ in range(6):
        image = []
        for _ in range(4):
            x, y = rng.uniform(0.2, 0.8, 2)
            image.append((int(rng.integers(3)), [float(x), float(y), 0.15, 0.15]))
        truth.append(image)
    data = _labelled(tmp_path, truth)
    boxes = [[(_pixels(b), {c: 0.5 + 0.1 * k}) for k, (c, b) in enumerate(image)] for image in truth]

    class Shuffled(_Oracle):
        def predict(self, x: np.ndarray) -> np.ndarray:
            out = super().predict(x)
            out[:, 4:] = out[:, 4:, np.random.default_rng(1).permutation(out.shape[2])]
            return out

    reference = detection_map(_Oracle(boxes, 3), data, IMGSZ, 0.001, 0.7)
    shuffled = detection_map(Shuffled(boxes, 3), data, IMGSZ, 0.001, 0.7)
    assert reference.map50_95 == pytest.approx(1.0, abs=0.01)
    limit = parse_params({}).deploy.max_drop.fp32
    drop, deployable, reason = judge(reference.map50_95, shuffled.map50_95, limit, "fp32")
    assert not deployable and drop > 0.5, reason


def _gate_config(
    tiny: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ultralytics: float,
    evaluated: float | None = None,
    eval_images: int = 0,
):
    """``build_and_gate`` of onnx-fp32 with the reference fixed at 0.5, Ultralytics' validator measuring
    ``ultralytics`` and, when given, ``evaluated`` as evaluate's square figure in metrics/evaluate.json."""
    from stages.core.common import write_json
    from stages.deploy import build
    from stages.deploy.accuracy import Accuracy

    deploy_dir = tmp_path / "deploy"
    deploy_dir.mkdir(parents=True)
    shutil.copy(tiny["onnx"], deploy_dir / "model.onnx")
    seen = {}

    def fixed_map(runner, data, imgsz, conf, iou):
        return Accuracy(map50=0.7, map50_95=0.5, images=2, instances=3)

    def validator(model, data, imgsz, conf, iou, workspace, **kwargs):
        seen.update(model=model, data=data, imgsz=imgsz, conf=conf, iou=iou)
        return Accuracy(map50=0.7, map50_95=ultralytics, images=2, instances=3)

    data = LabelledImages(paths=[tmp_path / "a.png"], classes=[[0]], boxes=[[[0.5, 0.5, 0.2, 0.2]]], names=["a"])
    monkeypatch.setattr(build, "detection_map", fixed_map)
    monkeypatch.setattr(build, "labelled_split", lambda *a, **k: data)
    monkeypatch.setattr(build, "ultralytics_map", validator)
    evaluate_metrics = tmp_path / "metrics" / "evaluate.json"
    if evaluated is not None:
        write_json(evaluate_metrics, {"square": {"map50": 0.7, "map50_95": evaluated, "instances": 3}})
    cfg = deploy_inputs(
        tiny,
        tmp_path,
        deploy_dir,
        IMGSZ,
        {"deploy": {"targets": ["onnx-fp32"], "eval_images": eval_images}},
        evaluate_metrics=evaluate_metrics,
    )
    return cfg, seen, data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_yolo_export(tmp_path_factory, "tiny-model", IMGSZ)


def test_gate_fails_naming_both_numbers_when_ultralytics_does_not_reproduce_the_reference(tiny, tmp_path, monkeypatch):
    from stages.core.common import read_json
    from stages.deploy import build

    cfg, seen, data = _gate_config(tiny, tmp_path, monkeypatch, ultralytics=0.4990)
    with pytest.raises(PipelineError, match=r"reference mAP50-95 0\.5000 against Ultralytics' validator's 0\.4990"):
        build.build_and_gate(cfg)
    assert not cfg.metrics.exists(), "nothing is gated against a reference Ultralytics does not reproduce"
    # The validator ran on the gate's own images with the gate's letterbox size and NMS settings.
    assert seen == {"model": tiny["pt"], "data": data, "imgsz": IMGSZ, "conf": 0.001, "iou": 0.7}

    cfg, _, _ = _gate_config(tiny, tmp_path / "agrees", monkeypatch, ultralytics=0.5004)
    result = build.build_and_gate(cfg)  # 0.04 points apart: within the default 0.05
    assert result.ultralytics.map50_95 == 0.5004
    assert read_json(cfg.metrics)["pytorch"] == {
        "map50": 0.7,
        "map50_95": 0.5,
        "ultralytics_map50": 0.7,
        "ultralytics_map50_95": 0.5004,
    }


def test_gate_checks_its_reference_against_evaluates_square_figure(tiny, tmp_path, monkeypatch):
    """Measuring the whole val split, the gate compares with metrics/evaluate.json's square figure (like
    with like: the same validator, square batches) and fails naming both numbers and the file."""
    from stages.deploy import build

    cfg, seen, _ = _gate_config(tiny, tmp_path, monkeypatch, ultralytics=0.5, evaluated=0.4900)
    with pytest.raises(PipelineError, match=r"0\.5000 against Ultralytics' validator's 0\.4900 .*evaluate\.json"):
        build.build_and_gate(cfg)
    assert not seen, "evaluate's figure was used, the validator not run again"

    # Evaluated on a GPU: measured again here, on the CPU, as the gate measures its reference.
    cfg, seen, data = _gate_config(tiny, tmp_path / "gpu", monkeypatch, ultralytics=0.5, evaluated=0.49)
    assert build.build_and_gate(cfg.model_copy(update={"evaluate_device": "0"})).ultralytics.map50_95 == 0.5
    assert seen["data"] == data

    # On fewer images than the split (deploy.eval_images), the validator measures those images.
    cfg, seen, data = _gate_config(
        tiny, tmp_path / "subset", monkeypatch, ultralytics=0.5, evaluated=0.49, eval_images=1
    )
    assert build.build_and_gate(cfg).ultralytics.map50_95 == 0.5 and seen["data"] == data


def test_reference_tolerance_is_tight_by_default():
    deploy = parse_params({}).deploy
    assert deploy.reference_tolerance < deploy.max_drop.fp32  # tighter than any artifact's own gate


def test_nms_never_gives_up_on_a_time_limit(monkeypatch: pytest.MonkeyPatch):
    """Ultralytics' NMS stops after 2 + 0.05 x N seconds and leaves the other images empty. With its
    clock jumping a minute per reading, its default call loses images; the gate's keeps every one."""
    import types

    import torch
    import ultralytics.utils.nms as nms_module

    from stages.backends.inference import detections

    raw = np.zeros((4, 4 + 2, 8), dtype=np.float32)
    raw[:, :4, 0] = [[20.0], [20.0], [10.0], [10.0]]
    raw[:, 4, 0] = 0.9  # one confident box in every image
    clock = iter(range(0, 10_000, 60))
    monkeypatch.setattr(nms_module, "time", types.SimpleNamespace(time=lambda: float(next(clock))))
    default = nms_module.non_max_suppression(torch.from_numpy(raw), 0.25, 0.7, nc=2)
    assert [len(d) for d in default] == [1, 0, 0, 0], "the default call gave up after the first image"
    assert [len(d) for d in detections(raw, 0.25, 0.7, 2)] == [1, 1, 1, 1]
    assert [len(d) for d in detections(raw, 0.25, 0.7, 2, multi_label=True)] == [1, 1, 1, 1]


def test_calibration_images_are_a_seeded_random_draw_of_train(prepared: Path):
    from stages.data.datasets import iter_images
    from stages.deploy.accuracy import calibration_inputs, calibration_sample

    data_yaml = prepared / "data" / "prepared" / "data.yaml"
    train = list(iter_images(data_yaml.parent / "images" / "train"))
    paths, facts = calibration_sample(data_yaml, 5, seed=0)
    assert set(paths) <= set(train) and len(set(paths)) == 5
    assert paths != train[:5], "not the first images in sorted order"
    again, same = calibration_sample(data_yaml, 5, seed=0)
    assert again == paths and same == facts
    other, other_facts = calibration_sample(data_yaml, 5, seed=1)
    assert other != paths and other_facts.files_sha256 != facts.files_sha256
    assert (facts.split, facts.images, facts.of, facts.seed) == ("train", 5, len(train), 0)
    assert calibration_sample(data_yaml, 100, seed=0)[1].images == len(train)  # all of them, once each
    assert calibration_inputs(data_yaml, 5, IMGSZ, seed=0).shape == (5, 3, IMGSZ, IMGSZ)


def test_an_nms_free_export_is_read_by_the_gate_and_compared_by_parity(tmp_path: Path, prepared: Path):
    """yolo26n exported with Ultralytics' NMS-free head (``nms=False``): (N, detections, 6) rows that
    the gate decodes and the parity comparator measures against PyTorch's own NMS-free head."""
    from stages.backends import open_runner
    from stages.backends.base import predict_all
    from stages.backends.compare import Tolerance, compare, failures, is_end_to_end
    from stages.backends.inference import detections, load_inputs, torch_model
    from stages.core.runtime import import_ultralytics

    ultralytics = import_ultralytics(tmp_path)
    checkpoint = tmp_path / "yolo26n.pt"
    ultralytics.YOLO("yolo26n.yaml", task="detect").save(str(checkpoint))
    exported = ultralytics.YOLO(str(checkpoint), task="detect").export(
        format="onnx", imgsz=IMGSZ, opset=17, simplify=True, nms=False, batch=1, device="cpu", verbose=False
    )
    runner = open_runner("onnxruntime", Path(exported), workspace=tmp_path)
    data = labelled_split(prepared / "data" / "prepared" / "data.yaml", "val")
    x = load_inputs(data.paths, IMGSZ)
    out = predict_all(runner, x)
    assert is_end_to_end(out) and out.shape[0] == len(x)

    import torch

    module = torch_model(checkpoint, tmp_path, "cpu")
    module.end2end = True  # PyTorch's own NMS-free head, as the exporter selected it
    with torch.inference_mode():
        reference = module(torch.from_numpy(x))[0].numpy()
    comparison = compare(reference, out)
    assert comparison.end_to_end
    assert not failures(comparison, Tolerance(max_scores=1e-3))

    # Row by row only the scores: an untrained head's 80 class scores nearly tie everywhere, so which
    # (anchor, class) pairs its top-k keeps, and their boxes, differ between two runtimes by rounding.
    kept = detections(out, 0.001, 0.7, 80)
    assert all(k.shape[1] == 6 and (k[:, 4] > 0.001).all() for k in kept)
    # Untrained, 80 classes against these 3: the decoded rows are what is measured, whatever the mAP.
    wide = data.model_copy(update={"names": [str(i) for i in range(80)]})
    assert detection_map(runner, wide, IMGSZ, 0.001, 0.7).images == len(data.paths)


def test_ultralytics_validators_here_never_give_up_on_a_time_limit(monkeypatch: pytest.MonkeyPatch):
    """evaluate's validators and the gate's check of its reference run Ultralytics' NMS through the
    validator's own ``postprocess``: with its clock jumping, the stock validator loses images and ours not."""
    import types

    import torch
    import ultralytics.utils.nms as nms_module
    from ultralytics.models.yolo.detect import DetectionValidator

    from stages.backends.inference import patient
    from stages.evaluate import _picture_validator

    raw = np.zeros((4, 4 + 2, 8), dtype=np.float32)
    raw[:, :4, 0] = [[20.0], [20.0], [10.0], [10.0]]
    raw[:, 4, 0] = 0.9

    def kept(validator_class: type) -> list[int]:
        validator = object.__new__(validator_class)  # postprocess reads only its args, nc and end2end
        validator.args = types.SimpleNamespace(
            conf=0.25, iou=0.7, task="detect", single_cls=False, agnostic_nms=False, max_det=300
        )
        validator.nc, validator.end2end = 2, False
        clock = iter(range(0, 10_000, 60))
        monkeypatch.setattr(nms_module, "time", types.SimpleNamespace(time=lambda: float(next(clock))))
        return [len(d["cls"]) for d in validator.postprocess(torch.from_numpy(raw))]

    assert kept(DetectionValidator) == [1, 0, 0, 0], "the stock validator gave up after the first image"
    assert kept(patient(DetectionValidator)) == [1, 1, 1, 1]
    assert kept(patient(_picture_validator(0.25))) == [1, 1, 1, 1]
    assert nms_module.non_max_suppression.__name__ == "non_max_suppression", "the limit is back after the call"
