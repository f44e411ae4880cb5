"""The large-batch learning-rate rule, per optimizer family.

``train.lr_scaling`` scales ``lr0`` with the global batch ``B'`` against ``train.base_batch`` ``B``:
``linear`` by ``B'/B``, ``sqrt`` by ``sqrt(B'/B)``, ``none`` not at all.

Ultralytics already scales SGD implicitly: its loss is a sum over images, and it accumulates
gradients up to ``nbs`` images per optimizer step, so an SGD step grows with the images in it,
``images_per_step(B) = B * max(round(nbs / B), 1)``. Adam-family optimizers normalise the gradient's
size away and get no such scaling. So that nothing is scaled twice, the factor applied on top of
Ultralytics is the rule's factor divided by the implicit one for SGD (``MuSGD`` included), and the
rule's factor as it is for the Adam family and RMSprop.
"""

from __future__ import annotations

import math
from typing import Literal

Rule = Literal["none", "linear", "sqrt"]

# Optimizers whose step is proportional to the summed gradient (Ultralytics' names, lower-cased).
SUMMING = frozenset({"sgd", "musgd"})
# Optimizers that divide the gradient by its running magnitude: the gradient's scale drops out.
ADAPTIVE = frozenset({"adam", "adamax", "adamw", "nadam", "radam", "rmsprop"})


def accumulation(global_batch: int, nbs: int) -> int:
    """Forward passes Ultralytics accumulates per optimizer step (``max(round(nbs / batch), 1)``)."""
    return max(round(nbs / global_batch), 1)


def images_per_step(global_batch: int, nbs: int) -> int:
    """Images whose gradients one optimizer step sums."""
    return global_batch * accumulation(global_batch, nbs)


def rule_factor(rule: Rule, global_batch: int, base_batch: int) -> float:
    """The rule's own factor: 1, ``B'/B`` or ``sqrt(B'/B)``."""
    ratio = global_batch / base_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def lr_factor(rule: Rule, optimizer: str, global_batch: int, base_batch: int, nbs: int) -> float:
    """The factor to multiply the optimizer's learning rate by, on top of what Ultralytics does.

    Args:
        rule: ``train.lr_scaling``.
        optimizer: The optimizer actually used (``auto`` already resolved), any case.
        global_batch: Images per forward pass over all processes (``train.batch``).
        base_batch: The global batch ``lr0`` was chosen for.
        nbs: Ultralytics' nominal batch.

    Raises:
        ValueError: For an optimizer of unknown family (its scaling semantics are not defined here).
    """
    if rule == "none":
        return 1.0
    name = optimizer.lower()
    wanted = rule_factor(rule, global_batch, base_batch)
    if name in ADAPTIVE:
        return wanted
    if name in SUMMING:
        implicit = images_per_step(global_batch, nbs) / images_per_step(base_batch, nbs)
        return wanted / implicit
    raise ValueError(f"no learning-rate scaling rule is defined for optimizer {optimizer!r}")
