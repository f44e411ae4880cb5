"""End to end: experiments people can compare (issue 11).

Two experiments that differ from the baseline in one param are queued (``dvc exp run --queue``),
run by DVC's queue worker (``dvc queue start``), and compared the way the README shows: ``dvc exp
show --only-changed`` draws a hash column per changed dependency, ``make compare`` (no such column)
fits a 160-column screen, ``--json`` holds the summary's numbers for each, and ``dvc exp apply`` /
``dvc exp branch`` bring one back.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.workspace import Workspace

pytestmark = pytest.mark.e2e

EXPERIMENTS = {"lr-high": "0.02", "lr-low": "0.005"}
SCREEN = 160
# What `make compare` runs (Makefile): the changed params and compared numbers, without dependency hashes.
COMPARE = REPO / "scripts" / "compare.py"
# The top-level keys of metrics/quality.json and metrics/deployment.json.
# unstable: a noisy ms flagged beside it.
COMPARED = {"gate", "map50", "map50_95", "ap", "deployable", "ms", "unstable", "mb"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A committed workspace with the baseline reproduced and the two experiments run by the queue."""
    # The reproduced workspace other modules share (its train, evaluate and export are reused).
    w = Workspace.with_sample_data(tmp_path_factory, "ws-exp", train=8, val=4, repro=True)
    # Each experiment runs the chain from `train` on: time only the deploy artifacts (the PyTorch
    # reference row is not a compared number) at one batch size.
    w.edit("benchmark", backends=["onnxruntime-cpu", "onnxruntime-cpu-int8"], batch_sizes=[1])
    proc, ran = w.repro()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "benchmark" in ran and "train" not in ran, ran
    w.git("checkout", "-q", "-b", "main")
    w.git("add", "-A")
    w.git("commit", "-q", "-m", "baseline")
    for name, lr0 in EXPERIMENTS.items():
        dvc(w, "exp", "run", "--queue", "-n", name, "-S", f"train.lr0={lr0}")
    # The worker runs detached and keeps whatever it inherited open: no pipes to it.
    subprocess.run(
        [sys.executable, "-m", "dvc", "queue", "start", "-j", "1"],
        cwd=w.root,
        env=w.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
        check=True,
    )
    deadline = time.monotonic() + 600
    asked = float("-inf")
    while True:
        # Each `dvc queue status` costs about a CPU second (DVC's imports) taken from the experiments
        # on this machine's few cores: ask only once every experiment has its git ref (a success),
        # or the worker has gone (it stops about 10 s after the queue empties: a failure), or every
        # 30 s should neither be seen where DVC 3 keeps them.
        if finished(w) or not queue_worker_running(w) or time.monotonic() - asked >= 30:
            status, asked = dvc(w, "queue", "status"), time.monotonic()
            if not any(state in status for state in ("Queued", "Running")) and "0 active" in status:
                break
        assert time.monotonic() < deadline, f"the queue did not finish in time:\n{status}"
        time.sleep(1)
    assert status.count("Success") == len(EXPERIMENTS), status
    return w


def finished(ws: Workspace) -> bool:
    """Whether every queued experiment has its experiment ref in git (``refs/exps/...``), as a success leaves."""
    refs = ws.git("for-each-ref", "--format=%(refname)", "refs/exps/").split()
    return all(any(ref.endswith(f"/{name}") for ref in refs) for name in EXPERIMENTS)


def queue_worker_running(ws: Workspace) -> bool:
    """Whether a queue worker that ``dvc queue start`` spawned in ``ws`` still runs (no zombie).

    Read from the pid file DVC's process manager writes for it (``.dvc/tmp/exps/celery``), without
    starting DVC.
    """
    for pidfile in (ws.root / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.pid"):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{int(pidfile.read_text())}/stat").read_text()
            if stat.rpartition(")")[2].split()[0] != "Z":  # the state follows the parenthesised name
                return True
    return False


def dvc(ws: Workspace, *args: str, columns: int | None = None) -> str:
    env = dict(ws.env) if columns is None else {**ws.env, "COLUMNS": str(columns)}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=ws.root, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def experiments(ws: Workspace) -> dict[str, dict]:
    """Each experiment's data (params and metrics) in ``dvc exp show --json``, by name."""
    found = {}
    for commit in json.loads(dvc(ws, "exp", "show", "--json")):
        for exp in commit.get("experiments") or []:
            for revision in exp.get("revs", []):
                found[revision.get("name")] = revision["data"]
    return found


def test_only_changed_columns_fit_a_screen(ws: Workspace):
    # As wide as the table wants (COLUMNS far beyond it): rich would otherwise squeeze it to fit.
    plain = dvc(ws, "exp", "show", "--only-changed", "--no-pager", columns=10_000)
    header = next(line for line in plain.splitlines() if "Experiment" in line).split()
    # DVC adds a column per changed dependency (an md5 hash each): every intermediate output is one.
    # Those are what `make compare` drops; every other column is a changed param or a compared number.
    deps = [name for name in header if "/" in name]
    assert {"models/best.pt", "metrics/benchmark.json"} <= set(deps)
    numbers = [
        name for name in header if "/" not in name and name not in ("Experiment", "Created", "State", "Executor")
    ]
    assert "train.lr0" in numbers
    assert all(name == "train.lr0" or name.split(".")[0] in COMPARED for name in numbers), numbers

    proc = subprocess.run(
        [sys.executable, str(COMPARE)], cwd=ws.root, env=ws.env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    lines = [line.rstrip() for line in table.splitlines() if line.strip()]
    widest = max(len(line) for line in lines)
    assert widest <= SCREEN, f"make compare is {widest} columns wide:\n{table}"
    assert all(name in table for name in EXPERIMENTS) and "train.lr0" in table
    header = lines[0].split()
    assert {"gate", "map50", "map50_95"} <= set(header) and not any("/" in name for name in header)


def test_each_experiment_has_its_params_and_the_compared_numbers(ws: Workspace):
    found = experiments(ws)
    for name, lr0 in EXPERIMENTS.items():
        data = found[name]
        assert data["params"]["params.yaml"]["data"]["train"]["lr0"] == float(lr0)
        metrics = data["metrics"]
        assert set(metrics) == {"metrics/quality.json", "metrics/deployment.json"}, "only these are compared"
        quality = metrics["metrics/quality.json"]["data"]
        # Classes with val boxes only (4 val images may miss one): an AP is a number, never a null.
        assert quality["gate"] == 1 and quality["ap"] and set(quality["ap"]) <= {"square", "disc", "triangle"}
        assert all(isinstance(v, int | float) for v in quality["ap"].values())
        assert all(isinstance(quality[k], int | float) for k in ("map50", "map50_95"))
        deployment = metrics["metrics/deployment.json"]["data"]
        assert deployment["deployable"] == 2 and set(deployment["ms"]) == {"onnx-fp32", "onnx-int8"}
        assert set(deployment["mb"]) == {"onnx-fp32", "onnx-int8"}


def test_apply_brings_an_experiment_back_and_branch_keeps_it(ws: Workspace):
    dvc(ws, "exp", "apply", "lr-high")
    assert ws.params()["train"]["lr0"] == 0.02
    assert ws.json("metrics/train.json")["recipe"]["lr0"] == 0.02
    compared = experiments(ws)["lr-high"]["metrics"]
    for rel in ("metrics/quality.json", "metrics/deployment.json"):
        assert ws.json(rel) == compared[rel]["data"]
    dvc(ws, "exp", "branch", "lr-high", "try-lr-high")
    assert "try-lr-high" in ws.git("branch", "--list", "try-lr-high")
    shown = ws.git("show", "try-lr-high:params.yaml")
    assert "lr0: 0.02" in shown
