"""Where a training job runs: the head's address, this node's rank and the allocation's node count.

None of it is a param (it changes with every allocation; as a tracked value it made every job retrain
and wrote host names into ``dvc.lock``). It comes, first found wins, from:

1. the command line of ``python -m stages.training.job`` (``--endpoint``, ``--node-rank``, ``--nnodes``,
   ``--run-id``);
2. a Kubeflow PyTorchJob or torchrun-style environment: ``PET_RDZV_ENDPOINT`` or
   ``PET_MASTER_ADDR``/``PET_MASTER_PORT``, ``PET_NODE_RANK``, ``PET_NNODES``, ``PET_RDZV_ID``;
3. Slurm: ``SLURM_NODEID``, ``SLURM_JOB_NUM_NODES`` (or ``SLURM_NNODES``), ``SLURM_JOB_ID``, with
   ``MASTER_ADDR``/``MASTER_PORT`` exported by the batch script (the README's recipe);
4. a Kubernetes indexed Job: ``JOB_COMPLETION_INDEX``;
5. the plain ``MASTER_ADDR``/``MASTER_PORT``, ``NODE_RANK``, ``NNODES`` many launchers export.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from pydantic import BaseModel

from stages.core.errors import ConfigError

DEFAULT_PORT = 29400


class JobSite(BaseModel):
    """Where this node's part of the job runs, and where each value came from."""

    host: str
    port: int
    node_rank: int
    nnodes: int
    run_id: str
    sources: dict[str, str]  # value name -> the variable or flag it was read from

    @property
    def endpoint(self) -> str:
        """``host:port`` of the job's store on the head node."""
        return f"{self.host}:{self.port}"


def _first(found: Mapping[str, str | None], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = found.get(name)
        if value not in (None, ""):
            return name, str(value)
    return None


def _integer(source: tuple[str, str], minimum: int) -> int:
    name, value = source
    if not value.isdigit() or int(value) < minimum:
        raise ConfigError(f"{name}={value!r} must be a whole number >= {minimum}", key=name)
    return int(value)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is written as this machine only: ``localhost``, 127.0.0.0/8 or ``::1``.

    Names are not resolved: Debian maps a machine's own host name to 127.0.1.1 in ``/etc/hosts``, so
    the head's name would look like loopback on the head itself while other nodes reach it fine.
    """
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def job_site(
    env: Mapping[str, str],
    flags: Mapping[str, str | None],
    *,
    nnodes: int,
    same_host: bool = False,
) -> JobSite:
    """Resolve where this node's part of the job runs.

    Args:
        env: The process environment.
        flags: Command-line values: ``endpoint``, ``node_rank``, ``nnodes``, ``run_id`` (``None`` when unset).
        nnodes: ``train.distributed.nnodes``: what the training was configured for.
        same_host: Every node runs on this machine (tests, a workstation): a loopback endpoint is allowed.

    Raises:
        ConfigError: Nothing says where the head is; a value is malformed; the allocation's node count
            differs from ``train.distributed.nnodes``; or a loopback endpoint with several nodes.
    """
    found = {**{f"--{k.replace('_', '-')}": v for k, v in flags.items()}, **env}
    sources: dict[str, str] = {}

    endpoint = _first(found, ("--endpoint", "PET_RDZV_ENDPOINT"))
    if endpoint is not None:
        host, _, port_text = endpoint[1].rpartition(":") if ":" in endpoint[1] else (endpoint[1], "", "")
        port_source = (endpoint[0], port_text or str(DEFAULT_PORT))
        host_source = endpoint[0]
    else:
        addr = _first(found, ("PET_MASTER_ADDR", "MASTER_ADDR"))
        if addr is None:
            raise ConfigError(
                "nothing says where the head node is: export MASTER_ADDR and MASTER_PORT (Slurm: the first host "
                "of the allocation), or pass --endpoint host:port to python -m stages.training.job",
                key="MASTER_ADDR",
            )
        host, host_source = addr[1], addr[0]
        port_source = _first(found, ("PET_MASTER_PORT", "MASTER_PORT")) or ("default", str(DEFAULT_PORT))
    port = _integer(port_source, 1)
    if port > 65535 or not host:
        raise ConfigError(f"{host_source} gives no usable host:port ({host}:{port})", key=host_source)
    sources["endpoint"] = host_source

    rank_source = _first(found, ("--node-rank", "PET_NODE_RANK", "SLURM_NODEID", "JOB_COMPLETION_INDEX", "NODE_RANK"))
    if rank_source is None:
        raise ConfigError(
            "nothing says which node this is: Slurm sets SLURM_NODEID, a Kubernetes indexed Job "
            "JOB_COMPLETION_INDEX; elsewhere pass --node-rank (0 on the head)",
            key="--node-rank",
        )
    node_rank = _integer(rank_source, 0)
    sources["node_rank"] = rank_source[0]

    count_source = _first(found, ("--nnodes", "PET_NNODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "NNODES"))
    allocated = _integer(count_source, 1) if count_source else nnodes
    sources["nnodes"] = count_source[0] if count_source else "train.distributed.nnodes"
    if allocated != nnodes:
        raise ConfigError(
            f"this job has {allocated} nodes ({count_source[0] if count_source else ''}) but "
            f"train.distributed.nnodes is {nnodes}: the global batch is split for that many",
            key="train.distributed.nnodes",
        )
    if node_rank >= nnodes:
        raise ConfigError(
            f"node rank {node_rank} ({rank_source[0]}) is not below train.distributed.nnodes={nnodes}",
            key=rank_source[0],
        )
    if nnodes > 1 and not same_host and is_loopback(host):
        raise ConfigError(
            f"{host_source}={host} is a loopback address, which other machines cannot reach, and "
            f"train.distributed.nnodes is {nnodes}: give the head's host name or address (pass --same-host "
            "only when every node runs on this machine)",
            key=host_source,
        )

    run_source = _first(found, ("--run-id", "PET_RDZV_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"))
    run_id = run_source[1] if run_source else "yolo-train"
    sources["run_id"] = run_source[0] if run_source else "default"
    return JobSite(host=host, port=port, node_rank=node_rank, nnodes=nnodes, run_id=run_id, sources=sources)
