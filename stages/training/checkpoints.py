"""Checkpoints written whole: each file flushed beside its namesake, then put in its place in one step.

Ultralytics writes checkpoints in place (``Path.write_bytes``, ``torch.save`` in ``strip_optimizer``), so
a kill or a full disk mid-write left a truncated ``last.pt`` that every resume then failed to read. The
trainer (``stages.training.trainer``) sends those writes into a scratch folder beside the checkpoints
and publishes them from there with these functions; Ultralytics' final strip of the optimizer state is
redirected the same way (``stripping_whole``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.training.spec import PREVIOUS

# Under weights/: where checkpoints are written before each replaces its namesake whole. Hidden, so that
# Ultralytics' search for a run's last*.pt (glob skips dot-folders) never finds a half-written one.
SCRATCH = ".saving"


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's) contents to the disk; a rename is durable only after both."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(scratch: Path, folder: Path) -> list[Path]:
    """Move every file of ``scratch`` into ``folder``, each replacing its namesake in one step.

    Every file is flushed to the disk before any is moved, so a failure (a full disk often shows only
    when the data is flushed) leaves ``folder`` as it was. ``scratch`` must be on ``folder``'s
    filesystem (``os.replace`` is atomic only there).

    Args:
        scratch: The folder holding the complete new files.
        folder: Where they go.

    Returns:
        The replaced paths in ``folder``.

    Raises:
        OSError: From flushing or moving, with ``filename`` set to the file it concerns.
    """
    files = sorted(p for p in scratch.iterdir() if p.is_file())
    for path in files:
        try:
            _fsync(path)
        except OSError as error:
            error.filename = str(path)
            raise
    published = []
    for path in files:
        target = folder / path.name
        os.replace(path, target)
        published.append(target)
    _fsync(folder)  # the renames themselves
    return published


def keep_previous(last: Path) -> None:
    """Keep the checkpoint ``last`` as ``last.prev.pt`` before a new one replaces it.

    Should ``last.pt`` ever be unreadable (a file system that lost it, a copy cut short), a resume falls
    back to this one (``stages.training.spec.resume_point``) instead of failing every retry. A hard link:
    no copy, no extra space.
    """
    if not last.is_file():
        return
    scratch = last.with_name(f".{PREVIOUS}.tmp")
    scratch.unlink(missing_ok=True)
    try:
        os.link(last, scratch)
    except OSError:  # a file system without hard links
        shutil.copyfile(last, scratch)
    os.replace(scratch, last.with_name(PREVIOUS))


def checkpoint_error(error: OSError, target: Path) -> OSError:
    """``error`` restated with the checkpoint it was writing and the space left where it goes.

    Args:
        error: What writing, flushing or moving the checkpoint raised.
        target: The checkpoint it was for.

    Returns:
        An ``OSError`` of the same ``errno`` whose words name the checkpoint and the free space.
    """
    try:
        free = f"{shutil.disk_usage(target.parent).free / 2**20:.1f} MiB free"
    except OSError as usage_error:
        free = f"free space unknown ({usage_error.strerror})"
    message = (
        f"checkpoint {target} not written ({error.strerror or error}); {free} in {target.parent}; "
        "the checkpoints already there are unchanged"
    )
    return OSError(error.errno, message)


@contextlib.contextmanager
def stripping_whole() -> Iterator[None]:
    """Ultralytics' final strip of the optimizer state rewrites ``last.pt`` and ``best.pt`` whole, too.

    ``strip_optimizer`` saves over the checkpoint in place (``torch.save``); here it saves into the
    scratch folder beside it and the complete file replaces the checkpoint.
    """
    from ultralytics.engine import trainer

    original = trainer.strip_optimizer

    def strip(f: str | Path, s: str = "", updates: dict[str, Any] | None = None) -> dict[str, Any]:
        target = Path(s or f)
        scratch = target.parent / SCRATCH
        partial = scratch / target.name
        try:
            scratch.mkdir(exist_ok=True)
            stripped = original(f, str(partial), updates)
            if partial.exists():  # nothing is written for a file that is no checkpoint
                _fsync(partial)
                os.replace(partial, target)
        except OSError as error:
            raise checkpoint_error(error, target) from error
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return stripped

    trainer.strip_optimizer = strip
    try:
        yield
    finally:
        trainer.strip_optimizer = original
