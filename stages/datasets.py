"""The YOLO dataset layout shared by ``prepare``, ``validate`` and the training stages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from stages.errors import DatasetError

# The image suffixes Ultralytics trains on (lower case).
IMAGE_SUFFIXES = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "val", "test")
# Files ``prepare`` writes beside the prepared data.yaml for ``validate``.
LABEL_SOURCES = "label_sources.json"  # converted label file -> source annotation file, lines, refs
SOURCE_PROBLEMS = "source_problems.json"  # problems met while reading VOC/COCO annotations


def iter_images(folder: Path) -> Iterator[Path]:
    """Every image file under ``folder`` (recursively), in a stable sorted order."""
    found = []
    for dirpath, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath) / name)
    return iter(sorted(found))


def label_path_for(image: Path, images_root: Path, labels_root: Path) -> Path:
    """The label file of ``image``: same relative path under ``labels_root``, with a ``.txt`` suffix."""
    return (labels_root / image.relative_to(images_root)).with_suffix(".txt")


def normalise_names(names: Any, *, source: Path) -> list[str]:
    """Class names as a list indexed by class id.

    Accepts a list, or a mapping of contiguous integer ids from 0 to names.

    Raises:
        DatasetError: When the names are missing, not contiguous or not strings.
    """
    if isinstance(names, list):
        result = names
    elif isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DatasetError("class ids under 'names' must be integers", path=source, key="names") from None
        if ids != list(range(len(ids))):
            raise DatasetError(
                f"class ids must run 0..{len(ids) - 1} without gaps, got {ids}", path=source, key="names"
            )
        result = [names[k] if k in names else names[str(k)] for k in ids]
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
    """Read the ``data.yaml`` written by ``prepare`` (absolute ``path``, split folders, names list)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError("prepared data.yaml is missing; run the 'prepare' stage first", path=path) from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError("not a prepared data.yaml (no 'names')", path=path)
    if Path(data.get("path", "")) != path.parent.resolve():
        raise DatasetError(
            f"written for another folder ({data.get('path')}): the workspace moved; run 'dvc repro --force prepare'",
            path=path,
        )
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
