"""``paths.prepared`` as the only place ``prepare`` writes, and how it splits a dataset without one.

- :func:`hash_split`: ``train`` or ``val`` from a file's relative path and the seed alone;
- :func:`checked_target`: a target checked to lie inside ``paths.prepared`` (lexically and through links);
- :class:`PreparedFolder`: every write checked, nothing replaced, links falling back to copies;
- :func:`empty_output`: the folder emptied, deleting only what an earlier ``prepare`` wrote.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Set as AbstractSet
from pathlib import Path

from stages.core.common import write_text
from stages.core.errors import DatasetError
from stages.data.datasets import LABEL_SOURCES, SOURCE_PROBLEMS, is_under

log = logging.getLogger(__name__)

STAGE = "prepare"


def hash_split(relative: str, seed: int, val_fraction: float) -> str:
    """Assign a file to ``train`` or ``val`` from its relative path alone.

    The decision depends only on the seed and the path, so it is stable across runs, machines, and
    additions of other files.
    """
    # surrogateescape: a file name that is not UTF-8 hashes as its raw bytes (valid names are unchanged).
    digest = hashlib.sha256(f"{seed}:{relative}".encode("utf-8", "surrogateescape")).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if fraction < val_fraction else "train"


# What ``prepare`` writes at the top of ``paths.prepared``; a folder holding anything else is not emptied.
_OWN_ENTRIES = frozenset({"images", "labels", "data.yaml", "class_map.json", LABEL_SOURCES, SOURCE_PROBLEMS})


def checked_target(prepared: Path, target: Path, folders: AbstractSet[str] = frozenset()) -> Path:
    """``target``, once it is sure that creating it writes inside ``prepared``.

    Checked lexically (no ``..`` out) and through the links of the folders that already exist on the
    way, so neither a crafted name nor a planted link sends a write elsewhere.

    Args:
        prepared: The output folder.
        target: The file about to be created.
        folders: Folders already known to be real folders inside ``prepared`` (spares the link check).

    Raises:
        DatasetError: When ``target`` would land outside ``prepared``; names the path.
    """
    root = os.path.abspath(prepared)
    path = os.path.normpath(os.path.abspath(target))
    parent = os.path.dirname(path)
    inside = is_under(path, root) and path != root
    if not inside or (parent not in folders and not is_under(os.path.realpath(parent), os.path.realpath(root))):
        raise DatasetError(
            f"refusing to write {path}: it lies outside paths.prepared ({root})", stage=STAGE, path=target
        )
    return Path(path)


class PreparedFolder:
    """``paths.prepared`` as the only place ``prepare`` writes: every target checked, nothing replaced.

    Links fall back to copies (announced once) where the filesystem refuses them.
    """

    def __init__(self, prepared: Path, mode: str) -> None:
        self.root = os.path.abspath(prepared)
        self.folders: set[str] = {self.root}  # folders made here: real folders inside, never links
        self.used = mode

    def target(self, path: Path) -> Path:
        """``path`` checked with :func:`checked_target`."""
        return checked_target(Path(self.root), path, self.folders)

    def free(self, *targets: Path) -> bool:
        """Whether creating ``targets`` replaces nothing: no file, link or file where a folder goes."""
        for target in targets:
            if os.path.lexists(target):
                return False
            parent = os.path.dirname(target)
            while parent not in self.folders and is_under(parent, self.root):
                if os.path.lexists(parent) and (os.path.islink(parent) or not os.path.isdir(parent)):
                    return False
                parent = os.path.dirname(parent)
        return True

    def folder(self, path: Path) -> None:
        """Make the folder ``path`` (checked) and its parents."""
        folder = os.fspath(path)
        if folder not in self.folders:
            os.makedirs(self.target(path), exist_ok=True)
            while folder not in self.folders and is_under(folder, self.root):
                self.folders.add(folder)
                folder = os.path.dirname(folder)

    def write(self, target: Path, text: str) -> None:
        """Write one of ``prepare``'s own files (atomically)."""
        target = self.target(target)
        self.folder(target.parent)
        write_text(target, text)

    def link(self, source: Path, target: Path) -> None:
        """Link (or copy) ``source`` to ``target``; callers check :meth:`free` first."""
        target = self.target(target)
        self.folder(target.parent)
        if self.used == "symlink":
            try:
                os.symlink(os.path.relpath(source, target.parent), target)
                return
            except FileExistsError:
                raise  # never replaced
            except OSError as exc:
                log.warning("symlinks are not available here (%s); copying files instead", exc)
                self.used = "copy"
        if self.used == "hardlink":
            try:
                os.link(source, target)
                return
            except FileExistsError:
                raise
            except OSError as exc:
                log.warning("hard links are not available here (%s); copying files instead", exc)
                self.used = "copy"
        with source.open("rb") as src, target.open("xb") as dst:  # "x": fails rather than overwrite
            shutil.copyfileobj(src, dst)
        shutil.copystat(source, target)


def empty_output(prepared_path: Path, dataset_path: Path) -> None:
    """Make ``prepared_path`` an empty folder, deleting only what an earlier ``prepare`` wrote there.

    Raises:
        DatasetError: When ``paths.prepared`` and ``paths.dataset`` overlap, or the folder holds
            anything ``prepare`` does not write.
    """
    prepared, dataset = os.path.realpath(prepared_path), os.path.realpath(dataset_path)
    if is_under(prepared, dataset) or is_under(dataset, prepared):
        raise DatasetError(
            f"paths.prepared ({prepared}) and paths.dataset ({dataset}) overlap: preparing would delete or "
            "write into the input",
            stage=STAGE,
            key="paths.prepared",
        )
    if os.path.lexists(prepared_path):
        foreign = sorted(p.name for p in prepared_path.iterdir() if p.name not in _OWN_ENTRIES)
        if foreign or prepared_path.is_symlink():
            raise DatasetError(
                f"holds {foreign[:5] or 'a link'} that 'prepare' did not write; move them away or pick another "
                "paths.prepared",
                stage=STAGE,
                path=prepared_path,
                key="paths.prepared",
            )
        shutil.rmtree(prepared_path)
    prepared_path.mkdir(parents=True)
