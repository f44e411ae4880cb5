"""The ``LightningModule``: Ultralytics' detector, loss, schedule, EMA and validation, in Lightning's loop.

Every number follows Ultralytics' ``BaseTrainer._do_train`` (8.4), read from its source, and so does
*when* the optimizer steps: the module optimizes manually (``automatic_optimization = False``), still
inside Lightning's loop, strategy and precision plugin (``manual_backward``, the ``LightningOptimizer``).

- the loss is Ultralytics' own (``DetectionModel.loss``): a sum over the process' images, times the
  world size under DDP (DDP averages the processes' gradients), never divided by the accumulation
  (``schedule.training_loss``): one optimizer step follows the gradient summed over ``batch x
  accumulate`` images, as Ultralytics' does, and ``recipe``'s learning-rate rule holds for both.
- the step cadence is Ultralytics': forward pass ``ni`` (counted over the whole run) steps when
  ``ni - last step >= accumulate``, so a partial accumulation carries into the next epoch and nothing
  is stepped at an epoch's end; during warmup the accumulation ramps from 1 to its value
  (``schedule.warmup_accumulate``). Lightning's automatic loop instead steps at every epoch's last
  batch and keeps the accumulation fixed: on the sample (6 batches an epoch, accumulating 4) that made
  2 steps an epoch instead of 1.5, and a 30-epoch run 0.1 mAP50-95 better than Ultralytics' on every
  seed (``benchmarks/results/lightning_backend.md``). Gradients are clipped at ``gradient_clip_val`` in
  ``on_before_optimizer_step``, after the precision plugin has unscaled them.
- warmup by forward pass over ``nw`` passes (``schedule.warmup_values``): the bias rate falls from
  ``warmup_bias_lr``, the others rise from 0, momentum rises from ``warmup_momentum``; after warmup,
  each epoch's rate is ``initial_lr x lf(epoch)`` (``schedule.epoch_lr``). Ultralytics' NaN-loss
  recovery (reload of ``last.pt``) and its AMP check are not reproduced (the precision plugin decides).
- no ``strategy: fsdp`` (the config refuses it): ``training_step`` runs inside the strategy's forward
  (Lightning's forward redirection), where FSDP's state machine refuses a backward pass and the
  unsharding the EMA needs; Ultralytics' cadence needs both there.
- the EMA (``ModelEMA``) is updated after every optimizer step, validated each epoch on global rank 0
  by Ultralytics' validator, and saved in Ultralytics' checkpoint format (``save_model``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from ultralytics.utils.torch_utils import unwrap_model

from stages.training import ddp
from stages.training.lightning.checkpoint import PIPELINE_KEY, last_checkpoint
from stages.training.lightning.schedule import epoch_lr, training_loss, warmup_accumulate, warmup_values


class DetectorModule(L.LightningModule):
    """Ultralytics' ``DetectionModel`` trained by Lightning, with the toolbox doing Ultralytics' part."""

    def __init__(self, toolbox: Any, world_size: int, gradient_clip_val: float) -> None:
        super().__init__()
        self.automatic_optimization = False  # Ultralytics' step cadence (the module's docstring)
        self.model = toolbox.model
        self.toolbox = toolbox  # not a Module: its model is this one's, registered above
        self.world_size = world_size
        self.gradient_clip_val = gradient_clip_val  # 0: no clipping
        self.batches = 0  # forward passes per epoch on this process (the loader's length)
        self.accumulate = toolbox.accumulate  # forward passes per step now (ramped during warmup)
        self.last_opt_step = -1  # the forward pass of the last step (-1 at every start, as Ultralytics)

    # --- optimization -----------------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The rate is set by this module each epoch and pass (Ultralytics' schedule), not by a Lightning scheduler.
        return self.toolbox.optimizer

    def on_train_start(self) -> None:
        tb = self.toolbox
        tb.train_time_start = time.time()
        tb.start_epoch = self.current_epoch
        self.last_opt_step = -1  # a resumed run starts its step count afresh, as Ultralytics' loop does
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
        if nw and ni <= nw:  # ni == nw lands accumulate, lr and momentum on their targets, which they keep
            self.accumulate = warmup_accumulate(ni, nw, tb.accumulate)
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

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        tb = self.toolbox
        ni = batch_idx + self.batches * self.current_epoch
        step = ni - self.last_opt_step >= self.accumulate
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
        # Every pass's backward is averaged over the processes (a sum of averages is the average of the sums).
        # Skipping the passes between steps (DDP's no_sync) is documented for a context around forward and
        # backward, and the forward is DDP's own call around this method: one collective per pass instead
        # (two gloo processes: 1.02x Ultralytics' epoch time with it, 0.92x with no_sync around the backward).
        self.manual_backward(training_loss(tb.loss, self.world_size))
        if step:
            optimizer = self.optimizers()
            optimizer.step()  # the precision plugin unscales, calls on_before_optimizer_step (the clip), steps
            optimizer.zero_grad()
            self.last_opt_step = ni
            tb.ema.update(self.model)  # after every optimizer step, as Ultralytics' optimizer_step

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.gradient_clip_val:  # after the precision plugin has unscaled the gradients
            self.clip_gradients(optimizer, self.gradient_clip_val, "norm")

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
        tb.ema.ema.load_state_dict(state["ema"])  # the EMA the toolbox built, before any strategy wrapped the model
        tb.ema.updates = state["updates"]
        tb.best_fitness = state["best_fitness"]
        tb.stopper.__dict__.update(state["stopper"])
