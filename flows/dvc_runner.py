"""Run one DVC stage in a workspace and learn whether DVC ran it or found it up to date.

The Prefect flow runs every stage through ``dvc repro --single-item`` so that DVC stays the only
cache: a stage DVC already has results for is skipped, whoever ran it before.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from pydantic import BaseModel

from stages.errors import StageFailed

_RAN = re.compile(r"Running stage '([^']+)'")


class StageRun(BaseModel):
    """What happened to one stage."""

    stage: str
    ran: bool
    seconds: float


def dvc_environment() -> dict[str, str]:
    """The environment for DVC and the stage commands: this interpreter's ``bin`` first on ``PATH``.

    ``dvc.yaml`` commands call ``python``; this makes that the interpreter the flow runs in.
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def repro_stage(stage: str, workspace: Path, logger: logging.Logger | logging.LoggerAdapter) -> StageRun:
    """Run ``dvc repro --single-item <stage>`` in ``workspace``, streaming its output to ``logger``.

    Args:
        stage: Stage name in ``dvc.yaml``.
        workspace: The folder holding ``dvc.yaml``.
        logger: Where each output line goes.

    Returns:
        Whether DVC ran the stage (``False``: its cached results were up to date) and how long it took.

    Raises:
        StageFailed: When DVC or the stage exits non-zero; the message carries the stage's own error
            lines (for a failed gate, which check failed).
    """
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    tail: deque[str] = deque(maxlen=40)
    errors: list[str] = []
    ran = False
    with subprocess.Popen(
        cmd,
        cwd=workspace,
        env=dvc_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            for line in raw.rstrip("\n").split("\r"):
                line = line.rstrip()
                if not line:
                    continue
                match = _RAN.search(line)
                if match and match.group(1) == stage:
                    ran = True
                if line.startswith("error:") or line.startswith("ERROR:"):
                    errors.append(line)
                tail.append(line)
                logger.info("%s", line)
        code = proc.wait()
    seconds = round(time.perf_counter() - started, 2)
    if code != 0:
        detail = "\n".join(errors) if errors else "\n".join(tail)
        raise StageFailed(f"exited with code {code}:\n{detail}", stage=stage)
    return StageRun(stage=stage, ran=ran, seconds=seconds)
