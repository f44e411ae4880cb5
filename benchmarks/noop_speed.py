"""Benchmark: how long ``dvc repro`` takes when everything is cached, next to ``dvc status``.

With nothing to do, ``dvc repro`` still runs the always-changed ``environment`` stage and checks every
stage's dependencies and outputs, while ``dvc status`` only checks them. The goal (issue 11) is a
no-op ``dvc repro`` within 1.5 times ``dvc status``.

Builds a throw-away workspace (a copy of the project with the sample dataset and tiny params, as the
end-to-end tests do), runs the whole chain once, then times the two commands alternately, each in a
fresh process, and prints a markdown table that it appends to ``benchmarks/results/noop_speed.md``.
Not a test: numbers depend on the machine.

Usage::

    python benchmarks/noop_speed.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "noop_speed.md"
sys.path.insert(0, str(REPO))

from stages.core.fingerprint import cpu_model  # noqa: E402
from tests.e2e.workspace import Workspace  # noqa: E402 - the workspace builder the e2e tests use


def timed(ws: Workspace, *args: str) -> tuple[float, str]:
    """Seconds one DVC command takes in a fresh process, and its output."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=ws.root, env=ws.env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def main() -> int:
    """Build the workspace, time both commands, print and record the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed runs of each command (default: %(default)s)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="noop-") as tmp:
        root, home = Path(tmp) / "ws", Path(tmp) / "prefect-home"
        root.mkdir()
        home.mkdir()
        ws = Workspace.create(root, home)
        gen = ws.run(
            "-m", "stages.data.sample_data", "--out", "data/dataset", "--train", "16", "--val", "8", "--size", "64"
        )
        if gen.returncode != 0:
            raise SystemExit(gen.stderr)
        ws.add_data()
        proc, _ran = ws.repro()
        if proc.returncode != 0:
            raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
        timed(ws, "status")  # warm the page cache for both
        _seconds, out = timed(ws, "repro")
        ran = [line for line in out.splitlines() if line.startswith("Running stage")]
        status, repro = [], []
        for _ in range(args.rounds):
            status.append(timed(ws, "status")[0])
            repro.append(timed(ws, "repro")[0])
        # The one stage that runs, on its own: what is left of repro's extra time is DVC's.
        stage = ws.run("-m", "stages.environment")  # warm
        stage_s = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            ws.run("-m", "stages.environment")
            stage_s.append(time.perf_counter() - started)
        if stage.returncode != 0:
            raise SystemExit(stage.stderr)

    s, r = statistics.median(status), statistics.median(repro)
    table = "\n".join(
        [
            f"### {time.strftime('%Y-%m-%d')}: {cpu_model()}, {os.cpu_count()} cores",
            "",
            f"All stages cached; each command in a fresh process, alternately, {args.rounds} rounds "
            "(median, min, max).",
            f"Stages a no-op `dvc repro` runs: {', '.join(line.split(chr(39))[1] for line in ran) or 'none'}.",
            "",
            "| command | median s | min s | max s |",
            "|---|---|---|---|",
            f"| `dvc status` | {s:.2f} | {min(status):.2f} | {max(status):.2f} |",
            f"| `dvc repro` | {r:.2f} | {min(repro):.2f} | {max(repro):.2f} |",
            f"| `python -m stages.environment` alone | {statistics.median(stage_s):.2f} | {min(stage_s):.2f} "
            f"| {max(stage_s):.2f} |",
            "",
            f"Ratio repro / status: **{r / s:.2f}** (goal: at most 1.5).",
            "",
        ]
    )
    print(table)
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
