"""Benchmark: the Lightning training backend side by side with the Ultralytics one (issue 24).

In one run, each training in a fresh process through the ``train`` stage (``stages.train.run``):

- accuracy: both backends, 3 seeds each, the same epochs, on the sample data (``stages.data.sample_data``
  defaults: 96 train, 24 val images at 160 px) and on ``../shared/datasets/coco128`` (a line says
  so when it is absent): mAP50-95 of the last epoch per seed, the mean, and the spread (min..max);
- speed: wall time per epoch (the training part of an epoch, from its first batch to its last, as
  both backends record it in ``epoch_stats.csv``; validation excluded) and the share of it spent
  waiting for data, with one process and with two gloo processes (torchrun, the stage's launch path);
- a ``bf16-mixed`` Lightning run on CPU, and FSDP with two CPU processes (refused: why is printed).

On CPU both backends load data in the training process (Ultralytics sets ``workers=0`` on CPU; the
Lightning backend uses the same arguments). The machine may be shared: the 1-minute load average is
recorded next to every run. Prints a markdown table and appends it to
``benchmarks/results/lightning_backend.md``. Not a test: the numbers depend on the machine.

Usage::

    python benchmarks/lightning_backend.py [--epochs 15] [--coco-epochs 5] [--seeds 3] [--accuracy-only | --two-only]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "lightning_backend.md"
COCO128 = REPO.parent / "shared" / "datasets" / "coco128"
sys.path.insert(0, str(REPO))

from results_file import publish  # noqa: E402 - beside this script


def one_training(root: Path, train: dict) -> dict:
    """Run the ``train`` stage once in this process; the numbers the benchmark reads."""
    from stages.core.config import parse_params
    from stages.core.errors import PipelineError
    from stages.train import TrainConfig, run

    try:
        cfg = TrainConfig.from_params(parse_params({"train": train}), root)
        started = time.perf_counter()
        result = run(cfg)
    except PipelineError as exc:
        return {"refused": str(exc)}
    seconds = time.perf_counter() - started
    return {
        "map50_95": result.final.get("map50_95", float("nan")),
        "seconds": seconds,
        "epochs": result.epochs,
    }


def prepare(root: Path, coco: bool) -> Path:
    """A workspace root whose ``data/prepared`` holds the dataset and its ``data.yaml``."""
    prepared = root / "data" / "prepared"
    if coco:
        shutil.copytree(COCO128, prepared)
        text = (prepared / "data.yaml").read_text(encoding="utf-8")
        (prepared / "data.yaml").write_text(text.replace("path: .", f"path: {prepared}"), encoding="utf-8")
    else:
        from stages.data.sample_data import SampleSpec, generate

        generate(SampleSpec(out=prepared))
        names = "{0: circle, 1: square, 2: triangle}"
        (prepared / "data.yaml").write_text(
            f"path: {prepared}\ntrain: images/train\nval: images/val\nnames: {names}\n",
            encoding="utf-8",
        )
    return root


def child(root: Path, train: dict) -> dict:
    """``one_training`` in a fresh process (seeds, deterministic mode, Lightning's state start clean)."""
    started_load = os.getloadavg()[0]
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--one",
            json.dumps({"root": str(root), "train": train}),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"training {train} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    record = json.loads(lines[-1].removeprefix("RESULT "))
    record["load"] = (started_load + os.getloadavg()[0]) / 2
    return record


def schedule(epochs: int) -> dict[str, int]:
    """Epochs, and mosaic closed for the last third of them (the default 10 would close it from the start)."""
    return {"epochs": epochs, "close_mosaic": max(epochs // 3, 1)}


def epoch_seconds(record: dict, images: int) -> float:
    """Median training seconds per epoch, the first epoch left out (it warms caches and allocators)."""
    rows = record["epochs"][1:] or record["epochs"]
    return statistics.median(images / r["images_per_s"] for r in rows)


def wait_share(record: dict) -> float:
    rows = record["epochs"][1:] or record["epochs"]
    return statistics.median(r["dataloader_wait_share"] for r in rows)


def count_images(root: Path) -> int:
    return sum(1 for p in (root / "data" / "prepared" / "images" / "train").iterdir() if p.is_file())


def main() -> int:
    """Run every training, print and record the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs",
        type=int,
        default=15,
        help="epochs on the sample data (default: %(default)s)",
    )
    parser.add_argument(
        "--coco-epochs",
        type=int,
        default=5,
        help="epochs on coco128 (default: %(default)s)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per backend (default: %(default)s)")
    parser.add_argument(
        "--imgsz",
        type=int,
        default=160,
        help="training image size (default: %(default)s)",
    )
    parser.add_argument(
        "--accuracy-only",
        action="store_true",
        help="only the sample's accuracy table (no coco128, speed, bf16, fsdp)",
    )
    parser.add_argument("--two-only", action="store_true", help="only the two-process speed rows (the sample, seed 0)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        job = json.loads(args.one)
        print(
            "RESULT " + json.dumps(one_training(Path(job["root"]), job["train"])),
            flush=True,
        )
        return 0

    base = {
        "imgsz": args.imgsz,
        "batch": 16,
        "workers": 2,
        "patience": 100,
        "deterministic": True,
    }
    command = " ".join(["python benchmarks/lightning_backend.py", *sys.argv[1:]])
    lines = [f"### {datetime.date.today()}: {os.cpu_count()} cores, `{command}`", ""]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lightning-backend-") as tmp:
        datasets = [
            (
                "sample (96 train, 24 val)",
                prepare(Path(tmp) / "sample", coco=False),
                args.epochs,
            )
        ]
        if args.accuracy_only or args.two_only:
            pass
        elif COCO128.is_dir():
            datasets.append(
                (
                    "coco128 (128 train, 32 val)",
                    prepare(Path(tmp) / "coco", coco=True),
                    args.coco_epochs,
                )
            )
        else:
            lines += [f"coco128 is not at {COCO128}: skipped.", ""]
        speed: dict[tuple[str, str], list[dict]] = {}
        lines += (
            []
            if args.two_only
            else [
                "#### mAP50-95 of the last epoch (EMA weights, Ultralytics' validator), one process, per seed",
                "",
                "| data | epochs | backend | per seed | mean | spread (min..max) | s/epoch (median) | wait share "
                "| load |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
        )
        for name, root, epochs in [] if args.two_only else datasets:
            images = count_images(root)
            runs: dict[str, list[dict]] = {"ultralytics": [], "lightning": []}
            # Alternately, seed by seed: a change in the machine's load falls on both backends alike.
            for seed in range(args.seeds):
                for backend, records in runs.items():
                    train = {
                        **base,
                        **schedule(epochs),
                        "seed": seed,
                        "backend": backend,
                    }
                    records.append(child(root, train))
                    print(
                        f"{name} {backend} seed {seed}: {records[-1]['map50_95']:.4f}",
                        file=sys.stderr,
                        flush=True,
                    )
            for backend, records in runs.items():
                speed[(name, backend)] = records
                maps = [r["map50_95"] for r in records]
                per_epoch = statistics.median(epoch_seconds(r, images) for r in records)
                share = statistics.median(wait_share(r) for r in records)
                lines.append(
                    f"| {name} | {epochs} | {backend} | {', '.join(f'{m:.4f}' for m in maps)} | "
                    f"{statistics.mean(maps):.4f} | {min(maps):.4f}..{max(maps):.4f} | {per_epoch:.2f} | "
                    f"{share:.3f} | {statistics.mean(r['load'] for r in records):.2f} |"
                )
        if args.accuracy_only:
            lines += [
                "",
                f"Whole benchmark: {(time.perf_counter() - started) / 60:.1f} min.",
                "",
            ]
            publish("\n".join(lines), RESULTS)
            return 0
        sample_name, sample_root, sample_epochs = datasets[0]
        images = count_images(sample_root)
        lines += [
            "",
            f"#### Speed on the sample, {sample_epochs} epochs: training seconds per epoch (first epoch left out; "
            f"one process: median over the {args.seeds} seeds above; two: seed 0), data-wait share",
            "",
            "| processes | backend | s/epoch | / ultralytics | wait share | load |",
            "|---|---|---|---|---|---|",
        ]
        for processes in (2,) if args.two_only else (1, 2):
            per: dict[str, tuple[float, float, float]] = {}
            for backend in ("ultralytics", "lightning"):
                if processes == 1:
                    records = speed[(sample_name, backend)]
                else:
                    train = {
                        **base,
                        **schedule(sample_epochs),
                        "seed": 0,
                        "backend": backend,
                    }
                    train["distributed"] = {"nproc_per_node": 2, "join_timeout_s": 120}
                    records = [child(sample_root, train)]
                per[backend] = (
                    statistics.median(epoch_seconds(r, images) for r in records),
                    statistics.median(wait_share(r) for r in records),
                    statistics.mean(r["load"] for r in records),
                )
            for backend, (seconds, share, load) in per.items():
                lines.append(
                    f"| {processes}{' (gloo, torchrun)' if processes == 2 else ''} | {backend} | {seconds:.2f} | "
                    f"{seconds / per['ultralytics'][0]:.3f} | {share:.3f} | {load:.2f} |"
                )
        if args.two_only:
            lines += ["", f"Whole benchmark: {(time.perf_counter() - started) / 60:.1f} min.", ""]
            publish("\n".join(lines), RESULTS)
            return 0
        bf16 = child(
            sample_root,
            {
                **base,
                **schedule(sample_epochs),
                "seed": 0,
                "backend": "lightning",
                "lightning": {"precision": "bf16-mixed"},
            },
        )
        fsdp = child(
            sample_root,
            {
                **base,
                **schedule(sample_epochs),
                "seed": 0,
                "backend": "lightning",
                "lightning": {"strategy": "fsdp"},
                "distributed": {"nproc_per_node": 2},
            },
        )
        lines += [
            "",
            f"bf16-mixed (Lightning, CPU, 1 process, seed 0, {sample_epochs} epochs on the sample): mAP50-95 "
            f"{bf16['map50_95']:.4f}, {epoch_seconds(bf16, images):.2f} s/epoch, wait share "
            f"{wait_share(bf16):.3f}, load {bf16['load']:.2f}.",
            "",
            f"FSDP, two CPU processes: {fsdp.get('refused', 'ran')}",
            "",
            f"Whole benchmark: {(time.perf_counter() - started) / 60:.1f} min.",
            "",
        ]
    publish("\n".join(lines), RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
