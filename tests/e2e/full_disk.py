"""The full-disk scenario of ``test_full_disk.py``, run inside its own mount namespace.

``python -m tests.e2e.full_disk MOUNT RESULT SIZE_MB`` mounts a tmpfs of SIZE_MB at MOUNT (it exists
only in this namespace: ``unshare -rm`` starts this), builds a workspace on it, reproduces ``train``
once, fills the filesystem to ``LEAVE_MB`` free and retrains, frees the space and runs ``dvc repro``
once more. What it saw goes to RESULT (JSON, outside the tmpfs).

While the retraining runs, a second writer (another job, growing logs: what fills disks) takes any
space beyond ``LEAVE_MB`` as soon as it is freed, starting when DVC has removed the stage's outputs:
the space those held is gone too, as on the 92 MB disk of issue 21, where the restore's copy of the
model then failed as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e.workspace import Workspace

# Free space left once the disk is filled: less than one checkpoint of the retraining (with its
# optimizer state), more than the small files DVC and the stage write before it.
LEAVE_MB = 2


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def free_mb(path: Path) -> float:
    return round(shutil.disk_usage(path).free / 2**20, 2)


def hog(mount: Path, watch: Path, stop: threading.Event) -> None:
    """Once ``watch`` is gone, keep the free space of ``mount`` at ``LEAVE_MB`` until ``stop``."""
    while watch.exists() and not stop.is_set():
        time.sleep(0.005)
    with (mount / "hog").open("wb") as fh:
        size = 0
        while not stop.is_set():
            spare = shutil.disk_usage(mount).free - LEAVE_MB * 2**20
            if spare > 0:
                try:
                    os.posix_fallocate(fh.fileno(), size, spare)
                    size += spare
                except OSError:
                    pass  # another writer took it first
            time.sleep(0.005)


def outcome(ws: Workspace, proc: subprocess.CompletedProcess[str], ran: set[str]) -> dict[str, Any]:
    best = ws.root / "models" / "best.pt"
    return {
        "returncode": proc.returncode,
        "ran": sorted(ran),
        "output": (proc.stdout + proc.stderr)[-6000:],
        "best": digest(best),
        "best_links": best.stat().st_nlink if best.is_file() else 0,
        "train_dir": sorted(p.name for p in (ws.root / "models" / "train").iterdir())
        if (ws.root / "models" / "train").is_dir()
        else None,
        "free_mb": free_mb(ws.root),
    }


def main(mount: Path, result: Path, size_mb: int) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)], check=True)
    record: dict[str, Any] = {"size_mb": size_mb}
    try:
        root, home = mount / "ws", mount / "prefect-home"
        root.mkdir()
        home.mkdir()
        ws = Workspace.create(root, home)
        gen = ws.run(
            "-m", "stages.data.sample_data", "--out", "data/dataset", "--train", "8", "--val", "4", "--size", "64"
        )
        assert gen.returncode == 0, gen.stderr
        ws.add_data()
        record["baseline"] = outcome(ws, *ws.repro("train"))
        record["baseline"]["cache_mb"] = round(
            sum(p.stat().st_size for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()) / 2**20, 2
        )

        ws.edit("train", epochs=2)
        filler = mount / "filler"
        with filler.open("wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, shutil.disk_usage(mount).free - LEAVE_MB * 2**20)
        record["filled_free_mb"] = free_mb(mount)
        stop = threading.Event()
        writer = threading.Thread(target=hog, args=(mount, root / "models" / "best.pt", stop))
        writer.start()
        try:
            record["full"] = outcome(ws, *ws.repro("train"))
        finally:
            stop.set()
            writer.join()

        filler.unlink()
        (mount / "hog").unlink()
        record["again"] = outcome(ws, *ws.repro("train"))
        if record["again"]["returncode"] == 0:
            record["again"]["epochs_run"] = ws.json("metrics/train.json")["epochs_run"]
    except BaseException as error:  # reported to the test, which fails with it
        record["error"] = f"{type(error).__name__}: {error}"
    finally:
        result.write_text(json.dumps(record, indent=1))
        subprocess.run(["umount", "-l", str(mount)], check=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
