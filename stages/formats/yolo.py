"""YOLO layout: ``data.yaml`` with class names, ``images/<split>/`` and ``labels/<split>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stages.datasets import SPLITS, iter_images, label_path_for, normalise_names
from stages.errors import DatasetError
from stages.formats.base import Entry, Source

STAGE = "prepare"
# Keys a source data.yaml may hold. 'download' is refused on purpose: Ultralytics would execute it.
ALLOWED_KEYS = frozenset({"path", "train", "val", "test", "names", "nc"})


def read_data_yaml(path: Path) -> dict[str, Any]:
    """Read a dataset's ``data.yaml``, refusing unknown keys and ``download``.

    Raises:
        DatasetError: When the file is missing, malformed, holds ``download`` or an unknown key.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(
            "a YOLO dataset needs a data.yaml with the class names ('names')", stage=STAGE, path=path
        ) from None
    except yaml.YAMLError as exc:
        raise DatasetError(f"not valid YAML: {exc}", stage=STAGE, path=path) from None
    if not isinstance(data, dict):
        raise DatasetError("data.yaml must be a mapping", stage=STAGE, path=path)
    if "download" in data:
        raise DatasetError(
            "'download' is refused: it would run code or fetch data; put the data under the dataset folder",
            stage=STAGE,
            path=path,
            key="download",
        )
    unknown = sorted(set(data) - ALLOWED_KEYS)
    if unknown:
        raise DatasetError(
            f"unknown key(s) {unknown}; allowed: {sorted(ALLOWED_KEYS)}", stage=STAGE, path=path, key=unknown[0]
        )
    if "names" not in data:
        raise DatasetError("'names' is missing", stage=STAGE, path=path, key="names")
    return data


def _split_folder(dataset: Path, data: dict[str, Any], split: str, source: Path) -> Path | None:
    value = data.get(split)
    if not value:
        return None
    if not isinstance(value, str):
        raise DatasetError(f"'{split}' must be one folder relative to the dataset", stage=STAGE, path=source, key=split)
    root = dataset.resolve()
    base = root / data["path"] if data.get("path") else root
    folder = (base / value).resolve()
    if root not in (folder, *folder.parents):
        raise DatasetError(f"'{split}: {value}' points outside the dataset folder", stage=STAGE, path=source, key=split)
    if not folder.is_dir():
        raise DatasetError(f"'{split}' folder {folder} does not exist", stage=STAGE, path=source, key=split)
    if "images" not in folder.relative_to(root).parts:
        raise DatasetError(
            f"'{split}: {value}' must lie under an 'images' folder (labels are found by replacing it with 'labels')",
            stage=STAGE,
            path=source,
            key=split,
        )
    return folder


def _labels_folder(images_folder: Path, dataset: Path) -> Path:
    parts = list(images_folder.relative_to(dataset.resolve()).parts)
    parts[parts.index("images")] = "labels"
    return dataset.resolve().joinpath(*parts)


def read_yolo(dataset: Path) -> Source:
    """Read a YOLO-layout dataset.

    Raises:
        DatasetError: When ``data.yaml`` or its split folders are wrong.
    """
    source_yaml = dataset / "data.yaml"
    data = read_data_yaml(source_yaml)
    names = normalise_names(data["names"], source=source_yaml)
    if "nc" in data and data["nc"] != len(names):
        raise DatasetError(f"'nc: {data['nc']}' but {len(names)} names", stage=STAGE, path=source_yaml, key="nc")
    folders = {s: _split_folder(dataset, data, s, source_yaml) for s in SPLITS}
    if folders["train"] is None:
        raise DatasetError("'train' is missing", stage=STAGE, path=source_yaml, key="train")
    has_val = folders["val"] is not None

    entries: list[Entry] = []
    orphans: list[tuple[str | None, Path, Path]] = []
    for split, folder in folders.items():
        if folder is None:
            continue
        target = split if has_val or split != "train" else None
        labels = _labels_folder(folder, dataset)
        expected = set()
        for image in iter_images(folder):
            label = label_path_for(image, folder, labels)
            expected.add(label)
            entries.append(
                Entry(
                    split=target, image=image, rel=image.relative_to(folder), label=label if label.is_file() else None
                )
            )
        if labels.is_dir():
            for label in sorted(labels.rglob("*.txt")):
                if label not in expected:
                    orphans.append((target, label, label.relative_to(labels)))
    return Source(format="yolo", names=names, entries=entries, orphan_labels=orphans, source_ids=list(names))
