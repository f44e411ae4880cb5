"""Stage ``build_engine``: build a TensorRT engine from the trained model, where the machine can.

TensorRT needs an NVIDIA GPU and the ``tensorrt`` package (the ``gpu`` extra). Without them the stage
records ``status: skipped`` with the reason and succeeds, unless ``engine.required`` is true, in which
case it fails. The engine is built by Ultralytics' TensorRT exporter (which handles the TensorRT 10
and 11 precision APIs) in a scratch folder, then moved to ``<engine_dir>/model.engine``. The stage
depends on the environment fingerprint, so a new GPU or TensorRT version rebuilds the engine.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from stages.common import read_json, stage_main, write_json
from stages.config import EngineParams, Params
from stages.errors import EngineUnavailable, PipelineError
from stages.runtime import import_ultralytics

log = logging.getLogger(__name__)

STAGE = "build_engine"
ENGINE_NAME = "model.engine"


class BuildEngineConfig(BaseModel):
    """Inputs, outputs and options of ``build_engine``."""

    model_config = ConfigDict(frozen=True)

    model: Path
    export_metrics: Path
    engine_dir: Path
    metrics: Path
    workspace: Path
    imgsz: int
    batch: int
    options: EngineParams

    @classmethod
    def from_params(cls, params: Params, root: Path) -> BuildEngineConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(
            model=params.paths.resolve("model", root),
            export_metrics=params.paths.resolve("export_metrics", root),
            engine_dir=params.paths.resolve("engine_dir", root),
            metrics=params.paths.resolve("engine_metrics", root),
            workspace=root,
            imgsz=params.train.imgsz,
            batch=params.export.batch,
            options=params.engine,
        )


class BuildEngineResult(BaseModel):
    """What ``metrics/engine.json`` holds."""

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
            status="skipped", reason=reason, precision=precision, imgsz=cfg.imgsz, batch=cfg.batch
        )
        write_json(cfg.metrics, result)
        # Say so where a user looks for the engine (this also keeps the DVC output from being empty).
        (cfg.engine_dir / "README.md").write_text(
            f"No TensorRT engine was built: {reason}.\nSee {cfg.metrics.name} for the build record.\n",
            encoding="utf-8",
        )
        if cfg.options.required and exported:
            raise EngineUnavailable(f"engine.required is true but {reason}", stage=STAGE, key="engine.required")
        log.warning("TensorRT engine skipped: %s", reason)
        return result

    import tensorrt
    import torch

    ultralytics = import_ultralytics(cfg.workspace)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="engine-") as tmp:
        # Export from a copy so Ultralytics' intermediate ONNX never lands beside models/best.pt.
        scratch = Path(tmp) / "model.pt"
        shutil.copyfile(cfg.model, scratch)
        built = ultralytics.YOLO(str(scratch), task="detect").export(
            format="engine",
            imgsz=cfg.imgsz,
            batch=cfg.batch,
            quantize=16 if precision == "fp16" else None,
            workspace=cfg.options.workspace_gib,
            device=0,
            verbose=False,
        )
        if not built or not Path(built).is_file():
            raise EngineUnavailable(f"Ultralytics TensorRT export returned no file ({built!r})", stage=STAGE)
        target = cfg.engine_dir / ENGINE_NAME
        shutil.move(built, target)
    result = BuildEngineResult(
        status="built",
        path=str(target.relative_to(cfg.workspace) if target.is_relative_to(cfg.workspace) else target),
        precision=precision,
        imgsz=cfg.imgsz,
        batch=cfg.batch,
        tensorrt=tensorrt.__version__,
        gpu=torch.cuda.get_device_name(0),
        build_seconds=round(time.perf_counter() - started, 2),
        size_mb=round(target.stat().st_size / 1e6, 3),
    )
    write_json(cfg.metrics, result)
    log.info(
        "built %s (%s, %.1f MB) in %.1fs on %s",
        target,
        precision,
        result.size_mb,
        result.build_seconds,
        result.gpu,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, BuildEngineConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
