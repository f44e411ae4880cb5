"""Stage ``build_engine``: build a TensorRT engine from the checked ONNX model, where the machine can.

TensorRT needs an NVIDIA GPU and the ``tensorrt`` package (the ``gpu`` extra). Without them, or when
the build itself fails (TensorRT cannot parse or build the network, the prepared model breaks its
Q/DQ rules), the stage records ``status: skipped`` with the reason (``built: 0`` in the metrics, the
reason in the report) and succeeds, unless ``engine.required`` is true, in which case it fails.

The engine is built on ``engine.device`` with TensorRT's own Python API
(``stages/backends/tensorrt_build.py``) from the FP32 ONNX model that passed the export checks,
prepared for the precision by ``stages/deploy/engine.py`` (FP16 converted, INT8 as signed symmetric
Q/DQ with float biases, calibrated on train images with ``deploy.int8.calibration_method``), with a
timing cache per TensorRT version and GPU architecture in ``paths.engine_timing_cache``, and a
sidecar JSON that the TensorRT backend checks before running it.

The engine is then gated like every deploy target, by the same code on the same images: its
mAP50-95 on the first ``deploy.eval_images`` val images (``stages.deploy.accuracy``), judged against
the PyTorch reference of ``metrics/deploy.json`` (measured on those images) by
``stages.deploy.build.judge``; and its raw outputs are compared with ONNX Runtime FP32's on the
first of those images (``stages.deploy.engine.raw_parity``). Either beyond its limit: not deployable.
The stage depends on the environment fingerprint, so a new GPU or TensorRT version rebuilds the engine.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from stages.backends.compare import Comparison
from stages.backends.tensorrt import tensorrt_missing
from stages.core.common import read_json, stage_main, write_json
from stages.core.config import EngineParams, Params
from stages.core.errors import EngineUnavailable, PipelineError
from stages.deploy.accuracy import Accuracy, calibration_inputs, detection_map, labelled_split
from stages.deploy.build import judge
from stages.deploy.int8 import Method
from stages.deploy.targets import ENGINE_NAME

log = logging.getLogger(__name__)

STAGE = "build_engine"


class BuildEngineConfig(BaseModel):
    """Inputs, outputs and options of ``build_engine``."""

    model_config = ConfigDict(frozen=True)

    model: Path
    export_metrics: Path
    deploy_dir: Path
    data_yaml: Path
    engine_dir: Path
    timing_cache_dir: Path  # paths.engine_timing_cache: one cache per TensorRT version and GPU architecture
    metrics: Path
    report: Path
    workspace: Path
    imgsz: int
    batch_sizes: list[int]  # the optimization profile covers these (engine.batch_sizes, else export.batch)
    calibration_images: int
    calibration_seed: int  # the seeded draw of train images, as export's INT8 targets take it
    calibration_method: Method
    eval_images: int  # deploy.eval_images: the val images the reference and every artifact are measured on
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
            timing_cache_dir=params.paths.resolve("engine_timing_cache", root),
            metrics=params.paths.resolve("engine_metrics", root),
            report=params.paths.resolve("engine_report", root),
            workspace=root,
            imgsz=params.train.imgsz,
            batch_sizes=params.engine.batch_sizes or [params.export.batch],
            calibration_images=params.deploy.int8.calibration_images,
            calibration_seed=params.deploy.int8.calibration_seed,
            calibration_method=params.deploy.int8.calibration_method,
            eval_images=params.deploy.eval_images,
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
    eval_images: int | None = None  # the val images the mAP was measured on (the reference's too)
    parity_images: int | None = None  # raw outputs against ONNX Runtime FP32 (stages/deploy/engine.py)
    parity_max_box_px: float | None = None
    parity_max_score: float | None = None
    parity_top_class: float | None = None
    parity_passed: int | None = None
    deployable: int | None = None  # within deploy.max_drop for its precision, and parity passed
    gate: str | None = None  # the gate's verdict in words

    TEXT: ClassVar[set[str]] = {"status", "reason", "path", "precision", "tensorrt", "gpu", "gate"}

    def metrics_record(self) -> dict[str, Any]:
        """Numbers only: ``built`` (1 or 0) and the measurements; no nulls."""
        return {"built": int(self.status == "built")} | self.model_dump(exclude_none=True, exclude=self.TEXT)

    def report_record(self) -> dict[str, Any]:
        """The text facts: status and why, the file, precision, TensorRT version and GPU."""
        return self.model_dump(include=self.TEXT)


def _shown(path: Path, workspace: Path) -> str:
    return path.relative_to(workspace).as_posix() if path.is_relative_to(workspace) else str(path)


def no_cuda_driver() -> bool:
    """Whether this Linux machine has no CUDA driver at all: ``libcuda.so.1`` does not load.

    PyTorch then sees no GPU either, and the stage says so without importing it (1.5 CPU-s of a
    2-second stage on a CPU machine). Elsewhere, or with a driver, PyTorch decides.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False


def missing_prerequisite() -> str | None:
    """Why a TensorRT engine cannot be built here, or ``None`` when it can.

    TensorRT counts as installed only with its bindings, not an empty namespace left by its type
    stubs (``stages.backends.tensorrt.tensorrt_missing``).
    """
    if no_cuda_driver():
        return "no CUDA GPU is visible (no CUDA driver: libcuda.so.1 does not load)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return tensorrt_missing()


def _skip(cfg: BuildEngineConfig, reason: str, *, required: bool) -> BuildEngineResult:
    """Record that no engine was built and why; fail instead when ``required``.

    Raises:
        EngineUnavailable: When ``required`` (``engine.required`` and something was exported).
    """
    if cfg.engine_dir.exists():
        shutil.rmtree(cfg.engine_dir)  # nothing half-built stays behind
    cfg.engine_dir.mkdir(parents=True)
    result = BuildEngineResult(
        status="skipped",
        reason=reason,
        precision=cfg.options.precision,
        imgsz=cfg.imgsz,
        batch=cfg.batch_sizes[0],
    )
    # A DVC output: say what it is for until a build writes a timing cache into it.
    cfg.timing_cache_dir.mkdir(parents=True, exist_ok=True)
    (cfg.timing_cache_dir / "README.md").write_text(
        "TensorRT's timing caches go here once an engine is built, one per TensorRT version and GPU "
        "architecture (timing-trt<version>-sm<capability>.cache); kept between builds.\n",
        encoding="utf-8",
    )
    write_json(cfg.metrics, result.metrics_record())
    write_json(cfg.report, result.report_record())
    # Say so where a user looks for the engine (this also keeps the DVC output from being empty).
    (cfg.engine_dir / "README.md").write_text(
        f"No TensorRT engine was built: {reason}.\nSee {_shown(cfg.report, cfg.workspace)} for the build record.\n",
        encoding="utf-8",
    )
    if required:
        raise EngineUnavailable(f"engine.required is true but {reason}", stage=STAGE, key="engine.required")
    log.warning("TensorRT engine skipped: %s", reason)
    return result


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
        return _skip(cfg, reason, required=cfg.options.required and exported)

    from stages.backends import tensorrt_build
    from stages.deploy.engine import engine_onnx

    onnx = cfg.deploy_dir / "model.onnx"
    started = time.perf_counter()
    target = cfg.engine_dir / ENGINE_NAME
    try:
        calibration = None
        if precision == "int8":
            calibration = calibration_inputs(cfg.data_yaml, cfg.calibration_images, cfg.imgsz, cfg.calibration_seed)
        with tempfile.TemporaryDirectory(prefix="engine-") as tmp:
            prepared = engine_onnx(
                onnx, precision, Path(tmp) / f"model.{precision}.onnx", calibration, cfg.calibration_method
            )
            sidecar = tensorrt_build.build(
                prepared,
                target,
                precision=precision,
                batch_sizes=cfg.batch_sizes,
                workspace_gib=cfg.options.workspace_gib,
                timing_cache_dir=cfg.timing_cache_dir,
                source_onnx=onnx,
                device=cfg.options.device,
            )
    except EngineUnavailable as exc:
        # A build TensorRT refused (parse, build, Q/DQ rules): a skip with its reason unless required.
        return _skip(cfg, f"the TensorRT build failed: {exc}", required=cfg.options.required)
    gate = _gate(cfg, target, precision)
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
        map50=gate.accuracy.map50,
        map50_95=gate.accuracy.map50_95,
        drop_map50_95=gate.drop,
        eval_images=gate.accuracy.images,
        parity_images=gate.parity.images,
        parity_max_box_px=round(gate.parity.max_abs_diff_boxes_px, 6),
        parity_max_score=round(gate.parity.max_abs_diff_scores, 6),
        parity_top_class=round(gate.parity.top_class_agreement, 6),
        parity_passed=int(not gate.parity_failures),
        deployable=int(gate.deployable),
        gate=gate.reason,
    )
    write_json(cfg.metrics, result.metrics_record())
    write_json(cfg.report, result.report_record())
    log.info(
        "built %s (%s, %.1f MB) in %.1fs on %s, profile %s: %s",
        target,
        precision,
        result.size_mb,
        result.build_seconds,
        result.gpu,
        sidecar.shapes,
        gate.reason,
    )
    return result


class _Gate(BaseModel):
    accuracy: Accuracy
    drop: float
    parity: Comparison
    parity_failures: list[str]
    deployable: bool
    reason: str


def _gate(cfg: BuildEngineConfig, engine: Path, precision: str) -> _Gate:
    """The engine gated like every deploy target (``stages.deploy.build.judge``) on the reference's images,
    and its raw outputs against ONNX Runtime FP32's (``stages.deploy.engine.raw_parity``)."""
    from stages.backends import open_runner
    from stages.backends.inference import load_inputs
    from stages.deploy.engine import PARITY_IMAGES, raw_parity

    data = labelled_split(cfg.data_yaml, "val", cfg.eval_images)
    runner = open_runner("tensorrt", engine, workspace=cfg.workspace, device=cfg.options.device, precision=precision)
    reference_runner = open_runner("onnxruntime", cfg.deploy_dir / "model.onnx", workspace=cfg.workspace)
    try:
        accuracy = detection_map(runner, data, cfg.imgsz, cfg.conf, cfg.iou)
        parity, beyond = raw_parity(
            runner, reference_runner, load_inputs(data.paths[:PARITY_IMAGES], cfg.imgsz), precision
        )
    finally:
        runner.close()
        reference_runner.close()
    reference = read_json(cfg.deploy_metrics, stage=STAGE)["pytorch"]["map50_95"]
    drop, within, reason = judge(reference, accuracy.map50_95, cfg.max_drop[precision], precision)
    if beyond:
        reason += f"; raw outputs against ONNX Runtime FP32 on {parity.images} images beyond the {precision} "
        reason += "tolerance: " + "; ".join(beyond)
    return _Gate(
        accuracy=accuracy,
        drop=drop,
        parity=parity,
        parity_failures=beyond,
        deployable=within and not beyond,
        reason=reason,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, BuildEngineConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
