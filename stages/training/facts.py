"""What a node really has: the code that will run, the package versions, the data on its disk.

Every node of a training job computes its :class:`NodeFacts` before it joins, and compares them with
the head's (carried in the launch spec). A difference is refused before any collective operation, naming
the node and what differs: a node with another Ultralytics or torch issues mismatched collectives and
hangs until the process group's timeout, and a node with other data or code trains something else.

The data is compared by content (every file under the prepared dataset, links followed, Ultralytics'
label caches left out), not by the hash ``dvc.lock`` records, which says what was prepared, not what is
on this disk now. Hashes of unchanged files are kept in ``.cache/node-facts/files.json`` (keyed by path,
size, modification time and inode, as DVC does), so only new or changed files are read again (like
DVC, a rewrite of the same size within one tick of the file system's clock goes unseen).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stages.core.common import file_sha256, write_text
from stages.core.errors import DatasetError

log = logging.getLogger(__name__)

# Packages whose version decides what a collective sends or what a model computes.
PACKAGES = ("torch", "torchvision", "ultralytics", "numpy", "opencv-python", "opencv-python-headless")
# Files under the prepared dataset that are not data: Ultralytics' label caches (written by whoever reads first).
_NOT_DATA = (".cache", ".cache.npy")
_HASH_CACHE = Path(".cache") / "node-facts" / "files.json"


class NodeFacts(BaseModel):
    """One node's account of what it would train with."""

    host: str
    code: str  # SHA-256 over the pipeline's own source files, as this node would import them
    commit: str  # the workspace's git commit, or "none" (reported, not compared: the code hash decides)
    versions: dict[str, str]
    data: str  # SHA-256 over the prepared dataset's files (relative path and content)
    model: str  # SHA-256 of a local model file, or the bundled model YAML's name


def code_hash(package_root: Path | None = None) -> str:
    """SHA-256 over every ``.py`` file of the ``stages`` and ``flows`` packages (relative path and bytes)."""
    root = package_root or Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in ("stages", "flows"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def versions() -> dict[str, str]:
    """Python, the packages of :data:`PACKAGES` that are installed, and torch's CUDA, cuDNN and NCCL."""
    import platform

    import torch

    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    found["cuda"] = str(torch.version.cuda or "none")
    found["cudnn"] = str(torch.backends.cudnn.version() or "none") if torch.backends.cudnn.is_available() else "none"
    found["nccl"] = _nccl_version(torch)
    return found


def _nccl_version(torch: Any) -> str:
    if not torch.distributed.is_nccl_available():
        return "none"
    version = torch.cuda.nccl.version()
    return ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)


def git_commit(workspace: Path) -> str:
    """The workspace's ``HEAD`` commit, or ``none`` outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        return "none"
    return out.stdout.strip() if out.returncode == 0 else "none"


def data_hash(folder: Path, workspace: Path) -> str:
    """SHA-256 over every file under ``folder`` (relative path and content), links followed.

    Raises:
        DatasetError: When ``folder`` does not exist.
    """
    if not folder.is_dir():
        raise DatasetError(
            "no prepared dataset on this node: run 'dvc pull' and 'dvc repro prepare' here first "
            "(or share the workspace)",
            path=folder,
        )
    cache_file = workspace / _HASH_CACHE
    try:
        cache: dict[str, list[Any]] = json.loads(cache_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        cache = {}
    fresh: dict[str, list[Any]] = {}
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(_NOT_DATA))
    for path in files:
        real = os.path.realpath(path)
        stat = os.stat(real)
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        known = cache.get(real)
        sha = known[3] if known and known[:3] == key else file_sha256(Path(real))
        fresh[real] = [*key, sha]
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + sha.encode() + b"\0")
    if fresh != cache:
        write_text(cache_file, json.dumps(fresh))
    return digest.hexdigest()


def model_identity(model: str, workspace: Path) -> str:
    """A local model file's SHA-256 (``train.model`` relative to the workspace), else the name as given."""
    local = Path(model) if Path(model).is_absolute() else workspace / model
    return f"sha256:{file_sha256(local)}" if local.is_file() else model


def node_facts(workspace: Path, prepared: Path, model: str) -> NodeFacts:
    """This node's facts.

    Args:
        workspace: The node's workspace root.
        prepared: The prepared dataset folder (``paths.prepared``) on this node.
        model: ``train.model`` as configured.
    """
    return NodeFacts(
        host=socket.gethostname(),
        code=code_hash(),
        commit=git_commit(workspace),
        versions=versions(),
        data=data_hash(prepared, workspace),
        model=model_identity(model, workspace),
    )


def differences(node: NodeFacts, head: NodeFacts) -> list[str]:
    """What of ``node`` differs from ``head``, one ``what: here vs on the head`` line each."""
    found = []
    if node.code != head.code:
        found.append(
            f"pipeline code (stages/, flows/): {node.code[:12]} (commit {node.commit[:12]}) vs "
            f"{head.code[:12]} (commit {head.commit[:12]}) on the head"
        )
    for name in sorted(set(node.versions) | set(head.versions)):
        mine, theirs = node.versions.get(name, "not installed"), head.versions.get(name, "not installed")
        if mine != theirs:
            found.append(f"{name} {mine} vs {theirs} on the head")
    if node.data != head.data:
        found.append(f"prepared data on disk: {node.data[:12]} vs {head.data[:12]} on the head")
    if node.model != head.model:
        found.append(f"train.model: {node.model} vs {head.model} on the head")
    return found
