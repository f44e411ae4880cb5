"""The Lightning backend's arithmetic, as Ultralytics' ``BaseTrainer._do_train`` (8.4) does it (no Lightning here).

- :func:`accumulation`: batches per optimizer step, one rule for both backends.
- :func:`training_loss`: the loss backpropagated for the gradient to be Ultralytics' (a sum over the
  process' images, times the world size under DDP, never divided by the accumulation).
- :func:`warmup_values`: a parameter group's rate and momentum during warmup.
- :func:`warmup_accumulate`: the forward passes per step during warmup (ramped from 1).
- :func:`epoch_lr`: an epoch's rate after warmup (``LambdaLR`` with Ultralytics' ``lf``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stages.training import recipe as rules


def training_loss(loss_sum: torch.Tensor, world_size: int) -> torch.Tensor:
    """What the module backpropagates on every batch: Ultralytics' ``loss_sum x world_size``.

    The world size undoes DDP's average of the processes' gradients; the accumulated passes add up
    unscaled, as in Ultralytics' loop (``manual_backward`` divides by nothing).
    """
    return loss_sum * max(world_size, 1)


def warmup_accumulate(ni: int, nw: int, accumulate: int) -> int:
    """Forward passes per step at pass ``ni`` of ``nw`` warmup passes: from 1 up to ``accumulate``, as Ultralytics."""
    return max(1, int(np.interp(ni, [0, nw], [1, accumulate]).round()))


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
