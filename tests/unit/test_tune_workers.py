"""Parallel trials, the pieces that need no DVC run: ``tune.workers`` / ``tune.storage`` /
``tune.git_remote`` validation, storage URLs resolved, the study loop with several workers on a real
Optuna storage (SQLite and a journal file) and a stand-in for the trials, running trials of a shared
storage at the start, and the workspace changes every clone gets (``flows/trial_workspaces.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from flows.trial_workspaces import uncommitted
from flows.tune_storage import open_storage, resolve_storage
from flows.tuning import TrialOutcome, TrialPlan, TuneConfig, run_study, worker_gone
from stages.core.config import parse_params
from stages.core.errors import ConfigError, TuneError
from tests.e2e.workspace import GIT_ENV

SPACE = {"train.lr0": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}


def tune_config(tmp_path: Path, **tune: Any) -> TuneConfig:
    params = parse_params({"tune": {"study": "unit", "space": SPACE, **tune}})
    return TuneConfig.from_params(params, tmp_path)


# --- the tune section ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "sqlite:///.cache/tune/shared.db",
        "sqlite:////srv/tune/shared.db",
        "journal:.cache/tune/shared.log",
        "postgresql+psycopg2://tuner@127.0.0.1:5432/optuna",
        "postgresql://tuner@db.internal/optuna",
    ],
)
def test_storage_urls_without_a_password_are_accepted(url: str):
    assert parse_params({"tune": {"storage": url}}).tune.storage == url


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql+psycopg2://tuner:s3cret@127.0.0.1/optuna", "holds a password"),
        ("mysql://root:pw@host/db", "holds a password"),
        ("postgresql://", "needs a server"),
        ("sqlite:///", "sqlite needs a file"),
        ("journal:", "journal: needs a file"),
        ("redis://127.0.0.1", "is not sqlite:///FILE"),
        ("/tmp/study.db", "is not sqlite:///FILE"),
    ],
)
def test_bad_storage_urls_are_refused_naming_the_key(url: str, words: str):
    with pytest.raises(ConfigError) as err:
        parse_params({"tune": {"storage": url}})
    assert "tune.storage" in str(err.value) and words in str(err.value)
    assert "s3cret" not in str(err.value) or "holds a password" in str(err.value)


def test_workers_must_be_at_least_one():
    assert parse_params({"tune": {"workers": 3}}).tune.workers == 3
    with pytest.raises(ConfigError, match=r"tune\.workers"):
        parse_params({"tune": {"workers": 0}})


def test_storage_resolves_relative_files_under_the_workspace(tmp_path: Path):
    default = tmp_path / ".cache/tune/s.db"
    assert resolve_storage("", tmp_path, default).model_dump() == {
        "kind": "sqlite",
        "target": str(default),
        "shared": False,
    }
    assert resolve_storage("sqlite:///x/s.db", tmp_path, default).target == str(tmp_path / "x/s.db")
    assert resolve_storage("sqlite:////abs/s.db", tmp_path, default).target == "/abs/s.db"
    journal = resolve_storage("journal:.cache/j.log", tmp_path, default)
    assert (journal.kind, journal.target, journal.shared) == ("journal", str(tmp_path / ".cache/j.log"), True)
    assert resolve_storage("postgresql+psycopg2://u@127.0.0.1/db", tmp_path, default).kind == "rdb"


def test_a_missing_database_driver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import sys

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as if not installed: importing it fails
    spec = resolve_storage("postgresql+psycopg2://u@127.0.0.1:1/db", tmp_path, tmp_path / "x.db")
    with pytest.raises(TuneError) as err:
        open_storage(spec)
    assert "driver" in str(err.value) and "psycopg2" in str(err.value) and err.value.key == "tune.storage"


# --- the study loop with several workers ---------------------------------------------------------


class SlowTrials:
    """Plays ``dvc exp run`` from several threads at once, recording how many ran together."""

    def __init__(self, seconds: float = 0.3, fail: frozenset[int] = frozenset(), raise_at: int | None = None):
        self.seconds, self.fail, self.raise_at = seconds, fail, raise_at
        self.plans: list[TrialPlan] = []
        self.now = self.most = 0
        self.stopped = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, plan: TrialPlan) -> TrialOutcome:
        with self._lock:
            self.plans.append(plan)
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            if plan.number == self.raise_at:
                raise RuntimeError("the clone could not be made")
            # A trial runs until it is done or stopped (as stop() kills a trial's DVC).
            if self.stopped.wait(self.seconds):
                return TrialOutcome(state="failed", error="dvc exp run was killed (SIGTERM)")
            if plan.number in self.fail:
                return TrialOutcome(state="failed", error="dvc exp run was killed (SIGKILL); the other trials go on")
            return TrialOutcome(state="complete", value=plan.values["train.lr0"], seconds=self.seconds)
        finally:
            with self._lock:
                self.now -= 1

    def stop(self) -> None:
        self.stopped.set()


@pytest.mark.parametrize("storage", ["", "journal:.cache/tune/unit.log"])
def test_two_workers_run_two_trials_at_a_time_each_number_once(tmp_path: Path, storage: str):
    cfg = tune_config(tmp_path, storage=storage)
    fake = SlowTrials(fail=frozenset({1}))
    result = run_study(cfg, 5, fake, workers=2)
    assert fake.most == 2, "two trials ran at the same time, never more"
    assert sorted(p.number for p in fake.plans) == [0, 1, 2, 3, 4] and sorted(result.ran) == [0, 1, 2, 3, 4]
    report = json.loads(cfg.report.read_text())
    assert [t["number"] for t in report["trials"]] == [0, 1, 2, 3, 4]
    assert [t["state"] for t in report["trials"]] == ["complete", "failed", "complete", "complete", "complete"]
    assert "killed (SIGKILL)" in report["trials"][1]["error"]
    assert report["storage"] == cfg.store.target
    worker = report_workers(cfg)
    assert worker == {f"{os.uname().nodename}:{os.getpid()}"}, "each trial names the process that ran it"
    # The study continues from the same storage, with one worker as with two.
    again = SlowTrials(seconds=0.0)
    assert run_study(cfg, 6, again, workers=2).ran == [5] and again.most == 1


def report_workers(cfg: TuneConfig) -> set[str]:
    study = optuna.load_study(study_name="unit", storage=open_storage(cfg.store))
    return {t.user_attrs["worker"] for t in study.trials}


def test_an_error_in_one_worker_stops_the_others_and_records_them_cut_off(tmp_path: Path):
    cfg = tune_config(tmp_path)
    fake = SlowTrials(seconds=30.0, raise_at=1)
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="could not be made"):
        run_study(cfg, 4, fake, workers=2, stop=fake.stop)
    assert time.perf_counter() - started < 10, "the running trial was stopped, not waited for"
    report = json.loads(cfg.report.read_text())
    assert [(t["number"], t["state"]) for t in report["trials"]] == [(0, "failed"), (1, "failed")]
    assert all(t["error"].startswith("interrupted: RuntimeError") for t in report["trials"])
    # Neither counts: the next run runs 4 more.
    assert run_study(cfg, 4, SlowTrials(seconds=0.0), workers=2).ran == [2, 3, 4, 5]


def test_running_trials_of_a_shared_storage_are_closed_only_when_their_process_is_gone(tmp_path: Path):
    cfg = tune_config(tmp_path, storage="journal:.cache/tune/shared.log")
    run_study(cfg, 1, SlowTrials(seconds=0.0))
    study = optuna.load_study(study_name="unit", storage=open_storage(cfg.store))
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = os.uname().nodename
    for worker in (f"{host}:{os.getpid()}", f"{host}:{dead.pid}", "another-machine:1"):
        study.ask().set_user_attr("worker", worker)  # left running: alive here, gone here, elsewhere
    result = run_study(cfg, 5, SlowTrials(seconds=0.0))
    states = {t.number: (t.state, t.error) for t in result.report.trials}
    assert states[1][0] == "running" and states[3][0] == "running", "a live run's trials are left to it"
    assert states[2][0] == "failed" and states[2][1].startswith("interrupted")
    assert result.ran == [4, 5], "1 complete + 2 running elsewhere + 2 new = 5 (the closed one does not count)"


def test_worker_gone_only_for_a_dead_process_of_this_machine():
    host = os.uname().nodename
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert worker_gone(f"{host}:{dead.pid}")
    assert not worker_gone(f"{host}:{os.getpid()}")
    assert not worker_gone(f"elsewhere:{dead.pid}")
    assert not worker_gone(None) and not worker_gone("nonsense")


# --- what every clone starts from ----------------------------------------------------------------


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, env={**os.environ, **GIT_ENV}, check=True, capture_output=True)


def test_uncommitted_changes_are_every_changed_deleted_renamed_and_new_file(tmp_path: Path):
    git(tmp_path, "init", "-q")
    for name in ("kept.txt", "changed.txt", "deleted.txt", "old name.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / ".gitignore").write_text("ignored/\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "base")
    (tmp_path / "changed.txt").write_text("new text")
    (tmp_path / "deleted.txt").unlink()
    git(tmp_path, "mv", "old name.txt", "new name.txt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/new.txt").write_bytes(b"\x00binary")
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored/out.bin").write_text("an output")
    changes = dict(uncommitted(tmp_path))
    assert changes == {
        "changed.txt": b"new text",
        "deleted.txt": None,
        "old name.txt": None,
        "new name.txt": b"old name.txt",
        "sub/new.txt": b"\x00binary",
    }


def test_a_workspace_below_its_repository_root_is_refused(tmp_path: Path):
    git(tmp_path, "init", "-q")
    (tmp_path / "ws").mkdir()
    with pytest.raises(TuneError, match="--workers 1"):
        uncommitted(tmp_path / "ws")


def test_a_schema_being_created_by_another_machine_is_opened_again():
    """Two machines opening one study on a fresh PostgreSQL both create Optuna's tables; the loser's
    CREATE meets the winner's ("already exists"). Opening again reads the tables the winner made."""
    import types

    from flows.tune_storage import _open_rdb

    class RaceLost(Exception):
        orig = 'relation "alembic_version" already exists'

    calls: list[str] = []

    def rdb(url: str):
        calls.append(url)
        if len(calls) == 1:
            raise RaceLost()
        return "opened"

    fake = types.SimpleNamespace(storages=types.SimpleNamespace(RDBStorage=rdb))
    assert _open_rdb(fake, "postgresql+psycopg2://u@h/db") == "opened" and len(calls) == 2

    def refused(url: str):
        raise RuntimeError('FATAL:  password authentication failed for user "u"')

    with pytest.raises(RuntimeError, match="password authentication"):  # not a race: not retried
        _open_rdb(types.SimpleNamespace(storages=types.SimpleNamespace(RDBStorage=refused)), "postgresql://u@h/db")
