"""The Lightning backend's arithmetic, as Ultralytics' ``BaseTrainer._do_train`` (8.4) does it (no Lightning here).

- :func:`accumulation`: batches per optimizer step, one rule for both backends.
- :func:`training_loss`: the loss Lightning's automatic loop must be given for the gradient to be
  Ultralytics' (its loss is a sum over the process' images, times the world size under DDP, and it
  never divides by the accumulation; Lightning divides by ``accumulate_grad_batches``).
- :func:`warmup_values`: a parameter group's rate and momentum during warmup.
- :func:`epoch_lr`: an epoch's rate after warmup (``LambdaLR`` with Ultralytics' ``lf``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stages.training import recipe as rules


def training_loss(loss_sum: torch.Tensor, world_size: int, accumulate: int) -> torch.Tensor:
    """What ``training_step`` returns so that the gradient Lightning backpropagates is Ultralytics'.

    Ultralytics backpropagates ``loss_sum x world_size`` on every batch (the world size undoes DDP's
    average); Lightning's automatic optimization backpropagates the returned value divided by
    ``accumulate``.
    """
    return loss_sum * max(world_size, 1) * accumulate


def warmup_values(
    ni: int, nw: int, *, bias: bool, target_lr: float, warmup_bias_lr: float, warmup_momentum: float, momentum: float
) -> tuple[float, float]:
    """A parameter group's learning rate and momentum at forward pass ``ni`` of ``nw`` warmup passes (``ni <= nw``)."""
    lr = float(np.interp(ni, [0, nw], [warmup_bias_lr if bias else 0.0, target_lr]))
    return lr, float(np.interp(ni, [0, nw], [warmup_momentum, momentum]))


def epoch_lr(initial_lr: float, lf: Any, epoch: int) -> float:
    """The rate of an epoch after warmup: Ultralytics' ``LambdaLR`` stepped once at the start of each epoch."""
    return float(initial_lr * lf(epoch))


def accumulation(global_batch: int, nbs: int, configured: int | None) -> int:
    """Batches per optimizer step: ``train.lightning.accumulate_grad_batches``, or Ultralytics' rule from ``nbs``."""
    return configured if configured is not None else rules.accumulation(global_batch, nbs)
