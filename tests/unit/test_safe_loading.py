"""Checkpoints are unpickled only through Ultralytics' safe loading (issue 21, item 5).

``models/best.pt`` and production arrive from the DVC remote; an ordinary unpickle of a file from
there runs whatever its author put in it. A crafted ``.pt`` whose pickle runs a shell command is given
to every place the pipeline loads a checkpoint: each refuses it and the command never runs. The
pipeline's own checkpoints (a mid-run ``last.pt`` with optimizer, EMA and arguments, a finished
``best.pt``) still load, and a run still resumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from stages.core.config import parse_params
from tests.conftest import tiny_training_workspace


class _RunsCommand:
    """Pickles as a call of ``os.system``: what a hostile checkpoint would hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    """A workspace with Ultralytics imported through ``import_ultralytics`` and a tiny dataset."""
    return tiny_training_workspace(tmp_path_factory.mktemp("safe"))


@pytest.fixture(params=["zip", "legacy"])
def crafted(request, tmp_path: Path) -> tuple[Path, Path]:
    """A ``.pt`` (the zip format, or torch's older one) that writes ``marker`` when unpickled."""
    marker = tmp_path / "marker"
    path = tmp_path / "weights" / "last.pt"
    path.parent.mkdir()
    payload = {"epoch": 1, "model": _RunsCommand(f"touch {marker}"), "train_args": {}}
    torch.save(payload, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, marker


def make_trainer(data_yaml: Path, run_dir: Path, **overrides: Any):
    from stages.training.settings import TrainerSettings
    from stages.training.trainer import PipelineTrainer
    from stages.training.trainer import overrides as trainer_overrides

    values = {"optimizer": "SGD", "batch": 4, "imgsz": 64, "epochs": 2, "workers": 0, "mosaic": 0.0}
    hyper = parse_params({"train": values}).train
    args = trainer_overrides(hyper, data_yaml, run_dir, "yolo11n.yaml") | overrides
    return PipelineTrainer(overrides=args, settings=TrainerSettings(base_batch=4))


def test_import_ultralytics_turns_safe_loading_on(workspace):
    from ultralytics.nn import tasks

    assert os.environ["ULTRALYTICS_SAFE_LOAD"] == "1"  # inherited by every process started from here
    assert tasks.SAFE_LOAD is True


def test_our_own_checkpoint_reader_refuses_a_crafted_pickle(workspace, crafted):
    from stages.core.runtime import UnsafeCheckpoint, load_checkpoint

    path, marker = crafted
    with pytest.raises(UnsafeCheckpoint, match="allow-list") as err:
        load_checkpoint(path)
    assert err.value.path == path and "system" in str(err.value)
    assert not marker.exists()


def test_the_resume_point_refuses_a_crafted_last_checkpoint(workspace, crafted):
    import json

    from stages.core.runtime import UnsafeCheckpoint
    from stages.training.spec import FINGERPRINT, resume_point

    path, marker = crafted
    run = path.parent.parent
    (run / FINGERPRINT).write_text(json.dumps({"fingerprint": "f"}))
    (run / "results.csv").write_text("epoch,loss\n1,0.9\n")
    with pytest.raises(UnsafeCheckpoint):
        resume_point(run, "f", epochs=5)
    assert not marker.exists()


def test_ultralytics_model_loads_refuse_a_crafted_pickle(workspace, crafted):
    """What evaluate, export and the PyTorch backend (``inference.torch_model``) do with ``models/best.pt``."""
    import ultralytics

    from stages.backends.inference import torch_model

    path, marker = crafted
    with pytest.raises(TypeError, match="outside the supported"):
        ultralytics.YOLO(str(path), task="detect")
    with pytest.raises(TypeError, match="outside the supported"):
        torch_model(path, workspace[0])
    assert not marker.exists()


def test_training_from_or_resuming_a_crafted_checkpoint_is_refused(workspace, crafted, tmp_path):
    """``train.model: <a .pt>`` (fine-tuning production, say) and a resume of ``last.pt``."""
    _, data_yaml = workspace
    path, marker = crafted
    with pytest.raises(TypeError, match="outside the supported"):
        make_trainer(data_yaml, tmp_path / "run", model=str(path)).train()
    # Ultralytics words a resume's refusal "Resume checkpoint not found", the refusal as its cause.
    with pytest.raises(FileNotFoundError) as err:
        make_trainer(data_yaml, tmp_path / "resumed", resume=str(path))
    assert isinstance(err.value.__cause__, TypeError) and "outside the supported" in str(err.value.__cause__)
    assert not marker.exists()


def test_our_own_checkpoints_load_safely_and_a_run_resumes(workspace, tmp_path):
    """A mid-run ``last.pt`` (optimizer, EMA, train_args, metrics) and the finished, stripped one."""
    import ultralytics

    from stages.core.runtime import load_checkpoint
    from stages.training.spec import checkpoint_epochs

    _, data_yaml = workspace
    trainer = make_trainer(data_yaml, tmp_path / "run")
    trainer._setup_train()
    trainer.epoch = 0
    assert trainer.save_model()
    mid_run = load_checkpoint(trainer.last)
    assert mid_run["optimizer"] is not None and mid_run["ema"] is not None and mid_run["train_args"]
    assert checkpoint_epochs(trainer.last) == 1
    ultralytics.YOLO(str(trainer.last), task="detect")

    resumed = make_trainer(data_yaml, tmp_path / "run", resume=str(trainer.last))
    resumed.train()  # the second of two epochs
    assert resumed.start_epoch == 1
    finished = load_checkpoint(resumed.best)
    assert finished["optimizer"] is None and finished["epoch"] == -1
    model = ultralytics.YOLO(str(resumed.best), task="detect")
    assert model.model.yaml["nc"] == 3
