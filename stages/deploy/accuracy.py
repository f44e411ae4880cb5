"""The mAP of any artifact, measured the same way for all: one preprocessing, one NMS, one mAP code.

Every runner (the PyTorch checkpoint included, which is the reference the drops are taken from)
gets the same letterboxed validation images (``stages.backends.inference.load_inputs``); its raw predictions
go through Ultralytics' ``non_max_suppression`` and ``ap_per_class``, with predictions matched to
labels greedily by confidence at the ten IoU thresholds 0.50:0.95. Boxes are compared in
letterboxed pixels: a letterbox is a uniform scale and a shift, which IoU does not see, so no
rounding from mapping boxes back to the original image enters the comparison.

Every step is the one Ultralytics' validator takes with square batches (``rect=False``): images
decoded by OpenCV, the long side resized to the letterbox with the short side rounded up, NMS with
every class above ``conf`` kept per box (``multi_label``), ``max_det`` 300 or the most labels an
image has, duplicate label rows dropped. So the reference can be checked against that validator
(:func:`ultralytics_map`) to a tight tolerance: a misread output would make reference and artifacts
agree on a wrong number, and that check is what catches it.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel

from stages.backends.base import Runner, predict_all
from stages.backends.inference import detections, letterbox_geometry, load_inputs, square_val
from stages.core.errors import PipelineError
from stages.data.datasets import iter_images, label_path_for, read_prepared_yaml, split_dirs

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
CHUNK = 32  # images decoded and run at a time
ORIENTATION = 0x0112  # the EXIF tag; values 5 to 8 turn the image a quarter, swapping width and height
ROTATED = {5, 6, 7, 8}
MAX_DET = 300  # Ultralytics' default max_det; its validator raises it to the most labels an image has


class Accuracy(BaseModel):
    """mAP of one artifact on the validation split."""

    map50: float
    map50_95: float
    images: int
    instances: int


class LabelledImages(BaseModel):
    """Images of a split and their labels: per image, class ids and normalised centre-xywh boxes."""

    paths: list[Path]
    classes: list[list[int]]
    boxes: list[list[list[float]]]
    names: list[str]


def labelled_split(data_yaml: Path, split: str = "val", limit: int = 0) -> LabelledImages:
    """The images of ``split`` in a stable order (the first ``limit``, 0: all) with their labels.

    Raises:
        PipelineError: When the split is missing or has no image.
    """
    data = read_prepared_yaml(data_yaml)
    dirs = split_dirs(data)
    if split not in dirs:
        raise PipelineError(f"the prepared dataset has no {split!r} split", path=data_yaml)
    images_root, labels_root = dirs[split]
    paths = list(iter_images(images_root))[: limit or None]
    if not paths:
        raise PipelineError(f"the {split} split has no images", path=images_root)
    classes, boxes = [], []
    for image in paths:
        label = label_path_for(image, images_root, labels_root)
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.is_file() else []
        rows = _distinct([[float(v) for v in r[:5]] for r in rows])
        classes.append([int(r[0]) for r in rows])
        boxes.append([r[1:5] for r in rows])
    return LabelledImages(paths=paths, classes=classes, boxes=boxes, names=data["names"])


def _distinct(rows: list[list[float]]) -> list[list[float]]:
    """Label rows without repeats (compared as float32, first kept), as Ultralytics' label check drops them."""
    seen: set[tuple[float, ...]] = set()
    kept = []
    for row in rows:
        key = tuple(np.float32(row).tolist())
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def letterboxed_xyxy(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Normalised centre-xywh boxes of an image, in pixels of its ``size`` letterbox (as ``letterbox`` pads)."""
    nh, nw, top, left = letterbox_geometry(height, width, size)
    xc, yc = boxes[:, 0] * nw + left, boxes[:, 1] * nh + top
    bw, bh = boxes[:, 2] * nw, boxes[:, 3] * nh
    return np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2], axis=1)


def decoded_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as decoded (``stages.backends.inference.read_rgb``: EXIF orientation applied),
    read from its header."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        if im.getexif().get(ORIENTATION) in ROTATED:
            width, height = height, width
    return height, width


def match(pred_classes: np.ndarray, true_classes: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Which predictions are true positives at each IoU threshold.

    Args:
        pred_classes: (N,) classes of the predictions, in descending confidence.
        true_classes: (M,) classes of the labels.
        iou: (M, N) IoU of every label with every prediction.

    Returns:
        (N, 10) booleans: prediction ``j`` claims an unclaimed label of its class with IoU at least the threshold.
    """
    correct = np.zeros((len(pred_classes), len(IOU_THRESHOLDS)), dtype=bool)
    if not len(pred_classes) or not len(true_classes):
        return correct
    iou = iou * (true_classes[:, None] == pred_classes[None, :])
    claimed = np.zeros((len(true_classes), len(IOU_THRESHOLDS)), dtype=bool)
    columns = np.arange(len(IOU_THRESHOLDS))
    for j in np.flatnonzero((iou >= IOU_THRESHOLDS[0]).any(0)):
        free = np.where(claimed, 0.0, iou[:, j, None])  # IoU with each unclaimed label, per threshold
        best = free.argmax(0)
        correct[j] = free[best, columns] >= IOU_THRESHOLDS
        claimed[best, columns] |= correct[j]
    return correct


def detection_map(runner: Runner, data: LabelledImages, imgsz: int, conf: float, iou: float) -> Accuracy:
    """mAP50 and mAP50-95 of ``runner`` on ``data``.

    Args:
        runner: Any loaded artifact (``stages.backends``).
        data: The images and labels (``labelled_split``).
        imgsz: The letterbox size the model was exported for.
        conf: NMS confidence threshold (``evaluate.conf``).
        iou: NMS IoU threshold (``evaluate.iou``).
    """
    import torch
    from ultralytics.utils.metrics import ap_per_class, box_iou

    stats: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    targets: list[np.ndarray] = []
    max_det = max([MAX_DET, *(len(c) for c in data.classes)])
    for start in range(0, len(data.paths), CHUNK):
        paths = data.paths[start : start + CHUNK]
        raw = predict_all(runner, load_inputs(paths, imgsz))
        kept = detections(raw, conf, iou, len(data.names), max_det=max_det, multi_label=True)
        for offset, (path, det) in enumerate(zip(paths, kept, strict=True)):
            i = start + offset
            true_classes = np.asarray(data.classes[i], dtype=np.int64)
            if len(true_classes):
                height, width = decoded_size(path)
                truth = letterboxed_xyxy(np.asarray(data.boxes[i], dtype=np.float64), height, width, imgsz)
                ious = box_iou(torch.from_numpy(truth).float(), torch.from_numpy(det[:, :4]).float()).numpy()
            else:
                ious = np.zeros((0, len(det)))
            stats.append((match(det[:, 5].astype(np.int64), true_classes, ious), det[:, 4], det[:, 5]))
            targets.append(true_classes)
    instances = int(sum(len(t) for t in targets))
    tp, confs, classes = (np.concatenate([s[k] for s in stats]) for k in range(3))
    if not instances or not len(tp):
        return Accuracy(map50=0.0, map50_95=0.0, images=len(data.paths), instances=instances)
    ap = ap_per_class(tp, confs, classes, np.concatenate(targets))[5]
    return Accuracy(
        map50=round(float(ap[:, 0].mean()), 6),
        map50_95=round(float(ap.mean()), 6),
        images=len(data.paths),
        instances=instances,
    )


class Calibration(BaseModel):
    """Which train images the INT8 activation ranges come from: a seeded random sample, recorded."""

    split: str
    images: int
    of: int  # images in the split
    seed: int
    files_sha256: str  # of the chosen files' names relative to the split folder, one a line, in order


def calibration_sample(data_yaml: Path, count: int, seed: int = 0) -> tuple[list[Path], Calibration]:
    """``count`` train images drawn at random with ``seed`` (never from val), and what was drawn.

    A random sample rather than the first ``count`` in sorted order: file names often sort by source,
    class or time, and calibration must see the whole split's range of images.

    Raises:
        PipelineError: When the train split is missing or empty.
    """
    dirs = split_dirs(read_prepared_yaml(data_yaml))
    if "train" not in dirs:
        raise PipelineError("the prepared dataset has no 'train' split", path=data_yaml)
    root = dirs["train"][0]
    every = list(iter_images(root))
    if not every:
        raise PipelineError("the train split has no images", path=root)
    picked = np.sort(np.random.default_rng(seed).choice(len(every), size=min(count, len(every)), replace=False))
    paths = [every[i] for i in picked]
    names = "\n".join(p.relative_to(root).as_posix() for p in paths)
    facts = Calibration(
        split="train",
        images=len(paths),
        of=len(every),
        seed=seed,
        files_sha256=hashlib.sha256(names.encode()).hexdigest(),
    )
    return paths, facts


def calibration_inputs(data_yaml: Path, count: int, imgsz: int, seed: int = 0) -> np.ndarray:
    """``count`` train images drawn with ``seed`` (:func:`calibration_sample`), letterboxed: calibration data."""
    return load_inputs(calibration_sample(data_yaml, count, seed)[0], imgsz)


def ultralytics_map(
    model: Path, data: LabelledImages, imgsz: int, conf: float, iou: float, workspace: Path, batch: int = CHUNK
) -> Accuracy:
    """mAP of the checkpoint ``model`` on ``data``'s images, measured by Ultralytics' own validator.

    The validator runs with square batches (``rect=False``), the letterbox the gate feeds every
    artifact, on exactly ``data``'s images (listed in a temporary dataset file beside their labels),
    CPU, FP32, ``conf`` and ``iou`` as given and its default ``max_det``: what :func:`detection_map`
    of the PyTorch model must reproduce. Its rectangular-batch figure (``metrics/evaluate.json``)
    letterboxes each batch to its own shape, which the exported models cannot take.
    """
    from stages.core.runtime import import_ultralytics

    ultralytics = import_ultralytics(workspace)
    names = dict(enumerate(data.names))
    with tempfile.TemporaryDirectory(prefix="gate-reference-") as tmp:
        listing = Path(tmp) / "images.txt"
        listing.write_text("".join(f"{p.absolute()}\n" for p in data.paths))
        data_yaml = Path(tmp) / "data.yaml"
        data_yaml.write_text(yaml.safe_dump({"train": str(listing), "val": str(listing), "names": names}))
        yolo = ultralytics.YOLO(str(model), task="detect")
        metrics = square_val(
            yolo, data_yaml, imgsz=imgsz, batch=batch, conf=conf, iou=iou, device="cpu", project=Path(tmp)
        )
    return Accuracy(
        map50=round(float(metrics.box.map50), 6),
        map50_95=round(float(metrics.box.map), 6),
        images=len(data.paths),
        instances=int(sum(metrics.nt_per_class)),
    )


def check_reference(reference: Accuracy, ultralytics: Accuracy, tolerance: float, source: str) -> str:
    """The gate's reference against Ultralytics' validator's square-batch figure, in words.

    Args:
        reference: :func:`detection_map` of the PyTorch model.
        ultralytics: Ultralytics' validator on the same images with square batches.
        tolerance: The largest mAP50-95 difference allowed (``deploy.reference_tolerance``).
        source: Where ``ultralytics`` comes from, for the message.

    Raises:
        PipelineError: When their mAP50-95 differ by more than ``tolerance`` or they counted different
            labels, naming both numbers.
    """
    gap = abs(reference.map50_95 - ultralytics.map50_95)
    words = (
        f"the gate's PyTorch reference mAP50-95 {reference.map50_95:.4f} against Ultralytics' validator's "
        f"{ultralytics.map50_95:.4f} (square batches, {source}): {gap * 100:.3f} points apart"
    )
    if gap > tolerance or reference.instances != ultralytics.instances:
        raise PipelineError(
            f"{words}, beyond the {tolerance * 100:.3f} allowed (deploy.reference_tolerance); labels counted: "
            f"{reference.instances} by the gate, {ultralytics.instances} by Ultralytics. Every artifact would be "
            "measured against a number Ultralytics does not reproduce: the model's outputs or the labels are read "
            "differently from how Ultralytics reads them",
            key="deploy.reference_tolerance",
        )
    return f"{words}, within the {tolerance * 100:.3f} allowed"
