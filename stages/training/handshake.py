"""What launched processes settle among themselves before training.

Runs in every process ``torch.distributed.run`` starts, after its rendezvous and before Ultralytics is
imported (Ultralytics reads the rank from the environment once, at import):

- :func:`agree`: the rendezvous orders nodes by host name and process id, so global rank 0 (the only
  process that writes checkpoints and results) would land on any node; the processes are renumbered so
  that the head node's come first. Exactly one node must be the head.
- :func:`share_checkpoint`: the checkpoint global rank 0 resumes from reaches every other process by a
  broadcast over the process group (once per process, over NCCL or gloo), never through the launcher's
  key-value store, which would carry hundreds of megabytes per process.

Whether a node may train at all (same code, versions, data and params as the head) is decided before
it joins, by its job (:mod:`stages.training.job`), so a mismatch never reaches a collective.
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

from stages.core.errors import ConfigError


class Placement(BaseModel):
    """Where this process stands once the nodes agree."""

    rank: int
    node_rank: int
    world_size: int
    local_rank: int


def _flatten(data: dict[str, Any], prefix: str = "train") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}"
        flat.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def identity_differences(mine: dict[str, Any], head: dict[str, Any]) -> list[str]:
    """Training params that differ, as ``key: value here vs value on the head``."""
    own, theirs = _flatten(mine), _flatten(head)
    return [
        f"{key}: {own.get(key)!r} vs {theirs.get(key)!r} on the head"
        for key in sorted(set(own) | set(theirs))
        if own.get(key) != theirs.get(key)
    ]


def head_index(heads: list[bool]) -> int:
    """The index of the one head among the nodes' claims.

    Raises:
        ConfigError: No head or several.
    """
    found = [i for i, head in enumerate(heads) if head]
    if len(found) != 1:
        raise ConfigError(
            f"{len(found)} nodes claim to be the head; exactly one node runs the stage and the others "
            "follow it with python -m stages.training.job",
            key="train.distributed",
        )
    return found[0]


def head_first_rank(
    group_rank: int, head_group: int, nnodes: int, local_world: int, local_rank: int
) -> tuple[int, int]:
    """(global rank, node rank) with the head's node first and the others in the rendezvous' order."""
    node_rank = (group_rank - head_group) % nnodes
    return node_rank * local_world + local_rank, node_rank


def worker_store(timeout_s: float) -> tuple[Any, str]:
    """A client of the store the launcher gives its workers, and this start's key prefix.

    The prefix names the launcher's run and rendezvous round: torchrun keeps one store for its workers
    across restarts (the rendezvous' shared store), so keys a killed worker wrote (its gloo address, its
    place) would otherwise be read by the restarted ones; seen here as "Gloo connectFullMesh failed ...
    Connection refused" after a worker was killed.
    """
    from torch.distributed import TCPStore

    env = os.environ
    store = TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    base = f"yolo-pipeline/{env.get('TORCHELASTIC_RUN_ID', '')}"
    # Not TORCHELASTIC_RESTART_COUNT: each node's launcher counts only its own failures (a node whose
    # workers were healthy restarts them for a new round without counting), so nodes would disagree on the
    # prefix. Every launcher starts each local rank exactly once per rendezvous round, so how often this
    # slot (host, launcher process, local rank) has started is the round, the same on every node.
    slot = f"{base}/starts/{socket.gethostname()}/{os.getppid()}/{env['LOCAL_RANK']}"
    round_ = int(store.add(slot, 1))
    return store, f"{base}/round{round_}"


def agree(*, head: bool, store: Any, prefix: str, timeout_s: float) -> Placement:
    """Publish whether this node is the head, and place this process with the head's node first.

    Args:
        head: This process runs on the head node.
        store: The launcher's store for its workers (:func:`worker_store`).
        prefix: This start's key prefix (:func:`worker_store`).
        timeout_s: Longest wait for the other nodes' claims.
    """
    env = os.environ
    local_rank, group_rank = int(env["LOCAL_RANK"]), int(env["GROUP_RANK"])
    local_world, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
    nnodes = world // local_world
    if local_rank == 0:
        store.set(f"{prefix}/node/{group_rank}", json.dumps({"head": head, "host": socket.gethostname()}))
    keys = [f"{prefix}/node/{i}" for i in range(nnodes)]
    store.wait(keys, timedelta(seconds=timeout_s))
    claims = [bool(json.loads(store.get(k))["head"]) for k in keys]
    rank, node_rank = head_first_rank(group_rank, head_index(claims), nnodes, local_world, local_rank)
    return Placement(rank=rank, node_rank=node_rank, world_size=world, local_rank=local_rank)


def share_checkpoint(decision: dict[str, Any], device: Any, *, on_head_node: bool) -> Path | None:
    """Broadcast global rank 0's resume decision and, to the other nodes, its checkpoint's bytes.

    A collective: every process of the (already initialised) process group calls it.

    Args:
        decision: On global rank 0: ``{"checkpoint": path or None}``; ignored elsewhere.
        device: Where the broadcast tensors live (the process' GPU for NCCL, the CPU for gloo).
        on_head_node: This process runs on the head node, whose disk holds the checkpoint.

    Returns:
        The checkpoint to resume from on this process (a private temporary copy on other nodes, which
        the caller removes), or ``None`` for a fresh start.
    """
    import torch
    import torch.distributed as dist

    box = [decision if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=device)
    chosen = box[0]["checkpoint"] if box[0] else None
    if chosen is None:
        return None
    # Every process takes part in the broadcast; only those on other nodes keep the bytes.
    if dist.get_rank() == 0:
        data = torch.frombuffer(bytearray(Path(chosen).read_bytes()), dtype=torch.uint8).to(device)
        size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    if dist.get_rank() != 0:
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(data, src=0)
    if on_head_node:
        return Path(chosen)
    handle, name = tempfile.mkstemp(prefix="yolo-resume-", suffix=".pt")
    with os.fdopen(handle, "wb") as fh:
        fh.write(data.cpu().numpy().tobytes())
    return Path(name)
