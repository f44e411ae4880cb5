"""The seams of ``PipelineTrainer`` that need no second process: checkpoints, final validation, EMA."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from stages.core.config import parse_params
from tests.conftest import tiny_training_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    """A workspace with Ultralytics set up offline and a tiny dataset (8 train, 4 val images)."""
    return tiny_training_workspace(tmp_path_factory.mktemp("seams"))


def make_trainer(workspace: tuple[Path, Path], run_dir: Path, **train: Any):
    """A ``PipelineTrainer`` on the tiny dataset, one epoch at 64 px, not yet set up."""
    from stages.training.settings import TrainerSettings
    from stages.training.trainer import PipelineTrainer, overrides

    _, data_yaml = workspace
    values = {"optimizer": "SGD", "batch": 4, "imgsz": 64, "epochs": 1, "workers": 0, "mosaic": 0.0, **train}
    hyper = parse_params({"train": values}).train
    return PipelineTrainer(
        overrides=overrides(hyper, data_yaml, run_dir, "yolo11n.yaml"), settings=TrainerSettings(base_batch=4)
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The copy of the previous last.pt that a resume falls back to: kept on purpose, not a temp file.
PREVIOUS = "last.prev.pt"


def checkpoints(wdir: Path) -> dict[str, str]:
    """What a weights folder holds, hidden entries included, by name: a file's digest, or "folder"."""
    return {p.name: digest(p) if p.is_file() else "folder" for p in wdir.iterdir() if p.name != PREVIOUS}


# --- atomic checkpoints ---------------------------------------------------------------------------


@pytest.fixture
def saved_trainer(workspace, tmp_path):
    """A set-up trainer that has saved last.pt and best.pt once (epoch 0)."""
    trainer = make_trainer(workspace, tmp_path / "run")
    trainer._setup_train()
    trainer.epoch = 0
    assert trainer.save_model()
    return trainer


def test_a_save_replaces_the_checkpoints_whole_and_leaves_nothing_else(saved_trainer):
    trainer = saved_trainer
    stale = trainer.wdir / ".saving"
    stale.mkdir()
    (stale / "last.pt").write_bytes(b"half a checkpoint from a killed save")
    trainer.epoch, trainer.save_period = 2, 1  # Ultralytics then writes epoch2.pt too

    before = digest(trainer.last)
    assert trainer.save_model()

    assert sorted(checkpoints(trainer.wdir)) == ["best.pt", "epoch2.pt", "last.pt"]
    assert digest(trainer.last) != before
    assert torch.load(trainer.last, weights_only=False)["epoch"] == 2
    assert torch.load(trainer.wdir / "epoch2.pt", weights_only=False)["epoch"] == 2
    assert (trainer.last, trainer.best, trainer.wdir) == (
        trainer.save_dir / "weights" / "last.pt",
        trainer.save_dir / "weights" / "best.pt",
        trainer.save_dir / "weights",
    )


@pytest.mark.parametrize("failing", ["last.pt", "best.pt"])
def test_a_full_disk_mid_save_leaves_the_previous_checkpoints_intact(saved_trainer, monkeypatch, failing):
    trainer = saved_trainer
    before = checkpoints(trainer.wdir)
    assert sorted(before) == ["best.pt", "last.pt"]
    write_bytes = Path.write_bytes

    def half_then_enospc(self: Path, data: bytes) -> int:
        if self.name == failing:  # wherever it is written (in place, as Ultralytics does, or aside)
            write_bytes(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", half_then_enospc)
    trainer.epoch = 1
    with pytest.raises(OSError, match="No space left on device") as raised:
        trainer.save_model()

    assert raised.value.errno == errno.ENOSPC
    message = str(raised.value)
    assert str(trainer.wdir / failing) in message and "MiB free" in message
    assert checkpoints(trainer.wdir) == before, "no temp file left, nothing changed"
    assert torch.load(trainer.last, weights_only=False)["epoch"] == 0
    assert (trainer.last.parent, trainer.wdir) == (trainer.save_dir / "weights",) * 2


def test_a_full_disk_when_flushing_leaves_the_previous_checkpoints_intact(saved_trainer, monkeypatch):
    """A full disk can show only when the data is flushed (delayed allocation, network filesystems)."""
    from stages.training import checkpoints as module

    trainer = saved_trainer
    before = checkpoints(trainer.wdir)
    fsync = module._fsync

    def enospc_on_best(path: Path) -> None:
        if path.name == "best.pt":
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(path)

    monkeypatch.setattr(module, "_fsync", enospc_on_best)
    trainer.epoch = 1
    with pytest.raises(OSError, match=f"checkpoint {trainer.best} not written"):
        trainer.save_model()
    assert checkpoints(trainer.wdir) == before


# --- final validation -----------------------------------------------------------------------------


def test_final_validation_of_a_single_process_run_sees_the_whole_val_split(workspace, tmp_path):
    import json

    from stages.training.trainer import FINAL_EVAL

    trainer = make_trainer(workspace, tmp_path / "run")
    trainer.train()
    assert json.loads((trainer.save_dir / FINAL_EVAL).read_text()) == {"images": 4}
    assert sorted(checkpoints(trainer.wdir)) == ["best.pt", "last.pt"]
    assert torch.load(trainer.last, weights_only=False)["optimizer"] is None, "stripped at the end"


def test_a_full_disk_while_stripping_the_final_checkpoints_leaves_them_intact(saved_trainer, monkeypatch):
    """Ultralytics' final_eval rewrites last.pt and best.pt without their optimizer state."""
    import io

    trainer = saved_trainer
    before = checkpoints(trainer.wdir)
    save = torch.save

    def half_then_enospc(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(f, (str, Path)) and Path(f).name == "last.pt":
            buffer = io.BytesIO()
            save(obj, buffer)
            Path(f).write_bytes(buffer.getvalue()[: buffer.tell() // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", half_then_enospc)
    with pytest.raises(OSError, match=f"checkpoint {trainer.last} not written"):
        trainer.final_eval()
    assert checkpoints(trainer.wdir) == before
    assert torch.load(trainer.last, weights_only=False)["optimizer"] is not None


@pytest.fixture
def one_process_group():
    """A gloo process group of this process alone, destroyed afterwards whatever happened."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_rank_0_validates_alone_over_the_whole_split_not_its_share(workspace, tmp_path, monkeypatch, one_process_group):
    """Rank 0 of two, after the others left: its validator held half the split (a distributed sampler)."""
    import json

    from torch.utils.data import DataLoader
    from ultralytics.data.build import ContiguousDistributedSampler

    from stages.training import trainer as module

    trainer = make_trainer(workspace, tmp_path / "run")
    trainer._setup_train()
    trainer.epoch = 0
    trainer.save_model()  # best.pt, what the final validation reads
    dataset = trainer.test_loader.dataset
    share = ContiguousDistributedSampler(dataset, num_replicas=2, rank=0, batch_size=2)
    assert len(share) == 2
    trainer.validator.dataloader = DataLoader(dataset, batch_size=2, sampler=share, collate_fn=dataset.collate_fn)
    monkeypatch.setattr(module, "RANK", 0)
    trainer.world_size = 2

    trainer.final_eval()

    assert json.loads((trainer.save_dir / module.FINAL_EVAL).read_text()) == {"images": 4}


# --- process group and SyncBN -----------------------------------------------------------------------


def bare_trainer():
    """A ``PipelineTrainer`` with none of Ultralytics' set-up, for methods that read a few attributes only.

    Its tests use the ``workspace`` fixture, which imports Ultralytics offline first.
    """
    from stages.training.settings import TrainerSettings
    from stages.training.trainer import PipelineTrainer

    trainer = PipelineTrainer.__new__(PipelineTrainer)
    trainer.settings = TrainerSettings(backend="nccl")
    return trainer


@pytest.mark.usefixtures("workspace")
def test_nccl_process_group_leaves_blocking_wait_alone(monkeypatch):
    """NCCL's watchdog enforces the timeout; blocking wait would stall the CPU on every collective."""
    import torch.distributed as dist

    from stages.training import trainer as module

    monkeypatch.delenv("TORCH_NCCL_BLOCKING_WAIT", raising=False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    trainer = bare_trainer()
    trainer.device, trainer.world_size = torch.device("cuda", 0), 2
    trainer.args = SimpleNamespace(device="1")
    monkeypatch.setattr(module, "LOCAL_RANK", 0)

    trainer._setup_ddp()

    assert "TORCH_NCCL_BLOCKING_WAIT" not in os.environ
    assert trainer.device == torch.device("cuda", 1)
    assert [c["backend"] for c in calls] == ["nccl"]


@pytest.mark.usefixtures("workspace")
def test_ema_reloaded_from_a_checkpoint_holds_plain_batch_norm_under_sync_bn():
    """Ultralytics' NaN recovery (and resume) rebuild the EMA from the SyncBN training model."""
    import copy

    from torch import nn
    from ultralytics.utils.torch_utils import EarlyStopping, ModelEMA

    from stages.training import sync_bn

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    plain.train()
    plain(torch.randn(2, 3, 8, 8))  # running statistics away from their defaults
    trainer = bare_trainer()
    trainer.model = sync_bn.convert(copy.deepcopy(plain))
    trainer.sync_bn_active = True
    trainer.ema = ModelEMA(trainer.model)
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.01)
    trainer.stopper = EarlyStopping(patience=5)
    ckpt = {"ema": copy.deepcopy(plain).half(), "updates": 7, "best_fitness": 0.25, "stopper": {"best_epoch": 1}}

    trainer._load_checkpoint_state(ckpt)

    ema = trainer.ema.ema
    assert sync_bn.count(ema, nn.SyncBatchNorm) == 0 and sync_bn.count(ema, nn.BatchNorm2d) == 2
    assert trainer.ema.updates == 7 and trainer.best_fitness == 0.25
    for key, value in ckpt["ema"].float().state_dict().items():
        assert torch.equal(ema.state_dict()[key], value), key


# --- processes importing Ultralytics at once ------------------------------------------------------


def _import_with_the_others(workspace: str, barrier: Any, results: Any) -> None:
    """One launched process: import Ultralytics when the others do; report what it wrote and whom it met."""
    import logging
    import time

    import matplotlib  # noqa: F401  (the slow imports first, so that the processes reach Ultralytics together)

    from stages.core import runtime

    root = Path(workspace)
    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("stages.core.runtime")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    met: set[str] = set()
    place_fonts = runtime._place_fonts

    def place_fonts_slowly(config_dir: Path) -> list[str]:
        # Another writer inside at the same time shows as its marker file; the pause widens the window.
        marker = root / f"inside.{os.getpid()}"
        marker.touch()
        for _ in range(2):
            met.update(p.name for p in root.glob("inside.*") if p != marker)
            time.sleep(0.25)
        marker.unlink()
        return place_fonts(config_dir)

    runtime._place_fonts = place_fonts_slowly
    barrier.wait()
    runtime.import_ultralytics(root)
    results.put(
        {
            "met": sorted(met),
            "fonts": sum(m.startswith("placed font") for m in messages),
            "settings": sum(m.startswith("wrote Ultralytics settings") for m in messages),
        }
    )


def test_processes_importing_ultralytics_at_once_write_one_at_a_time(tmp_path):
    import json
    import multiprocessing

    import matplotlib

    from stages.core.runtime import ultralytics_config_dir

    processes = 4
    context = multiprocessing.get_context("spawn")  # fresh interpreters, none with Ultralytics imported
    barrier, results = context.Barrier(processes), context.Queue()
    children = [
        context.Process(target=_import_with_the_others, args=(str(tmp_path), barrier, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    reports = [results.get(timeout=300) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0

    assert [r["met"] for r in reports] == [[]] * processes, "two processes wrote at the same time"
    assert sum(r["fonts"] for r in reports) == 2, "each font placed once, by one process"
    assert sum(r["settings"] for r in reports) == 1, "settings written by the first process only"
    folder = ultralytics_config_dir(tmp_path) / "Ultralytics"
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["sync"] is False and settings["datasets_dir"] == str(ultralytics_config_dir(tmp_path) / "datasets")
    font = (Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf").read_bytes()
    assert [(folder / n).read_bytes() == font for n in ("Arial.ttf", "Arial.Unicode.ttf")] == [True, True]
    assert not list(folder.glob(".*.partial")), "no partial font left"
