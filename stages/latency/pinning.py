"""The measuring process pinned to the CPUs its rows record."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from stages.backends.inference import cpu_threads


def _tasks() -> list[int]:
    """The ids of this process's threads (Linux)."""
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


@contextlib.contextmanager
def pinned_cpus(threads: int) -> Iterator[list[int] | None]:
    """Pin every thread of this process to ``threads`` of the CPUs it may use (0: all of them), then restore.

    The lowest-numbered allowed CPUs are taken, so a rerun lands on the same cores. Threads that
    exist now are pinned one by one (an affinity is per thread on Linux); threads started inside
    (runtime thread pools created as runners open) inherit it. On leaving, every thread gets the
    process's former CPUs back.

    Yields:
        The CPU ids pinned to (recorded in each row), or ``None`` where the OS offers no affinity
        API (not Linux): then nothing is pinned and nothing is claimed.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    allowed = sorted(before)
    cpus = allowed[: min(cpu_threads(threads), len(allowed))]
    for tid in _tasks():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)
    try:
        yield cpus
    finally:
        for tid in _tasks():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, before)
