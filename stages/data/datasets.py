"""The YOLO dataset layout shared by ``prepare``, ``validate`` and the training stages."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from stages.core.errors import DatasetError

# The image suffixes Ultralytics trains on (lower case).
IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
# Files ``prepare`` writes beside the prepared data.yaml for ``validate``.
LABEL_SOURCES = "label_sources.json"  # converted label file -> source annotation file, lines, refs
SOURCE_PROBLEMS = "source_problems.json"  # problems met while reading VOC/COCO annotations


# A drive (``C:``), a UNC share or any backslash: Windows paths, hostile on every OS (on Windows a
# backslash is a separator, so ``..\x`` climbs; on POSIX it names a file nobody meant).
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:|\\")


class OutsideDataset(ValueError):
    """A path named by a dataset file leaves the dataset folder (or cannot name a file in it)."""


def quoted(value: object) -> str:
    """``value`` for a message, cut short: a hostile file may hold megabytes in one field."""
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def is_under(path: str, folder: str) -> bool:
    """Whether the normalised absolute ``path`` is ``folder`` or lies inside it (string test, no I/O)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class DatasetRoot:
    """The folder of an untrusted dataset: every path the dataset names must stay inside it.

    Every format reader resolves the paths its files name (COCO ``file_name``, VOC ``filename``,
    YOLO ``data.yaml`` folders) through :meth:`named`, and checks the files it takes through
    :meth:`contains`, so no value and no link in a dataset makes a stage read outside it.

    Args:
        root: The dataset folder.
    """

    def __init__(self, root: Path) -> None:
        self.given = os.path.abspath(root)  # paths built from the caller's spelling of the folder
        self.root = Path(os.path.realpath(root))
        self._inside: set[str] = set()  # folders whose real path is known to lie inside

    def named(self, value: object, base: Path | None = None) -> Path:
        """The path ``value`` names, relative to ``base`` (default: the dataset folder).

        Returns:
            The path, normalised (no ``..``) and inside the dataset folder; links not resolved, so
            names stay the dataset's own.

        Raises:
            OutsideDataset: When ``value`` is not a relative path (absolute, a drive letter, a UNC
                share, any backslash, a NUL, not text), climbs out with ``..``, or resolves through
                a link to a place outside the dataset folder. The message quotes ``value``.
        """
        if not isinstance(value, str) or not value:
            raise OutsideDataset(f"{quoted(value)} is not a relative path")
        if "\0" in value or _WINDOWS_PATH.search(value):
            raise OutsideDataset(f"{quoted(value)} is not a relative POSIX path (drive, UNC, backslash or NUL)")
        if os.path.isabs(value):
            raise OutsideDataset(f"{quoted(value)} is absolute; name files relative to the dataset folder")
        try:
            os.fsencode(value)
        except UnicodeError:
            raise OutsideDataset(f"{quoted(value)} cannot be a file name here (not encodable)") from None
        joined = os.path.normpath(os.path.join(os.path.abspath(base if base is not None else self.root), value))
        if not (is_under(joined, str(self.root)) or is_under(joined, self.given)):
            raise OutsideDataset(f"{quoted(value)} leaves the dataset folder")
        return self.contains(Path(joined), value)

    def contains(self, path: Path, value: object = None) -> Path:
        """``path`` itself, when it and the target of any link on its way lie inside the dataset folder.

        Args:
            path: A path inside the dataset folder (as listed or as returned by :meth:`named`).
            value: What the dataset wrote, quoted in the error instead of ``path``.

        Raises:
            OutsideDataset: When a link takes ``path`` outside the dataset folder.
        """
        parent = os.path.dirname(os.path.abspath(path))
        if parent in self._inside and not os.path.islink(path):  # one lstat instead of a realpath per file
            return path
        real = os.path.realpath(path)
        if not is_under(real, str(self.root)):
            shown = quoted(value) if value is not None else path.name
            raise OutsideDataset(f"{shown} resolves to {real}, outside the dataset folder (links must stay inside)")
        if is_under(os.path.realpath(parent), str(self.root)):
            self._inside.add(parent)
        return path


def printable(path: str) -> str:
    """``path`` as text any report can hold: bytes of a name that is not UTF-8 shown as ``\\xNN``.

    On POSIX a file name is bytes; Python keeps undecodable ones as lone surrogates, which no UTF-8
    file (validate.md, JSON read elsewhere) can hold.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_file(path: Path) -> bool:
    """Whether ``path`` is a file; ``False`` (never an exception) for names the OS cannot look up."""
    try:
        return path.is_file()
    except (OSError, ValueError):  # e.g. a name too long for the filesystem (pathlib raises on those)
        return False


def is_dir(path: Path) -> bool:
    """Whether ``path`` is a folder; ``False`` (never an exception) for names the OS cannot look up."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


class ImageTooLarge(ValueError):
    """An image's header declares more pixels than allowed; carries its size."""

    def __init__(self, width: int, height: int, limit: int) -> None:
        self.width, self.height, self.limit = width, height, limit
        super().__init__(f"{width}x{height} = {width * height} pixels, over the limit of {limit}")


def open_image(source: Path | IO[bytes], max_pixels: int) -> Any:
    """Open an image reading only its header, refusing one with more than ``max_pixels`` pixels.

    PIL's own decompression-bomb check is off for this open: it would refuse without saying the size,
    and the size is compared here before anything is decoded. Not thread-safe (the check is a PIL
    global); stages check images in processes, one at a time.

    Returns:
        The open ``PIL.Image.Image`` (a context manager), nothing decoded yet.

    Raises:
        ImageTooLarge: When ``width * height > max_pixels``.
        Exception: Whatever PIL raises for data it cannot identify.
    """
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        image = Image.open(source)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(width, height, max_pixels)
    return image


def iter_images(folder: Path, within: Path | None = None, outside: list[Path] | None = None) -> Iterator[Path]:
    """Every image file under ``folder`` (recursively), in a stable sorted order.

    Links to folders are followed, each real folder once, so a link loop ends. With ``within``, a
    linked folder whose target leaves ``within`` is not entered (a link to ``/`` would otherwise list
    the whole disk); such links are appended to ``outside`` for the caller to report.
    """
    boundary = os.path.realpath(within) if within is not None else None
    seen: set[str] = set()
    found = []
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if boundary is not None:
            for name in list(dirs):
                if not is_under(os.path.realpath(os.path.join(dirpath, name)), boundary):
                    dirs.remove(name)
                    if outside is not None:
                        outside.append(Path(dirpath) / name)
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return iter(sorted(found))


def label_path_for(image: Path, images_root: Path, labels_root: Path) -> Path:
    """The label file of ``image``: same relative path under ``labels_root``, with a ``.txt`` suffix."""
    return (labels_root / image.relative_to(images_root)).with_suffix(".txt")


def _class_id(key: object) -> int | None:
    """A class id from a ``names`` key: an int, or a short digit string (``int()`` of 5000 digits raises)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and re.fullmatch(r"\s*[0-9]{1,9}\s*", key):
        return int(key)
    return None


def normalise_names(names: Any, *, source: Path) -> list[str]:
    """Class names as a list indexed by class id.

    Accepts a list, or a mapping of contiguous integer ids from 0 to names.

    Raises:
        DatasetError: When the names are missing, not contiguous or not strings.
    """
    if isinstance(names, list):
        result = names
    elif isinstance(names, dict):
        by_id = {}
        for key, name in names.items():
            class_id = _class_id(key)
            if class_id is None:
                raise DatasetError("class ids under 'names' must be integers", path=source, key="names")
            by_id[class_id] = name
        ids = sorted(by_id)
        if ids != list(range(len(names))):
            shown = ids if len(ids) <= 20 else [*ids[:20], "..."]
            raise DatasetError(
                f"class ids must run 0..{len(names) - 1} without gaps or repeats, got {shown}",
                path=source,
                key="names",
            )
        result = [by_id[k] for k in ids]
    else:
        raise DatasetError("'names' must be a list or a mapping of id to name", path=source, key="names")
    if not result:
        raise DatasetError("'names' is empty: the dataset must declare at least one class", path=source, key="names")
    if not all(isinstance(n, str) and n.strip() for n in result):
        raise DatasetError("every class name must be a non-empty string", path=source, key="names")
    if len(set(result)) != len(result):
        raise DatasetError("class names must be unique", path=source, key="names")
    return [str(n) for n in result]


def read_prepared_yaml(path: Path) -> dict[str, Any]:
    """Read the ``data.yaml`` written by ``prepare`` (split folders and names, relative to its folder).

    Returns:
        Its content, with ``path`` set to the folder it is in now: the file names no absolute path, so
        a workspace that was moved or copied keeps working (Ultralytics, given the file's absolute
        path, resolves it the same way).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError("prepared data.yaml is missing; run the 'prepare' stage first", path=path) from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError("not a prepared data.yaml (no 'names')", path=path)
    if "path" in data:  # written by an older prepare, which pinned the workspace's absolute path
        raise DatasetError("written by an older version of 'prepare'; run 'dvc repro --force prepare'", path=path)
    data["path"] = str(path.parent.resolve())
    data["names"] = normalise_names(data["names"], source=path)
    return data


def split_dirs(data: dict[str, Any]) -> dict[str, tuple[Path, Path]]:
    """Map each split in a prepared ``data.yaml`` to its (images folder, labels folder)."""
    root = Path(data["path"])
    result = {}
    for split in SPLITS:
        if data.get(split):
            images = root / data[split]
            labels = root / Path(data[split].replace("images", "labels", 1))
            result[split] = (images, labels)
    return result
