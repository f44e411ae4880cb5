"""The new production folder, assembled beside the old one before the swap, and its ``metadata.json``."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stages.core.common import file_sha256, git_commit, write_json
from stages.deploy.targets import TARGETS
from stages.promotion.lineage import Lineage
from stages.promotion.outcome import PromotionCheck


def digests(paths: dict[str, Path]) -> dict[str, str]:
    """The SHA-256 of each file that exists, by name."""
    return {name: file_sha256(path) for name, path in paths.items() if path.is_file()}


def assemble(
    staging: Path, files: dict[str, Path], deploy: dict[str, Any], deploy_dir: Path, engine: Path | None
) -> None:
    """Copy the candidate into a fresh ``staging`` folder.

    Args:
        staging: The folder to fill (emptied first).
        files: Name in production -> file in the workspace; all are copied.
        deploy: The candidate's ``metrics/deploy.json``: the other deploy artifacts go only where deployable.
        deploy_dir: Where the deploy artifacts are.
        engine: The TensorRT engine when it is deployable (it goes with its ``.json`` sidecar), else ``None``.
    """
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy2(source, staging / name)
    for name, numbers in deploy.items():  # the other deploy artifacts, only those that are deployable
        if name in TARGETS and name != "onnx-fp32" and numbers.get("deployable"):
            for path in TARGETS[name].files(deploy_dir):
                copied = staging / path.relative_to(deploy_dir)
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copied)
    if engine is not None:
        for path in (engine, engine.with_name(engine.name + ".json")):  # the engine and its sidecar
            shutil.copy2(path, staging / path.name)


def write_metadata(
    staging: Path,
    version: int,
    data_version: str,
    workspace: Path,
    evaluate: dict[str, Any],
    checks: list[PromotionCheck],
    lineage: Lineage,
) -> None:
    """Write ``metadata.json`` into the assembled folder.

    It holds the version, its origin (data and code versions), its class names and production line,
    its metrics and checks, and every file's digest.
    """
    metadata = {
        "version": version,
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_version": data_version,
        # What the ids mean: the next candidate must detect the same classes, or start a new line.
        "classes": lineage.classes,
        "line": lineage.model_dump(exclude={"classes"}),
        "code_version": git_commit(workspace),
        "metrics": {k: evaluate[k] for k in ("map50", "map50_95", "precision", "recall")},
        "checks": [c.model_dump() for c in checks],
        "files": {p.relative_to(staging).as_posix(): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()},
    }
    write_json(staging / "metadata.json", metadata)
