"""One training run of the Lightning backend: the ``lightning.Trainer``, its callbacks, fresh or resumed.

In one process it runs in the stage's process, as the Ultralytics backend does. Launched by torchrun
(``stages.training.worker``), Lightning finds the launcher's environment (``TorchElasticEnvironment``:
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``GROUP_RANK``, which the worker has set to the head-first
placement) and the process group the worker already created (``_init_dist_connection`` returns early
when one exists), so nodes, ranks and timeouts are those of the Ultralytics backend.

Only global rank 0 writes the run folder: ``results.csv``, ``weights/last.pt`` and ``best.pt`` in
Ultralytics' format (by the toolbox), ``lightning/last.ckpt`` (the resume checkpoint, written whole
by ``checkpoint.whole_file_io``), and the recipe and epoch statistics; ``outputs.publish`` then reads
it as it reads the other backend's.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from ultralytics.utils.torch_utils import parse_device, unset_deterministic

from stages.training.lightning import checkpoint, toolbox
from stages.training.lightning.data import DetectionData
from stages.training.lightning.module import DetectorModule
from stages.training.settings import TrainerSettings

log = logging.getLogger(__name__)


def world_size() -> int:
    """Processes of this run: torchrun's ``WORLD_SIZE`` in a launched process, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) if os.environ.get("LOCAL_RANK") is not None else 1


def strategy(hyper: Any, settings: TrainerSettings, world: int) -> Any:
    """Lightning's strategy for ``train.lightning.strategy`` with the pipeline's backend and timeout."""
    from lightning.pytorch.strategies import DDPStrategy

    chosen = hyper.lightning.strategy
    timeout = timedelta(seconds=settings.collective_timeout_s)
    if chosen == "ddp" or world > 1:
        # Each process keeps its own batch-norm statistics, as under Ultralytics' DDP (broadcast_buffers off):
        # Lightning's default broadcast of every buffer from rank 0 on every forward pass cost ~45 % per epoch
        # with two gloo processes on CPU (benchmarks/results/lightning_backend.md).
        return DDPStrategy(process_group_backend=settings.backend, timeout=timeout, broadcast_buffers=False)
    return "auto"


def build_trainer(hyper: Any, settings: TrainerSettings, run_dir: Path, world: int) -> L.Trainer:
    """The ``lightning.Trainer`` of a run: every setting from ``params.yaml`` (``train``, ``train.lightning``).

    Accumulation and clipping are the module's (it steps at Ultralytics' cadence, ``module``): the
    Trainer's own ``accumulate_grad_batches`` and ``gradient_clip_val`` stay unset.
    """
    lightning = hyper.lightning
    cuda = hyper.device not in {"cpu", "mps"}
    folder = run_dir / checkpoint.FOLDER
    return L.Trainer(
        accelerator="cuda" if cuda else hyper.device,
        devices=[int(i) for i in parse_device(hyper.device).split(",")] if cuda else hyper.distributed.nproc_per_node,
        num_nodes=hyper.distributed.nnodes,
        strategy=strategy(hyper, settings, world),
        precision=lightning.precision,
        max_epochs=hyper.epochs,
        log_every_n_steps=lightning.log_every_n_steps,
        sync_batchnorm=hyper.sync_bn and world > 1,
        limit_val_batches=0,  # validation is Ultralytics' (the module's epoch end), not Lightning's loop
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1,  # closing mosaic needs a new loader (data.DetectionData)
        use_distributed_sampler=True,
        # The resume checkpoint is saved by the module at the very end of its epoch (after validation and
        # the early-stop state), not by ModelCheckpoint, whose epoch-end hook is not ordered after the module's.
        enable_checkpointing=False,
        callbacks=[LearningRateMonitor(logging_interval="step")],
        logger=CSVLogger(save_dir=folder, name="logs", version=0),
        plugins=[checkpoint.whole_file_io()],
        default_root_dir=folder,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def fit(
    hyper: Any,
    data_yaml: Path,
    run_dir: Path,
    model_source: str,
    settings: TrainerSettings,
    resume_from: Path | None = None,
) -> toolbox.LightningToolbox:
    """Train in this process with Lightning (the whole run, or this process' share of a launched one).

    Args:
        hyper: ``TrainParams`` (``train.backend: lightning``).
        data_yaml: The prepared ``data.yaml``.
        run_dir: The run folder; written by global rank 0 only.
        model_source: A model YAML name or a local ``.pt`` path.
        settings: What the pipeline adds to Ultralytics' arguments.
        resume_from: A Lightning ``last.ckpt`` to resume from (exactly the remaining epochs are trained).

    Returns:
        The toolbox, whose run folder holds what ``outputs.publish`` reads.
    """
    world = world_size()
    tb = toolbox.build(hyper, data_yaml, run_dir, model_source, settings, world)
    try:
        module = DetectorModule(tb, world, hyper.lightning.gradient_clip_val)
        data = DetectionData(tb, hyper.batch // world)
        trainer = build_trainer(hyper, settings, run_dir, world)
        trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
        tb.final_eval()  # best.pt by Ultralytics' validator; under several processes, rank 0 alone
        if trainer.global_rank == 0:
            # A finished run (stopped early too) is no resume point, as the Ultralytics backend's stripped last.pt
            # is not: a retry of the stage (publishing failed) trains afresh instead of adding epochs to it.
            checkpoint.last_checkpoint(run_dir).unlink(missing_ok=True)
    finally:
        unset_deterministic()
    return tb
