"""A multi-node training job: ``python -m stages.training.job`` on every node, the same command everywhere.

The head node (node rank 0) hosts the job's store at the endpoint and runs ``dvc repro train`` (or the
command given after ``--``, e.g. a Prefect flow). DVC decides whether ``train`` runs at all. The other
nodes wait on the head's store for what happened, within a second of it:

- the stage started a training attempt: the attempt's :class:`~stages.training.spec.LaunchSpec` is in
  the store; each node compares its own facts with the head's (code, versions, data on disk, params),
  refuses before any collective operation if they differ (the head's stage sees the refusal and stops),
  and otherwise joins the attempt's rendezvous with ``torch.distributed.run``. When that attempt ends
  the node waits for the next one: a retry of the stage (a flow retry, a second ``dvc repro``) starts a
  new attempt that every node joins again, resuming from the head's checkpoint;
- the command ended without starting training (``train`` was up to date): the nodes exit 0;
- the command failed (an upstream stage failed, training failed): the nodes exit 1 with the head's reason.

The same store serves torchrun's c10d rendezvous (``is_host=false`` on every node), so a job needs one
port on the head. Nothing of where the job runs is a param: :mod:`stages.training.site` reads it from
the environment or this command's flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from stages.core.cli import REFUSED_EXIT, configure_logging
from stages.core.errors import PipelineError
from stages.training.site import JobSite, job_site

log = logging.getLogger("stages.training.job")

JOB_ENV = "YOLO_PIPELINE_JOB"  # set by the head's job for the command it runs: where the job's store is
NOTHING, FINISHED, FAILED = "nothing-to-train", "finished", "failed"
_POLL_S = 0.25
_ACK_GRACE_S = 15.0  # the least time the head keeps its store up for the nodes to read the outcome


class JobLost(RuntimeError):
    """The job's store cannot be reached: gone before it said how the job ended (the head machine or job
    died), never answering, or not hostable on the head (the port taken)."""


class JobChannel:
    """The job's keys in the store on the head node (``yolo-pipeline/<run id>/...``)."""

    def __init__(self, site: JobSite, *, host: bool, connect_timeout_s: float) -> None:
        from torch.distributed import TCPStore

        self.site = site
        self.prefix = f"yolo-pipeline/{site.run_id}/"
        self.store = TCPStore(
            site.host,
            site.port,
            is_master=host,
            timeout=timedelta(seconds=connect_timeout_s),
            wait_for_workers=False,
        )

    def _has(self, key: str) -> bool:
        return bool(self.store.check([self.prefix + key]))

    def _get(self, key: str) -> str:
        return self.store.get(self.prefix + key).decode()

    def _set(self, key: str, value: str) -> None:
        self.store.set(self.prefix + key, value)

    # --- the head's stage ----------------------------------------------------------------------

    def new_attempt(self, spec_json: str) -> int:
        """Publish a training attempt's spec; returns the attempt's number (1, 2, ...)."""
        attempt = int(self.store.add(self.prefix + "attempts", 1))
        self._set(f"attempt/{attempt}", spec_json)
        return attempt

    def attempts(self) -> int:
        """How many training attempts the head's stage has started in this job."""
        return int(self.store.add(self.prefix + "attempts", 0))

    def joined(self, attempt: int, node_rank: int) -> None:
        """Mark this node as joining ``attempt``."""
        self._set(f"attempt/{attempt}/joined/{node_rank}", "1")

    def joined_count(self, attempt: int) -> int:
        """Nodes that joined ``attempt`` so far."""
        return sum(self._has(f"attempt/{attempt}/joined/{rank}") for rank in range(self.site.nnodes))

    def refuse(self, attempt: int, node_rank: int, message: str) -> None:
        """Tell the head this node will not train ``attempt``, and why."""
        self._set(f"attempt/{attempt}/refused/{node_rank}", message)

    def refusals(self, attempt: int) -> list[str]:
        """Every node's refusal of ``attempt``."""
        return [
            self._get(f"attempt/{attempt}/refused/{rank}")
            for rank in range(self.site.nnodes)
            if self._has(f"attempt/{attempt}/refused/{rank}")
        ]

    # --- the head's job ------------------------------------------------------------------------

    def finish(self, state: str, reason: str) -> None:
        """Say how the job ended, for every node."""
        self._set("outcome", json.dumps({"state": state, "reason": reason}))

    def acknowledged(self) -> int:
        """Nodes (other than the head) that have read the outcome."""
        return sum(self._has(f"ack/{rank}") for rank in range(1, self.site.nnodes))

    # --- the other nodes -----------------------------------------------------------------------

    def next_event(self, attempt: int) -> tuple[str, Any]:
        """Wait for attempt ``attempt`` or the outcome: ``("attempt", spec JSON)`` or ``("outcome", dict)``.

        Raises:
            JobLost: The head's store stopped answering.
        """
        while True:
            found = self.poll(attempt)
            if found is not None:
                return found
            time.sleep(_POLL_S)

    def poll(self, attempt: int) -> tuple[str, Any] | None:
        """:meth:`next_event` without waiting: ``None`` when neither is there yet."""
        try:
            if self._has("outcome"):
                return "outcome", json.loads(self._get("outcome"))
            if self._has(f"attempt/{attempt}"):
                return "attempt", self._get(f"attempt/{attempt}")
        except (RuntimeError, ConnectionError) as exc:  # torch raises DistStoreError (a RuntimeError)
            raise JobLost(f"lost the head's job store at {self.site.endpoint}: {exc}") from None
        return None

    def acknowledge(self, node_rank: int) -> None:
        """Tell the head this node has read the outcome (best effort: the head may already be gone)."""
        with contextlib.suppress(RuntimeError, ConnectionError):
            self._set(f"ack/{node_rank}", "1")


def current_job() -> JobSite | None:
    """The job the head's stage runs in (from :data:`JOB_ENV`, set by the head's job), or ``None``."""
    text = os.environ.get(JOB_ENV)
    return JobSite.model_validate_json(text) if text else None


# --- the head ------------------------------------------------------------------------------------


def _failure_reason(tail: deque[str], code: int) -> str:
    errors = [line for line in tail if line.lstrip().lower().startswith(("error", "failed"))]
    shown = errors[-4:] or list(tail)[-4:]
    return f"the head's command exited {code}: " + " | ".join(line.strip() for line in shown)


def run_head(site: JobSite, command: list[str], workspace: Path, join_timeout_s: float) -> int:
    """Host the job's store, run ``command`` and tell every node how it ended. Returns the exit code."""
    try:
        channel = JobChannel(site, host=True, connect_timeout_s=60)
    except (RuntimeError, OSError) as exc:  # torch's DistNetworkError: the port is taken, the address not ours
        raise JobLost(
            f"the head cannot host the job's store at {site.endpoint} ({site.sources['endpoint']}): "
            f"{str(exc).splitlines()[0]}; is the port free on this node and the address this node's?"
        ) from None
    env = {**os.environ, JOB_ENV: site.model_dump_json()}
    log.info("job %s: head of %d nodes, store at %s; running: %s", site.run_id, site.nnodes, site.endpoint, command)
    tail: deque[str] = deque(maxlen=60)
    proc = subprocess.Popen(
        command,
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    stopped: list[int] = []

    def _stop(signum: int, _frame: Any) -> None:
        stopped.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip())
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    attempts = channel.attempts()
    if stopped:
        state, reason = FAILED, f"the head's job was stopped (signal {stopped[0]})"
    elif code == 0:
        state = FINISHED if attempts else NOTHING
        reason = (
            f"training finished after {attempts} attempt(s)"
            if attempts
            else f"{' '.join(command)} ran no training (train was up to date or not part of it)"
        )
    else:
        state, reason = FAILED, _failure_reason(tail, code)
    channel.finish(state, reason)
    log.info("job %s: %s: %s", site.run_id, state, reason)
    # A node that starts late (a pod still pulling its image) must still read the outcome: the store stays
    # up until every node has, for as long as a node may take to join.
    deadline = time.monotonic() + max(join_timeout_s, _ACK_GRACE_S)
    if channel.acknowledged() < site.nnodes - 1:
        log.info("job %s: waiting up to %.0f s for every node to read the outcome", site.run_id, join_timeout_s)
    while channel.acknowledged() < site.nnodes - 1 and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return code if code != 0 else (1 if stopped else 0)


# --- the other nodes -----------------------------------------------------------------------------


def _connect(site: JobSite, timeout_s: float) -> JobChannel:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return JobChannel(site, host=False, connect_timeout_s=min(30.0, timeout_s))
        except (RuntimeError, ConnectionError, TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise JobLost(
                    f"the head's job store at {site.endpoint} did not answer within {timeout_s:g} s "
                    f"(train.distributed.join_timeout_s): {exc}"
                ) from None
            time.sleep(1.0)


def _refusal(site: JobSite, spec: Any, workspace: Path, params_file: Path, facts: Any) -> str | None:
    """This node's reason not to train the head's spec, or ``None`` when it matches."""
    from stages.core.config import load_params
    from stages.training import facts as node_facts
    from stages.training.handshake import identity_differences

    found = node_facts.differences(facts, spec.head)
    own = load_params(params_file).train.training_identity()
    found += identity_differences(own, spec.hyper.training_identity())
    if not found:
        return None
    return (
        f"[stage 'train'] node {site.node_rank} ({facts.host}, {workspace}) does not match the head "
        f"({spec.head.host}): " + "; ".join(found)
    )


def run_node(site: JobSite, workspace: Path, params_file: Path, join_timeout_s: float) -> int:
    """Follow the head's job until it ends: join every training attempt it starts. Returns the exit code."""
    from stages.core.config import load_params
    from stages.training import facts as node_facts
    from stages.training import launch
    from stages.training.spec import LaunchSpec

    # A stop (scancel, a pod deletion) becomes an exception, so the launcher and its workers go too.
    signal.signal(signal.SIGTERM, _raise_on_signal)
    channel = _connect(site, join_timeout_s)
    log.info("job %s: node %d of %d, following the head at %s", site.run_id, site.node_rank, site.nnodes, site.endpoint)
    attempt = 1
    while True:
        kind, value = channel.next_event(attempt)
        if kind == "outcome":
            channel.acknowledge(site.node_rank)
            log.info("job %s: the head says %s: %s", site.run_id, value["state"], value["reason"])
            if value["state"] == FAILED:
                print(f"error: {value['reason']}", file=sys.stderr, flush=True)
                return 1
            return 0
        spec = LaunchSpec.model_validate_json(value)
        try:
            # Every attempt: a node fixed between attempts (data pulled, code updated) may join the next one.
            # Unchanged files' hashes are cached, so this reads only what changed.
            paths = load_params(params_file).paths
            facts = node_facts.node_facts(workspace, paths.resolve("prepared", workspace), spec.model)
            refusal = _refusal(site, spec, workspace, params_file, facts)
        except PipelineError as exc:  # this node cannot even say what it has (no data, broken params)
            refusal = f"[stage 'train'] node {site.node_rank} ({workspace}): {exc}"
        if refusal is not None:
            print(f"error: {refusal}", file=sys.stderr, flush=True)
            channel.refuse(attempt, site.node_rank, refusal)
            attempt += 1
            continue
        with _spec_file(value) as spec_path:
            channel.joined(attempt, site.node_rank)
            cmd = launch.node_command(spec.hyper.distributed, site, attempt, spec_path, workspace, head=False)
            code = launch.follow(cmd, workspace, lambda a=attempt: _moved_on(channel, a))
        log.info("job %s: attempt %d ended on this node (launcher exit %d)", site.run_id, attempt, code)
        attempt += 1


def _raise_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _moved_on(channel: JobChannel, attempt: int) -> bool:
    """Whether the head has started a newer attempt or ended the job (this attempt's launcher is then stale)."""
    try:
        return channel.poll(attempt + 1) is not None
    except JobLost:
        return True


@contextlib.contextmanager
def _spec_file(text: str) -> Iterator[Path]:
    handle, name = tempfile.mkstemp(prefix="yolo-launch-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as fh:
        fh.write(text)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m stages.training.job [flags] [-- command]``: this node's part of a training job."""
    args_in = sys.argv[1:] if argv is None else argv
    split = args_in.index("--") if "--" in args_in else len(args_in)
    parser = argparse.ArgumentParser(prog="python -m stages.training.job", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--endpoint", help="host:port of the job's store on the head (default: MASTER_ADDR/PORT)")
    parser.add_argument("--node-rank", help="this node's rank, 0 on the head (default: SLURM_NODEID, ...)")
    parser.add_argument("--nnodes", help="nodes in this job (default: SLURM_JOB_NUM_NODES, ...)")
    parser.add_argument("--run-id", help="the job's name, the same on every node (default: SLURM_JOB_ID, ...)")
    parser.add_argument("--same-host", action="store_true", help="every node runs on this machine (tests)")
    args = parser.parse_args(args_in[:split])
    command = args_in[split + 1 :] or ["dvc", "repro", "train"]
    configure_logging()
    from stages.core.config import load_params

    try:
        params_file = args.params.resolve()
        dist = load_params(params_file).train.distributed
        flags = {"endpoint": args.endpoint, "node_rank": args.node_rank, "nnodes": args.nnodes, "run_id": args.run_id}
        site = job_site(os.environ, flags, nnodes=dist.nnodes, same_host=args.same_host)
        if site.node_rank == 0:
            return run_head(site, command, params_file.parent, dist.join_timeout_s)
        return run_node(site, params_file.parent, params_file, dist.join_timeout_s)
    except PipelineError as exc:
        if exc.stage is None:
            exc.stage = "train"
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return REFUSED_EXIT
    except JobLost as exc:
        print(f"error: [stage 'train'] {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
