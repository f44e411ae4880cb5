"""End to end: a full disk does not lose the last good model (issue 21, item 10).

The workspace lives on a small tmpfs (in a mount namespace of its own, ``unshare -rm``: no root
needed where user namespaces are allowed). After one good ``dvc repro train``, the filesystem is
filled to a few MiB and the model retrained: DVC removes the stage's outputs, training runs out of
space writing its checkpoint. The failure says so first (the file, the space left), the last good
``models/best.pt`` is back byte for byte without needing space (a hard link to DVC's cache), and once
the space is freed a single ``dvc repro`` completes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, venv_env

pytestmark = pytest.mark.e2e

SIZE_MB = 160


def _namespaces_usable(tmp_path: Path) -> str:
    """Why a tmpfs cannot be mounted in a namespace of our own here, or ``""`` when it can."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = tmp_path / "probe"
    probe.mkdir()
    proc = subprocess.run(
        ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
        capture_output=True,
        text=True,
    )
    return "" if proc.returncode == 0 else f"cannot mount a tmpfs in a user+mount namespace: {proc.stderr.strip()}"


def test_a_full_disk_keeps_the_last_good_model_and_one_repro_then_completes(tmp_path: Path):
    reason = _namespaces_usable(tmp_path)
    if reason:
        pytest.skip(reason)
    mount, result = tmp_path / "disk", tmp_path / "result.json"
    mount.mkdir()
    env = venv_env()
    proc = subprocess.run(
        ["unshare", "-rm", sys.executable, "-m", "tests.e2e.full_disk", str(mount), str(result), str(SIZE_MB)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.is_file(), proc.stderr[-3000:]
    record = json.loads(result.read_text())
    assert "error" not in record, record["error"] + proc.stderr[-3000:]
    baseline, full, again = record["baseline"], record["full"], record["again"]
    assert baseline["returncode"] == 0, baseline["output"]
    assert record["filled_free_mb"] < 3

    # The retraining ran out of space and says so first: the file and how much was free.
    assert full["returncode"] != 0 and "train" in full["ran"], full["output"]
    errors = [line for line in full["output"].splitlines() if re.search(r"\bERROR\b|^error:", line)]
    assert errors, full["output"]
    assert "no space left on device" in errors[0] and "MiB free" in errors[0], errors[0]
    assert re.search(r"last\.pt|\.pt\b", errors[0]), errors[0]

    # The last good outputs are back, the very same model, linked to the cache (no space needed).
    assert full["best"] == baseline["best"], full["output"]
    assert full["best_links"] >= 2
    assert full["train_dir"] == baseline["train_dir"]

    # Space freed: one dvc repro completes with no other step.
    assert again["returncode"] == 0, again["output"]
    assert "train" in again["ran"] and again["epochs_run"] == 2
    assert again["best"] not in (None, baseline["best"])
