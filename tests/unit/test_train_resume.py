"""Which interrupted training run ``train`` resumes: only the same run (same fingerprint), never another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.train import FINGERPRINT, resumable_checkpoint


@pytest.fixture
def interrupted_run(tmp_path: Path) -> Path:
    """A run folder as a training killed after 2 of 5 epochs leaves it (the CSV one row ahead)."""
    import torch

    run = tmp_path / "a1b2c3"
    (run / "weights").mkdir(parents=True)
    torch.save({"epoch": 1}, run / "weights" / "last.pt")  # Ultralytics counts from 0: 2 epochs done
    (run / FINGERPRINT).write_text(json.dumps({"fingerprint": "same-params-same-data"}))
    (run / "results.csv").write_text("epoch,loss\n1,0.9\n2,0.8\n3,0.7\n")
    return run


def test_same_fingerprint_resumes_from_the_checkpoint(interrupted_run: Path):
    found = resumable_checkpoint(interrupted_run, "same-params-same-data", epochs=5)
    assert found == (interrupted_run / "weights" / "last.pt", 2)
    # The row written after the last checkpoint is dropped: that epoch runs again.
    assert (interrupted_run / "results.csv").read_text() == "epoch,loss\n1,0.9\n2,0.8\n"


def test_changed_fingerprint_never_resumes(interrupted_run: Path):
    before = (interrupted_run / "results.csv").read_text()
    assert resumable_checkpoint(interrupted_run, "other-params-or-data", epochs=5) is None
    assert (interrupted_run / "results.csv").read_text() == before, "another run's record is left alone"
