"""Benchmark: our dataset validator against Ultralytics' own label scan, on the same files, in one run.

Builds a large YOLO dataset by replicating a real one (default ``../shared/datasets/coco128``): every
replica is a distinct file (a JPEG comment segment makes the bytes unique, so nothing is a duplicate
image) with the source's label. Then, with the page cache warmed for both, it times in fresh
processes:

- ours: ``validate.run`` (full read + hash + decode of every image, every label check), with N workers;
- Ultralytics: building a ``YOLODataset`` (its ``verify_image_label`` scan on a thread pool), with no
  label cache present.

It prints a markdown table and appends it to ``benchmarks/results/validate_speed.md``. Not a test:
numbers depend on the machine.

Usage::

    python benchmarks/validate_speed.py [--source ../shared/datasets/coco128] [--images 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "validate_speed.md"

OURS = """
import json, resource, sys, time
from pathlib import Path
from stages.core.config import parse_params
from stages import validate
root, workers, decode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
cfg = validate.ValidateConfig.from_params(parse_params({"validate": {"workers": workers, "decode": decode}}), root)
start = time.perf_counter()
result = validate.run(cfg)
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "images": result.images, "problems": len(result.problems),
                  "rss_mb": rss, "worker_rss_mb": child}))
"""

ULTRALYTICS = """
import json, resource, sys, time
from pathlib import Path
from stages.core.runtime import import_ultralytics
root = Path(sys.argv[1])
import_ultralytics(root)
import yaml
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.data.dataset import YOLODataset
from ultralytics.utils import NUM_THREADS
data = yaml.safe_load((root / "data/prepared/data.yaml").read_text())
names = {int(k): v for k, v in data["names"].items()}
total, seconds = 0, 0.0
for split in ("train", "val"):
    for cache in (root / "data/prepared/labels").glob("*.cache"):
        cache.unlink()
    start = time.perf_counter()
    ds = YOLODataset(img_path=str(root / "data/prepared/images" / split), imgsz=640, augment=False, hyp=DEFAULT_CFG,
                     data={"names": names, "nc": len(names), "channels": 3}, task="detect")
    seconds += time.perf_counter() - start
    total += len(ds.labels)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "images": total, "threads": NUM_THREADS, "rss_mb": rss}))
"""


def replicate(source: Path, dest: Path, images: int) -> int:
    """Write a YOLO dataset of about ``images`` distinct images from ``source``; returns the count."""
    names = yaml.safe_load((source / "data.yaml").read_text())["names"]
    train = sorted((source / "images" / "train").glob("*.jpg"))
    val = sorted((source / "images" / "val").glob("*.jpg"))
    count = 0
    for split, files, target in (("train", train, images - len(val)), ("val", val, len(val))):
        (dest / "images" / split).mkdir(parents=True)
        (dest / "labels" / split).mkdir(parents=True)
        copies = 0
        while copies < target:
            for image in files:
                if copies >= target:
                    break
                data = image.read_bytes()
                tag = f"replica {copies}".encode()
                # A COM segment right after SOI: still a valid JPEG, now with bytes of its own.
                unique = data[:2] + b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag + data[2:]
                stem = f"{image.stem}_{copies:06d}"
                (dest / "images" / split / f"{stem}.jpg").write_bytes(unique)
                label = source / "labels" / split / f"{image.stem}.txt"
                if label.is_file():
                    shutil.copyfile(label, dest / "labels" / split / f"{stem}.txt")
                copies += 1
        count += copies
    (dest / "data.yaml").write_text(
        yaml.safe_dump({"train": "images/train", "val": "images/val", "names": names}, sort_keys=False)
    )
    return count


def _run(code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), YOLO_OFFLINE="true", YOLO_AUTOINSTALL="false")
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    """Build the dataset, time both scanners, print and record the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "datasets" / "coco128")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset")
    args = parser.parse_args()
    if not (args.source / "data.yaml").is_file():
        print(f"source dataset not found at {args.source}", file=sys.stderr)
        return 2

    sys.path.insert(0, str(REPO))
    from stages import prepare
    from stages.core.config import parse_params

    tmp = Path(tempfile.mkdtemp(prefix="validate-bench-"))
    try:
        built = replicate(args.source, tmp / "data" / "dataset", args.images)
        prepare.run(prepare.PrepareConfig.from_params(parse_params({"prepare": {"format": "yolo"}}), tmp))
        for path in (tmp / "data" / "dataset").rglob("*"):  # warm the page cache for both
            if path.is_file():
                path.read_bytes()
        theirs = _run(ULTRALYTICS, str(tmp))
        ours = {}
        for decode in ("1", "0"):
            runs = [_run(OURS, str(tmp), str(args.workers), decode) for _ in range(2)]
            ours[decode] = min(runs, key=lambda r: r["seconds"])
        rows = [
            "| scanner | images | seconds | images/s | peak RSS (MB) | parallelism | reads pixels |",
            "|---|---|---|---|---|---|---|",
        ]
        for decode, how in (("1", "every image decoded (JPEG at 1/8 scale)"), ("0", "headers + end markers")):
            r = ours[decode]
            rows.append(
                f"| ours, `validate.decode: {decode == '1'}` | {r['images']} | {r['seconds']:.2f} | "
                f"{r['images'] / r['seconds']:.0f} | {r['rss_mb']:.0f} main, {r['worker_rss_mb']:.0f} worker | "
                f"{args.workers} processes | {how} |"
            )
        rows.append(
            f"| Ultralytics `YOLODataset` label scan | {theirs['images']} | {theirs['seconds']:.2f} | "
            f"{theirs['images'] / theirs['seconds']:.0f} | {theirs['rss_mb']:.0f} | {theirs['threads']} threads | "
            "headers + end markers (`verify()`) |"
        )
        header = (
            f"\n## {time.strftime('%Y-%m-%d')}: {built} images replicated from {args.source.name}\n\n"
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}. Page cache warm for all; ours: the better of two runs each.\n\n"
        )
        text = header + "\n".join(rows) + "\n"
        print(text)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write(text)
    finally:
        if args.keep:
            print(f"dataset kept at {tmp}")
        else:
            shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
