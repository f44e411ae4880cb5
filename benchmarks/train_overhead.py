"""Benchmark: the ``train`` stage's wall time against bare ``yolo train`` with the same arguments.

Issue 9 asks what the pipeline's training path costs on top of Ultralytics: the fingerprint, the
pipeline's trainer subclass (per-batch timing, the LR rule, the recipe record), publishing the
outputs, and for several processes the ``torchrun`` launch, the node checks and the label caches.
The goal is a ratio of at most 1.03 for one process.

Builds a throw-away workspace (a copy of the project, as the end-to-end tests do) with the sample
dataset, or coco128 with ``--coco128``, prepares and validates it, then times, alternately and each
in a fresh process:

- ``python -m stages.train`` with ``train.distributed.nproc_per_node: 1`` (the stage, one process);
- ``yolo train`` with exactly the arguments the stage gives Ultralytics (``stages.training.trainer.overrides``);
- ``python -m stages.train`` with two gloo processes through ``torchrun`` (same global batch).

Ultralytics itself has no multi-process path on CPU (its DDP sets a CUDA device per rank), so the
two-process row is compared with both single-process rows rather than with a bare equivalent.
Prints a markdown table and appends it to ``benchmarks/results/train_overhead.md``. Not a test:
numbers depend on the machine.

Usage::

    python benchmarks/train_overhead.py [--rounds 3] [--epochs 3] [--coco128]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_overhead.md"
COCO128 = REPO.parent / "shared" / "datasets" / "coco128"
sys.path.insert(0, str(REPO))

from results_file import publish  # noqa: E402 - beside this script

from stages.core.config import load_params  # noqa: E402
from stages.core.fingerprint import cpu_model  # noqa: E402
from stages.core.runtime import offline_environment  # noqa: E402
from stages.train import TrainConfig  # noqa: E402
from stages.training.spec import resolve_model  # noqa: E402
from stages.training.trainer import overrides  # noqa: E402
from tests.e2e.workspace import Workspace  # noqa: E402 - the workspace builder the e2e tests use


def timed(cmd: list[str], ws: Workspace, env: dict[str, str]) -> float:
    """Seconds ``cmd`` takes in a fresh process in the workspace; exits with its output if it fails."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ws.root, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def bare_command(ws: Workspace, bare_runs: Path) -> list[str]:
    """``yolo train`` with the arguments the stage passes to Ultralytics, in a folder of its own."""
    import importlib.util

    package = Path(importlib.util.find_spec("ultralytics").origin).parent
    cfg = TrainConfig.from_params(load_params(ws.root / "params.yaml"), ws.root)
    source = resolve_model(cfg.hyper.model, ws.root, package)
    args = overrides(cfg.hyper, cfg.data_yaml, bare_runs / "run", source)
    args.pop("task"), args.pop("mode")
    yolo = Path(sys.executable).parent / "yolo"
    return [str(yolo), "detect", "train", *(f"{k}={v}" for k, v in args.items())]


def build_workspace(tmp: Path, coco128: bool) -> Workspace:
    """A project copy with its dataset prepared and validated."""
    root, home = tmp / "ws", tmp / "prefect-home"
    root.mkdir()
    home.mkdir()
    ws = Workspace.create(root, home)
    if coco128:
        shutil.copytree(COCO128, root / "data" / "dataset")
    else:
        gen = ws.run("-m", "stages.data.sample_data", "--out", "data/dataset", "--train", "64", "--val", "16")
        if gen.returncode != 0:
            raise SystemExit(gen.stderr)
    ws.add_data()
    proc, _ran = ws.repro("validate")
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return ws


def row(name: str, seconds: list[float], reference: float) -> str:
    """One table row: median, min, max and the ratio of medians to ``reference``."""
    median = statistics.median(seconds)
    return f"| {name} | {median:.1f} | {min(seconds):.1f} | {max(seconds):.1f} | {median / reference:.3f} |"


def main() -> int:
    """Build the workspace, time the three ways of training alternately, print and record the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each command (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training (default: %(default)s)")
    parser.add_argument("--imgsz", type=int, default=160, help="training image size (default: %(default)s)")
    parser.add_argument("--coco128", action="store_true", help=f"train on {COCO128} instead of the sample")
    args = parser.parse_args()
    if args.coco128 and not COCO128.is_dir():
        raise SystemExit(f"coco128 is not at {COCO128}")

    with tempfile.TemporaryDirectory(prefix="train-overhead-") as tmp:
        ws = build_workspace(Path(tmp), args.coco128)
        train = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": 16, "workers": 2, "patience": 100}
        ws.edit("train", **train)
        params = ws.params()
        one = {**params["train"], "distributed": {**params["train"]["distributed"], "nproc_per_node": 1}}
        two = {**params["train"], "distributed": {**params["train"]["distributed"], "nproc_per_node": 2}}
        env = {**ws.env, **offline_environment(ws.root)}
        stage = [sys.executable, "-m", "stages.train"]
        bare = bare_command(ws, Path(tmp) / "bare")

        times: dict[str, list[float]] = {"stage": [], "bare": [], "stage2": []}
        # One untimed run of each warms the page cache, the label caches and Ultralytics' settings.
        for timing in (False,) + (True,) * args.rounds:
            for name, config in (("stage", one), ("bare", one), ("stage2", two)):
                ws.set_params({**params, "train": config})
                seconds = timed(bare if name == "bare" else stage, ws, env)
                if timing:
                    times[name].append(seconds)
                print(f"{name}: {seconds:.1f}s", file=sys.stderr, flush=True)
        bare_s = statistics.median(times["bare"])
        stage_s = statistics.median(times["stage"])

    data = "coco128 (128 train, 32 val)" if args.coco128 else "the sample (64 train, 16 val)"
    lines = [
        f"### {datetime.date.today()}: {cpu_model()}, {os.cpu_count()} cores",
        "",
        f"{data}, {args.epochs} epochs at {args.imgsz} px, global batch 16, 2 loader workers, CPU; each command in",
        f"a fresh process (imports included), alternately, {args.rounds} rounds after one untimed round",
        "(median, min, max seconds; ratio of medians to bare `yolo train`).",
        "",
        "| command | median s | min s | max s | / bare |",
        "|---|---|---|---|---|",
        row("`yolo train` (bare Ultralytics, 1 process)", times["bare"], bare_s),
        row("`python -m stages.train`, 1 process", times["stage"], bare_s),
        row("`python -m stages.train`, 2 gloo processes (torchrun)", times["stage2"], bare_s),
        "",
        f"Stage / bare, one process: **{stage_s / bare_s:.3f}** (goal: at most 1.03). "
        f"Ratio of the fastest runs: {min(times['stage']) / min(times['bare']):.3f}. "
        f"Two processes / stage with one: {statistics.median(times['stage2']) / stage_s:.3f}.",
        "",
    ]
    publish("\n".join(lines), RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
