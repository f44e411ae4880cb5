"""End to end: `.github/workflows/retrain.yml` run as the runner would (issue 21, item 8).

Its steps are read from the YAML, not copied: on a fresh clone, in order, each `run:` in bash
(`-eo pipefail`, GitHub's default) with the job's and the step's environment, their `${{ }}`
expressions evaluated for a push to main (tests/workflow.py). Skipped, with the reason: `uses:`
steps (the checkout is this test's own fresh clone; the artifact upload needs GitHub's service).

What stands in for what this machine has not: the package registry is the project's installed
packages (`PYTHONPATH` to them, `PIP_NO_INDEX=1`, no build isolation), so `make install` makes its
own `.venv` and installs the project into it offline; the runner's `python3.11` is the interpreter
that venv came from; the DVC remote is a local folder; the job runs on CPU with tiny params.

Then the same step for a pull request from this repository, against an empty remote: it pushes the
outputs, never the run-cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.e2e.workspace import GIT_ENV, NETGUARD, Workspace
from tests.workflow import evaluate, load, pull_request, push_to_main, substitute

pytestmark = pytest.mark.e2e

SKIPPED = {
    "actions/checkout": "the checkout is this test's fresh git clone",
    "actions/upload-artifact": "GitHub's artifact service is not reachable here",
}


def runner_path() -> str:
    """PATH on the runner: the interpreter this venv was made from, then the system's; no venv."""
    home = ""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                home = value.strip()
    return os.pathsep.join(filter(None, [home, "/usr/local/bin", "/usr/bin", "/bin"]))


def runner_env(clone: Path, summary: Path, netguard_log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.pop("PIPELINE_LOCK_TOKEN", None)
    env.update(
        PATH=runner_path(),
        CI="true",
        GITHUB_ACTIONS="true",
        GITHUB_WORKSPACE=str(clone),
        GITHUB_STEP_SUMMARY=str(summary),
        # The registry's stand-in: the packages already installed, offline.
        PIP_NO_INDEX="1",
        PIP_NO_BUILD_ISOLATION="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHONPATH=os.pathsep.join([str(NETGUARD), sysconfig.get_paths()["purelib"]]),
        NETGUARD_LOG=str(netguard_log),
    )
    return env


def run_job(clone: Path, contexts: dict[str, Any], env: dict[str, str], only: str | None = None) -> list[str]:
    """Run the job's steps in order; returns what was skipped and why. Fails the test on a failed step."""
    job = load()["jobs"]["retrain"]
    assert evaluate(job["if"], contexts), "the job would not run for this event"
    job_env = {k: substitute(str(v), contexts) for k, v in job.get("env", {}).items()}
    skipped = []
    for step in job["steps"]:
        name = step.get("name", step.get("uses", step.get("run")))
        if "if" in step and not evaluate(step["if"], contexts):
            continue
        if "uses" in step:
            action = step["uses"].partition("@")[0]
            skipped.append(f"{name}: {SKIPPED[action]}")
            continue
        if only is not None and name != only:
            continue
        step_env = {k: substitute(str(v), contexts) for k, v in step.get("env", {}).items()}
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=clone,
            env={**env, **job_env, **step_env},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, f"step '{name}' failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return skipped


def test_workflow_steps_run_on_a_fresh_clone(tmp_path_factory: pytest.TempPathFactory):
    origin = Workspace.create(tmp_path_factory.mktemp("wf-origin"), tmp_path_factory.mktemp("prefect-home"))
    for name in ("scripts", ".github"):
        shutil.copytree(REPO / name, origin.root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, origin.root / name)
    remote = tmp_path_factory.mktemp("wf-remote")
    gen = origin.run(
        "-m", "stages.data.sample_data", "--out", "data/dataset", "--train", "16", "--val", "8", "--size", "64"
    )
    assert gen.returncode == 0, gen.stderr
    assert origin.run("-m", "dvc", "remote", "modify", "local", "url", str(remote)).returncode == 0
    origin.add_data()
    assert origin.run("-m", "dvc", "push", "-q").returncode == 0  # the data is on the remote, as in the team's
    origin.git("checkout", "-q", "-b", "main")
    origin.git("add", "-A")
    origin.git("commit", "-q", "-m", "pipeline and data")

    clone = tmp_path_factory.mktemp("wf-runner") / "repo"
    subprocess.run(["git", "clone", "-q", str(origin.root), str(clone)], check=True, env={**origin.env, **GIT_ENV})
    assert not (clone / ".venv").exists() and not (clone / "data/dataset").exists()
    summary = tmp_path_factory.mktemp("wf-summary") / "summary.md"
    netguard_log = clone.parent / "netguard.log"
    env = runner_env(clone, summary, netguard_log)

    skipped = run_job(clone, push_to_main(), env)
    assert skipped == [
        f"Check out: {SKIPPED['actions/checkout']}",
        f"Keep the reports: {SKIPPED['actions/upload-artifact']}",
    ]
    assert (clone / ".venv/bin/python").is_file(), "make install did not make the clone's own venv"
    assert (clone / "metrics/evaluate.json").is_file() and (remote / "runs").is_dir()
    assert "## Metrics against origin/main" in summary.read_text()

    # A pull request from this repository, against an empty remote: outputs pushed, no run-cache.
    pr_remote = tmp_path_factory.mktemp("wf-pr-remote")
    local = subprocess.run(
        [str(clone / ".venv/bin/python"), "-m", "dvc", "remote", "modify", "--local", "local", "url", str(pr_remote)],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert local.returncode == 0, local.stderr
    run_job(clone, pull_request("team/yolo"), env, only="Retrain")
    assert any(pr_remote.rglob("*")), "the pull request's outputs were not pushed"
    assert not (pr_remote / "runs").exists(), "a pull-request run pushed to the run-cache"
    assert not netguard_log.is_file() or netguard_log.read_text() == ""
