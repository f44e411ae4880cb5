"""Stage ``evaluate``: measure the trained model on the validation split and apply the quality gates.

Writes ``metrics/evaluate.json``: overall and per-class metrics, and the gate verdict with every
check, all as numbers (``gates.passed``: 1 or 0) so that ``dvc exp show`` and ``dvc metrics diff``
compare them. A failed gate is a result, not a crash: the stage succeeds and logs each failed check,
``export`` then builds nothing deployable, and ``dvc repro`` or ``dvc exp run`` completes, so a
failed experiment keeps its own numbers. Whoever acts on the verdict (the flow, CI, ``make demo``)
runs ``python -m stages.gate``, which fails naming every failed check.

Ultralytics' validator letterboxes each batch of images to its own rectangle (``rect``), which an
exported model with a fixed square input cannot take. So the same validator also measures the model
with square batches (``square`` in ``metrics/evaluate.json``): the figure the deploy gate's PyTorch
reference must reproduce (``stages/deploy/build.py``), like with like.

It also writes the pictures (``stages/reporting/pictures.py``): the PR curve and the confusion matrix that
Ultralytics' validator measured, as CSV for ``dvc plots``, and a PNG grid of the first validation
images with their true boxes (green) and the model's boxes (red).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict

from stages.backends.inference import patient, square_val, validation_images
from stages.core.common import stage_main, write_json
from stages.core.config import EvaluateParams, Params, check_class_floors
from stages.core.errors import PipelineError
from stages.core.runtime import import_ultralytics
from stages.core.verdict import describe
from stages.data.datasets import label_path_for, read_prepared_yaml, split_dirs
from stages.reporting import pictures, summary

log = logging.getLogger(__name__)

STAGE = "evaluate"
TILE_PX = 256  # side of one image in the validation grid
GRID_COLUMNS = 4


class EvaluateConfig(BaseModel):
    """Inputs, outputs and gates of ``evaluate``."""

    model_config = ConfigDict(frozen=True)

    model: Path
    data_yaml: Path
    metrics: Path
    quality: Path  # the numbers experiments are compared on (stages.reporting.summary)
    pr_curve: Path
    confusion: Path
    val_predictions: Path
    workspace: Path
    imgsz: int
    device: str
    gates: EvaluateParams

    @classmethod
    def from_params(cls, params: Params, root: Path) -> EvaluateConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(
            model=params.paths.resolve("model", root),
            data_yaml=params.paths.resolve("prepared", root) / "data.yaml",
            metrics=params.paths.resolve("evaluate_metrics", root),
            quality=params.paths.resolve("quality_metrics", root),
            pr_curve=params.paths.resolve("pr_curve_plot", root),
            confusion=params.paths.resolve("confusion_plot", root),
            val_predictions=params.paths.resolve("val_predictions_plot", root),
            workspace=root,
            imgsz=params.train.imgsz,
            device=params.train.device,
            gates=params.evaluate,
        )


class ClassMetrics(BaseModel):
    """Metrics of one class on the validation split (``None`` when it has no validation boxes)."""

    instances: int
    precision: float | None
    recall: float | None
    ap50: float | None
    ap50_95: float | None


class Check(BaseModel):
    """One gate check, in numbers (``passed``: 1 or 0); :func:`stages.core.verdict.describe` words it."""

    value: float | None
    threshold: float
    passed: int


class Gates(BaseModel):
    """The gate verdict: ``passed`` is 1 when every check passed, ``failed`` counts those that did not."""

    passed: int
    failed: int
    checks: dict[str, Check]


class SquareMetrics(BaseModel):
    """The validator's mAP with square batches (``rect=False``): each image letterboxed to ``imgsz`` x ``imgsz``."""

    map50: float
    map50_95: float
    instances: int


class EvaluateResult(BaseModel):
    """What ``metrics/evaluate.json`` holds."""

    map50: float
    map50_95: float
    square: SquareMetrics
    precision: float
    recall: float
    fitness: float
    per_class: dict[str, ClassMetrics]
    instances: int
    gates: Gates


def _at_least(value: float | None, threshold: float) -> Check:
    return Check(value=value, threshold=threshold, passed=int(value is not None and value >= threshold))


def build_checks(
    map50: float, map50_95: float, per_class: dict[str, ClassMetrics], gates: EvaluateParams
) -> dict[str, Check]:
    """Evaluate every configured gate.

    Args:
        map50: Overall mAP at IoU 0.5.
        map50_95: Overall mAP at IoU 0.5:0.95.
        per_class: Metrics per class name.
        gates: The thresholds from ``params.yaml``.

    Returns:
        One check per gate, by name, in a stable order.

    Raises:
        ConfigError: When a per-class floor names a class the dataset does not have.
    """
    checks = {"map50": _at_least(map50, gates.min_map50), "map50_95": _at_least(map50_95, gates.min_map50_95)}
    check_class_floors(gates.min_class_map50, list(per_class))
    for name, floor in gates.min_class_map50.items():
        checks[f"ap50[{name}]"] = _at_least(per_class[name].ap50, floor)
    return checks


def _picture_validator(confusion_conf: float) -> type:
    """Ultralytics' detection validator, counting its confusion matrix at ``confusion_conf``.

    The validator measures mAP at ``evaluate.conf`` (0.001: every box counts towards the PR curve) and
    would count the confusion matrix at that confidence too, where nearly every cell is a box on the
    background; a confusion matrix describes the boxes a user would keep. Nothing it would draw is drawn:
    its mosaics of the first batches (:func:`write_pictures` draws its own grid; those mosaics are
    written by background threads that could outlive the temporary folder they write to), nor its
    matplotlib figures of the curves and the matrix (half of the stage's time on a tiny dataset, for
    PNGs no one reads: the numbers behind them are what ``write_pictures`` writes).
    """
    from ultralytics.models.yolo.detect import DetectionValidator

    class PictureValidator(DetectionValidator):
        def init_metrics(self, model: Any) -> None:
            super().init_metrics(model)
            count = self.confusion_matrix.process_batch

            def at_confusion_conf(detections: Any, batch: Any, conf: float = 0.25, **kwargs: Any) -> None:
                count(detections, batch, conf=confusion_conf, **kwargs)

            self.confusion_matrix.process_batch = at_confusion_conf
            self.confusion_matrix.plot = lambda *args, **kwargs: None
            process = self.metrics.process

            def without_figures(*args: Any, **kwargs: Any) -> Any:
                # The PR values (px, prec_values) are computed either way; only the figures are not.
                return process(*args, **{**kwargs, "plot": False})

            self.metrics.process = without_figures

        def plot_val_samples(self, batch: Any, ni: int) -> None:
            pass

        def plot_predictions(self, batch: Any, preds: Any, ni: int, max_det: int | None = None) -> None:
            pass

    return PictureValidator


def write_pictures(cfg: EvaluateConfig, model: Any, metrics: Any, names: list[str]) -> None:
    """Write the PR curve and confusion matrix CSVs and the validation image grid.

    Args:
        cfg: The stage's config (output paths, image size, ``plot_images`` and ``plot_conf``).
        model: The Ultralytics model that was validated.
        metrics: What its validator returned (``box.px``, ``box.prec_values``, ``confusion_matrix``).
        names: Class names by id.
    """
    box = metrics.box
    pr_rows = pictures.pr_curve_rows(box.px, box.prec_values, box.ap_class_index, names)
    pictures.write_csv(cfg.pr_curve, ["class", "recall", "precision"], pr_rows)
    confusion = pictures.confusion_rows(metrics.confusion_matrix.matrix, names)
    pictures.write_csv(cfg.confusion, ["actual", "predicted"], confusion)

    images = validation_images(cfg.data_yaml, cfg.gates.plot_images)
    images_root, labels_root = split_dirs(read_prepared_yaml(cfg.data_yaml))["val"]
    results = model.predict(
        [str(p) for p in images],
        imgsz=cfg.imgsz,
        conf=cfg.gates.plot_conf,
        iou=cfg.gates.iou,
        device=cfg.device,
        verbose=False,
    )
    tiles = []
    for path, result in zip(images, results, strict=True):
        with Image.open(path) as image:
            truth = pictures.read_yolo_labels(label_path_for(path, images_root, labels_root), image.width, image.height)
            predicted = [
                pictures.Box(*(float(v) for v in xyxy), cls=int(c), conf=float(p))
                for xyxy, c, p in zip(
                    result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), result.boxes.conf.tolist(), strict=True
                )
            ]
            tiles.append(pictures.draw_tile(image, truth, predicted, names, TILE_PX))
    caption = f"green: true boxes; red: predicted, confidence >= {cfg.gates.plot_conf}"
    pictures.save_png(pictures.image_grid(tiles, GRID_COLUMNS, caption), cfg.val_predictions)
    log.info("wrote %s, %s and %s", cfg.pr_curve, cfg.confusion, cfg.val_predictions)


def run(cfg: EvaluateConfig) -> EvaluateResult:
    """Validate the model and write the metrics with the gate verdict (a failed gate is recorded, not raised).

    Args:
        cfg: Paths, validation settings and gates.

    Returns:
        The metrics and verdict.

    Raises:
        ConfigError: When a per-class floor names an unknown class.
    """
    if not cfg.model.is_file():
        raise PipelineError("trained model is missing; run 'train' first", stage=STAGE, path=cfg.model)
    names = read_prepared_yaml(cfg.data_yaml)["names"]
    shown = cfg.data_yaml.relative_to(cfg.workspace) if cfg.data_yaml.is_relative_to(cfg.workspace) else cfg.data_yaml
    check_class_floors(cfg.gates.min_class_map50, names, shown)
    ultralytics = import_ultralytics(cfg.workspace)
    model = ultralytics.YOLO(str(cfg.model), task="detect")
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        metrics = model.val(
            validator=patient(_picture_validator(cfg.gates.plot_conf)),  # NMS without a time limit
            data=str(cfg.data_yaml),
            split="val",
            imgsz=cfg.imgsz,
            batch=cfg.gates.batch,
            device=cfg.device,
            conf=cfg.gates.conf,
            iou=cfg.gates.iou,
            plots=True,  # the validator fills its confusion matrix only when it plots
            save_json=False,
            project=tmp,
            name="val",
            verbose=False,
        )
        square = square_val(
            model,
            cfg.data_yaml,
            imgsz=cfg.imgsz,
            batch=cfg.gates.batch,
            conf=cfg.gates.conf,
            iou=cfg.gates.iou,
            device=cfg.device,
            project=Path(tmp),
        )
    box = metrics.box
    write_pictures(cfg, model, metrics, names)
    counts = [int(n) for n in metrics.nt_per_class]
    per_class: dict[str, ClassMetrics] = {}
    measured = {int(c): i for i, c in enumerate(box.ap_class_index)}
    for cls, name in enumerate(names):
        if cls in measured and counts[cls] > 0:
            p, r, ap50, ap = (float(v) for v in box.class_result(measured[cls]))
            per_class[name] = ClassMetrics(instances=counts[cls], precision=p, recall=r, ap50=ap50, ap50_95=ap)
        else:
            per_class[name] = ClassMetrics(instances=counts[cls], precision=None, recall=None, ap50=None, ap50_95=None)

    checks = build_checks(float(box.map50), float(box.map), per_class, cfg.gates)
    result = EvaluateResult(
        map50=float(box.map50),
        map50_95=float(box.map),
        square=SquareMetrics(
            map50=float(square.box.map50), map50_95=float(square.box.map), instances=int(sum(square.nt_per_class))
        ),
        precision=float(box.mp),
        recall=float(box.mr),
        fitness=float(metrics.fitness),
        per_class=per_class,
        instances=sum(counts),
        gates=Gates(
            passed=int(all(c.passed for c in checks.values())),
            failed=sum(not c.passed for c in checks.values()),
            checks=checks,
        ),
    )
    write_json(cfg.metrics, result)
    write_json(cfg.quality, summary.quality(result.model_dump(mode="json")))
    for name, check in checks.items():
        (log.info if check.passed else log.warning)(
            "gate %-8s %s", "passed:" if check.passed else "FAILED:", describe(name, check.model_dump())
        )
    if not result.gates.passed:
        log.warning("quality gate failed: nothing will be exported or promoted (gates.passed: 0 in %s)", cfg.metrics)
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, EvaluateConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
