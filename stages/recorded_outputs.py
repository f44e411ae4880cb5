"""Put a stage's last good outputs back from DVC's cache after a failed run.

DVC deletes a stage's outputs before it runs the command (only persistent outputs are kept, and
those never enter the run-cache). A run that then fails would leave the workspace without the
results ``dvc.lock`` still records. Those results are in DVC's cache, so a stage can restore them
itself: ``dvc checkout`` is not an option from inside ``dvc repro``, which holds the repository lock.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from stages.data_version import dvc_lock_stage

log = logging.getLogger(__name__)


def _cached(cache_file: Path, oid: str) -> Path:
    if not cache_file.is_file():
        raise FileNotFoundError(f"object {oid} is not in DVC's cache")
    return cache_file


def _restore(odb: Any, oid: str, target: Path) -> None:
    """Copy one recorded output (a file, or a folder listed by its ``.dir`` manifest) to ``target``."""
    oid_to_path = odb.oid_to_path
    if not oid.endswith(".dir"):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_cached(Path(oid_to_path(oid)), oid), target)
        return
    manifest = json.loads(_cached(Path(oid_to_path(oid)), oid).read_text(encoding="utf-8"))
    sources = [(entry["relpath"], _cached(Path(oid_to_path(entry["md5"])), entry["md5"])) for entry in manifest]
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assembled beside the target and renamed into place: a folder is restored whole or not at all.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.restore-"))
    try:
        for relpath, source in sources:
            dest = staging / relpath
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def restore_recorded_outputs(workspace: Path, stage: str) -> list[str]:
    """Restore every output of ``stage`` that ``dvc.lock`` records and that is missing from the workspace.

    Outputs that exist are left alone (this never overwrites a file), and an output whose data is
    not in the local cache is reported and skipped.

    Args:
        workspace: The DVC workspace root.
        stage: The stage name in ``dvc.yaml``.

    Returns:
        The outputs restored, as paths relative to the workspace.
    """
    outs = [o for o in dvc_lock_stage(workspace, stage).get("outs", []) if o.get("md5")]
    if not outs:
        return []
    from dvc.repo import Repo

    with Repo(str(workspace)) as repo:
        odb = repo.cache.local
    restored = []
    for out in outs:
        target = workspace / out["path"]
        if target.exists():
            continue
        try:
            _restore(odb, out["md5"], target)
        except FileNotFoundError as exc:
            log.warning(
                "could not restore %s (%s); 'dvc checkout %s' or 'dvc pull %s' brings it back",
                out["path"],
                exc,
                stage,
                stage,
            )
            continue
        restored.append(out["path"])
    return restored
