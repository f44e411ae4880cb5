"""What ``train`` does when the disk is full (issue 21, item 10), with the failure injected.

The real thing, on a small tmpfs, is ``tests/e2e/test_full_disk.py``; here each rule is checked fast:
the lack of space is said first (the file, the space left), the last good outputs are put back, and
publishing a new model replaces the old files rather than writing through them (a restored file is a
hard link to DVC's cache object).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from stages import train
from stages.core.config import parse_params
from stages.core.errors import TrainingError
from stages.training import outputs
from stages.training.full_disk import no_space, no_space_message


@pytest.fixture
def cfg(tmp_path: Path) -> train.TrainConfig:
    return train.TrainConfig.from_params(parse_params({}), tmp_path)


def test_a_full_disk_is_said_first_then_the_outputs_come_back(cfg, monkeypatch, caplog):
    checkpoint = cfg.runs / "abc" / "weights" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    events: list[str] = []

    def out_of_space(*_args):
        # As stages.training.trainer words a checkpoint save that failed.
        raise OSError(errno.ENOSPC, f"checkpoint {checkpoint} not written (No space left on device); 1.2 MiB free")

    def restore(workspace: Path, stage: str) -> list[str]:
        events.append("restore")
        return ["models/best.pt"]

    monkeypatch.setattr(train, "import_ultralytics", lambda _ws: SimpleNamespace(__file__=str(cfg.workspace / "u.py")))
    monkeypatch.setattr(train.spec, "resolve_model", lambda *_args: "yolo11n.yaml")
    monkeypatch.setattr(train, "_check_device", lambda _device: None)
    monkeypatch.setattr(train.spec, "run_fingerprint", lambda *_args: "abc" * 8)
    monkeypatch.setattr(train, "_train", out_of_space)
    monkeypatch.setattr(train, "restore_recorded_outputs", restore)
    with caplog.at_level(logging.ERROR), pytest.raises(TrainingError) as err:
        train._run(cfg)
    first = caplog.records[0].getMessage()
    assert first.startswith("training stopped: no space left on device") and str(checkpoint) in first, first
    assert events == ["restore"]
    message = str(err.value)
    assert "no space left on device" in message and "MiB free" in message
    assert "put back (models/best.pt)" in message and "dvc repro" in message


def test_a_full_disk_elsewhere_names_the_file_and_the_space_left(cfg, tmp_path: Path):
    error = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "models" / "train" / "results.csv"))
    message = no_space_message(error, cfg.runs)
    assert f"writing {tmp_path / 'models' / 'train' / 'results.csv'}" in message
    assert f"MiB free in {tmp_path}" in message  # the nearest folder that exists
    wrapped = RuntimeError("training failed")
    wrapped.__cause__ = error
    assert no_space(wrapped) is error
    assert no_space(RuntimeError("other")) is None


def test_publishing_replaces_a_restored_linked_model_instead_of_writing_through_it(cfg, tmp_path: Path):
    """models/best.pt restored as a hard link to DVC's cache: a new model must not change the cache."""
    cache_object = tmp_path / "cache-object"
    cache_object.write_bytes(b"last good model")
    cfg.best.parent.mkdir(parents=True)
    os.link(cache_object, cfg.best)
    run_dir = tmp_path / "run"
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "weights" / "best.pt").write_bytes(b"new model")
    (run_dir / "results.csv").write_text("epoch,train/box_loss,lr/pg0\n1,0.5,0.01\n")
    (run_dir / "args.yaml").write_text("epochs: 1\n")
    old_record = cfg.run_dir / "results.csv"
    old_record.parent.mkdir(parents=True)
    os.link(cache_object, old_record)

    outputs.publish(run_dir, cfg)
    assert cfg.best.read_bytes() == b"new model"
    assert cache_object.read_bytes() == b"last good model", "the cache object is unchanged"
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["args.yaml", "results.csv"]
    assert sorted(p.name for p in cfg.best.parent.iterdir()) == ["best.pt", "train"], "nothing left aside"
