"""The large-batch learning-rate rule, per optimizer family.

What the rule compares is the number of images one optimizer step learns from, not the batch of one
forward pass. Ultralytics accumulates gradients up to its nominal batch ``nbs``, so a global batch
``B`` makes steps of ``images_per_step(B) = B * max(round(nbs / B), 1)`` images: at ``nbs: 64``,
batches 16 and 64 both make 64-image steps and need the same learning rate. ``train.lr_scaling``
takes the ratio ``r = images_per_step(train.batch) / images_per_step(train.base_batch)`` and wants
the rate scaled by ``rule(r)``: ``r`` (linear), ``sqrt(r)`` (sqrt) or 1 (none).

What Ultralytics 8.4 already does, read from its source:

- ``v8DetectionLoss.loss`` returns the per-image mean loss times the batch size, i.e. a *sum* over
  the process' images; under DDP ``BaseTrainer._do_train`` multiplies it by the world size again,
  because DDP averages the gradients of the processes, so the gradient is a sum over the global
  batch. ``backward`` runs on every batch and ``optimizer_step`` only once ``accumulate`` batches
  have added their gradients: the gradient of one step is a sum over ``images_per_step`` images.
- ``BaseTrainer._build_train_pipeline`` scales the weight decay by ``images_per_step / nbs``, so the
  decay keeps its proportion to that summed gradient.

So an SGD (and MuSGD) step, proportional to the gradient, already grows by ``r``: the factor applied
on top of Ultralytics is ``rule(r) / r``, and linear scaling is exactly what Ultralytics does on its
own. Adam-family optimizers and RMSprop divide the gradient by its running magnitude, so its size
drops out and nothing is scaled implicitly: the factor is ``rule(r)`` as it is.

Two approximations: MuSGD's matrix groups add a Muon update (``optim/muon.py``, weight 0.2 against
the SGD part's 1.0) that is orthogonalised and so does not grow with ``r``; MuSGD is counted with
SGD, its larger part. And Ultralytics clips the gradient's norm at 10 before each step; a summed
gradient over more images reaches that bound sooner, which no factor here accounts for.
"""

from __future__ import annotations

import math
from typing import Literal

from stages.core.config.train import nbs_accumulation

Rule = Literal["none", "linear", "sqrt"]

# Optimizers whose step is proportional to the summed gradient (Ultralytics' names, lower-cased).
SUMMING = frozenset({"sgd", "musgd"})
# Optimizers that divide the gradient by its running magnitude: the gradient's scale drops out.
ADAPTIVE = frozenset({"adam", "adamax", "adamw", "nadam", "radam", "rmsprop"})


def accumulation(global_batch: int, nbs: int) -> int:
    """Forward passes Ultralytics accumulates per optimizer step (``max(round(nbs / batch), 1)``)."""
    return nbs_accumulation(global_batch, nbs)


def images_per_step(global_batch: int, nbs: int) -> int:
    """Images whose gradients one optimizer step sums."""
    return global_batch * accumulation(global_batch, nbs)


def step_ratio(global_batch: int, base_batch: int, nbs: int) -> float:
    """The rule's ratio: images per optimizer step at ``global_batch`` over those at ``base_batch``."""
    return images_per_step(global_batch, nbs) / images_per_step(base_batch, nbs)


def rule_factor(rule: Rule, ratio: float) -> float:
    """The rule's own factor for an images-per-step ``ratio``: 1, ``ratio`` or ``sqrt(ratio)``."""
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def lr_factor(rule: Rule, optimizer: str, global_batch: int, base_batch: int, nbs: int) -> float:
    """The factor to multiply the optimizer's learning rate by, on top of what Ultralytics does.

    Args:
        rule: ``train.lr_scaling``.
        optimizer: The optimizer actually used (``auto`` already resolved), any case.
        global_batch: Images per forward pass over all processes (``train.batch``).
        base_batch: The global batch ``lr0`` was chosen for (``train.base_batch``).
        nbs: Ultralytics' nominal batch (``train.nbs``), the same for both batches.

    Returns:
        ``rule(r) / r`` for SGD and MuSGD, ``rule(r)`` for the Adam family and RMSprop, with ``r``
        the images-per-step ratio (:func:`step_ratio`); 1 for the rule ``none``.

    Raises:
        ValueError: For an optimizer of unknown family (its scaling semantics are not defined here).
    """
    if rule == "none":
        return 1.0
    name = optimizer.lower()
    ratio = step_ratio(global_batch, base_batch, nbs)
    wanted = rule_factor(rule, ratio)
    if name in ADAPTIVE:
        return wanted
    if name in SUMMING:
        return wanted / ratio  # the summed gradient already grew by the ratio
    raise ValueError(f"no learning-rate scaling rule is defined for optimizer {optimizer!r}")
