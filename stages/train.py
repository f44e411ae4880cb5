"""Stage ``train``: train an Ultralytics YOLO detector on the prepared dataset.

Everything Ultralytics needs is passed explicitly; its outputs are read back and copied to the
pipeline's own paths: ``models/best.pt``, ``models/train/`` (``results.csv`` and the ``args.yaml``
Ultralytics trained with), ``metrics/train.json`` and the training curves ``plots/train_curves.csv``
(a DVC plot). The model is built from a model YAML (no download) or loaded from a local ``.pt``
file; a name that would make Ultralytics download weights is refused.

Ultralytics' run folder, with the ``last.pt`` checkpoint, lives outside the stage's outputs, in
``paths.train_runs/<fingerprint>/``: the outputs are then ordinary ones that DVC's run-cache keeps,
and an interrupted run of the same params and data still resumes from its last epoch. The folder is
removed once the run has finished and its results are in place. A training that fails puts back the
outputs of the last good run, which DVC removed before starting the stage.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.common import stage_main, write_json, write_text
from stages.config import Params, TrainParams
from stages.data_version import dvc_lock_stage
from stages.errors import ConfigError, TrainingError
from stages.recorded_outputs import restore_recorded_outputs
from stages.runtime import image_pixel_limit, import_ultralytics, offline_trainer

log = logging.getLogger(__name__)

STAGE = "train"
FINGERPRINT = "pipeline_run.json"  # in the run folder: which configuration and data the run belongs to
RUN_RECORD = ("results.csv", "args.yaml")  # what of Ultralytics' run folder becomes the train_dir output

# Ultralytics results.csv columns -> names used in metrics/train.json and the curves file.
_COLUMNS = {
    "epoch": "epoch",
    "time": "time_s",
    "train/box_loss": "train_box_loss",
    "train/cls_loss": "train_cls_loss",
    "train/dfl_loss": "train_dfl_loss",
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "val/box_loss": "val_box_loss",
    "val/cls_loss": "val_cls_loss",
    "val/dfl_loss": "val_dfl_loss",
}


class TrainConfig(BaseModel):
    """Inputs, outputs and hyper-parameters of ``train``."""

    model_config = ConfigDict(frozen=True)

    data_yaml: Path
    run_dir: Path
    runs: Path
    best: Path
    metrics: Path
    curves: Path
    workspace: Path
    hyper: TrainParams
    max_image_pixels: int  # validate.max_image_pixels: training refuses what validation refuses

    @classmethod
    def from_params(cls, params: Params, root: Path) -> TrainConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        paths = params.paths
        return cls(
            data_yaml=paths.resolve("prepared", root) / "data.yaml",
            run_dir=paths.resolve("train_dir", root),
            runs=paths.resolve("train_runs", root),
            best=paths.resolve("model", root),
            metrics=paths.resolve("train_metrics", root),
            curves=paths.resolve("train_plot", root),
            workspace=root,
            hyper=params.train,
            max_image_pixels=params.validate_.max_image_pixels,
        )


class TrainResult(BaseModel):
    """Summary written to ``metrics/train.json``."""

    model: str
    resumed_after_epoch: int | None
    epochs_run: int
    best_epoch: int | None
    device: str
    amp: bool
    seconds: float
    final: dict[str, float]
    best: dict[str, float]


def resolve_model(model: str, workspace: Path, ultralytics_root: Path) -> str:
    """Where the model comes from: a local file, or a model YAML shipped with Ultralytics.

    Args:
        model: The ``train.model`` param.
        workspace: The workspace root (relative paths are resolved against it).
        ultralytics_root: The installed ``ultralytics`` package folder.

    Returns:
        An absolute path, or the name of a bundled model YAML.

    Raises:
        ConfigError: When the value names neither; in particular a ``.pt`` that is not a local file,
            which Ultralytics would otherwise try to download.
    """
    local = Path(model) if Path(model).is_absolute() else workspace / model
    if local.is_file():
        return str(local.resolve())
    if model.endswith((".yaml", ".yml")) and "/" not in model:
        # Ultralytics maps a scaled name (yolo11n.yaml) to its family file (yolo11.yaml).
        family = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", Path(model).stem) + Path(model).suffix
        bundled = ultralytics_root / "cfg" / "models"
        if any(bundled.rglob(model)) or any(bundled.rglob(family)):
            return model
        raise ConfigError(
            f"no local file and no model YAML bundled with Ultralytics named {model!r}", key="train.model"
        )
    raise ConfigError(
        f"{model!r} is not a local file; weights are never downloaded. Put the .pt file under the "
        "workspace (e.g. weights/) and give its path, or name a model YAML such as yolo11n.yaml",
        key="train.model",
    )


def _check_device(device: str) -> None:
    if device.lower() in {"cpu", "mps"}:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={device!r} asks for a CUDA GPU but none is visible here", key="train.device")


def read_results_csv(path: Path) -> list[dict[str, float]]:
    """Rows of Ultralytics' ``results.csv`` with our column names (unknown columns keep theirs)."""
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for key, value in raw.items():
                name = _COLUMNS.get(key.strip(), re.sub(r"[^0-9a-zA-Z]+", "_", key.strip()).strip("_"))
                row[name] = float(value)
            rows.append(row)
    return rows


def write_curves(rows: list[dict[str, float]], path: Path) -> None:
    """Write the per-epoch curves as CSV for ``dvc plots``."""
    if not rows:
        raise TrainingError("training produced no per-epoch results", stage=STAGE, path=path)
    header = list(rows[0])
    lines = [",".join(header)]
    lines += [",".join(f"{row[k]:.6g}" if k != "epoch" else str(int(row[k])) for k in header) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def run_fingerprint(cfg: TrainConfig) -> str:
    """What makes a training run the same run: its hyper-parameters and the exact prepared data.

    The data part is DVC's hash of the prepared dataset from ``dvc.lock`` (written when ``prepare``
    ran); outside DVC it is unknown, and then no run is ever resumed.
    """
    prepared = cfg.data_yaml.parent.relative_to(cfg.workspace).as_posix()
    outs = dvc_lock_stage(cfg.workspace, "prepare").get("outs", [])
    data = next((o.get("md5") for o in outs if o.get("path") == prepared), None)
    payload = {"hyper": cfg.hyper.model_dump(mode="json"), "data": data or f"unknown-{time.time_ns()}"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _checkpoint_epochs(last: Path) -> int:
    """How many epochs an Ultralytics checkpoint has completed (its ``epoch`` is 0-based; -1 when final)."""
    import torch

    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    return int(ckpt.get("epoch", -1)) + 1


def resumable_checkpoint(run_dir: Path, fingerprint: str, epochs: int) -> tuple[Path, int] | None:
    """``last.pt`` of an interrupted run of the same configuration and its completed epochs, or ``None``.

    A run is resumed only when it was started with the same fingerprint, saved a checkpoint, and
    completed fewer epochs than configured (Ultralytics then trains exactly the remaining ones).
    Rows that ``results.csv`` holds beyond the checkpoint (the process died between writing them and
    saving the checkpoint) are dropped, since those epochs run again.
    """
    last = run_dir / "weights" / "last.pt"
    marker = run_dir / FINGERPRINT
    results = run_dir / "results.csv"
    if not (last.is_file() and marker.is_file() and results.is_file()):
        return None
    if json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") != fingerprint:
        return None
    done = _checkpoint_epochs(last)
    if not 0 < done < epochs:
        return None
    lines = results.read_text(encoding="utf-8").splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if int(float(line.split(",")[0])) <= done]
    results.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return last, done


def _train_kwargs(cfg: TrainConfig, ultralytics_run: Path) -> dict[str, Any]:
    h = cfg.hyper
    return {
        "data": str(cfg.data_yaml),
        "epochs": h.epochs,
        "imgsz": h.imgsz,
        "batch": h.batch,
        "device": h.device,
        "workers": h.workers,
        "seed": h.seed,
        "deterministic": h.deterministic,
        "optimizer": h.optimizer,
        "lr0": h.lr0,
        "patience": h.patience,
        "amp": h.amp,
        "cache": h.cache,
        "mosaic": h.mosaic,
        "close_mosaic": h.close_mosaic,
        "project": str(ultralytics_run.parent),
        "name": ultralytics_run.name,
        "exist_ok": True,
        "plots": False,  # plots need fonts and time; the curves come from results.csv instead
        "val": True,
        "save": True,
        "verbose": False,
    }


def _raise_on_sigterm(signum: int, _frame: Any) -> None:
    # A stop request (a timeout, a scheduler) becomes an exception, so the failure path below runs.
    raise SystemExit(128 + signum)


def _train(
    ultralytics: Any, cfg: TrainConfig, model_source: str, ultralytics_run: Path, fingerprint: str
) -> tuple[Any, int | None]:
    """Run Ultralytics' training in ``ultralytics_run``, resuming it when it holds an unfinished run.

    Returns:
        The trainer, and the epoch the run resumed after (``None`` for a fresh run).
    """
    resumable = resumable_checkpoint(ultralytics_run, fingerprint, cfg.hyper.epochs)
    if resumable is not None:
        last, resumed_after = resumable
        log.info("resuming the interrupted run from %s (%d epochs done)", last, resumed_after)
        model = ultralytics.YOLO(str(last), task="detect")
        model.train(resume=True, data=str(cfg.data_yaml), trainer=offline_trainer())
        return model.trainer, resumed_after
    if ultralytics_run.exists():
        shutil.rmtree(ultralytics_run)
    ultralytics_run.mkdir(parents=True)
    write_json(ultralytics_run / FINGERPRINT, {"fingerprint": fingerprint})
    model = ultralytics.YOLO(model_source, task="detect")
    model.train(trainer=offline_trainer(), **_train_kwargs(cfg, ultralytics_run))
    return model.trainer, None


def _publish(trainer: Any, cfg: TrainConfig) -> list[dict[str, float]]:
    """Copy the finished run's weights and record into the stage's outputs; returns the per-epoch rows."""
    save_dir = Path(trainer.save_dir)
    best = save_dir / "weights" / "best.pt"
    results_csv = save_dir / "results.csv"
    if not best.is_file():
        raise TrainingError("Ultralytics finished without writing best.pt", stage=STAGE, path=best)
    if not results_csv.is_file():
        raise TrainingError("Ultralytics finished without writing results.csv", stage=STAGE, path=results_csv)
    rows = read_results_csv(results_csv)
    write_curves(rows, cfg.curves)
    cfg.best.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, cfg.best)
    if cfg.run_dir.exists():
        shutil.rmtree(cfg.run_dir)
    cfg.run_dir.mkdir(parents=True)
    for name in RUN_RECORD:
        if (save_dir / name).is_file():
            shutil.copyfile(save_dir / name, cfg.run_dir / name)
    return rows


def run(cfg: TrainConfig) -> TrainResult:
    """Train (or resume an interrupted run), and write the model, run record, metrics and curves.

    Args:
        cfg: Paths and hyper-parameters.

    Returns:
        The training summary.

    Raises:
        ConfigError: When the model or device cannot be used here.
        TrainingError: When Ultralytics did not produce weights or results.
    """
    if not cfg.data_yaml.is_file():
        raise TrainingError("prepared data.yaml is missing; run 'prepare' first", stage=STAGE, path=cfg.data_yaml)
    # Set before Ultralytics, and with it OpenCV, is imported: OpenCV reads its limit when it loads.
    with image_pixel_limit(cfg.max_image_pixels):
        return _run(cfg)


def _run(cfg: TrainConfig) -> TrainResult:
    ultralytics = import_ultralytics(cfg.workspace)
    model_source = resolve_model(cfg.hyper.model, cfg.workspace, Path(ultralytics.__file__).parent)
    _check_device(cfg.hyper.device)

    fingerprint = run_fingerprint(cfg)
    ultralytics_run = cfg.runs / fingerprint[:16]
    started = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        trainer, resumed_after = _train(ultralytics, cfg, model_source, ultralytics_run, fingerprint)
        rows = _publish(trainer, cfg)
    except BaseException:
        # The checkpoint stays for a resume; the workspace gets the last good results back.
        restored = restore_recorded_outputs(cfg.workspace, STAGE)
        if restored:
            log.error("training failed; restored the last good outputs: %s", ", ".join(restored))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    seconds = time.perf_counter() - started

    best_row = max(rows, key=lambda r: 0.1 * r.get("map50", 0.0) + 0.9 * r.get("map50_95", 0.0))
    result = TrainResult(
        model=cfg.hyper.model,
        resumed_after_epoch=resumed_after,
        epochs_run=len(rows),
        best_epoch=int(best_row["epoch"]) if "epoch" in best_row else None,
        device=str(trainer.device),
        amp=bool(trainer.amp),
        seconds=round(seconds, 2),
        final={k: v for k, v in rows[-1].items() if k != "epoch"},
        best={k: v for k, v in best_row.items() if k != "epoch"},
    )
    write_json(cfg.metrics, result)
    # Finished and published: the checkpoint has no further use (DVC's cache holds the results).
    shutil.rmtree(ultralytics_run, ignore_errors=True)
    log.info(
        "trained %d epochs in %.1fs on %s (AMP %s): final mAP50 %.4f, mAP50-95 %.4f",
        result.epochs_run,
        seconds,
        result.device,
        "on" if result.amp else "off",
        result.final.get("map50", float("nan")),
        result.final.get("map50_95", float("nan")),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, TrainConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
