"""The mAP of any artifact, measured the same way for all: one preprocessing, one NMS, one mAP code.

Every runner (the PyTorch checkpoint included, which is the reference the drops are taken from)
gets the same letterboxed validation images (``stages.inference.letterbox``); its raw predictions go
through Ultralytics' ``non_max_suppression`` and ``ap_per_class``, with predictions matched to labels
greedily by confidence at the ten IoU thresholds 0.50:0.95, as Ultralytics' validator matches them.
Boxes are compared in letterboxed pixels: a letterbox is a uniform scale and a shift, which IoU does
not see, so no rounding from mapping boxes back to the original image enters the comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from stages.backends.base import Runner, predict_all
from stages.datasets import iter_images, label_path_for, read_prepared_yaml, split_dirs
from stages.errors import PipelineError
from stages.inference import detections, load_inputs

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
CHUNK = 32  # images decoded and run at a time


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
        classes.append([int(float(r[0])) for r in rows])
        boxes.append([[float(v) for v in r[1:5]] for r in rows])
    return LabelledImages(paths=paths, classes=classes, boxes=boxes, names=data["names"])


def letterboxed_xyxy(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Normalised centre-xywh boxes of an image, in pixels of its ``size`` letterbox (as ``letterbox`` pads)."""
    scale = min(size / height, size / width)
    nh, nw = round(height * scale), round(width * scale)
    top, left = (size - nh) // 2, (size - nw) // 2
    xc, yc = boxes[:, 0] * nw + left, boxes[:, 1] * nh + top
    bw, bh = boxes[:, 2] * nw, boxes[:, 3] * nh
    return np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2], axis=1)


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
    from PIL import Image
    from ultralytics.utils.metrics import ap_per_class, box_iou

    stats: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    targets: list[np.ndarray] = []
    for start in range(0, len(data.paths), CHUNK):
        paths = data.paths[start : start + CHUNK]
        raw = predict_all(runner, load_inputs(paths, imgsz))
        kept = detections(raw, conf, iou, len(data.names))
        for offset, (path, det) in enumerate(zip(paths, kept, strict=True)):
            i = start + offset
            true_classes = np.asarray(data.classes[i], dtype=np.int64)
            if len(true_classes):
                with Image.open(path) as im:
                    width, height = im.size
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


def calibration_inputs(data_yaml: Path, count: int, imgsz: int) -> np.ndarray:
    """The first ``count`` train images, letterboxed: calibration data, never from val."""
    return load_inputs(labelled_split(data_yaml, "train", count).paths, imgsz)
