"""Restoring a stage's last good outputs from DVC's cache (issue 21, items 5 and 10).

A folder's manifest and ``dvc.lock`` come from the cache and the repository, which others write: their
entries must stay inside the folder and the workspace. The restore links each file to its cache
object, so a run that failed for lack of space gets its model back without needing any.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.core.recorded_outputs import restore_recorded_outputs

MODEL = b"the last good model"


def _object(workspace: Path, data: bytes, suffix: str = "") -> str:
    """Put ``data`` into the workspace's DVC cache; returns its oid (md5, and ``.dir`` for a manifest)."""
    from dvc.repo import Repo

    md5 = hashlib.md5(data).hexdigest() + suffix
    with Repo(str(workspace)) as repo:
        path = Path(repo.cache.local.oid_to_path(md5))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o444)  # as DVC keeps its cache objects
    return md5


def _folder(workspace: Path, files: dict[str, bytes]) -> str:
    """A folder's ``.dir`` manifest in the cache (its files too); returns the manifest's oid."""
    entries = [{"md5": _object(workspace, data), "relpath": name} for name, data in files.items()]
    return _object(workspace, json.dumps(entries).encode(), ".dir")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    from dvc.repo import Repo

    root = tmp_path / "ws"
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    return root


def _lock(workspace: Path, outs: list[dict[str, Any]]) -> None:
    (workspace / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": {"outs": outs}}}))


def test_a_file_and_a_folder_come_back_and_the_file_is_a_link_to_the_cache(workspace: Path):
    md5 = _object(workspace, MODEL)
    _lock(
        workspace,
        [
            {"path": "models/train", "md5": _folder(workspace, {"results.csv": b"epoch\n1\n", "sub/args.yaml": b"a"})},
            {"path": "models/best.pt", "md5": md5},
        ],
    )
    assert restore_recorded_outputs(workspace, "train") == ["models/best.pt", "models/train"]
    best = workspace / "models" / "best.pt"
    assert best.read_bytes() == MODEL
    from dvc.repo import Repo

    with Repo(str(workspace)) as repo:
        cached = Path(repo.cache.local.oid_to_path(md5))
    assert best.stat().st_ino == cached.stat().st_ino, "a link to the cache object: no space needed"
    assert (workspace / "models" / "train" / "sub" / "args.yaml").read_bytes() == b"a"
    assert sorted(p.name for p in (workspace / "models").iterdir()) == ["best.pt", "train"]


@pytest.mark.parametrize("relpath", ["../escape", "sub/../../escape", "ABSOLUTE"])
def test_a_manifest_entry_leading_out_of_the_folder_is_refused(workspace: Path, relpath: str, caplog):
    absolute = workspace.parent / "escape-abs"
    relpath = str(absolute) if relpath == "ABSOLUTE" else relpath
    md5 = _object(workspace, MODEL)
    oid = _folder(workspace, {"results.csv": b"ok", relpath: b"planted"})
    _lock(workspace, [{"path": "models/train", "md5": oid}, {"path": "models/best.pt", "md5": md5}])
    with caplog.at_level(logging.WARNING):
        assert restore_recorded_outputs(workspace, "train") == ["models/best.pt"]
    assert "does not stay inside" in caplog.text
    assert not (workspace / "models" / "escape").exists() and not (workspace / "models" / "train").exists()
    assert not absolute.exists()
    assert [p.name for p in (workspace / "models").iterdir()] == ["best.pt"], "no staging folder left"


def test_a_lock_entry_outside_the_workspace_is_refused(workspace: Path, caplog):
    _lock(workspace, [{"path": "../outside.pt", "md5": _object(workspace, MODEL)}])
    with caplog.at_level(logging.WARNING):
        assert restore_recorded_outputs(workspace, "train") == []
    assert not (workspace.parent / "outside.pt").exists()


def test_on_a_full_disk_the_model_comes_back_by_link(workspace: Path, monkeypatch):
    """Every copy fails for lack of space (as on the full disk of issue 21): links need none."""

    def no_space(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", no_space)
    _lock(workspace, [{"path": "models/best.pt", "md5": _object(workspace, MODEL)}])
    assert restore_recorded_outputs(workspace, "train") == ["models/best.pt"]
    assert (workspace / "models" / "best.pt").read_bytes() == MODEL


def test_where_only_a_copy_can_be_made_a_full_disk_is_reported_and_leaves_nothing_half(workspace: Path, monkeypatch):
    import os

    def other_filesystem(*_args: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def half_then_no_space(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        Path(dst).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", other_filesystem)
    monkeypatch.setattr(shutil, "copyfile", half_then_no_space)
    _lock(
        workspace,
        [
            {"path": "models/best.pt", "md5": _object(workspace, MODEL)},
            {"path": "models/train", "md5": _folder(workspace, {"results.csv": b"x"})},
        ],
    )
    assert restore_recorded_outputs(workspace, "train") == []
    assert list((workspace / "models").iterdir()) == [], "no partial file or staging folder"
