"""Benchmark: the same trials of a study with ``--workers 2`` against ``--workers 1``.

Issue 22 item 4 asks for parallel trials: 4 trials with two workers should take at most 0.75 of the
wall time of the same 4 trials with one. Builds a throw-away workspace (a copy of the project, as
the end-to-end tests do) with the sample dataset, reproduces it up to ``evaluate`` and commits it,
then copies it twice, so that neither run finds the other's results in its DVC cache, and runs
``python -m flows.tune --trials N --workers W`` in each: the same study name and seed, so the same
values. The search space is ``train.lr0``, so every trial trains (1 epoch) and evaluates.

With one worker the trials run in the workspace itself; with two each runs in a clone of its own
(``flows/trial_workspaces.py``), so the two-worker wall includes making the clones and bringing
their experiments back. Two cores bound the gain: two trials at once share them, and each trial's
training already uses both (PyTorch's threads), so what overlaps is mostly the single-threaded
parts (process starts, DVC, imports, the evaluation's Python).

Prints a markdown table and appends it to ``benchmarks/results/tune_workers.md``, with the load
average before and after (other processes share the cores). Not a test: numbers depend on the machine.

Usage::

    python benchmarks/tune_workers.py [--trials 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "tune_workers.md"
sys.path.insert(0, str(REPO))

from results_file import publish  # noqa: E402 - beside this script

from stages.core.fingerprint import cpu_model  # noqa: E402
from tests.e2e.workspace import GIT_ENV, Workspace  # noqa: E402 - the workspace builder the e2e tests use

SPACE = {"train.lr0": {"type": "float", "low": 0.001, "high": 0.05, "log": True}}


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def build_base(tmp: Path) -> Workspace:
    """The tiny workspace, reproduced up to evaluate and committed (experiments need a commit)."""
    root, home = tmp / "base", tmp / "prefect-home"
    root.mkdir()
    home.mkdir()
    ws = Workspace.build_sample_data(root, home, train=8, val=4, size=64, repro=False)
    params = ws.params()
    params["tune"].update(study="bench", space=SPACE, seed=0)
    ws.set_params(params)
    proc, _ran = ws.repro("evaluate")
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    for args in (("add", "-A"), ("commit", "-q", "-m", "base")):
        subprocess.run(["git", *args], cwd=root, env={**ws.env, **GIT_ENV}, check=True)
    return ws


def run_study(base: Workspace, tmp: Path, trials: int, workers: int) -> tuple[float, dict]:
    """Seconds ``python -m flows.tune`` takes in a fresh copy of ``base``, and its report."""
    root = tmp / f"workers-{workers}"
    shutil.copytree(base.root, root, symlinks=True)
    ws = Workspace(root, tmp / "prefect-home")
    cmd = [sys.executable, "-m", "flows.tune", "--trials", str(trials), "--workers", str(workers)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=ws.env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads((root / "reports" / "tune.json").read_text())
    states = [t["state"] for t in report["trials"]]
    if states != ["complete"] * trials:
        raise SystemExit(f"workers={workers}: trials ended {states}: {report['trials']}")
    return seconds, report


def main() -> int:
    """Build the workspace, run the study once with one worker and once with more, record the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials of each study (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel run (default: %(default)s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tune-workers-") as name:
        tmp = Path(name)
        base = build_base(tmp)
        load_before = loadavg()
        one, report_one = run_study(base, tmp, args.trials, 1)
        many, report_many = run_study(base, tmp, args.trials, args.workers)
        load_after = loadavg()
    same = [t["params"] for t in report_one["trials"]] == [t["params"] for t in report_many["trials"]]
    trial_s = [t["seconds"] for t in report_one["trials"]]
    lines = [
        f"### {datetime.date.today()}: {cpu_model()}, {os.cpu_count()} cores",
        "",
        f"{args.trials} trials of one study (space `train.lr0`: each trial trains 1 epoch at 64 px on 8 images",
        "and evaluates on 4), each run in a fresh copy of the same committed workspace (its own DVC cache).",
        f"Same values in both runs: {'yes' if same else 'NO'}. One trial alone (1 worker): "
        f"{min(trial_s):.1f}-{max(trial_s):.1f} s.",
        f"Load average (1, 5, 15 min) before: {load_before}; after: {load_after}.",
        "",
        "| run | wall s |",
        "|---|---|",
        f"| `--workers 1` (in the workspace) | {one:.1f} |",
        f"| `--workers {args.workers}` (a clone each) | {many:.1f} |",
        "",
        f"Ratio {args.workers} workers / 1: **{many / one:.3f}** (goal: at most 0.75). Two cores bound the gain.",
        "",
    ]
    publish("\n".join(lines), RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
