"""Every entry point that writes holds the workspace lock for its whole run (issue 21, item 7).

`make demo` and `scripts/ci_retrain.sh` (CI) are refused before they write anything while another run
holds the workspace (before, `dvc add` and DVC's removal of a stage's outputs ran first); and a
SIGTERM to `python -m flows.tune` stops its trial's `dvc exp run` (in a session of its own) and puts
`params.yaml` back, where before the tune process died alone and left both behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.core.lock import workspace_lock
from tests.conftest import REPO
from tests.e2e.workspace import Workspace

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A committed workspace with sample data, `lock_timeout_s: 0`, the Makefile and the CI script."""
    w = Workspace.with_sample_data(tmp_path_factory, "ws-lock", train=8, val=4)
    w.edit("orchestration", lock_timeout_s=0)
    shutil.copytree(REPO / "scripts", w.root / "scripts")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, w.root / name)
    # `make` sees the project installed: the venv's bin under .venv, installed after pyproject.toml.
    (w.root / ".venv").mkdir()
    (w.root / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    (w.root / ".venv" / ".installed").touch()
    w.git("checkout", "-q", "-b", "main")
    w.git("add", "-A")  # .venv is gitignored
    w.git("commit", "-q", "-m", "pipeline and data")
    return w


def test_make_demo_is_refused_before_writing_while_the_workspace_is_held(ws: Workspace):
    os.utime(ws.root / ".venv" / ".installed")
    # Never let make install here: it would reinstall into the venv this test runs in.
    fresh = subprocess.run(["make", "-q", ".venv/.installed"], cwd=ws.root, env=ws.env, capture_output=True)
    assert fresh.returncode == 0, "make would reinstall the project: not running it"
    (ws.root / "data/dataset.dvc").unlink()  # `make demo` would `dvc add` it again first
    try:
        with workspace_lock(ws.root, 0, "test holder"):
            proc = subprocess.run(
                ["make", "demo"], cwd=ws.root, env=ws.env, capture_output=True, text=True, timeout=300
            )
        assert proc.returncode != 0, proc.stdout
        assert "test holder" in proc.stderr
        assert not (ws.root / "data/dataset.dvc").exists(), "make demo wrote while another run held the workspace"
        assert not (ws.root / "dvc.lock").exists()
    finally:
        ws.git("checkout", "-q", "--", "data/dataset.dvc")


def test_ci_script_is_refused_before_pulling_while_the_workspace_is_held(ws: Workspace):
    with workspace_lock(ws.root, 0, "test holder"):
        proc = subprocess.run(
            ["bash", "scripts/ci_retrain.sh"], cwd=ws.root, env=ws.env, capture_output=True, text=True, timeout=300
        )
    assert proc.returncode != 0 and "test holder" in proc.stderr, proc.stdout + proc.stderr
    assert "== pull" not in proc.stdout


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _session_alive(sid: int) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":
                    alive.append(int(entry.name))
    return alive


def test_sigterm_to_tune_stops_its_trial_and_restores_params(ws: Workspace):
    params = ws.root / "params.yaml"
    ws.edit("tune", study="sigterm", space={"train.lr0": {"type": "float", "low": 0.001, "high": 0.02}})
    ws.git("commit", "-q", "-am", "a study")
    original = params.read_bytes()
    tune = subprocess.Popen(
        [sys.executable, "-m", "flows.tune", "--trials", "1"],
        cwd=ws.root,
        env=ws.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    dvc: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and tune.poll() is None:
            dvc = [c for c in _children(tune.pid) if b"exp" in Path(f"/proc/{c}/cmdline").read_bytes()]
            if dvc and params.read_bytes() != original:
                break
            time.sleep(0.2)
        assert dvc and params.read_bytes() != original, "the trial's dvc exp run did not start"
        time.sleep(2)  # into the stages
        tune.send_signal(signal.SIGTERM)  # the tune process alone, as a process manager would
        _out, err = tune.communicate(timeout=120)
        assert tune.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "params.yaml restored" in err
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_session_alive(pid) for pid in dvc):
            time.sleep(0.2)
        assert not any(_session_alive(pid) for pid in dvc), "the trial's dvc exp run is still running"
        assert params.read_bytes() == original
    finally:
        for pid in dvc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tune.pid, signal.SIGKILL)
