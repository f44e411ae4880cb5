"""The flow's stage runner: retry only a crash, never a refusal, and kill the whole stage on a timeout.

Each test runs a real ``dvc repro --single-item`` in a throw-away DVC project whose stages are small
Python scripts (crash once, refuse, hang), through ``flows.dvc_runner.repro_stage`` and, for retries,
through the flow's own ``run_stage`` task on a temporary Prefect server shared by the module.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.dvc_runner import _EXITED, repro_stage
from stages.core.common import REFUSED_EXIT
from stages.core.errors import StageFailed

# Each script counts its runs in ``<name>.runs`` (one character per run), so a test sees exactly how
# often DVC started the stage, whatever Prefect reports.
SCRIPTS = {
    "crash_once": """
        runs = count_run("crash_once")
        if runs == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # as an OOM kill would; no handler can run
    """,
    "killed": """
        count_run("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    "refuse": """
        count_run("refuse")
        print("error: [stage 'refuse'] bad data", file=sys.stderr)
        sys.exit(2)
    """,
    "hang": """
        count_run("hang")
        # A child in the stage's process group (a data-loader worker, say) must die with the stage.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path("hang.pids").write_text(f"{os.getpid()} {child.pid} {os.getpgid(0)}")
        time.sleep(120)
    """,
}
PRELUDE = """
import os, signal, subprocess, sys, time
from pathlib import Path

def count_run(name):
    counter = Path(name + ".runs")
    counter.write_text((counter.read_text() if counter.exists() else "") + "x")
    return len(counter.read_text())
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC project (in a git repo) with one stage per script; no stage has deps, so each always runs."""
    root = tmp_path_factory.mktemp("dvc-runner")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    stages = {}
    for name, body in SCRIPTS.items():
        (root / f"{name}.py").write_text(PRELUDE + textwrap.dedent(body))
        stages[name] = {"cmd": f"python {name}.py"}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return root


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect server for the module (starting one costs about 10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


def runs_of(project: Path, stage: str) -> int:
    counter = project / f"{stage}.runs"
    return len(counter.read_text()) if counter.exists() else 0


def run_in_flow(stage: str, project: Path, retries: int) -> tuple[Any, Any]:
    """Run ``stage`` through the flow's ``run_stage`` task with ``retries``.

    Returns:
        The task's final state and its task run as the Prefect server recorded it.
    """
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.pipeline import run_stage

    @flow(name="one-stage")
    def one_stage() -> dict[str, Any]:
        task_ = run_stage.with_options(retries=retries, retry_delay_seconds=0)
        # Wrapped, since a flow that returns a bare state takes that state as its own.
        return {"state": task_(stage, str(project), 60.0, "test-token", return_state=True)}

    state = one_stage()["state"]
    with get_client(sync_client=True) as client:
        task_run = client.read_task_run(state.state_details.task_run_id)
    return state, task_run


def test_killed_stage_is_retried_and_completes(project: Path, prefect_server: None):
    state, task_run = run_in_flow("crash_once", project, retries=2)
    assert state.is_completed(), state
    assert runs_of(project, "crash_once") == 2, "killed once, then retried once"
    assert task_run.run_count == 2 and task_run.state.is_completed()
    assert state.result().ran is True


def test_refusing_stage_is_not_retried(project: Path, prefect_server: None):
    state, task_run = run_in_flow("refuse", project, retries=2)
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, StageFailed)
    assert err.exit_code == REFUSED_EXIT and err.retryable is False
    assert "bad data" in str(err), "the stage's own error line is carried"
    assert runs_of(project, "refuse") == 1 and task_run.run_count == 1


@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/sh"])
def test_killed_stage_is_reported_retryable_with_its_signal(project: Path, shell: str, monkeypatch):
    if not Path(shell).exists():
        pytest.skip(f"{shell} is not on this machine")
    # DVC runs the command through $SHELL: bash reports the kill as -9, dash as 137 (128 + 9).
    monkeypatch.setenv("SHELL", shell)
    with pytest.raises(StageFailed) as err:
        repro_stage("killed", project, logging.getLogger("test"))
    assert err.value.exit_code == -9 and err.value.retryable is True


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies (a zombie is dead, only not reaped)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc (Linux)")
def test_timed_out_stage_is_killed_with_its_whole_process_group(project: Path):
    started = time.monotonic()
    with pytest.raises(StageFailed, match=r"timed out after 2 s") as err:
        repro_stage("hang", project, logging.getLogger("test"), timeout_s=2)
    assert time.monotonic() - started < 20, "the timeout must not wait for the stage to end on its own"
    # Not retried: a timeout is the stage's time budget (see flows/dvc_runner.py).
    assert err.value.retryable is False
    stage_pid, child_pid, pgid = (int(v) for v in (project / "hang.pids").read_text().split())
    deadline = time.monotonic() + 5  # killed, but the kernel may take a moment to tear them down
    while _alive_in_group(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_in_group(pgid) == [], "a process of the timed-out stage's group survived"
    assert not {stage_pid, child_pid} & set(_alive_in_group(pgid))


def test_exit_line_pattern_matches_dvcs_own_message():
    # Verbatim from DVC 3.67 (the version pinned here); the live tests above read it from DVC itself.
    line = (
        "ERROR: failed to reproduce 'train': failed to run: python -m stages.train --params params.yaml, exited with -9"
    )
    match = _EXITED.search(line)
    assert match is not None and match.groups() == ("train", "-9")
    assert _EXITED.search(line.replace("-9", "2")).group(2) == "2"


def test_stage_locked_by_another_dvc_names_its_pid_and_says_to_wait(tmp_path: Path):
    """A flow's stage while a ``dvc repro`` runs it: the failure names that process in full, not DVC's cut-off line."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "slow.py").write_text(
        "import time\nfrom pathlib import Path\nPath('slow.started').write_text('x')\n"
        "deadline = time.time() + 60\n"
        "while not Path('release').exists() and time.time() < deadline:\n    time.sleep(0.1)\n"
        "Path('out.txt').write_text('done')\n"
    )
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"slow": {"cmd": "python slow.py", "deps": ["slow.py"], "outs": ["out.txt"]}}})
    )
    other = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "slow"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        while not (tmp_path / "slow.started").exists():
            assert other.poll() is None and time.time() < deadline, "the other dvc repro did not start its stage"
            time.sleep(0.1)
        with pytest.raises(StageFailed) as err:
            repro_stage("slow", tmp_path, logging.getLogger("test"), timeout_s=60)
    finally:
        (tmp_path / "release").write_text("x")
        other.wait(timeout=60)
    message = str(err.value)
    assert err.value.retryable is False and err.value.stage == "slow"
    assert f"PID {other.pid}" in message, message
    assert "repro slow" in message, message  # the blocking command in full
    assert message.splitlines()[0].startswith("[stage 'slow'] DVC is busy: 'out.txt' is held by PID"), message
    assert message.splitlines()[-1].startswith("Wait for it to finish or stop it (kill "), message


def test_repository_lock_names_the_pid_dvc_wrote_in_its_lock_file(tmp_path: Path):
    """DVC's repository lock error names nobody; the holder's PID is in ``.dvc/tmp/lock`` (zc.lockfile)."""
    import os

    from flows.dvc_runner import DvcOutput, busy_message

    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    (tmp_path / ".dvc" / "tmp" / "lock").write_text(f" {os.getpid()}\n")
    out = DvcOutput(
        code=255,
        timed_out=False,
        ran=[],
        exit_codes={},
        errors=["ERROR: Unable to acquire lock. Most likely another DVC process is running"],
        tail=[],
        seconds=3.0,
        busy="the repository",
    )
    message = busy_message(out, tmp_path)
    # The holder's command as /proc gives it (under pytest-xdist a worker's is `python -c ...`, not "pytest").
    command = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert f"PID {os.getpid()} (" in message and command in message.splitlines()[0], message
    assert f"kill {os.getpid()}" in message and ".dvc/tmp/lock" in message
