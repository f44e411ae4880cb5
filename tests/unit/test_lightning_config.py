"""``train.backend: lightning``: each bad input refused before any training, naming its key; the arithmetic.

What runs here needs no Lightning: the config checks, the import seam (Lightning hidden), the loss
scaling against Ultralytics' and Lightning's rules, and the warmup values against Ultralytics' formula.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch

from stages.core.config import TrainParams, parse_params
from stages.core.errors import ConfigError
from stages.training.lightning import require_lightning
from stages.training.lightning.schedule import (
    accumulation,
    epoch_lr,
    training_loss,
    warmup_accumulate,
    warmup_values,
)


def _train(**train: object) -> TrainParams:
    return parse_params({"train": {"backend": "lightning", **train}}).train


@pytest.mark.parametrize(
    ("train", "key", "words"),
    [
        ({"lightning": {"strategy": "deepspeed"}}, "train.lightning.strategy", "auto"),
        ({"lightning": {"precision": "64-true"}}, "train.lightning.precision", "bf16-mixed"),
        ({"lightning": {"strategy": "fsdp"}}, "train.lightning.strategy", "use ddp"),
        (
            {"lightning": {"strategy": "fsdp"}, "device": "0,1", "batch": 4, "distributed": {"nproc_per_node": 2}},
            "train.lightning.strategy",
            "BACKWARD_PRE",
        ),
        ({"lightning": {"precision": "16-mixed"}}, "train.lightning.precision", "bf16-mixed instead"),
        ({"lightning": {"accumulate_grad_batches": 0}}, "train.lightning.accumulate_grad_batches", "greater"),
        (
            {"lr_scaling": "linear", "lightning": {"accumulate_grad_batches": 2}},
            "train.lightning.accumulate_grad_batches",
            "set nbs",
        ),
        ({"lightning": {"gradient_clip_val": -1}}, "train.lightning.gradient_clip_val", "greater"),
        ({"lightning": {"devices": 2}}, "train.lightning.devices", "unknown key"),
        ({"backend": "keras"}, "train.backend", "ultralytics"),
    ],
)
def test_bad_lightning_input_is_refused_naming_its_key(train, key, words):
    with pytest.raises(ConfigError) as caught:
        _train(**train)
    assert caught.value.key == key
    assert words in str(caught.value)


def test_the_checks_apply_only_to_the_lightning_backend():
    # The Ultralytics backend ignores train.lightning: a CPU run keeps the default 16-mixed it never reads.
    hyper = parse_params({"train": {"lightning": {"precision": "16-mixed"}}}).train
    assert hyper.backend == "ultralytics"


def test_the_ultralytics_backend_keeps_its_fingerprint_and_lightning_keys_change_a_lightning_run():
    plain = TrainParams().training_identity()
    assert "backend" not in plain and "lightning" not in plain  # the identity it had before this backend
    assert TrainParams(lightning={"precision": "bf16-mixed"}).training_identity() == plain
    lightning = _train().training_identity()
    assert lightning["backend"] == "lightning"
    assert _train(lightning={"precision": "bf16-mixed"}).training_identity() != lightning
    assert _train(lightning={"accumulate_grad_batches": 2}).training_identity() != lightning


@pytest.fixture
def no_lightning(monkeypatch):
    """``import lightning`` fails, as where the ``lightning`` extra is not installed."""
    real = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == "lightning" or name.startswith("lightning."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)


def test_lightning_not_installed_is_a_config_error_naming_train_backend(no_lightning):
    with pytest.raises(ConfigError) as caught:
        require_lightning()
    assert caught.value.key == "train.backend"
    assert "pip install 'yolo-pipeline[lightning]'" in str(caught.value)


def test_the_stage_refuses_a_missing_lightning_before_it_builds_anything(no_lightning, tmp_path, monkeypatch):
    import stages.train as stage

    def never(*_args, **_kwargs):
        raise AssertionError("the stage went on to Ultralytics or training")

    monkeypatch.setattr(stage, "import_ultralytics", never)
    monkeypatch.setattr(stage, "_train", never)
    data_yaml = tmp_path / "prepared" / "data.yaml"
    data_yaml.parent.mkdir()
    data_yaml.write_text("names: {0: a}\n")
    params = parse_params({"train": {"backend": "lightning"}})
    cfg = stage.TrainConfig.from_params(params, tmp_path).model_copy(update={"data_yaml": data_yaml})
    with pytest.raises(ConfigError) as caught:
        stage.run(cfg)
    assert caught.value.key == "train.backend"


def test_print_launch_refuses_a_missing_lightning(no_lightning, tmp_path, capsys):
    import yaml

    import stages.train as stage

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"backend": "lightning"}}))
    assert stage.print_launch(["--print-launch", "--params", str(params)]) == 2
    assert "train.backend" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("batch", "nbs", "configured", "expected"), [(16, 64, None, 4), (64, 64, None, 1), (16, 64, 3, 3)]
)
def test_accumulation_is_ultralytics_rule_unless_configured(batch, nbs, configured, expected):
    assert accumulation(batch, nbs, configured) == expected


@pytest.mark.parametrize(("world", "accumulate"), [(1, 1), (1, 4), (2, 4), (4, 2)])
def test_the_gradient_of_an_optimizer_step_is_ultralytics(world, accumulate):
    """Both backpropagate ``sum x world`` on every batch and sum the passes of a step unscaled."""
    torch.manual_seed(0)
    weight = torch.randn(3, requires_grad=True)
    batches = [torch.randn(4, 3) for _ in range(accumulate)]
    for images in batches:
        ((images @ weight).pow(2).sum() * world).backward()
    ultralytics = weight.grad.clone()
    weight.grad = None
    for images in batches:
        training_loss((images @ weight).pow(2).sum(), world).backward()
    assert torch.allclose(weight.grad, ultralytics)


def _ultralytics_steps(batches: int, epochs: int, nw: int, accumulate: int) -> list[int]:
    """The forward passes Ultralytics 8.4's ``_do_train`` steps after, its cadence written out."""
    import numpy as np

    steps, last, now = [], -1, accumulate
    for ni in range(batches * epochs):
        if nw and ni <= nw:
            now = max(1, int(np.interp(ni, [0, nw], [1, accumulate]).round()))
        if ni - last >= now:
            steps.append(ni)
            last = ni
    return steps


@pytest.mark.parametrize(("batches", "epochs", "nw", "accumulate"), [(6, 30, 18, 4), (2, 2, 2, 4), (5, 4, 0, 2)])
def test_the_step_cadence_is_ultralytics(batches, epochs, nw, accumulate):
    """The module's rule (``warmup_accumulate``, step when ``ni - last >= accumulate``) against Ultralytics'."""
    steps, last, now = [], -1, accumulate
    for ni in range(batches * epochs):
        if nw and ni <= nw:
            now = warmup_accumulate(ni, nw, accumulate)
        if ni - last >= now:
            steps.append(ni)
            last = ni
    assert steps == _ultralytics_steps(batches, epochs, nw, accumulate)
    # The sample's case (6 batches, accumulate 4, 3 warmup epochs): fewer steps than 2 an epoch, which
    # stepping at every epoch's last batch gave.
    if (batches, accumulate) == (6, 4):
        assert len(steps) < 2 * epochs


def _ultralytics_warmup(ni: int, nw: int, bias: bool, target: float) -> tuple[float, float]:
    """Ultralytics 8.4 ``_do_train``'s warmup, written out for the default hyper-parameters."""
    import numpy as np

    lr = np.interp(ni, [0, nw], [0.1 if bias else 0.0, target])
    return float(lr), float(np.interp(ni, [0, nw], [0.8, 0.937]))


@pytest.mark.parametrize("ni", [0, 1, 7, 15, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_warmup_values_are_ultralytics(ni, bias):
    lf = lambda x: max(1 - x / 10, 0) * (1.0 - 0.01) + 0.01  # noqa: E731 -- Ultralytics' linear lf, 10 epochs
    target = epoch_lr(0.01, lf, 1)
    assert target == pytest.approx(0.01 * (0.9 * 0.99 + 0.01))
    got = warmup_values(ni, 16, bias=bias, target_lr=target, warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.937)
    assert got == pytest.approx(_ultralytics_warmup(ni, 16, bias, target))
    if ni == 16:
        assert got == pytest.approx((target, 0.937))  # warmup lands exactly on the schedule


def test_params_yaml_holds_the_backend_and_its_section():
    from stages.core.config import load_params

    train = load_params(Path(__file__).parents[2] / "params.yaml").train
    assert train.backend == "ultralytics"
    assert train.lightning.gradient_clip_val == 10.0 and train.lightning.accumulate_grad_batches is None
