"""The ``LightningModule``: Ultralytics' detector, loss, schedule, EMA and validation, in Lightning's loop.

Every number follows Ultralytics' ``BaseTrainer._do_train`` (8.4), read from its source:

- the loss is Ultralytics' own (``DetectionModel.loss``): a sum over the process' images, times the
  world size under DDP (DDP averages the processes' gradients), never divided by the accumulation.
  Lightning's automatic loop divides what ``training_step`` returns by ``accumulate_grad_batches``, so
  it is multiplied back (``schedule.training_loss``): one optimizer step follows the gradient summed over
  ``batch x accumulate`` images, as Ultralytics' does, and ``recipe``'s learning-rate rule holds for both.
- warmup by forward pass (``ni``) over ``nw`` passes (``schedule.warmup_values``): the bias rate falls from
  ``warmup_bias_lr``, the others rise from 0, momentum rises from ``warmup_momentum``; after warmup,
  each epoch's rate is ``initial_lr x lf(epoch)`` (``schedule.epoch_lr``). Ultralytics also ramps the
  accumulation from 1 during warmup; Lightning's ``accumulate_grad_batches`` is fixed for the run, so
  here warmup steps accumulate as many batches as every other step. And Lightning steps at the last
  batch of every epoch with what it has accumulated, where Ultralytics carries a partial accumulation
  into the next epoch. These two are the known differences; Ultralytics' NaN-loss recovery (reload
  of ``last.pt``) and its AMP check are not reproduced either (Lightning's precision plugin decides).
- ``strategy: fsdp`` (CUDA only): the EMA reads the unsharded parameters (``summon_full_params``) and
  the gradient norm is clipped by the root FSDP module, which Lightning's FSDP plugin leaves to the
  user; not run on the CPU-only development machine (Lightning refuses FSDP on CPU).
- the EMA (``ModelEMA``) is updated after every optimizer step, validated each epoch on global rank 0
  by Ultralytics' validator, and saved in Ultralytics' checkpoint format (``save_model``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

from stages.training import ddp
from stages.training.lightning.checkpoint import PIPELINE_KEY, last_checkpoint
from stages.training.lightning.schedule import epoch_lr, training_loss, warmup_values


class DetectorModule(L.LightningModule):
    """Ultralytics' ``DetectionModel`` trained by Lightning, with the toolbox doing Ultralytics' part."""

    def __init__(self, toolbox: Any, world_size: int) -> None:
        super().__init__()
        self.model = toolbox.model
        self.toolbox = toolbox  # not a Module: its model is this one's, registered above
        self.world_size = world_size
        self.batches = 0  # forward passes per epoch on this process (the loader's length)

    # --- optimization -----------------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The rate is set by this module each epoch and pass (Ultralytics' schedule), not by a Lightning scheduler.
        return self.toolbox.optimizer

    def on_train_start(self) -> None:
        tb = self.toolbox
        tb.train_time_start = time.time()
        tb.start_epoch = self.current_epoch
        tb._load_stats()  # a resumed run keeps the epoch statistics it has (up to the checkpoint)

    def on_train_epoch_start(self) -> None:
        tb = self.toolbox
        tb.epoch = self.current_epoch
        self.batches = len(self.trainer.train_dataloader)
        for group in tb.optimizer.param_groups:
            group["lr"] = epoch_lr(group["initial_lr"], tb.lf, tb.epoch)
        tb.tloss = None
        tb._epoch_started()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        tb = self.toolbox
        tb._batch_started()
        nw = tb._get_warmup_iterations(self.batches)
        ni = batch_idx + self.batches * self.current_epoch
        if nw and ni <= nw:
            for group in tb.optimizer.param_groups:
                lr, momentum = warmup_values(
                    ni,
                    nw,
                    bias=group.get("param_group") == "bias",
                    target_lr=epoch_lr(group["initial_lr"], tb.lf, tb.epoch),
                    warmup_bias_lr=tb.args.warmup_bias_lr,
                    warmup_momentum=tb.args.warmup_momentum,
                    momentum=tb.args.momentum,
                )
                group["lr"] = lr
                if "momentum" in group:
                    group["momentum"] = momentum

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        tb = self.toolbox
        batch = tb.preprocess_batch(batch)
        loss, items = self.model(batch)
        tb.loss = loss.sum()
        tb.loss_items = items
        if not tb.loss_names:
            tb.loss_names = tuple(items)
            tb.metrics.update(dict.fromkeys(tb.label_loss_items(prefix="val"), 0.0))
        tb.tloss = (
            items
            if tb.tloss is None
            else {k: (tb.tloss[k] * batch_idx + v) / (batch_idx + 1) for k, v in items.items()}
        )
        self.log_dict({f"train/{k}": float(v) for k, v in items.items()}, on_step=True, on_epoch=False)
        return training_loss(tb.loss, self.world_size, self.trainer.accumulate_grad_batches)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer.step(closure=optimizer_closure)
        with self._whole_parameters():
            self.toolbox.ema.update(self.model)  # after every optimizer step, as Ultralytics' optimizer_step

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        sharded = self._fsdp_root()
        if sharded is not None and gradient_clip_val:
            # Lightning's FSDP precision plugin refuses norm clipping (plugins/precision/fsdp.py): the norm of
            # sharded gradients is the root FSDP module's clip_grad_norm_ (a collective over the shards).
            sharded.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _fsdp_root(self) -> Any:
        """The root FSDP module under ``strategy: fsdp``, else ``None``."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = getattr(self.trainer.strategy, "model", None)
        return wrapped if isinstance(wrapped, FullyShardedDataParallel) else None

    def _whole_parameters(self) -> Any:
        """Under FSDP, the unsharded parameters while the EMA reads them (a collective); else nothing to do."""
        sharded = self._fsdp_root()
        if sharded is None:
            return contextlib.nullcontext()
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(sharded, writeback=False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.toolbox._batch_ended()

    # --- end of epoch: Ultralytics' validation, results.csv, checkpoints, early stop ----------------

    def on_train_epoch_end(self) -> None:
        tb = self.toolbox
        criterion = getattr(unwrap_model(self.model), "criterion", None)
        if hasattr(criterion, "update"):
            criterion.update()
        tb.lr = {f"lr/pg{i}": group["lr"] for i, group in enumerate(tb.optimizer.param_groups)}
        tb._epoch_ended()
        final_epoch = tb.epoch + 1 >= tb.epochs
        verdict: list[Any] = [None]
        if self.global_rank == 0:
            tb.ema.update_attr(self.model, include=["yaml", "nc", "args", "names", "stride", "class_weights"])
            tb.metrics, tb.fitness = self._validate_alone()
            tb.save_metrics(metrics={**tb.label_loss_items(tb.tloss), **tb.metrics, **tb.lr})
            tb.stop = bool(tb.stopper(tb.epoch + 1, tb.fitness)) or final_epoch
            tb.save_model()
            verdict = [tb.stop]
        # Every rank agrees on stopping: rank 0 validated; the others waited here.
        stop = bool(self.trainer.strategy.broadcast(verdict, src=0)[0])
        self.trainer.should_stop = self.trainer.should_stop or stop
        # Last: the resume checkpoint holds this epoch whole (a collective; global rank 0 writes it).
        self.trainer.save_checkpoint(last_checkpoint(Path(tb.save_dir)))

    def _validate_alone(self) -> tuple[dict[str, float], float]:
        """Ultralytics' validation of the EMA, as a single process would run it (global rank 0 only)."""
        tb = self.toolbox
        world, tb.world_size = tb.world_size, 1  # no collective: the other ranks are not validating
        try:
            with ddp.single_process_validation():
                metrics, fitness = tb.validate()
        finally:
            tb.world_size = world
            self.model.train()
        return metrics, fitness

    # --- the pipeline's part of Lightning's checkpoint ---------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        tb = self.toolbox
        checkpoint[PIPELINE_KEY] = {
            "epochs_done": int(self.current_epoch) + 1,  # saved at the end of the epoch (ModelCheckpoint)
            "ema": {k: v.detach().clone() for k, v in tb.ema.ema.state_dict().items()},
            "updates": int(tb.ema.updates),
            "best_fitness": None if tb.best_fitness is None else float(tb.best_fitness),
            "stopper": {
                "best_fitness": None if tb.stopper.best_fitness is None else float(tb.stopper.best_fitness),
                "best_epoch": int(tb.stopper.best_epoch),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        tb = self.toolbox
        state = checkpoint[PIPELINE_KEY]
        tb.ema = ModelEMA(self.model)
        tb.ema.ema.load_state_dict(state["ema"])
        tb.ema.updates = state["updates"]
        tb.best_fitness = state["best_fitness"]
        tb.stopper.__dict__.update(state["stopper"])
