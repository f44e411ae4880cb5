"""Run one DVC stage in a workspace and learn whether DVC ran it or found it up to date.

The Prefect flow runs every stage through ``dvc repro --single-item`` so that DVC stays the only
cache: a stage DVC already has results for is skipped, whoever ran it before.

A failure says whether a retry can help (``StageFailed.retryable``): yes for a crash or a kill (an
OOM kill, a lost node), no for a refusal (exit code 2: bad config or data) and no for a timeout,
because ``orchestration.stage_timeout_s`` is the stage's whole time budget, which retries would
silently multiply, and a hung stage hangs again; a timed-out training keeps its checkpoint, so the
next run resumes it.
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
from pathlib import Path

from pydantic import BaseModel

from stages.common import REFUSED_EXIT
from stages.errors import StageFailed
from stages.lock import TOKEN_ENV

_RAN = re.compile(r"Running stage '([^']+)'")
_EXITED = re.compile(r"failed to reproduce '([^']+)'.*exited with (-?\d+)")
# DVC runs a stage's command through $SHELL (``/bin/sh`` when unset). bash execs a lone command, so
# DVC sees the signal (-9); dash forks it and reports the shell's 128 + signal (137).
_SHELL_SIGNAL_BASE = 128


class StageRun(BaseModel):
    """What happened to one stage."""

    stage: str
    ran: bool
    seconds: float


def dvc_environment(token: str | None = None) -> dict[str, str]:
    """The environment for DVC and the stage commands: this interpreter's ``bin`` first on ``PATH``.

    ``dvc.yaml`` commands call ``python``; this makes that the interpreter the flow runs in. ``token``
    is the workspace lock's, which lets this run's stages through (see ``stages/lock.py``).
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if token is not None:
        env[TOKEN_ENV] = token
    return env


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
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    tail: deque[str] = deque(maxlen=40)
    errors: list[str] = []
    ran = False
    exit_code: int | None = None
    with subprocess.Popen(
        cmd,
        cwd=workspace,
        env=dvc_environment(token),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,  # its own process group, so a timeout kills the stage too
    ) as proc:
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
                    if match and match.group(1) == stage:
                        ran = True
                    exited = _EXITED.search(line)
                    if exited and exited.group(1) == stage:
                        exit_code = _signal_as_negative(int(exited.group(2)))
                    if line.startswith(("error:", "ERROR:")):
                        errors.append(line)
                    tail.append(line)
                    logger.info("%s", line)
            code = proc.wait()
        finally:
            if timer:
                timer.cancel()
    seconds = round(time.perf_counter() - started, 2)
    if timed_out.is_set():
        message = f"timed out after {timeout_s:.0f} s (orchestration.stage_timeout_s)"
        raise StageFailed(message, stage=stage, retryable=False)  # a time budget, not a crash (see above)
    if code != 0:
        detail = "\n".join(errors) if errors else "\n".join(tail)
        retryable = exit_code is not None and exit_code != REFUSED_EXIT
        raise StageFailed(f"exited with code {code}:\n{detail}", stage=stage, exit_code=exit_code, retryable=retryable)
    return StageRun(stage=stage, ran=ran, seconds=seconds)


def _signal_as_negative(code: int) -> int:
    """A stage killed by signal N as -N, whichever shell ran it (see ``_SHELL_SIGNAL_BASE``)."""
    if _SHELL_SIGNAL_BASE < code < _SHELL_SIGNAL_BASE + signal.NSIG:
        return _SHELL_SIGNAL_BASE - code
    return code


def _kill_group(proc: subprocess.Popen[str], timed_out: threading.Event) -> None:
    timed_out.set()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
