"""One comparison of two raw detection outputs, for every place that compares them.

Export parity (ONNX against PyTorch), the INT8 score check (INT8 against FP32), the engine's raw
output parity (TensorRT against ONNX Runtime) and the GPU tests all compare a candidate's raw
outputs with a reference's on the same letterboxed images. :func:`compare` measures every figure
once; each caller states its own :class:`Tolerance` and :func:`failures` says, in words, what is
beyond it.

Two output layouts are understood (:func:`is_end_to_end`): the raw head, (N, 4 + classes, anchors)
with centre-xywh boxes in letterbox pixels and per-class scores; and an NMS-free (end-to-end) head,
(N, detections, 6) rows of x1, y1, x2, y2, score, class.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from stages.backends.inference import is_end_to_end
from stages.core.errors import PipelineError

CONFIDENT = 0.25  # the score above which the reference's anchors count as detections
MIN_CONFIDENT = 20  # fewer confident anchors, and top-class agreement is a coin toss, not evidence (1.0)


class Comparison(BaseModel):
    """How far a candidate's raw outputs are from the reference's on the same inputs."""

    model_config = ConfigDict(frozen=True)

    images: int
    shape: list[int]  # one image's output shape
    end_to_end: bool
    max_abs_diff_boxes_px: float
    max_abs_diff_scores: float
    mean_abs_diff: float
    top_class_agreement: float  # on the anchors the reference is confident about (1.0 when too few)
    confident_anchors: int
    best_anchor_agreement: float  # fraction of images whose highest-scoring (anchor, class) is the same
    max_score_reference: float
    max_score_candidate: float


class Tolerance(BaseModel):
    """What a caller accepts; ``None`` leaves a figure unchecked."""

    model_config = ConfigDict(frozen=True)

    max_boxes_px: float | None = None
    max_scores: float | None = None
    min_top_class_agreement: float | None = None
    scores_may_collapse: bool = False  # False: all-zero candidate scores where the reference has some fail


def compare(reference: np.ndarray, candidate: np.ndarray, confident: float = CONFIDENT) -> Comparison:
    """Measure ``candidate`` against ``reference`` (the same images, the same layout).

    Raises:
        PipelineError: When the shapes differ (named, both of them).
    """
    if reference.shape != candidate.shape:
        raise PipelineError(
            f"output shapes differ: reference {list(reference.shape)}, candidate {list(candidate.shape)}"
        )
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    n = len(ref)
    if is_end_to_end(ref):
        box_diff, score_diff = diff[..., :4], diff[..., 4]
        ref_scores, cand_scores = ref[..., 4], cand[..., 4]
        sure = ref_scores >= confident
        agree = ref[..., 5][sure] == cand[..., 5][sure]
        best_ref = ref_scores.argmax(axis=1)
        best_cand = cand_scores.argmax(axis=1)
        rows = np.arange(n)
        best = (best_ref == best_cand) & (ref[rows, best_ref, 5] == cand[rows, best_cand, 5])
    else:
        box_diff, score_diff = diff[:, :4], diff[:, 4:]
        ref_scores, cand_scores = ref[:, 4:], cand[:, 4:]
        sure = ref_scores.max(axis=1) >= confident  # (N, anchors)
        agree = ref_scores.argmax(axis=1)[sure] == cand_scores.argmax(axis=1)[sure]
        best = ref_scores.reshape(n, -1).argmax(axis=1) == cand_scores.reshape(n, -1).argmax(axis=1)
    confident_count = int(sure.sum())
    return Comparison(
        images=n,
        shape=list(reference.shape[1:]),
        end_to_end=is_end_to_end(ref),
        max_abs_diff_boxes_px=float(box_diff.max()) if box_diff.size else 0.0,
        max_abs_diff_scores=float(score_diff.max()) if score_diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
        top_class_agreement=float(agree.mean()) if confident_count >= MIN_CONFIDENT else 1.0,
        confident_anchors=confident_count,
        best_anchor_agreement=float(best.mean()) if n else 1.0,
        max_score_reference=float(ref_scores.max()) if ref_scores.size else 0.0,
        max_score_candidate=float(cand_scores.max()) if cand_scores.size else 0.0,
    )


def failures(c: Comparison, tolerance: Tolerance) -> list[str]:
    """Every way ``c`` is beyond ``tolerance``, in words (empty: within it)."""
    found = []
    if tolerance.max_boxes_px is not None and c.max_abs_diff_boxes_px > tolerance.max_boxes_px:
        found.append(f"max |Δbox| {c.max_abs_diff_boxes_px:.3g} px (allowed {tolerance.max_boxes_px})")
    if tolerance.max_scores is not None and c.max_abs_diff_scores > tolerance.max_scores:
        found.append(f"max |Δscore| {c.max_abs_diff_scores:.3g} (allowed {tolerance.max_scores})")
    if not tolerance.scores_may_collapse and c.max_score_candidate <= 0.0 < c.max_score_reference:
        found.append(f"every score is 0 where the reference's highest is {c.max_score_reference:.3g}")
    if tolerance.min_top_class_agreement is not None and c.top_class_agreement < tolerance.min_top_class_agreement:
        found.append(
            f"the top class agrees on only {c.top_class_agreement:.0%} of {c.confident_anchors} confident anchors "
            f"(at least {tolerance.min_top_class_agreement:.0%} needed)"
        )
    return found
