"""Stage ``train``: train an Ultralytics YOLO detector on the prepared dataset.

Everything Ultralytics needs is passed explicitly; its outputs are read back and copied to the
pipeline's own paths: ``models/best.pt``, ``models/train/`` (``results.csv`` and the ``args.yaml``
Ultralytics trained with), ``metrics/train.json`` and the training curves ``plots/train_curves.csv``
(a DVC plot), and ``reports/train.json`` (the text facts: device, backend, optimizer, LR rule, SyncBN).
The model is built from a model YAML (no download) or loaded from a local ``.pt`` file; a name that
would make Ultralytics download weights is refused.

One process trains here, in the stage's own process. More than one (several GPUs, several nodes, or
several CPU processes) run through ``torch.distributed.run``, which this stage starts on the head
node; several nodes run as a job (``python -m stages.training.job`` on every node, which
``python -m stages.train --print-launch`` prints). The run's description (launch spec, fingerprint,
resume point), the job, the node checks, the learning-rate rule, the trainer subclass, the
publishing of a finished run and the words for a full disk live in ``stages/training/``; this module
keeps the stage's config, result and CLI and the order of its work: train or resume, publish,
restore the last good outputs on failure, write the metrics.

Ultralytics' run folder, with the ``last.pt`` checkpoint, lives outside the stage's outputs, in
``paths.train_runs/<fingerprint>/``: the outputs are then ordinary ones that DVC's run-cache keeps,
and an interrupted run of the same params and data still resumes from its last epoch. The folder is
removed once the run has finished and its results are in place. A training that fails puts back the
outputs of the last good run, which DVC removed before starting the stage.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.core.common import DEFAULT_PARAMS, configure_logging, read_json, stage_main, write_json
from stages.core.config import Params, TrainParams, check_class_floors, load_params
from stages.core.errors import ConfigError, PipelineError, TrainingError
from stages.core.recorded_outputs import restore_recorded_outputs
from stages.core.runtime import image_pixel_limit, import_ultralytics
from stages.data.datasets import read_prepared_yaml
from stages.training import launch, outputs, spec
from stages.training.facts import node_facts
from stages.training.full_disk import full_disk_error, no_space, no_space_message
from stages.training.lightning import require_lightning

log = logging.getLogger(__name__)

STAGE = "train"


class TrainConfig(BaseModel):
    """Inputs, outputs and hyper-parameters of ``train``."""

    model_config = ConfigDict(frozen=True)

    data_yaml: Path
    run_dir: Path
    runs: Path
    best: Path
    metrics: Path
    curves: Path
    lr_curves: Path
    report: Path
    params_file: Path
    workspace: Path
    hyper: TrainParams
    max_image_pixels: int  # validate.max_image_pixels: training refuses what validation refuses
    # evaluate.min_class_map50, checked against the prepared class names before training (not a dvc.yaml
    # param of train: it changes nothing train writes, and evaluate checks it again where it applies).
    class_floors: dict[str, float] = {}

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
            lr_curves=paths.resolve("lr_plot", root),
            report=paths.resolve("train_report", root),
            params_file=root / DEFAULT_PARAMS,
            workspace=root,
            hyper=params.train,
            max_image_pixels=params.validate_.max_image_pixels,
            class_floors=params.evaluate.min_class_map50,
        )


class TrainResult(BaseModel):
    """The training summary: numbers go to ``metrics/train.json``, text to ``reports/train.json``."""

    model: str
    device: str
    amp: bool
    backend: str  # nccl, gloo, or none for one process
    trainer: str = "ultralytics"  # who ran the loop: ultralytics or lightning (train.backend)
    optimizer: str  # the optimizer actually used (optimizer: auto resolved)
    lr_rule: str
    sync_bn: bool
    resumed_after_epoch: int | None  # the first resume of this stage run (a retry's, or a launcher restart's)
    starts: int  # times training started in this stage run: 1, plus one per launcher restart
    epochs_run: int
    final_val_images: int  # images the final validation of best.pt saw: the whole val split
    best_epoch: int | None
    seconds: float
    final: dict[str, float]
    best: dict[str, float]
    distributed: dict[str, int]
    recipe: dict[str, int | float]
    throughput: dict[str, float]
    epochs: list[dict[str, float]]

    def metrics_record(self) -> dict[str, Any]:
        """What ``metrics/train.json`` holds: numbers only."""
        text = {"model", "device", "backend", "optimizer", "lr_rule", "sync_bn", "amp", "trainer"}
        record = self.model_dump(mode="json", exclude=text)
        record["amp"] = int(self.amp)
        # train.backend as a number (metrics files hold numbers; its name is in reports/train.json's "trainer")
        record["trainer_lightning"] = int(self.trainer == "lightning")
        return record

    def report_record(self) -> dict[str, Any]:
        """What ``reports/train.json`` holds: the text facts of the run."""
        return {
            "model": self.model,
            "device": self.device,
            "amp": "on" if self.amp else "off",
            "backend": self.backend,
            "optimizer": self.optimizer,
            "lr_rule": self.lr_rule,
            "sync_bn": "on" if self.sync_bn else "off",
            "trainer": self.trainer,
        }


def _check_device(device: str) -> None:
    if device.lower() in {"cpu", "mps"}:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={device!r} asks for a CUDA GPU but none is visible here", key="train.device")


def _raise_on_sigterm(signum: int, _frame: Any) -> None:
    # A stop request (a timeout, a scheduler) becomes an exception, so the failure path below runs.
    raise SystemExit(128 + signum)


def _train(cfg: TrainConfig, model_source: str, run_dir: Path, fingerprint: str) -> tuple[int | None, int]:
    """Train in ``run_dir``, resuming it when it holds an unfinished run of the same fingerprint.

    One process decides here which checkpoint to resume from; launched processes decide it at each of
    their starts (global rank 0, ``stages.training.worker``), so a launcher restart resumes too.

    Returns:
        The epoch the run first resumed after (``None`` for a fresh run), and how many times it started.
    """
    hyper = cfg.hyper
    if not launch.is_distributed(hyper):
        fit = spec.backend_fit(hyper)
        found = spec.run_resume_point(run_dir, fingerprint, hyper)
        if found is None:
            spec.start_run_dir(run_dir, fingerprint)
        else:
            log.info("resuming the interrupted run from %s (%d epochs done)", *found)
        fit(hyper, cfg.data_yaml, run_dir, model_source, spec.trainer_settings(hyper), found[0] if found else None)
        return (found[1] if found else None), 1

    marker = run_dir / spec.FINGERPRINT
    if not marker.is_file() or read_json(marker, stage=STAGE).get("fingerprint") != fingerprint:
        spec.start_run_dir(run_dir, fingerprint)
    spec.build_label_caches(cfg.data_yaml, hyper.imgsz)
    prepared = cfg.data_yaml.parent
    launch_spec = spec.LaunchSpec(
        fingerprint=fingerprint,
        run_dir=run_dir.relative_to(cfg.workspace).as_posix(),
        data_yaml=cfg.data_yaml.relative_to(cfg.workspace).as_posix(),
        model=hyper.model,
        hyper=hyper,
        settings=spec.trainer_settings(hyper),
        max_image_pixels=cfg.max_image_pixels,
        head=node_facts(cfg.workspace, prepared, hyper.model),
    )
    spec_file = spec.write_spec(launch_spec, run_dir)
    before = len(spec.read_starts(run_dir))
    launch.run_attempt(launch_spec.model_dump_json(), spec_file, cfg.workspace, hyper.distributed)
    starts = spec.read_starts(run_dir)[before:]
    resumed = [s["resumed_after"] for s in starts if s["resumed_after"] is not None]
    return (resumed[0] if resumed else None), len(starts)


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
    if cfg.hyper.backend == "lightning":  # before anything is built or trained
        require_lightning()
    if cfg.class_floors:  # a typo in a per-class floor found now, not after the training
        check_class_floors(cfg.class_floors, read_prepared_yaml(cfg.data_yaml)["names"], cfg.data_yaml)
    ultralytics = import_ultralytics(cfg.workspace)
    model_source = spec.resolve_model(cfg.hyper.model, cfg.workspace, Path(ultralytics.__file__).parent)
    _check_device(cfg.hyper.device)

    fingerprint = spec.run_fingerprint(cfg.hyper, cfg.workspace, cfg.data_yaml.parent)
    run_dir = cfg.runs / fingerprint[:16]
    started = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        resumed_after, starts = _train(cfg, model_source, run_dir, fingerprint)
        rows, stats = outputs.publish(run_dir, cfg)
    except BaseException as error:
        # Said first, before anything else is tried: what could not be written and the space left.
        full = no_space(error)
        if full is not None:
            message = no_space_message(full, cfg.runs)
            log.error("training stopped: %s", message)
        # The checkpoint stays for a resume; the workspace gets the last good results back (as links
        # to DVC's cache: no space needed).
        restored = restore_recorded_outputs(cfg.workspace, STAGE)
        if restored:
            log.error("training failed; restored the last good outputs: %s", ", ".join(restored))
        if full is not None:
            raise full_disk_error(full, message, restored, STAGE) from error
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    seconds = time.perf_counter() - started

    result = TrainResult(
        model=cfg.hyper.model,
        resumed_after_epoch=resumed_after,
        starts=starts,
        seconds=round(seconds, 2),
        **outputs.run_summary(run_dir, rows, stats),
    )
    write_json(cfg.metrics, result.metrics_record())
    write_json(cfg.report, result.report_record())
    # Finished and published: the checkpoint has no further use (DVC's cache holds the results).
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info(
        "trained %d epochs in %.1fs on %s (%d processes, AMP %s, %s at lr %.4g): final mAP50 %.4f, mAP50-95 %.4f",
        result.epochs_run,
        seconds,
        result.device,
        result.distributed["world_size"],
        "on" if result.amp else "off",
        result.optimizer,
        result.recipe["lr_peak"],
        result.final.get("map50", float("nan")),
        result.final.get("map50_95", float("nan")),
    )
    return result


def print_launch(argv: list[str] | None = None) -> int:
    """``python -m stages.train --print-launch``: the command of every node, ``node <rank>: <command>``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stages.train --print-launch")
    parser.add_argument("--print-launch", action="store_true")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        hyper = load_params(args.params).train
        if hyper.backend == "lightning":  # every node will need it: said here, before any node starts
            require_lightning()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in launch.launch_lines(hyper, args.params.as_posix()):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``--print-launch``: print each node's command instead of training)."""
    args = sys.argv[1:] if argv is None else argv
    if "--print-launch" in args:
        return print_launch(args)
    return stage_main(STAGE, TrainConfig.from_params, run, args)


if __name__ == "__main__":
    sys.exit(main())
