"""The one subclass of Ultralytics' detection trainer: the seam where training at scale is added.

Imported only after ``stages.core.runtime.import_ultralytics`` has set Ultralytics' offline settings (and,
in a launched process, after ``handshake`` has fixed the global rank, which Ultralytics reads from
the environment when it is first imported).

What it changes, each in one overridden method:

- ``__init__``: in a process that ``torch.distributed.run`` started, the world size is the
  launcher's (Ultralytics counts the GPUs listed in ``device``, which is one node's share, and 0 on
  CPU), so CPU processes train as one DDP group too.
- ``_setup_ddp``: the backend from ``train.distributed.backend`` and the collective-operation timeout
  (Ultralytics hard-codes NCCL-or-gloo and 3 hours); the GPU of a process is its *local* rank's. NCCL's
  watchdog enforces the timeout; unlike Ultralytics, no ``TORCH_NCCL_BLOCKING_WAIT`` (CPU-blocking waits).
- ``_setup_train``: the offline AMP check; on CPU, DDP without ``device_ids`` (Ultralytics passes
  the device index, which CPU modules refuse); after set-up, the EMA model (what checkpoints hold)
  turned back to plain batch norm.
- ``_load_checkpoint_state``: the same for the EMA Ultralytics rebuilds from the SyncBN training model
  when it resumes or recovers from a NaN loss.
- ``save_model``: every checkpoint is written beside the run's and then replaces it whole (Ultralytics
  writes in place, so a kill or a full disk mid-save left a truncated ``last.pt`` no resume could read).
- ``final_eval``: the processes leave the process group together before rank 0 validates ``best.pt``
  alone (Ultralytics' barriers there assume one node), over the whole val split (the trainer's val
  loader holds one rank's share); the number of images it saw goes to ``final_eval.json``. The optimizer
  state Ultralytics strips from the checkpoints then is written whole too.
- ``set_model_attributes``: SyncBN conversion, after the model is on its device and before the DDP wrap.
- ``build_optimizer``: the learning-rate rule of ``recipe`` on top of whatever Ultralytics chose.
- callbacks: per-epoch throughput, data-loader wait and peak GPU memory, and the recipe actually
  used, written by global rank 0 into the run folder.

How checkpoints are written whole lives in ``checkpoints``, the patches for processes Ultralytics does
not expect (CPU DDP, a local rank's GPU, validation alone) in ``ddp``. What stays is one cohesive
thing: the subclass, whose overrides share the trainer's state and Ultralytics' call order, and the
two functions that build and run it (``overrides``, ``fit``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import LOCAL_RANK, RANK

from stages.core.errors import ConfigError
from stages.core.runtime import offline_amp_check
from stages.training import checkpoints, ddp, sync_bn
from stages.training import recipe as rules
from stages.training.outputs import EPOCH_STATS, FINAL_EVAL, RECIPE
from stages.training.settings import TrainerSettings

log = logging.getLogger(__name__)

STAT_COLUMNS = ("epoch", "images_per_s", "dataloader_wait_share", "gpu_mem_peak_gib")


class PipelineTrainer(DetectionTrainer):
    """Ultralytics' ``DetectionTrainer`` with the launch, SyncBN, LR rule and throughput seams above."""

    # Who runs the loop, recorded in recipe.json (the Lightning backend's toolbox says lightning).
    trainer_name = "ultralytics"

    def __init__(
        self,
        cfg: Any = DEFAULT_CFG,
        overrides: dict[str, Any] | None = None,
        _callbacks: dict[str, list[Any]] | None = None,
        settings: TrainerSettings | None = None,
    ) -> None:
        self.settings = settings or TrainerSettings()
        self.optimizer_name = ""
        self.lr_factor = 1.0
        self.sync_bn_active = False
        self.epoch_stats: list[dict[str, float]] = []
        self.batches_per_epoch: list[int] = []
        self._clock: dict[str, float] = {}
        super().__init__(cfg, overrides, _callbacks)
        if LOCAL_RANK != -1:  # a process started by torch.distributed.run
            self.world_size = int(os.environ["WORLD_SIZE"])
        self.add_callback("on_train_start", PipelineTrainer._load_stats)
        self.add_callback("on_train_epoch_start", PipelineTrainer._epoch_started)
        self.add_callback("on_train_batch_start", PipelineTrainer._batch_started)
        self.add_callback("on_train_batch_end", PipelineTrainer._batch_ended)
        self.add_callback("on_train_epoch_end", PipelineTrainer._epoch_ended)

    # --- launch ---------------------------------------------------------------------------------

    def _setup_ddp(self) -> None:
        if self.device.type != "cpu":
            index = ddp.cuda_index(self.args.device, LOCAL_RANK)
            torch.cuda.set_device(index)
            self.device = torch.device("cuda", index)
        # No TORCH_NCCL_BLOCKING_WAIT (Ultralytics sets it): NCCL's watchdog already enforces the timeout
        # (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default, tears the process down on a stuck collective),
        # while blocking wait would make the CPU wait on every collective instead of queueing work behind it.
        if dist.is_initialized():
            return  # stages.training.worker created the group (with this backend and timeout) before the trainer
        dist.init_process_group(
            backend=self.settings.backend,
            timeout=timedelta(seconds=self.settings.collective_timeout_s),
            rank=RANK,
            world_size=self.world_size,
        )

    def _setup_train(self) -> None:
        cpu_ddp = self.world_size > 1 and self.device.type == "cpu"
        with offline_amp_check(), ddp.cpu_ddp_wrap() if cpu_ddp else contextlib.nullcontext():
            super()._setup_train()
        if self.sync_bn_active:
            # The EMA copy is what checkpoints hold; its updates copy tensors by name, which match.
            self.ema.ema = sync_bn.revert(self.ema.ema)
        if RANK in {-1, 0}:
            self._write_recipe()

    def save_model(self) -> bool:
        # Ultralytics writes each checkpoint in place (Path.write_bytes): a kill or a full disk mid-write
        # leaves a truncated last.pt that every resume then fails to read. Its writes go to a scratch folder
        # beside the checkpoints instead (last.pt, best.pt and epochN.pt alike, whatever it decides to write),
        # and each complete file then replaces its checkpoint whole. Only global rank 0 calls this.
        wdir, last, best = self.wdir, self.last, self.best
        scratch = wdir / checkpoints.SCRATCH
        shutil.rmtree(scratch, ignore_errors=True)  # left by a save that was killed
        try:
            scratch.mkdir(parents=True)
            self.wdir, self.last, self.best = scratch, scratch / last.name, scratch / best.name
            try:
                saved = super().save_model()
            finally:
                self.wdir, self.last, self.best = wdir, last, best
            checkpoints.keep_previous(last)
            checkpoints.publish(scratch, wdir)
        except OSError as error:
            # Written in this order by Ultralytics: the last file begun is the one that failed.
            begun = [n for n in (last.name, best.name, f"epoch{self.epoch}.pt") if (scratch / n).exists()]
            failed = Path(error.filename) if error.filename else None
            name = failed.name if failed is not None and failed.parent == scratch else (begun or [last.name])[-1]
            raise checkpoints.checkpoint_error(error, wdir / name) from error
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return saved

    def _load_checkpoint_state(self, ckpt: dict[str, Any]) -> None:
        super()._load_checkpoint_state(ckpt)
        # Ultralytics rebuilds the EMA here from the training model (on resume and in its NaN recovery),
        # which under SyncBN holds SyncBatchNorm; checkpoints are written from the EMA.
        if self.sync_bn_active and self.ema:
            self.ema.ema = sync_bn.revert(self.ema.ema)

    def final_eval(self) -> None:
        # Validating best.pt is global rank 0's alone: only the head holds best.pt, and Ultralytics'
        # barriers there are keyed on the *local* rank, which pair up on one node but not across nodes
        # (every node has a local rank 0). The ranks finish together and leave the process group; rank 0
        # then validates as a single process would.
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
            if RANK != 0:
                return
            # The validator's loader is the trainer's, whose distributed sampler holds this rank's share of
            # the split only; alone, rank 0 must see all of it (at the batch size training validated with).
            self.validator.dataloader = self.get_dataloader(
                self.data[self.args.split], batch_size=self.test_loader.batch_size, rank=-1, mode="val"
            )
            # Ultralytics' validator would gather results from the other ranks, which have left.
            with ddp.single_process_validation():
                self._final_validation()
            return
        self._final_validation()

    def _final_validation(self) -> None:
        """Ultralytics' final validation of ``best.pt``, recording how many images it saw."""
        self.validator.seen = 0  # stays 0 if there is no best.pt to validate
        with checkpoints.stripping_whole():
            super().final_eval()
        images = int(self.validator.seen or 0)
        log.info("final validation: %d images", images)
        if RANK in {-1, 0}:
            (Path(self.save_dir) / FINAL_EVAL).write_text(json.dumps({"images": images}) + "\n", encoding="utf-8")

    def set_model_attributes(self) -> None:
        super().set_model_attributes()
        if self.settings.sync_bn and self.world_size > 1:
            if self.device.type != "cuda":
                raise ConfigError(
                    "sync_bn needs CUDA processes; PyTorch's SyncBatchNorm trains only on GPUs", key="train.sync_bn"
                )
            self.model = sync_bn.convert(self.model)
            self.sync_bn_active = True

    # --- recipe ---------------------------------------------------------------------------------

    def build_optimizer(
        self,
        model: Any,
        name: str = "auto",
        lr: float = 0.001,
        momentum: float = 0.9,
        decay: float = 1e-5,
        iterations: float = 1e5,
    ) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        self.optimizer_name = str(self.args.optimizer) if name == "auto" else name  # auto stores its choice in args
        self.lr_factor = rules.lr_factor(
            self.settings.lr_scaling, self.optimizer_name, self.batch_size, self.settings.base_batch, self.args.nbs
        )
        for group in optimizer.param_groups:
            group["lr"] *= self.lr_factor
        if name == "auto":
            log.warning(
                "optimizer: auto chose %s with lr %.6g and ignores train.lr0=%g; set train.optimizer to use lr0",
                self.optimizer_name,
                self.args.lr0 * self.lr_factor,
                self.settings.configured_lr0,
            )
        return optimizer

    def lr_peak(self) -> float:
        """The rate the schedule is built on (warmup ramps to it, decay starts from it), from the optimizer."""
        groups = self.optimizer.param_groups
        main = next((g for g in groups if g.get("param_group") in {"weight", "muon"}), groups[0])
        return float(main.get("initial_lr", main["lr"]))

    def _write_recipe(self) -> None:
        batch, nbs = int(self.batch_size), int(self.args.nbs)
        record = {
            "distributed": {
                "world_size": max(self.world_size, 1),
                "nnodes": self.settings.nnodes,
                "nproc_per_node": self.settings.nproc_per_node,
            },
            "recipe": {
                "global_batch": batch,
                "per_rank_batch": batch // max(self.world_size, 1),
                # What ran: Ultralytics caps it at the run's batch count when the run is shorter than a step.
                "accumulate": int(self.accumulate),
                # The two figures the LR rule compares (lr_factor follows from their ratio and the optimizer).
                "images_per_step": rules.images_per_step(batch, nbs),
                "base_images_per_step": rules.images_per_step(self.settings.base_batch, nbs),
                "lr0": self.settings.configured_lr0,
                "lr_factor": self.lr_factor,
                "lr_peak": self.lr_peak(),
                "lr0_ignored": int(self.settings.configured_lr0 != float(self.args.lr0)),
            },
            "text": {
                "backend": self.settings.backend if self.world_size > 1 else "none",
                "optimizer": self.optimizer_name,
                "lr_rule": self.settings.lr_scaling,
                "sync_bn": "on" if self.sync_bn_active else "off",
                "amp": "on" if self.amp else "off",  # after the AMP check
                "device": str(self.device),  # rank 0's
                "trainer": self.trainer_name,
            },
        }
        (Path(self.save_dir) / RECIPE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    # --- where the time goes ----------------------------------------------------------------------

    def _load_stats(self) -> None:
        path = Path(self.save_dir) / EPOCH_STATS
        if RANK in {-1, 0} and path.is_file():  # a resumed run keeps the epochs it already has
            with path.open(newline="", encoding="utf-8") as fh:
                rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
            self.epoch_stats = [r for r in rows if r["epoch"] <= self.start_epoch]

    def _epoch_started(self) -> None:
        now = time.perf_counter()
        self._clock = {"start": now, "last": now, "wait": 0.0, "batches": 0}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _batch_started(self) -> None:
        now = time.perf_counter()
        self._clock["wait"] += now - self._clock["last"]  # the loader's next(): the time spent waiting for data
        self._clock["batches"] += 1

    def _batch_ended(self) -> None:
        self._clock["last"] = time.perf_counter()

    def _epoch_ended(self) -> None:
        seconds = max(self._clock["last"] - self._clock["start"], 1e-9)
        batches = int(self._clock["batches"])
        self.batches_per_epoch.append(batches)
        row = {
            "epoch": float(self.epoch + 1),
            # Every process works through its share of the epoch's images in step with the others.
            "images_per_s": len(self.train_loader.dataset) / seconds,
            "dataloader_wait_share": self._clock["wait"] / seconds,
            "gpu_mem_peak_gib": torch.cuda.max_memory_allocated(self.device) / 2**30
            if self.device.type == "cuda"
            else 0.0,
        }
        log.info(
            "rank %d of %d: epoch %d, %d batches, %.1f images/s, %.0f%% waiting for data",
            max(RANK, 0),
            max(self.world_size, 1),
            self.epoch + 1,
            batches,
            row["images_per_s"],
            100 * row["dataloader_wait_share"],
        )
        if RANK in {-1, 0}:
            self.epoch_stats = [r for r in self.epoch_stats if r["epoch"] < row["epoch"]] + [row]
            lines = [",".join(STAT_COLUMNS)]
            lines += [",".join(f"{r[c]:.6g}" for c in STAT_COLUMNS) for r in self.epoch_stats]
            (Path(self.save_dir) / EPOCH_STATS).write_text("\n".join(lines) + "\n", encoding="utf-8")


def overrides(hyper: Any, data_yaml: Path, run_dir: Path, model_source: str) -> dict[str, Any]:
    """Ultralytics' arguments for a fresh run, every one passed explicitly (``hyper`` is ``TrainParams``)."""
    return {
        "model": model_source,
        "task": "detect",
        "mode": "train",
        "data": str(data_yaml),
        "epochs": hyper.epochs,
        "imgsz": hyper.imgsz,
        "batch": hyper.batch,
        "device": hyper.device,
        "workers": hyper.workers,
        "seed": hyper.seed,
        "deterministic": hyper.deterministic,
        "optimizer": hyper.optimizer,
        "lr0": hyper.lr0,
        "lrf": hyper.lrf,
        "cos_lr": hyper.cos_lr,
        "momentum": hyper.momentum,
        "weight_decay": hyper.weight_decay,
        "warmup_epochs": hyper.warmup_epochs,
        "warmup_momentum": hyper.warmup_momentum,
        "warmup_bias_lr": hyper.warmup_bias_lr,
        "nbs": hyper.nbs,
        "patience": hyper.patience,
        "amp": hyper.amp,
        "cache": hyper.cache,
        "mosaic": hyper.mosaic,
        "close_mosaic": hyper.close_mosaic,
        "project": str(run_dir.parent),
        "name": run_dir.name,
        "exist_ok": True,
        "plots": False,  # plots need fonts and time; the curves come from results.csv instead
        "val": True,
        "save": True,
        "verbose": False,
    }


def fit(
    hyper: Any,
    data_yaml: Path,
    run_dir: Path,
    model_source: str,
    settings: TrainerSettings,
    resume_from: Path | None = None,
) -> PipelineTrainer:
    """Train in this process (the whole run, or this process' share of a launched one).

    Args:
        hyper: ``TrainParams``.
        data_yaml: The prepared ``data.yaml``.
        run_dir: Ultralytics' run folder (checkpoints, ``results.csv``); written by global rank 0 only.
        model_source: A model YAML name or a local ``.pt`` path.
        settings: What the pipeline adds to Ultralytics' arguments.
        resume_from: A ``last.pt`` to resume from (its own arguments then apply, as in Ultralytics).
    """
    if resume_from is None:
        args = overrides(hyper, data_yaml, run_dir, model_source)
    else:
        # Ultralytics takes the run's arguments from the checkpoint; the data and run folder are this node's.
        args = {
            "resume": str(resume_from),
            "data": str(data_yaml),
            "device": hyper.device,
            "workers": hyper.workers,
            "save_dir": str(run_dir),
            "task": "detect",
            "mode": "train",
        }
    trainer = PipelineTrainer(overrides=args, settings=settings)
    trainer.train()
    return trainer
