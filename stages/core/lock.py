"""One pipeline run at a time per workspace.

A flow run holds an exclusive lock on ``.dvc/tmp/pipeline.lock`` for its whole duration; a second
flow run waits up to ``orchestration.lock_timeout_s`` and is then refused, naming the holder. The
holder writes a token into the lock file and hands it to its own stage processes
(``PIPELINE_LOCK_TOKEN``); a stage started by anyone else while the lock is held (a ``dvc repro`` in
another terminal) refuses to run, so the two cannot interleave. DVC's own lock already keeps a flow
from starting a stage while a ``dvc repro`` runs.

That check alone comes too late for a plain ``dvc repro``: DVC deletes a stage's outputs before its
command starts, and restores run-cache entries without running stage code at all. So every entry
point that writes holds the lock for its whole run: the flows, ``python -m stages.promote``, and
commands run through ``python -m stages.core.lock -- COMMAND`` (``make demo``, CI).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from stages.core.errors import PipelineError

TOKEN_ENV = "PIPELINE_LOCK_TOKEN"

log = logging.getLogger(__name__)


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

    When the workspace is held and ``timeout_s`` is above 0, a warning naming the holder is logged
    before the wait starts.
    """
    path = lock_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    told = False
    with path.open("a+", encoding="utf-8") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and timeout_s > 0:
                    # Said at once: a silent wait of lock_timeout_s looks like a hang.
                    log.warning(
                        "waiting up to %.0f s (orchestration.lock_timeout_s) for the workspace lock held by %s",
                        timeout_s,
                        _holder(path),
                    )
                    told = True
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


def held_token(workspace: Path) -> str | None:
    """The token of the run that holds the workspace now (``""`` when unreadable), ``None`` when free."""
    path = lock_path(workspace)
    if not path.is_file():
        return None
    with path.open("r", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return str(json.loads(fh.read() or "{}").get("token") or "")
            except json.JSONDecodeError:
                return ""
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def check_not_locked_by_another(workspace: Path) -> None:
    """Refuse when a pipeline run other than the caller's holds the workspace.

    Raises:
        WorkspaceBusy: When the lock is held and ``PIPELINE_LOCK_TOKEN`` is not its token.
    """
    token = held_token(workspace)
    if token is not None and (not token or token != os.environ.get(TOKEN_ENV)):
        raise WorkspaceBusy(
            f"a pipeline run by {_holder(lock_path(workspace))} is using this workspace; wait for it to finish",
            path=lock_path(workspace),
        )


@contextlib.contextmanager
def hold_workspace(workspace: Path, timeout_s: float, owner: str) -> Iterator[str]:
    """Hold the workspace for this process's whole run, unless the run that started it already does.

    A process started by the holder (its token in ``PIPELINE_LOCK_TOKEN``) runs under that hold; any
    other takes the lock itself, and puts its token in its own environment for the processes it starts.

    Yields:
        The token the workspace is held with.

    Raises:
        WorkspaceBusy: When another run holds it for ``timeout_s``.
    """
    mine = os.environ.get(TOKEN_ENV)
    if mine and held_token(workspace) == mine:
        yield mine
        return
    with workspace_lock(workspace, timeout_s, owner) as token:
        os.environ[TOKEN_ENV] = token
        try:
            yield token
        finally:
            if mine is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = mine


def _default_timeout(workspace: Path) -> float:
    from stages.core.config import load_params  # not at import: stages.core.config is heavier than this module

    try:
        return float(load_params(workspace / "params.yaml").orchestration.lock_timeout_s)
    except PipelineError:
        return 60.0


def main(argv: list[str] | None = None) -> int:
    """``python -m stages.core.lock [--owner NAME] -- COMMAND...``: run a command holding the workspace.

    For every entry point that writes outside the flows (``make demo``, CI): DVC deletes a stage's
    outputs before running it and restores run-cache entries without running stage code, so a check
    in each stage is not enough; the whole command holds the lock. Its processes get the token, so
    the stages it runs pass. SIGTERM and SIGINT are passed on to the command; the exit code is its own.
    """
    parser = argparse.ArgumentParser(prog="python -m stages.core.lock", description=main.__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("."), help="workspace root (default: %(default)s)")
    parser.add_argument("--owner", default="a command", help="who holds it, for the message others get")
    parser.add_argument("--timeout", type=float, help="seconds to wait (default: orchestration.lock_timeout_s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    root = args.workspace.resolve()
    timeout = args.timeout if args.timeout is not None else _default_timeout(root)
    try:
        with hold_workspace(root, timeout, f"{args.owner} (pid {os.getpid()})"):
            proc = subprocess.Popen(command, env=dict(os.environ))
            forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
            previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                return proc.wait()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
