"""What a full disk looks like when training fails, said first: the file not written and the space left."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from stages.core.errors import TrainingError


def no_space(error: BaseException) -> OSError | None:
    """The "no space left on device" error behind ``error`` (itself, its cause or its context), if any.

    Args:
        error: What training raised.

    Returns:
        The ``ENOSPC`` error found first along the chain, or ``None``.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def no_space_message(error: OSError, runs: Path) -> str:
    """Which file could not be written and how much space was left, for the first line of the failure.

    Args:
        error: The "no space left on device" error (``no_space``).
        runs: Where the run folders live: the space left is measured there when the error names no file.

    Returns:
        One line: the file (or the checkpoint writer's own words) and the free space next to it.
    """
    where = Path(error.filename) if error.filename else None
    if where is None and error.strerror and " not written" in error.strerror:
        # The checkpoint writer's own words name the file and the space left (stages.training.trainer).
        return f"no space left on device: {error.strerror}"
    what = f"writing {where}" if where else str(error.strerror or error)
    probe = where.parent if where is not None else runs
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free in {probe}"
    except OSError as usage_error:
        free = f"free space in {probe} unknown ({usage_error.strerror})"
    return f"no space left on device: {what}; {free}"


def full_disk_error(full: OSError, message: str, restored: list[str], stage: str) -> TrainingError:
    """The stage's failure for a full disk: what was not written, what the workspace holds now, what to do.

    Args:
        full: The "no space left on device" error (``no_space``).
        message: Its first line (``no_space_message``).
        restored: The outputs put back from DVC's cache (empty when there were none to put back).
        stage: The stage that failed.

    Returns:
        The error to raise (from ``full``'s chain).
    """
    kept = (
        f"the last good outputs were put back ({', '.join(restored)})"
        if restored
        else "the outputs already in the workspace are untouched"
    )
    return TrainingError(
        f"{message}; {kept}; free space and run 'dvc repro' again (training resumes from its last checkpoint)",
        stage=stage,
        path=Path(full.filename) if full.filename else None,
    )
