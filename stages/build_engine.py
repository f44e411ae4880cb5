"""Stage ``build_engine``: build a TensorRT engine from the checked ONNX model, where the machine can.

TensorRT needs an NVIDIA GPU and the ``tensorrt`` package (the ``gpu`` extra). Without them the stage
records ``status: skipped`` with the reason and succeeds, unless ``engine.required`` is true, in which
case it fails. The engine is built with TensorRT's own Python API (``stages/backends/tensorrt.py``)
from the FP32 ONNX model that passed the export checks, prepared for the precision (FP16 converted,
INT8 as signed symmetric Q/DQ calibrated on train images), with a persistent timing cache
(``paths.engine_timing_cache``) and a sidecar JSON that the TensorRT backend checks before running it.
The stage depends on the environment fingerprint, so a new GPU or TensorRT version rebuilds the engine.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from stages.common import read_json, stage_main, write_json
from stages.config import EngineParams, Params
from stages.deploy.accuracy import Accuracy, calibration_inputs, detection_map, labelled_split
from stages.errors import EngineUnavailable, PipelineError

log = logging.getLogger(__name__)

STAGE = "build_engine"
ENGINE_NAME = "model.engine"
TIMING_CACHE = "timing.cache"  # in paths.engine_timing_cache, a folder DVC keeps between runs


class BuildEngineConfig(BaseModel):
    """Inputs, outputs and options of ``build_engine``."""

    model_config = ConfigDict(frozen=True)

    model: Path
    export_metrics: Path
    deploy_dir: Path
    data_yaml: Path
    engine_dir: Path
    timing_cache: Path
    metrics: Path
    report: Path
    workspace: Path
    imgsz: int
    batch_sizes: list[int]  # the optimization profile covers these (engine.batch_sizes, else export.batch)
    calibration_images: int
    deploy_metrics: Path  # the PyTorch reference mAP the engine's drop is taken from
    max_drop: dict[str, float]  # deploy.max_drop per precision
    conf: float
    iou: float
    options: EngineParams

    @classmethod
    def from_params(cls, params: Params, root: Path) -> BuildEngineConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(
            model=params.paths.resolve("model", root),
            export_metrics=params.paths.resolve("export_metrics", root),
            deploy_dir=params.paths.resolve("deploy_dir", root),
            data_yaml=params.paths.resolve("prepared", root) / "data.yaml",
            engine_dir=params.paths.resolve("engine_dir", root),
            timing_cache=params.paths.resolve("engine_timing_cache", root) / TIMING_CACHE,
            metrics=params.paths.resolve("engine_metrics", root),
            report=params.paths.resolve("engine_report", root),
            workspace=root,
            imgsz=params.train.imgsz,
            batch_sizes=params.engine.batch_sizes or [params.export.batch],
            calibration_images=params.deploy.int8.calibration_images,
            deploy_metrics=params.paths.resolve("deploy_metrics", root),
            max_drop=params.deploy.max_drop.model_dump(),
            conf=params.evaluate.conf,
            iou=params.evaluate.iou,
            options=params.engine,
        )


class BuildEngineResult(BaseModel):
    """The build record: numbers in ``metrics/engine.json``, text in ``reports/engine.json``."""

    status: Literal["built", "skipped"]
    reason: str | None = None
    path: str | None = None
    precision: str
    imgsz: int
    batch: int
    tensorrt: str | None = None
    gpu: str | None = None
    build_seconds: float | None = None
    size_mb: float | None = None
    map50: float | None = None  # the engine's, measured like every deploy artifact (stages/deploy/accuracy.py)
    map50_95: float | None = None
    drop_map50_95: float | None = None  # PyTorch's mAP50-95 minus the engine's
    deployable: int | None = None  # within deploy.max_drop for its precision

    TEXT: ClassVar[set[str]] = {"status", "reason", "path", "precision", "tensorrt", "gpu"}

    def metrics_record(self) -> dict[str, Any]:
        """Numbers only: ``built`` (1 or 0) and the measurements; no nulls."""
        return {"built": int(self.status == "built")} | self.model_dump(exclude_none=True, exclude=self.TEXT)

    def report_record(self) -> dict[str, Any]:
        """The text facts: status and why, the file, precision, TensorRT version and GPU."""
        return self.model_dump(include=self.TEXT)


def _shown(path: Path, workspace: Path) -> str:
    return path.relative_to(workspace).as_posix() if path.is_relative_to(workspace) else str(path)


def missing_prerequisite() -> str | None:
    """Why a TensorRT engine cannot be built here, or ``None`` when it can."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    try:
        import tensorrt  # noqa: F401  (lazy: optional heavy dependency)
    except ImportError as exc:
        return f"TensorRT is not installed ({exc}); install the project's 'gpu' extra"
    return None


def run(cfg: BuildEngineConfig) -> BuildEngineResult:
    """Build the engine, or record why not.

    Args:
        cfg: Paths and options.

    Returns:
        The build record.

    Raises:
        EngineUnavailable: When the engine is required but cannot be built here.
    """
    if not cfg.model.is_file():
        raise PipelineError("trained model is missing; run 'train' first", stage=STAGE, path=cfg.model)
    if cfg.engine_dir.exists():
        shutil.rmtree(cfg.engine_dir)
    cfg.engine_dir.mkdir(parents=True)
    precision = cfg.options.precision

    # A model that failed the gate was not exported: nothing to build, and not this machine's fault.
    exported = bool(read_json(cfg.export_metrics, stage=STAGE).get("exported"))
    reason = missing_prerequisite() if exported else "nothing was exported (the evaluation gate failed)"
    if reason is not None:
        result = BuildEngineResult(
            status="skipped", reason=reason, precision=precision, imgsz=cfg.imgsz, batch=cfg.batch_sizes[0]
        )
        # A DVC output: say what it is for until a build writes the timing cache into it.
        cfg.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        (cfg.timing_cache.parent / "README.md").write_text(
            f"TensorRT's timing cache ({TIMING_CACHE}) goes here once an engine is built; kept between builds.\n",
            encoding="utf-8",
        )
        write_json(cfg.metrics, result.metrics_record())
        write_json(cfg.report, result.report_record())
        # Say so where a user looks for the engine (this also keeps the DVC output from being empty).
        (cfg.engine_dir / "README.md").write_text(
            f"No TensorRT engine was built: {reason}.\nSee {_shown(cfg.report, cfg.workspace)} for the build record.\n",
            encoding="utf-8",
        )
        if cfg.options.required and exported:
            raise EngineUnavailable(f"engine.required is true but {reason}", stage=STAGE, key="engine.required")
        log.warning("TensorRT engine skipped: %s", reason)
        return result

    from stages.backends import tensorrt as trt_backend

    onnx = cfg.deploy_dir / "model.onnx"
    calibration = None
    if precision == "int8":
        calibration = calibration_inputs(cfg.data_yaml, cfg.calibration_images, cfg.imgsz)
    started = time.perf_counter()
    target = cfg.engine_dir / ENGINE_NAME
    with tempfile.TemporaryDirectory(prefix="engine-") as tmp:
        prepared = trt_backend.engine_onnx(onnx, precision, Path(tmp) / f"model.{precision}.onnx", calibration)
        sidecar = trt_backend.build(
            prepared,
            target,
            precision=precision,
            batch_sizes=cfg.batch_sizes,
            workspace_gib=cfg.options.workspace_gib,
            timing_cache=cfg.timing_cache,
            source_onnx=onnx,
        )
    accuracy, drop, deployable = _gate(cfg, target, precision)
    result = BuildEngineResult(
        status="built",
        path=str(target.relative_to(cfg.workspace) if target.is_relative_to(cfg.workspace) else target),
        precision=precision,
        imgsz=cfg.imgsz,
        batch=cfg.batch_sizes[0],
        tensorrt=sidecar.tensorrt,
        gpu=sidecar.gpu,
        build_seconds=round(time.perf_counter() - started, 2),
        size_mb=round(target.stat().st_size / 1e6, 3),
        map50=accuracy.map50,
        map50_95=accuracy.map50_95,
        drop_map50_95=drop,
        deployable=int(deployable),
    )
    write_json(cfg.metrics, result.metrics_record())
    write_json(cfg.report, result.report_record())
    log.info(
        "built %s (%s, %.1f MB) in %.1fs on %s, profile %s; mAP50-95 %.4f, a drop of %.2f points: %s",
        target,
        precision,
        result.size_mb,
        result.build_seconds,
        result.gpu,
        sidecar.shapes,
        accuracy.map50_95,
        drop * 100,
        "deployable" if deployable else f"NOT deployable (deploy.max_drop.{precision} {cfg.max_drop[precision]})",
    )
    return result


def _gate(cfg: BuildEngineConfig, engine: Path, precision: str) -> tuple[Accuracy, float, bool]:
    """The engine's mAP on val, its drop against the PyTorch model's, and whether that is within the limit."""
    from stages.backends import open_runner

    runner = open_runner("tensorrt", engine, workspace=cfg.workspace, device="cuda", precision=precision)
    data = labelled_split(cfg.data_yaml, "val")
    accuracy = detection_map(runner, data, cfg.imgsz, cfg.conf, cfg.iou)
    reference = read_json(cfg.deploy_metrics, stage=STAGE)["pytorch"]["map50_95"]
    drop = round(reference - accuracy.map50_95, 6)
    return accuracy, drop, drop <= cfg.max_drop[precision]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, BuildEngineConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
