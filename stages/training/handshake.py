"""What launched processes settle among themselves before training, through the launcher's store.

Runs in every process ``torch.distributed.run`` starts, after its rendezvous and before Ultralytics
is imported (Ultralytics reads the rank from the environment once, at import). The first process
of each node publishes the node's record; every process then reads all of them and:

- refuses to train when a node's training params or prepared data differ from the head's, naming
  what differs (every process sees the same records, so every node fails with the same message);
- numbers the processes so that the head node's come first: the rendezvous orders nodes by host
  name and process id, so global rank 0 (the only process that writes checkpoints and results)
  would otherwise land on any node;
- passes the head's resume checkpoint to the nodes that lack it.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stages.errors import ConfigError


class NodeRecord(BaseModel):
    """One node's account of itself."""

    head: bool
    host: str
    identity: dict[str, Any]  # TrainParams.training_identity()
    data: str | None  # DVC's hash of the prepared dataset, from dvc.lock
    resume: bool


class Placement(BaseModel):
    """Where this process stands once the nodes agree."""

    rank: int
    node_rank: int
    world_size: int
    resume_from: Path | None


def _flatten(data: dict[str, Any], prefix: str = "train") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}"
        flat.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def differences(node: NodeRecord, head: NodeRecord) -> list[str]:
    """What of ``node`` differs from ``head``, as ``key: value here vs value on the head``."""
    mine, theirs = _flatten(node.identity), _flatten(head.identity)
    found = [
        f"{key}: {mine.get(key)!r} vs {theirs.get(key)!r} on the head"
        for key in sorted(set(mine) | set(theirs))
        if mine.get(key) != theirs.get(key)
    ]
    if node.data != head.data:
        found.append(
            f"prepared data (dvc.lock): {node.data or 'not recorded'} vs {head.data or 'not recorded'} on the head"
        )
    return found


def check_nodes(records: list[NodeRecord]) -> int:
    """The index of the head among ``records``, once every node matches it.

    Raises:
        ConfigError: No head or several, or a node whose params or data differ from the head's.
    """
    heads = [i for i, r in enumerate(records) if r.head]
    if len(heads) != 1:
        raise ConfigError(
            f"{len(heads)} nodes claim to be the head; exactly one node runs the stage (python -m stages.train) "
            "and the others the command from --print-launch",
            key="train.distributed",
        )
    head = records[heads[0]]
    for index, record in enumerate(records):
        diff = differences(record, head)
        if diff:
            node = f"{record.host} (rendezvous rank {index})"
            raise ConfigError(
                f"node {node} does not match the head ({head.host}): " + "; ".join(diff), key="train.distributed"
            )
    return heads[0]


def head_first_rank(
    group_rank: int, head_group: int, nnodes: int, local_world: int, local_rank: int
) -> tuple[int, int]:
    """(global rank, node rank) with the head's node first and the others in the rendezvous' order."""
    node_rank = (group_rank - head_group) % nnodes
    return node_rank * local_world + local_rank, node_rank


def agree(own: NodeRecord, checkpoint: Path | None, timeout_s: float) -> Placement:
    """Publish this node's record, check all nodes, and place this process (see the module docstring).

    Args:
        own: This node's record.
        checkpoint: The head's ``last.pt`` when it resumes (``None`` elsewhere).
        timeout_s: Longest wait for the other nodes' records.
    """
    from torch.distributed import TCPStore

    env = os.environ
    local_rank, group_rank = int(env["LOCAL_RANK"]), int(env["GROUP_RANK"])
    local_world, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
    nnodes = world // local_world
    store = TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    # One namespace per launch attempt: a restart after a failure publishes afresh.
    prefix = f"yolo-pipeline/{env.get('TORCHELASTIC_RUN_ID', '')}/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if local_rank == 0:
        if own.head and own.resume and checkpoint is not None:
            store.set(f"{prefix}/checkpoint", checkpoint.read_bytes())
        store.set(f"{prefix}/node/{group_rank}", own.model_dump_json())
    keys = [f"{prefix}/node/{i}" for i in range(nnodes)]
    store.wait(keys, timedelta(seconds=timeout_s))
    records = [NodeRecord.model_validate(json.loads(store.get(k))) for k in keys]
    head_index = check_nodes(records)
    rank, node_rank = head_first_rank(group_rank, head_index, nnodes, local_world, local_rank)
    resume_from = checkpoint if own.head else None
    if records[head_index].resume and not own.head:
        # Outside the workspace: only the head's rank 0 writes there.
        handle, name = tempfile.mkstemp(prefix="yolo-resume-", suffix=".pt")
        with os.fdopen(handle, "wb") as fh:
            fh.write(store.get(f"{prefix}/checkpoint"))
        resume_from = Path(name)
    return Placement(rank=rank, node_rank=node_rank, world_size=world, resume_from=resume_from)


def own_record(*, head: bool, identity: dict[str, Any], data: str | None, resume: bool) -> NodeRecord:
    """This node's record."""
    return NodeRecord(head=head, host=socket.gethostname(), identity=identity, data=data, resume=resume)
