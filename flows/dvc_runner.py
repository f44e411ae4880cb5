"""Run one DVC stage in a workspace and learn whether DVC ran it or found it up to date.

The Prefect flow runs every stage through ``dvc repro --single-item`` so that DVC stays the only
cache: a stage DVC already has results for is skipped, whoever ran it before.

A failure says whether a retry can help (``StageFailed.retryable``): yes for a crash or a kill (an
OOM kill, a lost node), no for a refusal (exit code 2: bad config or data) and no for a timeout,
because ``orchestration.stage_timeout_s`` is the stage's whole time budget, which retries would
silently multiply, and a hung stage hangs again; a timed-out training keeps its checkpoint, so the
next run resumes it.

A stage DVC cannot start because another DVC process (a ``dvc repro`` in another terminal) holds its
lock is no crash either: the failure names that process (PID and command, which DVC prints on lines
after its error line) and says to wait for it or stop it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from stages.core.common import REFUSED_EXIT
from stages.core.errors import StageFailed
from stages.core.lock import TOKEN_ENV

_RAN = re.compile(r"Running stage '([^']+)'")
_EXITED = re.compile(r"failed to reproduce '([^']+)'.*exited with (-?\d+)")
# DVC runs a stage's command through $SHELL (``/bin/sh`` when unset). bash execs a lone command, so
# DVC sees the signal (-9); dash forks it and reports the shell's 128 + signal (137).
_SHELL_SIGNAL_BASE = 128
# DVC's lock errors: an output or dependency locked by another DVC process (dvc/rwlock.py: the path,
# then one "  (PID n): command" line per holder), or the repository's own lock (dvc/lock.py: no holder
# named; zc.lockfile writes the holder's PID into .dvc/tmp/lock).
_BUSY = re.compile(r"'(?P<path>[^']+)' is busy, it is being blocked by")
_BLOCKER = re.compile(r"^\s*\(PID (?P<pid>\d+)\): (?P<cmd>.*)$")
_REPO_LOCKED = "Unable to acquire lock"


class StageRun(BaseModel):
    """What happened to one stage."""

    stage: str
    ran: bool
    seconds: float


def dvc_environment(token: str | None = None) -> dict[str, str]:
    """The environment for DVC and the stage commands: this interpreter's ``bin`` first on ``PATH``.

    ``dvc.yaml`` commands call ``python``; this makes that the interpreter the flow runs in. ``token``
    is the workspace lock's, which lets this run's stages through (see ``stages/core/lock.py``).
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if token is not None:
        env[TOKEN_ENV] = token
    return env


class DvcOutput(BaseModel):
    """What one DVC command did, read from its output."""

    code: int
    timed_out: bool
    ran: list[str]  # stages DVC ran (not those it found up to date), in order
    exit_codes: dict[str, int]  # per failed stage, its command's exit code (a signal as -N)
    errors: list[str]  # lines starting with error: (a stage's own) or ERROR: (DVC's)
    tail: list[str]  # the last lines of output
    seconds: float
    busy: str | None = None  # what DVC found locked by another DVC process: a path, or "the repository"
    blockers: list[str] = []  # the processes holding it, as DVC named them: "PID n (command)"


def run_dvc(
    args: list[str],
    workspace: Path,
    logger: logging.Logger | logging.LoggerAdapter,
    *,
    timeout_s: float | None = None,
    token: str | None = None,
    on_start: Callable[[subprocess.Popen[str]], None] | None = None,
) -> DvcOutput:
    """Run ``dvc <args>`` in ``workspace``, streaming its output to ``logger``, and read what it did.

    Args:
        args: DVC's arguments, e.g. ``["repro", "--single-item", "train"]``.
        workspace: The folder holding ``dvc.yaml``.
        logger: Where each output line goes.
        timeout_s: Kill DVC and its stages (the whole process group) after this many seconds.
        token: The workspace lock token of the calling run.
        on_start: Called with DVC's process once started (its process group is its pid), so that
            another thread can stop it (parallel trials, ``flows/trial_workspaces.py``).

    Returns:
        Its exit code, whether it timed out, the stages it ran, and its error lines.
    """
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "dvc", *args]
    tail: deque[str] = deque(maxlen=40)
    errors: list[str] = []
    ran: list[str] = []
    exit_codes: dict[str, int] = {}
    busy: str | None = None
    blockers: list[str] = []
    with subprocess.Popen(
        cmd,
        cwd=workspace,
        env=dvc_environment(token),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,  # its own process group, so a timeout kills the stages too
    ) as proc:
        if on_start is not None:
            on_start(proc)
        timed_out = threading.Event()
        timer = threading.Timer(timeout_s, _kill_group, (proc, timed_out)) if timeout_s else None
        if timer:
            timer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                for line in raw.rstrip("\n").split("\r"):
                    line = line.rstrip()
                    if not line:
                        continue
                    match = _RAN.search(line)
                    if match:
                        ran.append(match.group(1))
                    exited = _EXITED.search(line)
                    if exited:
                        exit_codes[exited.group(1)] = _signal_as_negative(int(exited.group(2)))
                    if line.startswith(("error:", "ERROR:")):
                        errors.append(line)
                        locked = _BUSY.search(line)
                        if locked:
                            busy = locked.group("path")
                        elif _REPO_LOCKED in line:
                            busy = "the repository"
                    elif busy and (blocker := _BLOCKER.match(line)):
                        blockers.append(f"PID {blocker.group('pid')} ({blocker.group('cmd').strip()})")
                    tail.append(line)
                    logger.info("%s", line)
            code = proc.wait()
        except BaseException:
            _stop_group(proc)  # interrupted (Ctrl-C, a cancelled run): DVC and its stages must not run on
            raise
        finally:
            if timer:
                timer.cancel()
    return DvcOutput(
        code=code,
        timed_out=timed_out.is_set(),
        ran=ran,
        exit_codes=exit_codes,
        errors=errors,
        tail=list(tail),
        seconds=round(time.perf_counter() - started, 2),
        busy=busy,
        blockers=blockers,
    )


def _repo_lock_holder(workspace: Path) -> list[str]:
    """The process holding DVC's repository lock (``.dvc/tmp/lock``, its PID written by zc.lockfile)."""
    try:
        pid = int((workspace / ".dvc" / "tmp" / "lock").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return []
    try:
        cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        # No /proc (macOS): the PID is all there is. Gone: the file outlives its lock, name nobody.
        return [] if Path("/proc").is_dir() else [f"PID {pid}"]
    return [f"PID {pid} ({cmd.strip()})"]


def busy_message(out: DvcOutput, workspace: Path) -> str:
    """Why DVC could not start the stage: what is locked, by which process, and what to do.

    Args:
        out: The output of the DVC command that found the lock held (``out.busy`` set).
        workspace: The folder holding ``dvc.yaml``.
    """
    repo = out.busy == "the repository"
    holders = out.blockers or (_repo_lock_holder(workspace) if repo else [])
    pids = [h.split()[1] for h in holders]
    lock_file = ".dvc/tmp/lock" if repo else ".dvc/tmp/rwlock"
    path = Path(out.busy or "")
    shown = path.relative_to(workspace) if path.is_absolute() and path.is_relative_to(workspace) else path
    what = "DVC's repository lock" if repo else f"'{shown}'"
    by = ", ".join(holders) if holders else "another DVC process (DVC did not name it)"
    stop = f"stop it (kill {' '.join(pids)})" if pids else "stop it"
    # The advice is the last line: it is what a log that ends here (a Prefect traceback) must show.
    return (
        f"DVC is busy: {what} is held by {by}, another DVC command in this workspace.\n"
        f"Wait for it to finish or {stop}, then run again "
        f"(if no such process is running, remove {lock_file})."
    )


def repro_stage(
    stage: str,
    workspace: Path,
    logger: logging.Logger | logging.LoggerAdapter,
    *,
    timeout_s: float | None = None,
    token: str | None = None,
) -> StageRun:
    """Run ``dvc repro --single-item <stage>`` in ``workspace``, streaming its output to ``logger``.

    Args:
        stage: Stage name in ``dvc.yaml``.
        workspace: The folder holding ``dvc.yaml``.
        logger: Where each output line goes.
        timeout_s: Kill DVC and the stage (its whole process group) after this many seconds.
        token: The workspace lock token of the calling run.

    Returns:
        Whether DVC ran the stage (``False``: its cached results were up to date) and how long it took.

    Raises:
        StageFailed: When DVC or the stage fails or times out; the message carries the stage's own
            error lines (for a failed gate, which check failed), and ``retryable`` says whether the
            stage crashed or was killed (worth a retry) rather than refused (exit code 2) or timed out.
    """
    out = run_dvc(["repro", "--single-item", stage], workspace, logger, timeout_s=timeout_s, token=token)
    if out.timed_out:
        message = f"timed out after {timeout_s:.0f} s (orchestration.stage_timeout_s)"
        raise StageFailed(message, stage=stage, retryable=False)  # a time budget, not a crash (see above)
    if out.code != 0 and out.busy:
        raise StageFailed(busy_message(out, workspace), stage=stage, retryable=False)  # it would only be busy again
    if out.code != 0:
        detail = "\n".join(out.errors) if out.errors else "\n".join(out.tail)
        exit_code = out.exit_codes.get(stage)
        retryable = exit_code is not None and exit_code != REFUSED_EXIT
        raise StageFailed(
            f"exited with code {out.code}:\n{detail}", stage=stage, exit_code=exit_code, retryable=retryable
        )
    return StageRun(stage=stage, ran=stage in out.ran, seconds=out.seconds)


def _signal_as_negative(code: int) -> int:
    """A stage killed by signal N as -N, whichever shell ran it (see ``_SHELL_SIGNAL_BASE``)."""
    if _SHELL_SIGNAL_BASE < code < _SHELL_SIGNAL_BASE + signal.NSIG:
        return _SHELL_SIGNAL_BASE - code
    return code


def _stop_group(proc: subprocess.Popen[str], grace_s: float = 30.0) -> None:
    """SIGTERM to DVC's process group (a training puts its last good outputs back), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen[str], timed_out: threading.Event) -> None:
    timed_out.set()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
