"""One pipeline run at a time per workspace.

A flow run holds an exclusive lock on ``.dvc/tmp/pipeline.lock`` for its whole duration; a second
flow run waits up to ``orchestration.lock_timeout_s`` and is then refused, naming the holder. The
holder writes a token into the lock file and hands it to its own stage processes
(``PIPELINE_LOCK_TOKEN``); a stage started by anyone else while the lock is held (a ``dvc repro`` in
another terminal) refuses to run, so the two cannot interleave. DVC's own lock already keeps a flow
from starting a stage while a ``dvc repro`` runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from stages.errors import PipelineError

TOKEN_ENV = "PIPELINE_LOCK_TOKEN"


class WorkspaceBusy(PipelineError):
    """Another pipeline run holds the workspace."""


def lock_path(workspace: Path) -> Path:
    """The lock file of a workspace (inside DVC's untracked temp folder)."""
    return workspace / ".dvc" / "tmp" / "pipeline.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return "another process"
    return f"{info.get('owner', 'another process')} (pid {info.get('pid', '?')}, since {info.get('since', '?')})"


@contextlib.contextmanager
def workspace_lock(workspace: Path, timeout_s: float, owner: str) -> Iterator[str]:
    """Hold the workspace for one pipeline run.

    Args:
        workspace: The workspace root.
        timeout_s: How long to wait for another run to finish.
        owner: Who holds it, for the message a waiting run gets.

    Yields:
        The token to pass to this run's stage processes (as ``PIPELINE_LOCK_TOKEN``).

    Raises:
        WorkspaceBusy: When the workspace stays held for ``timeout_s``.
    """
    path = lock_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with path.open("a+", encoding="utf-8") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(
                        f"the workspace is busy: a pipeline run by {_holder(path)} holds it; "
                        f"waited {timeout_s:.0f} s (orchestration.lock_timeout_s)",
                        path=path,
                    ) from None
                time.sleep(0.5)
        token = uuid.uuid4().hex
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps({"owner": owner, "pid": os.getpid(), "since": datetime.now(UTC).isoformat(), "token": token})
        )
        fh.flush()
        try:
            yield token
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_not_locked_by_another(workspace: Path) -> None:
    """Refuse when a pipeline run other than the caller's holds the workspace.

    Raises:
        WorkspaceBusy: When the lock is held and ``PIPELINE_LOCK_TOKEN`` is not its token.
    """
    path = lock_path(workspace)
    if not path.is_file():
        return
    with path.open("r", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                token = json.loads(fh.read() or "{}").get("token")
            except json.JSONDecodeError:
                token = None
            if token is None or token != os.environ.get(TOKEN_ENV):
                raise WorkspaceBusy(
                    f"a pipeline run by {_holder(path)} is using this workspace; wait for it to finish", path=path
                ) from None
            return
        fcntl.flock(fh, fcntl.LOCK_UN)
