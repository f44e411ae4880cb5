"""End to end: parallel trials (``python -m flows.tune --workers 2``), each in its own clone.

One committed tiny workspace (the reproduced one other modules share, so each trial only evaluates:
the search space is ``evaluate.iou``) with a bare git repository on disk as its ``origin`` and a
DVC remote folder beside it, both loopback-free: plain paths. Its tests, in order:

- two trials with two workers: both are asked before either ends (two clones at once), both end up
  as experiments in the workspace's ``dvc exp show`` with the report's values; the study continued
  with one worker adds a third; all three are in ``origin``: a fresh clone's ``dvc exp pull`` +
  ``dvc exp show`` shows each with its params and metrics;
- a study whose trial 1 has its DVC process group SIGKILLed mid-run: that trial is failed (killed),
  the others complete (the next one in a clone made again), the report lists all three;
- SIGTERM to the study while two trials run: both DVC runs are stopped, both trials recorded
  interrupted (they do not count), the clones removed;
- a ``tune.git_remote`` that does not exist, or cannot be reached, is refused before any trial runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.workspace import GIT_ENV, Workspace

pytestmark = pytest.mark.e2e

SPACE = {"evaluate.iou": {"type": "float", "low": 0.5, "high": 0.8}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The workspace, committed and pushed to a bare ``origin``, with a DVC remote folder as default."""
    w = Workspace.with_sample_data(tmp_path_factory, "ws-tune-workers", train=8, val=4, repro=True)
    shared = tmp_path_factory.mktemp("tune-remotes")
    subprocess.run(["git", "init", "-q", "--bare", str(shared / "origin.git")], check=True)
    dvc(w, "remote", "add", "-d", "shared", str(shared / "dvc-remote"))
    params = w.params()
    params["tune"].update(study="par", space=SPACE, git_remote="origin")
    w.set_params(params)
    w.git("checkout", "-q", "-b", "main")
    w.git("add", "-A")
    w.git("commit", "-q", "-m", "pipeline, data and a study")
    w.git("remote", "add", "origin", str(shared / "origin.git"))
    w.git("push", "-q", "origin", "main")
    return w


def dvc(ws: Workspace, *args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=cwd or ws.root,
        env={**ws.env, **GIT_ENV},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def shown(ws: Workspace, cwd: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every experiment in ``dvc exp show --json`` (in ``cwd``), by name: its params and metrics."""
    found = {}
    for commit in json.loads(dvc(ws, "exp", "show", "--json", cwd=cwd)):
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs", []):
                data = revision["data"]
                found[revision["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "metrics": {path: m.get("data") for path, m in (data.get("metrics") or {}).items()},
                }
    return found


def test_two_workers_run_two_trials_at_once_and_push_both(ws: Workspace, tmp_path: Path):
    committed = (ws.root / "params.yaml").read_text()
    proc = ws.run("-m", "flows.tune", "--trials", "2", "--workers", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    log = proc.stderr
    assert log.index("trial 1 (par-1)") < log.index("trial 0 complete"), "the second trial starts before the first ends"
    assert log.index("trial 0 (par-0)") < log.index("trial 1 complete")

    report = ws.json("reports/tune.json")
    assert [(t["number"], t["state"], t["experiment"]) for t in report["trials"]] == [
        (0, "complete", "par-0"),
        (1, "complete", "par-1"),
    ]
    assert all(t["error"] is None for t in report["trials"]), report["trials"]
    assert report["trials"][0]["ran"] == ["prepare", "evaluate"], "the clone's outputs came from the shared cache"
    assert (ws.root / "params.yaml").read_text() == committed, "the workspace itself is not touched"
    assert not (ws.root / ".dvc/tmp/tune-workers").exists(), "the clones are removed after the study"

    here = shown(ws)
    for trial in report["trials"]:
        exp = here[trial["experiment"]]
        assert exp["params"]["evaluate"]["iou"] == pytest.approx(trial["params"]["evaluate.iou"], rel=1e-12)
        assert exp["metrics"]["metrics/quality.json"]["map50_95"] == trial["value"]

    # The same study goes on with one worker (in the workspace itself), pushing its trial too.
    proc = ws.run("-m", "flows.tune", "--trials", "3", "--workers", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = ws.json("reports/tune.json")
    assert [t["state"] for t in report["trials"]] == ["complete"] * 3 and report["trials"][2]["error"] is None
    here = shown(ws)

    # Another machine: a fresh clone of origin pulls the experiments and their outputs.
    fresh = tmp_path / "fresh"
    ws.git("clone", "-q", "-b", "main", ws.git("remote", "get-url", "origin").strip(), str(fresh))
    dvc(ws, "exp", "pull", "origin", "par-0", "par-1", "par-2", cwd=fresh)
    there = shown(ws, cwd=fresh)
    assert {"par-0", "par-1", "par-2"} <= set(there)
    for name in ("par-0", "par-1", "par-2"):
        assert there[name] == here[name], f"{name} differs in the fresh clone"
        assert there[name]["metrics"]["metrics/quality.json"]["map50_95"] is not None
    assert ws.network_attempts() == [], "the study reached beyond this machine"


def _dvc_pid(experiment: str, timeout_s: float = 300) -> int:
    """The pid of the ``dvc exp run --name <experiment>`` process, once it runs."""
    wanted = ["exp", "run", "--name", experiment]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if "dvc" in argv and any(argv[i : i + 4] == wanted for i in range(len(argv))):
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"no dvc exp run for {experiment} within {timeout_s} s")


def test_a_trial_killed_mid_run_is_failed_and_the_study_goes_on(ws: Workspace):
    with ws.edited("tune", study="kill", git_remote=""):
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.tune", "--trials", "3", "--workers", "2"],
            cwd=ws.root,
            env=ws.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            pid = _dvc_pid("kill-1")
            time.sleep(1.0)  # let DVC start the stage: the kill lands mid-trial, not before it
            os.killpg(os.getpgid(pid), signal.SIGKILL)
            out, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    report = ws.json("reports/tune.json")
    states = {t["number"]: (t["state"], t["error"]) for t in report["trials"]}
    assert sorted(states) == [0, 1, 2], "the report lists every trial"
    assert states[1][0] == "failed" and "killed (SIGKILL)" in states[1][1], states[1]
    assert states[0] == ("complete", None) and states[2] == ("complete", None), states
    names = set(shown(ws))
    assert {"kill-0", "kill-2"} <= names and "kill-1" not in names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie is gone


def test_sigterm_stops_every_running_trial_and_records_them_interrupted(ws: Workspace):
    with ws.edited("tune", study="term", git_remote=""):
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.tune", "--trials", "2", "--workers", "2"],
            cwd=ws.root,
            env=ws.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pids = []
        try:
            pids = [_dvc_pid("term-0"), _dvc_pid("term-1")]
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)  # the tune process alone, as a process manager would
            _out, err = proc.communicate(timeout=120)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    assert not any(_alive(pid) for pid in pids), "a trial's dvc exp run is still running"
    report = ws.json("reports/tune.json")
    assert [(t["number"], t["state"]) for t in report["trials"]] == [(0, "failed"), (1, "failed")]
    assert all(t["error"].startswith("interrupted: Terminated") for t in report["trials"]), report["trials"]
    assert not (ws.root / ".dvc/tmp/tune-workers").exists()


def test_a_missing_or_unreachable_git_remote_is_refused_before_any_trial(ws: Workspace, tmp_path: Path):
    with ws.edited("tune", study="noremote", git_remote="upstream"):
        proc = ws.run("-m", "flows.tune", "--trials", "1", "--workers", "2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no such git remote: add it (git remote add upstream URL)" in proc.stderr, proc.stderr[-2000:]
    assert "trial 0 (" not in proc.stderr

    ws.git("remote", "add", "gone", str(tmp_path / "no-such-repo.git"))
    with ws.edited("tune", study="noremote", git_remote="gone"):
        proc = ws.run("-m", "flows.tune", "--trials", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "git remote 'gone'" in proc.stderr and "cannot be reached" in proc.stderr, proc.stderr[-2000:]
    assert "check its URL (git remote -v) and your credentials" in proc.stderr and "trial 0 (" not in proc.stderr
