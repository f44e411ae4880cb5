"""Put a stage's last good outputs back from DVC's cache after a failed run.

DVC deletes a stage's outputs before it runs the command (only persistent outputs are kept, and
those never enter the run-cache). A run that then fails would leave the workspace without the
results ``dvc.lock`` still records. Those results are in DVC's cache, so a stage can restore them
itself: ``dvc checkout`` is not an option from inside ``dvc repro``, which holds the repository lock.

Each file is put back as a hard link to its cache object, which needs no space: a run that failed for
lack of space still gets its last good outputs back (a copy is made only where a link cannot be, the
cache on another filesystem). A linked file shares its data with DVC's cache, so it must be replaced,
never written in place: every writer of the train stage's outputs writes aside and renames, and DVC
deletes outputs before running a stage. The names a folder's manifest lists are checked to stay
inside that folder, and the outputs ``dvc.lock`` lists to stay inside the workspace.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from stages.core.data_version import dvc_lock_stage

log = logging.getLogger(__name__)


def _cached(cache_file: Path, oid: str) -> Path:
    if not cache_file.is_file():
        raise FileNotFoundError(f"object {oid} is not in DVC's cache")
    return cache_file


def _contained(base: Path, relpath: str, what: str) -> Path:
    """``base / relpath`` when ``relpath`` is a plain relative path that stays inside ``base``.

    Raises:
        ValueError: For an absolute path, one with ``..`` or an empty one (a manifest or ``dvc.lock``
            written by someone else), naming ``what`` holds it.
    """
    parts = Path(relpath).parts
    if not relpath or Path(relpath).is_absolute() or ".." in parts or not parts:
        raise ValueError(f"{what} lists {relpath!r}, which does not stay inside {base}")
    return base / relpath


def _place(source: Path, dest: Path) -> None:
    """``dest`` as a hard link to the cache object ``source`` (no space needed), else as a copy."""
    try:
        os.link(source, dest)
    except OSError as error:
        # Another filesystem (EXDEV), links not allowed (EPERM, ENOTSUP) or too many of them (EMLINK).
        if error.errno not in {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK}:
            raise
        shutil.copyfile(source, dest)


def _restore(odb: Any, oid: str, target: Path) -> None:
    """Put back one recorded output (a file, or a folder listed by its ``.dir`` manifest) at ``target``."""
    oid_to_path = odb.oid_to_path
    if not oid.endswith(".dir"):
        target.parent.mkdir(parents=True, exist_ok=True)
        source = _cached(Path(oid_to_path(oid)), oid)
        partial = target.parent / f".{target.name}.restore-{os.getpid()}"
        try:  # placed aside and renamed: the file is back whole or not at all
            _place(source, partial)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return
    manifest = json.loads(_cached(Path(oid_to_path(oid)), oid).read_text(encoding="utf-8"))
    sources = [(entry["relpath"], _cached(Path(oid_to_path(entry["md5"])), entry["md5"])) for entry in manifest]
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assembled beside the target and renamed into place: a folder is restored whole or not at all.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.restore-"))
    try:
        for relpath, source in sources:
            dest = _contained(staging, relpath, f"the manifest {oid} of {target.name}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.parent.resolve().is_relative_to(staging.resolve()):
                raise ValueError(f"the manifest {oid} of {target.name} leads {relpath!r} out of the folder")
            _place(source, dest)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _free_space(path: Path) -> str:
    """How much space is left on the filesystem of ``path`` (or why that is unknown), for messages."""
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB free in {path}"
    except OSError as error:
        return f"free space in {path} unknown ({error.strerror})"


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
    # Files first: the model is back even if a folder cannot be.
    for out in sorted(outs, key=lambda o: str(o["md5"]).endswith(".dir")):
        try:
            target = _contained(workspace, out["path"], f"dvc.lock (stage {stage})")
            if target.exists():
                continue
            _restore(odb, out["md5"], target)
        except (FileNotFoundError, ValueError) as exc:
            log.warning(
                "could not restore %s (%s); 'dvc checkout %s' or 'dvc pull %s' brings it back",
                out["path"],
                exc,
                stage,
                stage,
            )
            continue
        except OSError as exc:  # a copy on a full disk (a link needs no space)
            log.warning(
                "could not restore %s (%s; %s); 'dvc checkout %s' brings it back once there is space",
                out["path"],
                exc.strerror or exc,
                _free_space(workspace),
                stage,
            )
            continue
        restored.append(out["path"])
    return restored
