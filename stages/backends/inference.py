"""Shared inference plumbing: preprocessing, and the sessions and modules ``stages.backends`` wraps.

Every stage feeds every backend exactly the same tensors, produced here, so that output differences,
accuracies and latencies compare backends and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.core.errors import BackendUnavailable, PipelineError
from stages.data.datasets import iter_images, read_prepared_yaml, split_dirs


def is_end_to_end(raw: np.ndarray) -> bool:
    """Whether ``raw`` is an NMS-free head's (N, detections, 6) output rather than the raw head's.

    The raw head has at least 84 anchors even at 64 px, so a last axis of 6 is never one of its.
    """
    return raw.ndim == 3 and raw.shape[-1] == 6


def letterbox_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Where an image of ``height`` x ``width`` lands in its ``size`` x ``size`` letterbox: (h, w, top, left).

    As Ultralytics' validator places it with square batches (``rect=False``): the long side resized to
    ``size`` with the short side rounded up (its ``load_image``), then centred, the odd padding pixel
    below and right (its ``LetterBox``). The gate's reference is checked against that validator, so
    both must see the same pixels.
    """
    if max(height, width) == size:
        return height, width, (size - height) // 2, (size - width) // 2
    scale = size / max(height, width)
    h, w = min(math.ceil(height * scale), size), min(math.ceil(width * scale), size)
    return h, w, (size - h) // 2, (size - w) // 2


def letterbox(image: np.ndarray, size: int, fill: int = 114) -> np.ndarray:
    """Resize an HxWx3 RGB uint8 image to fit ``size``x``size`` keeping its aspect, padding the rest.

    Returns:
        A 3x``size``x``size`` float32 array scaled to [0, 1], the layout YOLO models take.
    """
    import cv2

    h, w = image.shape[:2]
    nh, nw, top, left = letterbox_geometry(h, w, size)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else image
    canvas = np.full((size, size, 3), fill, dtype=np.uint8)
    canvas[top : top + nh, left : left + nw] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32) / 255.0


def read_rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 RGB uint8, decoded as Ultralytics decodes it (OpenCV, EXIF orientation applied).

    Raises:
        PipelineError: When the file cannot be decoded.
    """
    import cv2

    image = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise PipelineError("cannot decode the image", path=path)
    return np.ascontiguousarray(image[..., ::-1])


def detections(
    raw: np.ndarray, conf: float, iou: float, classes: int, max_det: int = 300, multi_label: bool = False
) -> list[np.ndarray]:
    """Per image, the kept detections of a batch of outputs: (k, 6) rows x1, y1, x2, y2, score, class.

    The raw head's (N, 4 + classes, anchors) goes through Ultralytics' NMS (class aware; the best
    class per box, or with ``multi_label`` every class above ``conf``, as Ultralytics' validator keeps
    them) with no time limit: its default gives up after 2 + 0.05 x N seconds and leaves the rest of
    the batch empty, which under load would silently drop detections. An NMS-free head's
    (N, detections, 6) is only filtered by ``conf`` and ``max_det``, as Ultralytics does.

    Raises:
        PipelineError: When the output's layout does not match ``classes``.
    """
    import torch
    from ultralytics.utils.nms import non_max_suppression

    end_to_end = is_end_to_end(raw)
    if not end_to_end and (raw.ndim != 3 or raw.shape[1] != 4 + classes):
        raise PipelineError(
            f"the model's output has shape {list(raw.shape)}: neither the raw head's (N, 4 + {classes}, anchors) "
            "nor an NMS-free head's (N, detections, 6)"
        )
    kept = non_max_suppression(
        torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)),
        conf,
        iou,
        nc=classes,
        max_det=max_det,
        multi_label=multi_label,
        max_time_img=float("inf"),
        end2end=end_to_end,
    )
    return [k.numpy() for k in kept]


@contextlib.contextmanager
def nms_without_time_limit() -> Iterator[None]:
    """Ultralytics' NMS with no time limit while the block runs.

    Its validators call ``ultralytics.utils.nms.non_max_suppression`` through the module and keep its
    default limit (2 + 0.05 x batch seconds, then the rest of the batch is left empty): on a loaded
    machine, at ``conf`` 0.001, ``evaluate``'s mAP and the gate's check of its reference would lose
    detections at random.
    """
    from ultralytics.utils import nms

    original = nms.non_max_suppression
    nms.non_max_suppression = functools.partial(original, max_time_img=float("inf"))
    try:
        yield
    finally:
        nms.non_max_suppression = original


def patient(validator: type) -> type:
    """``validator`` (an Ultralytics detection validator class) whose NMS never gives up on a clock."""

    class Patient(validator):  # type: ignore[misc,valid-type]
        def postprocess(self, preds: Any) -> Any:
            with nms_without_time_limit():
                return super().postprocess(preds)

    Patient.__name__ = Patient.__qualname__ = f"Patient{validator.__name__}"
    return Patient


def square_val(
    model: Any, data_yaml: Path, *, imgsz: int, batch: int, conf: float, iou: float, device: Any, project: Path
) -> Any:
    """Ultralytics' validator on the ``val`` split of ``data_yaml`` with square batches (``rect=False``).

    The letterbox every deploy artifact is fed, so the figure the gate's PyTorch reference must
    reproduce; NMS without a time limit (:func:`patient`), no plots. ``model`` is an ``ultralytics.YOLO``.

    Returns:
        Ultralytics' detection metrics.
    """
    from ultralytics.models.yolo.detect import DetectionValidator

    return model.val(
        validator=patient(DetectionValidator),
        data=str(data_yaml),
        split="val",
        imgsz=imgsz,
        batch=batch,
        rect=False,
        conf=conf,
        iou=iou,
        device=device,
        plots=False,
        save_json=False,
        project=str(project),
        name="square",
        verbose=False,
    )


def validation_images(data_yaml: Path, limit: int) -> list[Path]:
    """The first ``limit`` validation images of the prepared dataset, in a stable order.

    Raises:
        PipelineError: When the dataset has no validation image.
    """
    splits = split_dirs(read_prepared_yaml(data_yaml))
    if "val" not in splits:
        raise PipelineError("the prepared dataset has no 'val' split", path=data_yaml)
    images = []
    for path in iter_images(splits["val"][0]):
        images.append(path)
        if len(images) >= limit:
            break
    if not images:
        raise PipelineError("the validation split has no images", path=splits["val"][0])
    return images


def load_inputs(paths: Sequence[Path], size: int) -> np.ndarray:
    """Read (:func:`read_rgb`) and letterbox images into one N x 3 x size x size float32 array."""
    return np.stack([letterbox(read_rgb(path), size) for path in paths])


def batches(inputs: np.ndarray, batch: int) -> list[np.ndarray]:
    """Cut ``inputs`` into full batches of ``batch``, cycling through the images when there are too few."""
    count = max(1, len(inputs) // batch) if len(inputs) >= batch else 1
    reps = -(-batch * count // len(inputs))
    pool = np.concatenate([inputs] * reps)[: batch * count]
    return [pool[i * batch : (i + 1) * batch] for i in range(count)]


def cpu_threads(threads: int) -> int:
    """``threads``, or for 0 the number of cores this process may run on (pinned, so it can be recorded)."""
    import os

    return threads or len(os.sched_getaffinity(0))


def onnx_session(path: Path, provider: str = "CPUExecutionProvider", threads: int = 0) -> Any:
    """An ONNX Runtime session that uses ``provider`` or fails.

    Raises:
        BackendUnavailable: When ONNX Runtime or the provider is not installed here.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed: {exc}") from None
    if provider not in ort.get_available_providers():
        raise BackendUnavailable(
            f"ONNX Runtime provider {provider} is not available here (available: {ort.get_available_providers()}); "
            "install the 'gpu' extra for CUDA"
        )
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
    if session.get_providers()[0] != provider:
        raise BackendUnavailable(f"ONNX Runtime fell back to {session.get_providers()[0]} instead of {provider}")
    return session


def onnx_input_batch(path: Path) -> int | None:
    """The static batch size of an ONNX model's first input, or ``None`` when it is dynamic.

    Read from the graph (no session is built, no weights are loaded).
    """
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def torch_model(weights: Path, workspace: Path, device: str = "cpu") -> Any:
    """The detection ``nn.Module`` inside an Ultralytics checkpoint: eval mode, float32, on ``device``."""
    from stages.core.runtime import import_ultralytics

    ultralytics = import_ultralytics(workspace)
    model = ultralytics.YOLO(str(weights), task="detect").model
    return model.float().eval().to(device)
