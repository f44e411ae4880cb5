"""The large-batch LR rule: images per optimizer step, per optimizer family, and in a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from stages.training import recipe
from tests.conftest import tiny_training_workspace

# Images one optimizer step learns from, worked out by hand from Ultralytics' accumulation
# (``round(nbs / batch)`` forward passes, at least one; Python rounds halves to even).
IMAGES_PER_STEP = {
    # (batch, nbs): images per step
    (2, 4): 4,  # 2 passes
    (8, 4): 8,  # 4/8 = 0.5 rounds to 0: one pass
    (8, 20): 16,  # 2.5 rounds to 2
    (16, 64): 64,  # 4 passes
    (24, 64): 72,  # 2.67 rounds to 3
    (40, 64): 80,  # 1.6 rounds to 2
    (48, 64): 48,  # 1.33 rounds to 1
    (64, 64): 64,
    (256, 64): 256,
}
SUMMING = ("SGD", "MuSGD", "sgd")
ADAPTIVE = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "RMSProp")
RULES = {"none": lambda r: 1.0, "linear": lambda r: r, "sqrt": math.sqrt}


def expected_factor(rule: str, optimizer: str, batch: int, base: int, nbs: int) -> float:
    """The factor on top of Ultralytics, from the table above and the README's definition."""
    ratio = IMAGES_PER_STEP[batch, nbs] / IMAGES_PER_STEP[base, nbs]
    wanted = RULES[rule](ratio)
    # An SGD step already grows with the images it sums; adaptive optimizers normalise that away.
    return wanted / ratio if optimizer in SUMMING and rule != "none" else wanted


@pytest.mark.parametrize(("batch", "nbs"), sorted(IMAGES_PER_STEP))
def test_images_per_step_follows_ultralytics_accumulation(batch, nbs):
    assert recipe.images_per_step(batch, nbs) == IMAGES_PER_STEP[batch, nbs]


PAIRS = [  # (batch, base_batch, nbs): both in IMAGES_PER_STEP
    (64, 16, 64),  # the same 64-image steps: no scaling at all
    (16, 64, 64),
    (256, 16, 64),  # 4x the images per step
    (256, 64, 64),
    (24, 16, 64),  # 72 against 64
    (40, 48, 64),  # a larger base batch making smaller steps
    (8, 2, 4),
    (8, 8, 20),
]


@pytest.mark.parametrize(("batch", "base", "nbs"), PAIRS)
@pytest.mark.parametrize("optimizer", SUMMING + ADAPTIVE)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_lr_factor_table(rule, optimizer, batch, base, nbs):
    assert recipe.lr_factor(rule, optimizer, batch, base, nbs) == pytest.approx(
        expected_factor(rule, optimizer, batch, base, nbs)
    )


def test_batches_making_the_same_steps_get_the_same_rate():
    """The reported case: batch 64 and base batch 16 both make 64-image steps at nbs 64 (was 4.0)."""
    for optimizer in ("SGD", "AdamW"):
        for rule in ("linear", "sqrt"):
            assert recipe.lr_factor(rule, optimizer, 64, 16, 64) == 1.0


def test_linear_sgd_is_what_ultralytics_does_already():
    assert {recipe.lr_factor("linear", "SGD", b, 16, 64) for b in (8, 16, 64, 100, 256, 1024)} == {1.0}


# --- one real epoch per family ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny detection dataset and the workspace whose Ultralytics settings it trains under."""
    return tiny_training_workspace(tmp_path_factory.mktemp("lr_rule"))


@pytest.mark.parametrize(
    ("optimizer", "rule", "lr0"),
    [
        ("SGD", "sqrt", 0.01),  # 8- against 4-image steps: sqrt(2) wanted, 2 already there
        ("AdamW", "linear", 0.001),  # the rule as it is: 2
    ],
)
def test_one_epoch_records_the_rate_the_rule_asks_for(sample_data, tmp_path, optimizer, rule, lr0):
    from stages.core.config import parse_params
    from stages.training.settings import TrainerSettings
    from stages.training.trainer import RECIPE, PipelineTrainer, overrides

    _, data_yaml = sample_data
    batch, base, nbs = 8, 2, 4
    train = {
        "optimizer": optimizer,
        "lr0": lr0,
        "lr_scaling": rule,
        "base_batch": base,
        "batch": batch,
        "nbs": nbs,
        "imgsz": 64,
        "epochs": 1,
        "workers": 0,
        "mosaic": 0.0,
    }
    hyper = parse_params({"train": train}).train
    settings = TrainerSettings(lr_scaling=rule, base_batch=base, configured_lr0=lr0)
    run_dir = tmp_path / "run"
    PipelineTrainer(overrides=overrides(hyper, data_yaml, run_dir, "yolo11n.yaml"), settings=settings).train()

    record = json.loads((run_dir / RECIPE).read_text())["recipe"]
    factor = expected_factor(rule, optimizer, batch, base, nbs)
    assert factor != 1.0
    assert record["lr_peak"] / record["lr0"] == pytest.approx(factor)
    assert record["lr_factor"] == pytest.approx(factor)
    assert (record["images_per_step"], record["base_images_per_step"]) == (8, 4)
