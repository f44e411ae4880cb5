"""Stage ``export``: ONNX export and its parity with PyTorch, then every deploy target built, measured and gated.

Ultralytics performs the export; this stage then runs the ONNX file with ONNX Runtime (CPU) and the
checkpoint with PyTorch (CPU) on the same real validation images and records how far their raw
outputs differ, separately for box coordinates (pixels) and class scores. Differences beyond the
tolerances in ``params.yaml`` fail the stage. That is the first, cheap check; then every target in
``deploy.targets`` (the FP32 ONNX model itself, CPU INT8, OpenVINO, TorchScript) is built and its mAP measured
and gated against the PyTorch model's (``stages/deploy/``): ``metrics/deploy.json`` holds the
numbers, ``reports/deploy.json`` what ran and why each artifact is or is not deployable.

With ``export.dynamic`` the batch axis alone is free: Ultralytics' dynamic export also frees height
and width (and with them the anchor count), which no deploy target needs and a TensorRT profile
cannot cover with one letterbox size; :func:`batch_axis_only` fixes them to ``train.imgsz`` and
folds the shape arithmetic they fed back into constants.

The deployable artifacts go to ``paths.deploy_dir``. A model that failed the evaluation gate is not
exported: the folder then holds only a README saying why, ``metrics/export.json`` records
``exported: 0``, and the stages after it build and measure nothing, so the run still completes and
records its metrics.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.backends import open_runner
from stages.backends.base import predict_all
from stages.backends.compare import Tolerance, compare, failures
from stages.backends.inference import load_inputs, validation_images
from stages.core.common import read_json, stage_main, write_json, write_text
from stages.core.config import DeployParams, ExportParams, Params
from stages.core.errors import ExportError, PipelineError
from stages.core.runtime import import_ultralytics
from stages.core.verdict import failed_checks
from stages.deploy.build import DeployInputs, build_and_gate

log = logging.getLogger(__name__)

STAGE = "export"


class ExportConfig(BaseModel):
    """Inputs, outputs and options of ``export``."""

    model_config = ConfigDict(frozen=True)

    model: Path
    data_yaml: Path
    evaluate_metrics: Path
    deploy_dir: Path
    onnx: Path
    metrics: Path
    report: Path
    deploy_metrics: Path
    deploy_report: Path
    workspace: Path
    imgsz: int
    conf: float
    iou: float
    evaluate_device: str  # where evaluate measured the figures the gate's reference is checked against
    options: ExportParams
    deploy: DeployParams

    @classmethod
    def from_params(cls, params: Params, root: Path) -> ExportConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(
            model=params.paths.resolve("model", root),
            data_yaml=params.paths.resolve("prepared", root) / "data.yaml",
            evaluate_metrics=params.paths.resolve("evaluate_metrics", root),
            deploy_dir=params.paths.resolve("deploy_dir", root),
            onnx=params.paths.onnx_model(root),
            metrics=params.paths.resolve("export_metrics", root),
            report=params.paths.resolve("export_report", root),
            deploy_metrics=params.paths.resolve("deploy_metrics", root),
            deploy_report=params.paths.resolve("deploy_report", root),
            workspace=root,
            imgsz=params.train.imgsz,
            conf=params.evaluate.conf,
            iou=params.evaluate.iou,
            evaluate_device=str(params.train.device),
            options=params.export,
            deploy=params.deploy,
        )

    def deploy_inputs(self) -> DeployInputs:
        """What building and gating the deploy targets needs."""
        return DeployInputs(
            model=self.model,
            deploy_dir=self.deploy_dir,
            data_yaml=self.data_yaml,
            metrics=self.deploy_metrics,
            report=self.deploy_report,
            workspace=self.workspace,
            imgsz=self.imgsz,
            conf=self.conf,
            iou=self.iou,
            options=self.deploy,
            evaluate_metrics=self.evaluate_metrics,
            evaluate_device=self.evaluate_device,
        )


class Parity(BaseModel):
    """How far ONNX Runtime's raw outputs are from PyTorch's on the same inputs."""

    images: int
    output_shape: list[int]
    max_abs_diff_boxes_px: float
    max_abs_diff_scores: float
    mean_abs_diff: float
    top_class_agreement: float
    passed: bool


class ExportResult(BaseModel):
    """What ``metrics/export.json`` holds; only ``exported: 0`` when the gate stopped the export."""

    exported: int
    onnx: str | None = None
    size_mb: float | None = None
    opset: int | None = None
    imgsz: int | None = None
    batch: int | None = None
    dynamic: bool | None = None
    simplify: bool | None = None
    export_seconds: float | None = None
    onnxruntime_provider: str | None = None
    parity: Parity | None = None

    def metrics_record(self) -> dict[str, Any]:
        """What ``metrics/export.json`` holds: numbers only (flags as 0/1), no nulls."""
        record = self.model_dump(exclude_none=True, exclude={"onnx", "onnxruntime_provider"})
        for flag in ("dynamic", "simplify"):
            if flag in record:
                record[flag] = int(record[flag])
        if "parity" in record:
            record["parity"]["passed"] = int(record["parity"]["passed"])
            del record["parity"]["output_shape"]
        return record

    def report_record(self) -> dict[str, Any]:
        """What ``reports/export.json`` holds: the file, the runtime and the output's shape."""
        return {
            "onnx": self.onnx,
            "onnxruntime_provider": self.onnxruntime_provider,
            "output_shape": self.parity.output_shape if self.parity else None,
        }


def _dims(value: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def free_axes(path: Path) -> dict[str, list[int]]:
    """Per input and output of an ONNX model, the positions of its axes without a fixed size."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        v.name: [i for i, d in enumerate(_dims(v)) if not isinstance(d, int) or d <= 0]
        for v in [*graph.input, *graph.output]
    }


def batch_axis_only(path: Path, imgsz: int, simplify: bool) -> None:
    """Rewrite a dynamic Ultralytics ONNX export in place so that its batch axis is its only free axis.

    The input's height and width become ``imgsz``; every output's other axes are inferred from that
    (the anchor count included): with ``simplify`` by onnxslim, which Ultralytics' export uses, which
    also folds the shape computations they fed (anchor grids, reshapes) into constants; without, by
    ONNX shape inference propagating the now constant shapes (the computations stay in the graph).

    Raises:
        ExportError: When an axis other than the batch is still free afterwards.
    """
    import onnx

    model = onnx.load(str(path))
    (images,) = model.graph.input
    dims = images.type.tensor_type.shape.dim
    for axis in (2, 3):
        dims[axis].Clear()
        dims[axis].dim_value = imgsz
    for output in model.graph.output:  # re-inferred below from the fixed input
        for axis, dim in enumerate(output.type.tensor_type.shape.dim):
            if axis:
                dim.Clear()
    del model.graph.value_info[:]
    if simplify:
        import onnxslim

        model = onnxslim.slim(model)
    else:
        try:
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except onnx.shape_inference.InferenceError as exc:
            raise ExportError(f"the export does not take {imgsz} x {imgsz} images: {exc}", path=path) from None
    onnx.save(model, str(path))
    still = {name: axes for name, axes in free_axes(path).items() if axes != [0]}
    if still:
        raise ExportError(
            f"after fixing height and width to {imgsz}, axes other than the batch are still free: {still}", path=path
        )


def run(cfg: ExportConfig) -> ExportResult:
    """Export to ONNX, check parity, and write ``cfg.onnx`` and ``cfg.metrics``.

    Args:
        cfg: Paths and options.

    Returns:
        Export facts and the parity measurement.

    Raises:
        ExportError: When export fails or parity exceeds the tolerances (after writing the metrics).
    """
    if not cfg.model.is_file():
        raise PipelineError("trained model is missing; run 'train' first", stage=STAGE, path=cfg.model)
    if cfg.deploy_dir.exists():
        shutil.rmtree(cfg.deploy_dir)
    cfg.deploy_dir.mkdir(parents=True)
    failed = failed_checks(read_json(cfg.evaluate_metrics, stage=STAGE)["gates"])
    if failed:
        reason = "the evaluation gate failed: " + "; ".join(failed)
        write_text(cfg.deploy_dir / "README.md", f"Nothing was exported: {reason}.\n")
        result = ExportResult(exported=0)
        write_json(cfg.metrics, result.metrics_record())
        write_json(cfg.report, result.report_record())
        write_json(cfg.deploy_metrics, {})
        write_json(cfg.deploy_report, {})
        log.warning("not exported: %s", reason)
        return result
    o = cfg.options
    ultralytics = import_ultralytics(cfg.workspace)
    started = time.perf_counter()
    exported = ultralytics.YOLO(str(cfg.model), task="detect").export(
        format="onnx",
        imgsz=cfg.imgsz,
        opset=o.opset,
        simplify=o.simplify,
        dynamic=o.dynamic,
        batch=o.batch,
        device="cpu",
        verbose=False,
    )
    seconds = time.perf_counter() - started
    if not exported or not Path(exported).is_file():
        raise ExportError(f"Ultralytics export returned no file ({exported!r})", stage=STAGE, path=cfg.model)
    cfg.onnx.parent.mkdir(parents=True, exist_ok=True)
    if Path(exported).resolve() != cfg.onnx.resolve():
        shutil.move(exported, cfg.onnx)
    if o.dynamic:
        batch_axis_only(cfg.onnx, cfg.imgsz, o.simplify)

    onnx_runner = open_runner("onnxruntime", cfg.onnx, workspace=cfg.workspace)
    torch_runner = open_runner("pytorch", cfg.model, workspace=cfg.workspace)
    inputs = load_inputs(validation_images(cfg.data_yaml, o.parity_images), cfg.imgsz)
    reference, candidate = predict_all(torch_runner, inputs), predict_all(onnx_runner, inputs)
    try:
        comparison = compare(reference, candidate)
    except PipelineError as exc:
        raise ExportError(f"ONNX against PyTorch: {exc.message}", stage=STAGE, path=cfg.onnx) from None
    box_diff, score_diff = comparison.max_abs_diff_boxes_px, comparison.max_abs_diff_scores
    mean_diff, agreement = comparison.mean_abs_diff, comparison.best_anchor_agreement
    beyond = failures(comparison, Tolerance(max_boxes_px=o.max_box_diff_px, max_scores=o.max_score_diff))
    passed = not beyond
    result = ExportResult(
        exported=1,
        onnx=str(cfg.onnx.relative_to(cfg.workspace) if cfg.onnx.is_relative_to(cfg.workspace) else cfg.onnx),
        size_mb=round(cfg.onnx.stat().st_size / 1e6, 3),
        opset=o.opset,
        imgsz=cfg.imgsz,
        batch=o.batch,
        dynamic=o.dynamic,
        simplify=o.simplify,
        export_seconds=round(seconds, 2),
        onnxruntime_provider=onnx_runner.info.provider,
        parity=Parity(
            images=len(reference),
            output_shape=list(reference.shape[1:]),
            max_abs_diff_boxes_px=box_diff,
            max_abs_diff_scores=score_diff,
            mean_abs_diff=mean_diff,
            top_class_agreement=agreement,
            passed=passed,
        ),
    )
    write_json(cfg.metrics, result.metrics_record())
    write_json(cfg.report, result.report_record())
    log.info(
        "exported %s (%.2f MB); parity on %d images: max |Δbox| %.2e px, max |Δscore| %.2e, top-1 agreement %.0f%%",
        cfg.onnx,
        result.size_mb,
        len(reference),
        box_diff,
        score_diff,
        100 * agreement,
    )
    if not passed:
        raise ExportError(
            "ONNX output differs from PyTorch: " + "; ".join(beyond),
            stage=STAGE,
            path=cfg.metrics,
        )
    build_and_gate(cfg.deploy_inputs())
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, ExportConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
