"""One launch path: the stage's own process for one process, ``torch.distributed.run`` beyond that.

One node, several processes: the stage starts the launcher with ``--standalone`` (a rendezvous on a
free loopback port; nothing to configure). Several nodes: every node runs ``python -m
stages.training.job`` (:mod:`stages.training.job`), the head's stage publishes each training attempt
there, and every node's launcher joins that attempt's c10d rendezvous in the job's store. Each launched
process runs ``stages.training.worker`` with the attempt's launch spec.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from stages.core.config import DistributedParams, TrainParams
from stages.core.errors import ConfigError
from stages.training.site import JobSite

log = logging.getLogger(__name__)

WORKER = "stages.training.worker"
REFUSAL = re.compile(r"error: \[stage 'train'\].*")  # what a worker prints when it refuses (exit 2)
_POLL_S = 0.5


class DistributedFailure(RuntimeError):
    """A launched training failed as a crash does (a worker died, a node never came): a retry can help.

    Not a ``PipelineError`` on purpose: the stage then exits 1, which the flow retries (resuming from
    ``last.pt``), where a refusal (exit 2) is never retried.
    """


def is_distributed(hyper: TrainParams) -> bool:
    """Whether training needs the launcher: more than one process over all nodes."""
    return hyper.distributed.world_size > 1


def rendezvous_id(site: JobSite, attempt: int) -> str:
    """Each attempt meets in a rendezvous of its own: a retry never sees the state of a failed one."""
    return f"{site.run_id}-attempt{attempt}"


def launcher_args(dist: DistributedParams, site: JobSite | None, attempt: int) -> list[str]:
    """``torch.distributed.run`` arguments: standalone on one node, the job's store for several."""
    common = ["-m", "torch.distributed.run", "--nproc-per-node", str(dist.nproc_per_node),
              "--max-restarts", str(dist.max_restarts)]  # fmt: skip
    if site is None:
        return [*common, "--nnodes", "1", "--standalone"]
    return [
        *common,
        "--nnodes", str(dist.nnodes),
        "--rdzv-backend", "c10d",
        "--rdzv-endpoint", site.endpoint,
        "--rdzv-id", rendezvous_id(site, attempt),
        # The head's job hosts the store; no launcher may try to host it (or guess by host name).
        "--rdzv-conf", f"join_timeout={max(int(dist.join_timeout_s), 1)},is_host=false",
    ]  # fmt: skip


def node_command(
    dist: DistributedParams,
    site: JobSite | None,
    attempt: int,
    spec_file: Path,
    workspace: Path,
    *,
    head: bool,
) -> list[str]:
    """The launcher command of one node for one attempt."""
    cmd = [sys.executable, *launcher_args(dist, site, attempt), "-m", WORKER]
    cmd += ["--spec", str(spec_file), "--workspace", str(workspace)]
    return [*cmd, "--head"] if head else cmd


def job_command(params_file: str) -> str:
    """What every node of a multi-node job runs (the same command everywhere)."""
    return shlex.join(["python", "-m", "stages.training.job", "--params", params_file])


def launch_lines(hyper: TrainParams, params_file: str) -> list[str]:
    """What each node runs, ``node <rank>: <command>``.

    One node: the stage itself. Several: the same job command on every node; the head's job runs
    ``dvc repro train`` and the others follow it (where the head is comes from the environment).
    """
    nnodes = hyper.distributed.nnodes
    if nnodes == 1:
        return ["node 0: dvc repro train"]
    return [f"node {rank}: {job_command(params_file)}" for rank in range(nnodes)]


def python_path_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the folder holding ``stages`` first on ``PYTHONPATH``, so launched processes import it."""
    root = str(Path(__file__).resolve().parents[2])
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    out.setdefault("PYTHONUNBUFFERED", "1")
    # Workers reach the launcher's shared store at MASTER_ADDR/PORT before any process group exists
    # (handshake.worker_store); with sharing turned off nobody serves that address yet.
    out.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    return out


def follow(
    cmd: list[str],
    cwd: Path,
    should_stop: Callable[[], bool] = lambda: False,
    on_line: Callable[[str], None] | None = None,
) -> int:
    """Run a launcher to its end, its output into this log; stop it early when ``should_stop()`` says so.

    Returns:
        The launcher's exit code (negative for a signal).
    """
    log.info("launching: %s", shlex.join(cmd))
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=python_path_env(dict(os.environ)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    stop = threading.Event()

    def _watch() -> None:
        while not stop.wait(_POLL_S):
            if should_stop():
                log.warning("stopping the launcher: %s", "the job moved on")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 15)
                return

    watcher = threading.Thread(target=_watch, name="launcher-watch", daemon=True)
    watcher.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            log.info("%s", line)
            if on_line is not None:
                on_line(line)
        return proc.wait()
    except BaseException:
        # The stage is being stopped (SIGTERM, Ctrl-C): take the launcher and its workers with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait()
        raise
    finally:
        stop.set()
        watcher.join(timeout=5)


def run_attempt(spec_json: str, spec_file: Path, workspace: Path, dist: DistributedParams) -> None:
    """Run one training attempt from the head's stage: standalone, or every node of the current job.

    Raises:
        ConfigError: A node refused (its code, versions, data or params differ from the head's), or a
            multi-node run outside a job.
        DistributedFailure: A worker crashed, or not every node joined within ``join_timeout_s``.
    """
    from stages.training.job import JobChannel, current_job

    site = current_job()
    if dist.nnodes > 1 and site is None:
        raise ConfigError(
            f"train.distributed.nnodes is {dist.nnodes}: start the job on every node with "
            f"'{job_command('params.yaml')}' (the head runs dvc repro train itself; README: Training at scale)",
            key="train.distributed.nnodes",
        )
    channel = JobChannel(site, host=False, connect_timeout_s=60) if site is not None and dist.nnodes > 1 else None
    attempt = channel.new_attempt(spec_json) if channel else 1
    if channel:
        channel.joined(attempt, 0)
    refusals: list[str] = []
    tail: deque[str] = deque(maxlen=80)

    def _refused() -> bool:
        if channel is not None and not refusals:
            refusals.extend(channel.refusals(attempt))
        return bool(refusals)

    def _line(line: str) -> None:
        tail.append(line)
        found = REFUSAL.search(line)
        if found and found.group(0) not in refusals:
            refusals.append(found.group(0))

    cmd = node_command(dist, site if channel else None, attempt, spec_file, workspace, head=True)
    started = time.monotonic()
    code = follow(cmd, workspace, _refused, _line)
    if code == 0:
        return
    if refusals:
        raise ConfigError("a node was refused: " + "; ".join(r.removeprefix("error: ") for r in refusals))
    text = "\n".join(tail)
    if "RendezvousTimeoutError" in text and channel is not None and site is not None:
        raise DistributedFailure(
            f"[stage 'train'] attempt {attempt} of job {site.run_id!r} at {site.endpoint}: "
            f"{channel.joined_count(attempt)} of {dist.nnodes} nodes joined within "
            f"train.distributed.join_timeout_s={dist.join_timeout_s:g} s (waited {time.monotonic() - started:.0f} s). "
            f"Every node runs '{job_command('params.yaml')}' and must reach {site.endpoint}"
        )
    raise DistributedFailure(f"[stage 'train'] the launched training failed (launcher exit {code}):\n{text}")
