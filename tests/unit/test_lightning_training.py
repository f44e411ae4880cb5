"""The Lightning backend trains for real, in one process, on 8 + 4 images at 64 px (CPU, a few seconds each).

The outputs contract (the stage's outputs as the Ultralytics backend writes them, ``best.pt`` in
Ultralytics' format, ``results.csv`` with the same columns) and the exact-epochs resume after a crash.
Skipped where Lightning is not installed (the ``lightning`` extra).
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from pathlib import Path

import pytest

from stages.core.config import TrainParams, parse_params
from stages.training import spec
from tests.conftest import needs_lightning, tiny_training_workspace

pytestmark = needs_lightning

TINY = {"imgsz": 64, "batch": 4, "workers": 0, "optimizer": "SGD", "warmup_epochs": 1, "close_mosaic": 1}


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh))


def _rates(path: Path) -> list[float]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [float(v) for row in csv.DictReader(fh) for k, v in row.items() if k.startswith("lr/")]


def _epochs(path: Path) -> list[int]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [int(float(row["epoch"])) for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_training_workspace(tmp_path_factory.mktemp("lightning"))


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory):
    """``stages.train.run`` with ``train.backend: lightning``, 2 epochs, on a workspace of its own."""
    import stages.train as stage
    from stages.data.sample_data import SampleSpec, generate

    root, _ = tiny_training_workspace(tmp_path_factory.mktemp("lightning-stage"))
    prepared = root / "data" / "prepared"
    generate(SampleSpec(out=prepared, train=8, val=4, size=64, seed=0))
    (prepared / "data.yaml").write_text(
        f"path: {prepared}\ntrain: images/train\nval: images/val\nnames: {{0: a, 1: b, 2: c}}\n"
    )
    params = parse_params({"train": {"backend": "lightning", "epochs": 2, **TINY}})
    cfg = stage.TrainConfig.from_params(params, root)
    with _counting_optimizer_steps() as steps:
        result = stage.run(cfg)
    return cfg, result, len(steps)


@contextlib.contextmanager
def _counting_optimizer_steps():
    """The optimizer steps of a training in this process: both backends update the EMA once after each."""
    from ultralytics.utils.torch_utils import ModelEMA

    steps: list[int] = []
    update = ModelEMA.update

    def counted(self, model):
        steps.append(1)
        return update(self, model)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelEMA, "update", counted)
        yield steps


def test_the_stage_writes_the_same_outputs_with_the_trainer_named(staged, workspace, tmp_path):
    cfg, result, lightning_steps = staged
    assert result.trainer == "lightning" and result.epochs_run == 2
    metrics = json.loads(cfg.metrics.read_text())
    assert metrics["trainer_lightning"] == 1 and all(not isinstance(v, str) for v in metrics.values())
    assert json.loads(cfg.report.read_text())["trainer"] == "lightning"
    assert [int(e["epoch"]) for e in metrics["epochs"]] == [1, 2]
    assert {"images_per_s", "dataloader_wait_share"} <= set(metrics["throughput"])
    assert metrics["final_val_images"] == 4
    # round(nbs 64 / batch 4) = 16, capped at the run's 2 x 2 batches as Ultralytics caps it
    assert metrics["recipe"]["accumulate"] == 4
    assert not any(cfg.runs.iterdir()), "the finished run folder is removed, as for the other backend"

    # results.csv has the Ultralytics backend's columns, and the same learning rates epoch by epoch (warmup
    # and schedule): the same 2 epochs of it, on the same data.
    from stages.training.trainer import fit as ultralytics_fit

    _root, data_yaml = workspace
    hyper = TrainParams(epochs=2, **TINY)
    run = tmp_path / "ultralytics"
    with _counting_optimizer_steps() as steps:
        ultralytics_fit(hyper, data_yaml, run, "yolo11n.yaml", spec.trainer_settings(hyper))
    # The same optimizer steps: Ultralytics' cadence (accumulation ramped over warmup, a partial one carried
    # over), not one at every epoch's end, which gave 2 here against Ultralytics' 1.
    assert lightning_steps == len(steps) == 1
    assert _header(cfg.run_dir / "results.csv") == _header(run / "results.csv")
    assert _rates(cfg.run_dir / "results.csv") == pytest.approx(_rates(run / "results.csv"), rel=1e-5)


def test_best_pt_is_an_ultralytics_checkpoint_that_evaluates(staged):
    import torch
    import ultralytics

    cfg, _, _ = staged
    ckpt = torch.load(cfg.best, map_location="cpu", weights_only=False)
    assert {"epoch", "ema", "train_args", "train_metrics", "train_results"} <= set(ckpt)
    assert ckpt["optimizer"] is None, "stripped at the end, as Ultralytics' final_eval does"
    metrics = ultralytics.YOLO(str(cfg.best)).val(data=str(cfg.data_yaml), imgsz=64, batch=4, device="cpu", plots=False)
    assert 0.0 <= metrics.box.map <= 1.0


def test_a_crashed_run_resumes_from_lightnings_checkpoint_and_trains_exactly_the_remaining_epochs(
    workspace, tmp_path, monkeypatch
):
    import lightning

    from stages.training.lightning import checkpoint
    from stages.training.lightning.fit import fit
    from stages.training.lightning.module import DetectorModule

    _root, data_yaml = workspace
    hyper = parse_params({"train": {"backend": "lightning", "epochs": 3, **TINY}}).train
    run = tmp_path / "run"
    spec.start_run_dir(run, "fp")
    started: list[int] = []
    epoch_start = DetectorModule.on_train_epoch_start
    save = lightning.Trainer.save_checkpoint

    def count(self):
        started.append(self.current_epoch)
        epoch_start(self)

    def killed_while_saving_epoch_2(self, path, *args, **kwargs):
        if self.current_epoch == 1:  # results.csv already has epoch 2; Lightning's checkpoint holds epoch 1
            raise RuntimeError("killed")
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(DetectorModule, "on_train_epoch_start", count)
    monkeypatch.setattr(lightning.Trainer, "save_checkpoint", killed_while_saving_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        fit(hyper, data_yaml, run, "yolo11n.yaml", spec.trainer_settings(hyper))
    assert _epochs(run / "results.csv") == [1, 2]

    found = spec.run_resume_point(run, "fp", hyper)
    assert found == (checkpoint.last_checkpoint(run), 1)
    assert _epochs(run / "results.csv") == [1], "the epoch past the checkpoint runs again"

    monkeypatch.setattr(lightning.Trainer, "save_checkpoint", save)
    started.clear()
    fit(hyper, data_yaml, run, "yolo11n.yaml", spec.trainer_settings(hyper), found[0])
    assert started == [1, 2], "only the remaining epochs train"
    assert _epochs(run / "results.csv") == [1, 2, 3]
    assert _epochs(run / "epoch_stats.csv") == [1, 2, 3]
    assert spec.checkpoint_epochs(run / "weights" / "last.pt") == 0  # stripped: Ultralytics' finished run
    shutil.rmtree(run)


def test_several_processes_keep_their_own_batch_norm_buffers_as_under_ultralytics():
    """No broadcast of every buffer on every forward pass (Lightning's default; 1.48x per epoch on 2 gloo CPUs)."""
    from lightning.pytorch.strategies import DDPStrategy

    from stages.training.lightning.fit import strategy

    hyper = parse_params({"train": {"backend": "lightning", "batch": 4, "distributed": {"nproc_per_node": 2}}}).train
    chosen = strategy(hyper, spec.trainer_settings(hyper), 2)
    assert isinstance(chosen, DDPStrategy) and chosen._ddp_kwargs["broadcast_buffers"] is False
    assert chosen._process_group_backend == "gloo"


def test_a_run_stopped_early_is_no_resume_point(workspace, tmp_path, monkeypatch):
    """As the Ultralytics backend's finished (stripped) last.pt: a retry of the stage trains afresh."""
    from ultralytics.utils.torch_utils import EarlyStopping

    from stages.training.lightning import checkpoint
    from stages.training.lightning.fit import fit

    _root, data_yaml = workspace
    hyper = parse_params({"train": {"backend": "lightning", "epochs": 3, **TINY}}).train
    run = tmp_path / "run"
    spec.start_run_dir(run, "fp")
    monkeypatch.setattr(EarlyStopping, "__call__", lambda self, epoch, fitness: epoch >= 1)  # stop after epoch 1
    fit(hyper, data_yaml, run, "yolo11n.yaml", spec.trainer_settings(hyper))
    assert _epochs(run / "results.csv") == [1], "stopped early"
    assert not checkpoint.last_checkpoint(run).exists()
    assert spec.run_resume_point(run, "fp", hyper) is None
