"""Stage ``prepare``: turn the DVC-tracked input dataset into the YOLO layout training reads.

The input under ``paths.dataset`` is never modified. The output under ``paths.prepared`` holds links to
the input images (symlinks by default, so a large dataset does not double on disk), label files, a
generated ``data.yaml`` with absolute paths and no ``download`` key, and ``class_map.json`` with the
stable mapping from source class to YOLO id.

Splits: the dataset's own train/val(/test) split is kept when its ``data.yaml`` names one; otherwise
images are assigned to ``val`` by a hash of the seed and the file's path, so adding images never moves
existing ones between splits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from stages.common import stage_main, write_json, write_text
from stages.config import Params
from stages.datasets import SPLITS, iter_images, label_path_for, normalise_names
from stages.errors import DatasetError

log = logging.getLogger(__name__)

STAGE = "prepare"
# Keys a source data.yaml may hold. 'download' is refused on purpose: Ultralytics would execute it.
_ALLOWED_SOURCE_KEYS = frozenset({"path", "train", "val", "test", "names", "nc"})


class PrepareConfig(BaseModel):
    """Inputs, outputs and options of ``prepare``."""

    model_config = ConfigDict(frozen=True)

    dataset: Path
    prepared: Path
    format: Literal["yolo"] = "yolo"
    val_fraction: float = 0.2
    seed: int = 0
    link: Literal["symlink", "hardlink", "copy"] = "symlink"

    @classmethod
    def from_params(cls, params: Params, root: Path) -> PrepareConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        p = params.prepare
        return cls(
            dataset=params.paths.resolve("dataset", root),
            prepared=params.paths.resolve("prepared", root),
            format=p.format,
            val_fraction=p.val_fraction,
            seed=p.seed,
            link=p.link,
        )


class SplitSummary(BaseModel):
    """How many images and label files one split holds."""

    images: int
    labels: int


class PrepareResult(BaseModel):
    """What ``prepare`` produced."""

    data_yaml: Path
    names: list[str]
    splits: dict[str, SplitSummary]
    split_source: Literal["dataset", "hash"]
    link: str


def hash_split(relative: str, seed: int, val_fraction: float) -> str:
    """Assign a file to ``train`` or ``val`` from its relative path alone.

    The decision depends only on the seed and the path, so it is stable across runs, machines, and
    additions of other files.
    """
    digest = hashlib.sha256(f"{seed}:{relative}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if fraction < val_fraction else "train"


def _read_source_yaml(path: Path) -> dict[str, Any]:
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
    unknown = sorted(set(data) - _ALLOWED_SOURCE_KEYS)
    if unknown:
        raise DatasetError(
            f"unknown key(s) {unknown}; allowed: {sorted(_ALLOWED_SOURCE_KEYS)}",
            stage=STAGE,
            path=path,
            key=unknown[0],
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
    base = dataset / data["path"] if data.get("path") else dataset
    folder = (base / value).resolve()
    if dataset.resolve() not in (folder, *folder.parents):
        raise DatasetError(f"'{split}: {value}' points outside the dataset folder", stage=STAGE, path=source, key=split)
    if not folder.is_dir():
        raise DatasetError(f"'{split}' folder {folder} does not exist", stage=STAGE, path=source, key=split)
    if "images" not in folder.relative_to(dataset.resolve()).parts:
        raise DatasetError(
            f"'{split}: {value}' must lie under an 'images' folder (labels are found by replacing it with 'labels')",
            stage=STAGE,
            path=source,
            key=split,
        )
    return folder


def _labels_folder(images_folder: Path, dataset: Path) -> Path:
    rel = images_folder.relative_to(dataset.resolve())
    parts = list(rel.parts)
    parts[parts.index("images")] = "labels"
    return dataset.resolve().joinpath(*parts)


class _Linker:
    """Creates links, falling back to copies (once announced) where the filesystem refuses links."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.used = mode

    def __call__(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.used == "symlink":
            try:
                os.symlink(os.path.relpath(source, target.parent), target)
                return
            except OSError as exc:
                log.warning("symlinks are not available here (%s); copying files instead", exc)
                self.used = "copy"
        if self.used == "hardlink":
            try:
                os.link(source, target)
                return
            except OSError as exc:
                log.warning("hard links are not available here (%s); copying files instead", exc)
                self.used = "copy"
        shutil.copy2(source, target)


def run(cfg: PrepareConfig) -> PrepareResult:
    """Build ``cfg.prepared`` from ``cfg.dataset``.

    Args:
        cfg: Paths and options.

    Returns:
        A summary of the prepared dataset.

    Raises:
        DatasetError: When the dataset is missing, malformed, or not of the configured format.
    """
    if not cfg.dataset.is_dir():
        raise DatasetError(
            "dataset folder not found: run 'make sample-data' or put your dataset there",
            stage=STAGE,
            path=cfg.dataset,
        )
    source_yaml = cfg.dataset / "data.yaml"
    data = _read_source_yaml(source_yaml)
    names = normalise_names(data["names"], source=source_yaml)
    if "nc" in data and data["nc"] != len(names):
        raise DatasetError(f"'nc: {data['nc']}' but {len(names)} names", stage=STAGE, path=source_yaml, key="nc")

    folders = {s: _split_folder(cfg.dataset, data, s, source_yaml) for s in SPLITS}
    if folders["train"] is None:
        raise DatasetError("'train' is missing", stage=STAGE, path=source_yaml, key="train")

    # (split, image in dataset, label in dataset, relative path under the split) for every image.
    plan: list[tuple[str, Path, Path, Path]] = []
    # Label files with no image: carried over so that 'validate' reports them.
    orphans: list[tuple[str, Path, Path]] = []
    split_source: Literal["dataset", "hash"] = "dataset" if folders["val"] is not None else "hash"
    for split, folder in folders.items():
        if folder is None:
            continue
        labels = _labels_folder(folder, cfg.dataset)
        expected = set()
        for image in iter_images(folder):
            rel = image.relative_to(folder)
            target = split if split_source == "dataset" else hash_split(rel.as_posix(), cfg.seed, cfg.val_fraction)
            label = label_path_for(image, folder, labels)
            expected.add(label)
            plan.append((target, image, label, rel))
        for label in sorted(labels.rglob("*.txt")) if labels.is_dir() else []:
            if label not in expected:
                rel = label.relative_to(labels)
                target = split if split_source == "dataset" else hash_split(rel.as_posix(), cfg.seed, cfg.val_fraction)
                orphans.append((target, label, rel))

    if cfg.prepared.exists():
        shutil.rmtree(cfg.prepared)
    link = _Linker(cfg.link)
    counts: dict[str, SplitSummary] = {}
    for split, image, label, rel in plan:
        link(image, cfg.prepared / "images" / split / rel)
        has_label = label.is_file()
        if has_label:
            link(label, (cfg.prepared / "labels" / split / rel).with_suffix(".txt"))
        current = counts.get(split, SplitSummary(images=0, labels=0))
        counts[split] = SplitSummary(images=current.images + 1, labels=current.labels + int(has_label))
    for split, label, rel in orphans:
        link(label, cfg.prepared / "labels" / split / rel)
    for split in counts:
        (cfg.prepared / "labels" / split).mkdir(parents=True, exist_ok=True)

    prepared_yaml = cfg.prepared / "data.yaml"
    out: dict[str, Any] = {"path": str(cfg.prepared.resolve())}
    for split in SPLITS:
        if split in counts:
            out[split] = f"images/{split}"
    out["names"] = dict(enumerate(names))
    write_text(prepared_yaml, yaml.safe_dump(out, sort_keys=False))
    write_json(
        cfg.prepared / "class_map.json",
        {
            "source_format": cfg.format,
            "classes": [{"id": i, "name": n, "source": n} for i, n in enumerate(names)],
        },
    )
    result = PrepareResult(
        data_yaml=prepared_yaml, names=names, splits=counts, split_source=split_source, link=link.used
    )
    log.info(
        "prepared %s (%s split, %s): %s",
        cfg.prepared,
        split_source,
        link.used,
        ", ".join(f"{s} {c.images} images/{c.labels} labels" for s, c in counts.items()),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, PrepareConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
