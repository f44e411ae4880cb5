"""The suite's own helpers that decide when an e2e test waits or what its subprocesses get."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import venv_env
from tests.e2e.test_experiments import EXPERIMENTS, finished, queue_worker_running
from tests.e2e.workspace import Workspace

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _workspace(root: Path) -> Workspace:
    return Workspace(root, root / "prefect-home")


def _pidfile(root: Path, pid: int) -> None:
    folder = root / ".dvc" / "tmp" / "exps" / "celery"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dvc-exp-worker-1.pid").write_text(str(pid))


def test_subprocesses_get_one_thread_unless_the_caller_chose(monkeypatch: pytest.MonkeyPatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert all(venv_env()[name] == "1" for name in THREAD_VARIABLES)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert venv_env()["OMP_NUM_THREADS"] == "4"


def test_queue_worker_is_running_only_while_its_process_lives(tmp_path: Path):
    ws = _workspace(tmp_path)
    assert not queue_worker_running(ws), "no pid file: no worker"
    _pidfile(tmp_path, os.getpid())
    assert queue_worker_running(ws)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    # Exited, not yet reaped: a zombie, as a worker is until its daemon parent waits for it.
    while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    _pidfile(tmp_path, child.pid)
    try:
        assert not queue_worker_running(ws)
    finally:
        child.wait()
    assert not queue_worker_running(ws), "a pid no process has"
    (tmp_path / ".dvc" / "tmp" / "exps" / "celery" / "dvc-exp-worker-1.pid").write_text("not a pid")
    assert not queue_worker_running(ws)


def test_experiments_are_finished_once_each_has_its_ref(tmp_path: Path):
    ws = _workspace(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "file").write_text("x")
    ws.git("add", "file")
    ws.git("commit", "-q", "-m", "baseline")
    assert not finished(ws)
    names = list(EXPERIMENTS)
    # The queue's own refs (its stash) name no experiment.
    ws.git("update-ref", "refs/exps/celery/stash", "HEAD")
    ws.git("update-ref", f"refs/exps/ab/cdef/{names[0]}", "HEAD")
    assert not finished(ws), "one experiment still has no ref"
    ws.git("update-ref", f"refs/exps/ab/cdef/{names[1]}-other", "HEAD")
    assert not finished(ws), "a ref whose name only begins like the experiment's"
    ws.git("update-ref", f"refs/exps/ab/cdef/{names[1]}", "HEAD")
    assert finished(ws)
