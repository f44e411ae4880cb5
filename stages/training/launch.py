"""One launch path: the stage's own process for one process, ``torch.distributed.run`` beyond that.

The head node runs the stage as always (``dvc repro``, the Prefect flow, CI). When training needs
more than one process, the stage starts PyTorch's elastic launcher with a c10d rendezvous at
``train.distributed.rdzv_endpoint``; every other node runs the command ``python -m stages.train
--print-launch`` prints for it, which joins the same rendezvous. Each launched process runs
``stages.training.worker``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shlex
import subprocess
import sys
import threading
from collections import deque
from datetime import timedelta
from pathlib import Path

from stages.config import DistributedParams, TrainParams
from stages.errors import ConfigError

log = logging.getLogger(__name__)

WORKER = "stages.training.worker"
REFUSAL = re.compile(r"error: \[stage 'train'\].*")  # what a worker prints when it refuses (exit 2)
_POLL_S = 2.0


class DistributedFailure(RuntimeError):
    """A launched training failed as a crash does (a worker died, a node never came): a retry can help.

    Not a ``PipelineError`` on purpose: the stage then exits 1, which the flow retries (resuming from
    ``last.pt``), where a refusal (exit 2) is never retried.
    """


def is_distributed(hyper: TrainParams) -> bool:
    """Whether training needs the launcher: more than one process over all nodes."""
    return hyper.distributed.world_size > 1


def backend(hyper: TrainParams) -> str:
    """The process-group backend: ``auto`` is NCCL for CUDA devices and gloo for the CPU.

    Raises:
        ConfigError: NCCL asked for CPU training (NCCL runs only between GPUs).
    """
    cuda = hyper.device not in {"cpu", "mps"}
    chosen = hyper.distributed.backend
    if chosen == "auto":
        return "nccl" if cuda else "gloo"
    if chosen == "nccl" and not cuda:
        raise ConfigError(
            "backend nccl needs CUDA devices; use gloo (or auto) for CPU training", key="train.distributed.backend"
        )
    return chosen


def launcher_args(dist: DistributedParams) -> list[str]:
    """``torch.distributed.run`` arguments: c10d rendezvous, the node count and the join timeout."""
    return [
        "-m", "torch.distributed.run",
        "--nnodes", str(dist.nnodes),
        "--nproc-per-node", str(dist.nproc_per_node),
        "--rdzv-backend", "c10d",
        "--rdzv-endpoint", dist.rdzv_endpoint,
        "--rdzv-id", dist.rdzv_id,
        "--rdzv-conf", f"join_timeout={max(int(dist.timeout_s), 1)}",
        "--max-restarts", str(dist.max_restarts),
    ]  # fmt: skip


def node_command(
    dist: DistributedParams, params_file: str, *, python: str = "python", head: bool = False, resume: bool = False
) -> list[str]:
    """The launcher command of one node; ``head`` and ``resume`` only ever come from the stage itself."""
    cmd = [python, *launcher_args(dist), "-m", WORKER, "--params", params_file]
    if head:
        cmd.append("--head")
    if resume:
        cmd.append("--resume")
    return cmd


def launch_lines(hyper: TrainParams, params_file: str) -> list[str]:
    """What each node runs, ``node <rank>: <command>``: the head runs the stage, the others the launcher."""
    lines = [f"node 0: {shlex.join(['python', '-m', 'stages.train', '--params', params_file])}"]
    worker = shlex.join(node_command(hyper.distributed, params_file))
    lines += [f"node {rank}: {worker}" for rank in range(1, hyper.distributed.nnodes)]
    return lines


class _JoinWatch:
    """Counts the nodes in the rendezvous while the head waits, for the message when it times out.

    Reads the c10d rendezvous state that the launcher keeps in the store at the endpoint.
    """

    def __init__(self, dist: DistributedParams) -> None:
        self.dist = dist
        self.joined: int | None = None
        self.reason = "the rendezvous store was not reachable"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rendezvous-watch", daemon=True)

    def __enter__(self) -> _JoinWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from torch.distributed import TCPStore
        from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend

        host, _, port = self.dist.rdzv_endpoint.rpartition(":")
        rendezvous = None
        while not self._stop.wait(_POLL_S):
            try:
                if rendezvous is None:
                    store = TCPStore(
                        host, int(port), is_master=False, timeout=timedelta(seconds=_POLL_S), wait_for_workers=False
                    )
                    rendezvous = C10dRendezvousBackend(store, self.dist.rdzv_id)
                state = rendezvous.get_state()
                if state is not None:
                    participants = getattr(pickle.loads(state[0]), "participants", None)
                    if participants is not None:
                        self.joined = len(participants)
            except Exception as exc:  # not there yet, or gone: the count keeps its last value
                self.reason = f"{type(exc).__name__}: {exc}"
                log.debug("rendezvous watch: %s", self.reason)
                rendezvous = None


def run_launcher(cmd: list[str], *, cwd: Path, env: dict[str, str], dist: DistributedParams) -> None:
    """Run the head node's launcher to the end, its output into this log.

    Raises:
        ConfigError: A worker refused (its node does not match the head's params or data).
        DistributedFailure: A worker crashed, or not every node joined within ``timeout_s``.
    """
    log.info("launching: %s", shlex.join(cmd))
    tail: deque[str] = deque(maxlen=80)
    refusals: list[str] = []
    with _JoinWatch(dist) as watch:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                log.info("%s", line)
                tail.append(line)
                found = REFUSAL.search(line)
                if found and found.group(0) not in refusals:
                    refusals.append(found.group(0))
            code = proc.wait()
        except BaseException:
            # The stage is being stopped (SIGTERM, Ctrl-C): take the launcher and its workers with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            proc.wait()
            raise
    if code == 0:
        return
    if refusals:
        raise ConfigError("a node was refused: " + "; ".join(r.removeprefix("error: ") for r in refusals))
    text = "\n".join(tail)
    if "RendezvousTimeoutError" in text:
        joined = (
            f"{watch.joined} of {dist.nnodes}"
            if watch.joined is not None
            else f"an unknown number ({watch.reason}) of {dist.nnodes}"
        )
        raise DistributedFailure(
            f"[stage 'train'] the rendezvous at {dist.rdzv_endpoint} (id {dist.rdzv_id!r}) did not complete "
            f"within train.distributed.timeout_s={dist.timeout_s:g} s: {joined} nodes joined. Start the other "
            "nodes with the commands 'python -m stages.train --print-launch' prints, and check that they reach "
            "the endpoint"
        )
    raise DistributedFailure(f"[stage 'train'] the launched training failed (launcher exit {code}):\n{text}")


def python_path_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the folder holding ``stages`` first on ``PYTHONPATH``, so launched processes import it."""
    root = str(Path(__file__).resolve().parents[2])
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


def head_command(hyper: TrainParams, params_file: Path, *, resume: bool) -> list[str]:
    """The launcher command the head's stage runs."""
    return node_command(hyper.distributed, str(params_file), python=sys.executable, head=True, resume=resume)
