"""Which interrupted training run ``train`` resumes, and from which checkpoint.

Only the same run (same fingerprint), never another; a ``last.pt`` that cannot be read whole (a kill or
a full disk mid-save) falls back to the checkpoint before it instead of failing every retry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.training.spec import FINGERPRINT, PREVIOUS, resume_point


def _checkpoint(path: Path, epoch: int) -> None:
    import torch

    torch.save({"epoch": epoch, "payload": torch.zeros(1000)}, path)  # Ultralytics counts from 0


@pytest.fixture
def interrupted_run(tmp_path: Path) -> Path:
    """A run folder as a training killed after 2 of 5 epochs leaves it (the CSV one row ahead)."""
    run = tmp_path / "a1b2c3"
    (run / "weights").mkdir(parents=True)
    _checkpoint(run / "weights" / "last.pt", 1)  # 2 epochs done
    _checkpoint(run / "weights" / PREVIOUS, 0)  # the one before: 1 epoch done
    (run / FINGERPRINT).write_text(json.dumps({"fingerprint": "same-params-same-data"}))
    (run / "results.csv").write_text("epoch,loss\n1,0.9\n2,0.8\n3,0.7\n")
    return run


def test_same_fingerprint_resumes_from_the_checkpoint(interrupted_run: Path):
    found = resume_point(interrupted_run, "same-params-same-data", epochs=5)
    assert found == (interrupted_run / "weights" / "last.pt", 2)
    # The row written after the last checkpoint is dropped: that epoch runs again.
    assert (interrupted_run / "results.csv").read_text() == "epoch,loss\n1,0.9\n2,0.8\n"


def test_changed_fingerprint_never_resumes(interrupted_run: Path):
    before = (interrupted_run / "results.csv").read_text()
    assert resume_point(interrupted_run, "other-params-or-data", epochs=5) is None
    assert (interrupted_run / "results.csv").read_text() == before, "another run's record is left alone"


@pytest.mark.parametrize("keep", [0, 100, "half"])
def test_a_cut_short_last_checkpoint_falls_back_to_the_one_before(interrupted_run: Path, keep):
    last = interrupted_run / "weights" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2 if keep == "half" else keep])
    found = resume_point(interrupted_run, "same-params-same-data", epochs=5)
    assert found == (interrupted_run / "weights" / PREVIOUS, 1)
    assert (interrupted_run / "results.csv").read_text() == "epoch,loss\n1,0.9\n"
    # Removed: the next save must not keep the unreadable one as the previous checkpoint.
    assert not last.exists()


def test_no_readable_checkpoint_starts_afresh(interrupted_run: Path):
    for name in ("last.pt", PREVIOUS):
        (interrupted_run / "weights" / name).write_bytes(b"PK\x03\x04 cut")
    assert resume_point(interrupted_run, "same-params-same-data", epochs=5) is None
