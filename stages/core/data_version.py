"""The version of the input dataset: DVC's own hash of it, and whether it differs from production's.

``python -m stages.core.data_version`` prints the dataset's hash next to the one the production model was
trained on, and exits 0 when they differ (retraining is due), 10 when they are the same, 1 on error.
CI and the Prefect flow call it to skip a retrain when the data has not changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stages.core.common import configure_logging, read_json
from stages.core.config import DEFAULT_PARAMS, load_params
from stages.core.errors import DatasetError, PipelineError

UNCHANGED_EXIT = 10


class DataVersion(BaseModel):
    """DVC's hash of a dataset folder (``<md5>.dir``), with its size."""

    md5: str
    nfiles: int
    size: int


class RecordedVersion(DataVersion):
    """A dataset version as DVC recorded it, and where it was read."""

    source: str


class DataCheck(BaseModel):
    """The dataset's version next to production's."""

    changed: bool
    current: DataVersion
    production: str | None
    reason: str


def folder_version(workspace: Path, folder: str) -> DataVersion:
    """Hash ``folder`` the way ``dvc add`` would, writing nothing (DVC's state cache makes reruns fast).

    Args:
        workspace: The DVC workspace root.
        folder: The folder, relative to ``workspace`` (the dataset, or the production model).

    Raises:
        DatasetError: When the folder is missing or the workspace is not a DVC project.
    """
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    path = workspace / folder
    if not path.is_dir():
        raise DatasetError("folder not found", path=path)
    try:
        repo = Repo(str(workspace))
    except NotDvcRepoError:
        raise DatasetError("not a DVC workspace (no .dvc folder): run 'dvc init'", path=workspace) from None
    with repo:
        _odb, meta, obj = build(repo.cache.local, str(path), repo.fs, "md5", ignore=repo.dvcignore, dry_run=True)
    return DataVersion(md5=obj.hash_info.value, nfiles=meta.nfiles or 0, size=meta.size or 0)


def dvc_file_version(workspace: Path, folder: str) -> RecordedVersion | None:
    """The version ``<folder>.dvc`` records (what ``dvc add`` saw), or ``None`` without that file."""
    dvc_file = workspace / f"{folder}.dvc"
    if not dvc_file.is_file():
        return None
    outs = (load_as_dvc(dvc_file) or {}).get("outs", [])
    if not outs or not outs[0].get("md5"):
        return None
    out = outs[0]
    return RecordedVersion(md5=out["md5"], nfiles=out.get("nfiles", 0), size=out.get("size", 0), source=f"{folder}.dvc")


def load_as_dvc(path: Path) -> Any:
    """A YAML file (``dvc.lock``, a ``.dvc`` file, ``params.yaml``) parsed as DVC parses it, or ``None``
    where it does not exist.

    YAML 1.2 through ruamel, DVC's own YAML library (installed with it): ``1e-3`` is a number there and a
    string for PyYAML's YAML 1.1, and ``on``/``no`` are strings, not booleans; so a value reads as DVC
    recorded and compares it. ``dvc.lock`` and the dataset's pointer are read through here;
    ``params.yaml`` and ``dvc.yaml``, the project's own files, keep PyYAML (the params models coerce values).
    """
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(path.read_text(encoding="utf-8")) if path.is_file() else None


def dvc_lock_stage(workspace: Path, stage: str) -> dict[str, Any]:
    """A stage's entry in ``dvc.lock`` (deps, params and outs as DVC recorded them), empty when there is none."""
    lock = load_as_dvc(workspace / "dvc.lock") or {}
    return (lock.get("stages") or {}).get(stage) or {}


def production_metadata(production: Path) -> dict[str, Any] | None:
    """Production's ``metadata.json`` (written by ``stages.promote``), or ``None`` when there is none."""
    return read_json(production / "metadata.json", default=None)


def recorded_data_version(workspace: Path, dataset: str) -> RecordedVersion | None:
    """The dataset version the pipeline last ran on, as DVC recorded it.

    ``dvc.lock`` holds the hash of every stage dependency as DVC saw it when the stage ran, so the
    ``prepare`` entry is the exact version used. Outside a DVC run, the dataset's ``.dvc`` file is used.
    """
    for dep in dvc_lock_stage(workspace, "prepare").get("deps", []):
        if dep.get("path") == dataset and dep.get("md5"):
            return RecordedVersion(
                md5=dep["md5"], nfiles=dep.get("nfiles", 0), size=dep.get("size", 0), source="dvc.lock"
            )
    return dvc_file_version(workspace, dataset)


def production_data_version(production: Path) -> str | None:
    """The dataset hash the production model was trained on, or ``None`` when there is none."""
    metadata = production_metadata(production)
    return metadata["data_version"] if metadata else None


def check(workspace: Path, dataset: str, production: Path) -> DataCheck:
    """Compare the dataset's current version with production's."""
    current = folder_version(workspace, dataset)
    trained_on = production_data_version(production)
    if trained_on is None:
        reason = "no production model yet"
    elif trained_on == current.md5:
        reason = f"dataset unchanged since the production model was trained ({current.md5})"
    else:
        reason = f"dataset changed: {trained_on} -> {current.md5}"
    return DataCheck(changed=trained_on != current.md5, current=current, production=trained_on, reason=reason)


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 when the data changed since production, 10 when not, 1 on error."""
    parser = argparse.ArgumentParser(prog="python -m stages.core.data_version", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        params = load_params(args.params)
        root = args.params.resolve().parent
        result = check(root, params.paths.dataset, params.paths.resolve("production", root))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.model_dump(mode="json")))
    print(result.reason, file=sys.stderr)
    return 0 if result.changed else UNCHANGED_EXIT


if __name__ == "__main__":
    sys.exit(main())
