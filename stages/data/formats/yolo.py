"""YOLO layout: ``data.yaml`` with class names, ``images/<split>/`` and ``labels/<split>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stages.core.errors import DatasetError
from stages.data.datasets import (
    SPLITS,
    DatasetRoot,
    OutsideDataset,
    is_dir,
    is_file,
    iter_images,
    label_path_for,
    normalise_names,
)
from stages.data.formats.base import Entry, Source, SourceProblem, outside

STAGE = "prepare"
# Keys a source data.yaml may hold. 'download' is refused on purpose: Ultralytics would execute it.
ALLOWED_KEYS = frozenset({"path", "train", "val", "test", "names", "nc"})
# A data.yaml names a few folders and the classes: kilobytes. The limits keep a crafted one from
# costing minutes (PyYAML's scanner works per nesting level for every token) or overflowing the
# stack of the C parser (it recurses once per level and crashes the process somewhere past 20,000).
MAX_DATA_YAML_BYTES = 1 << 20
MAX_FLOW_DEPTH = 64


def _flow_depth(text: str) -> int:
    """The deepest nesting of ``[...]``/``{...}`` outside quoted scalars.

    A quote counts as opening a scalar only where YAML allows one to start (after ``[{,:-``, a line
    start or whitespace); one inside a plain scalar (``don't``) is text, so it cannot hide brackets.
    """
    depth = deepest = 0
    quote, escaped, previous = "", False, "\n"
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif quote == '"' and char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"" and (previous.isspace() or previous in "[{,:-"):
            quote = char
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
        previous = char
    return deepest


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` of a dataset's ``data.yaml``, within the limits above.

    Raises:
        yaml.YAMLError: When the text is too large or nested too deeply (checked before parsing).
    """
    if len(text) > MAX_DATA_YAML_BYTES:
        raise yaml.YAMLError(f"{len(text)} characters; a data.yaml may hold at most {MAX_DATA_YAML_BYTES}")
    if _flow_depth(text) > MAX_FLOW_DEPTH:
        raise yaml.YAMLError(f"brackets nested deeper than {MAX_FLOW_DEPTH} levels")
    # The C parser when PyYAML has it (much faster); both are safe loaders: plain data, no arbitrary objects.
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_data_yaml(path: Path) -> dict[str, Any]:
    """Read a dataset's ``data.yaml``, refusing unknown keys and ``download``.

    Raises:
        DatasetError: When the file is missing, malformed, holds ``download`` or an unknown key.
    """
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(
            "a YOLO dataset needs a data.yaml with the class names ('names')", stage=STAGE, path=path
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read it as text: {exc}", stage=STAGE, path=path) from None
    except RecursionError:
        raise DatasetError("not valid YAML: nested too deeply", stage=STAGE, path=path) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer too long to convert
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


def _split_folder(root: DatasetRoot, data: dict[str, Any], split: str, source: Path) -> Path | None:
    """The images folder of ``split``, inside the dataset; ``None`` when ``data.yaml`` has none.

    Raises:
        DatasetError: When the value is not one relative folder inside the dataset under ``images``.
    """
    value, base_value = data.get(split), data.get("path")
    if not value:
        return None
    if not isinstance(value, str):
        raise DatasetError(f"'{split}' must be one folder relative to the dataset", stage=STAGE, path=source, key=split)
    if base_value is not None and not isinstance(base_value, str):
        raise DatasetError("'path' must be a folder relative to the dataset", stage=STAGE, path=source, key="path")
    try:
        base = root.named(base_value) if base_value else root.root
    except OutsideDataset as exc:
        why = f"'path' points outside the dataset folder: {exc}"
        raise DatasetError(why, stage=STAGE, path=source, key="path") from None
    try:
        folder = root.named(value, base)
    except OutsideDataset as exc:
        why = f"'{split}' points outside the dataset folder: {exc}"
        raise DatasetError(why, stage=STAGE, path=source, key=split) from None
    if not is_dir(folder):
        raise DatasetError(f"'{split}' folder {folder} does not exist", stage=STAGE, path=source, key=split)
    if "images" not in folder.relative_to(root.root).parts:
        raise DatasetError(
            f"'{split}: {value}' must lie under an 'images' folder (labels are found by replacing it with 'labels')",
            stage=STAGE,
            path=source,
            key=split,
        )
    return folder


def _labels_folder(images_folder: Path, root: DatasetRoot) -> Path:
    parts = list(images_folder.relative_to(root.root).parts)
    parts[parts.index("images")] = "labels"
    return root.root.joinpath(*parts)


def _inside(root: DatasetRoot, path: Path, what: str, problems: list[SourceProblem]) -> bool:
    """Whether ``path`` stays inside the dataset; when not, a ``path_outside_dataset`` problem of it."""
    try:
        root.contains(path)
    except OutsideDataset as exc:
        problems.append(outside(path, what, exc))
        return False
    return True


def read_yolo(dataset: Path) -> Source:
    """Read a YOLO-layout dataset.

    Images and label files that are links out of the dataset are ``path_outside_dataset`` problems,
    never read.

    Raises:
        DatasetError: When ``data.yaml`` or its split folders are wrong.
    """
    root = DatasetRoot(dataset)
    source_yaml = root.root / "data.yaml"
    try:
        root.contains(source_yaml)
    except OutsideDataset as exc:
        raise DatasetError(str(exc), stage=STAGE, path=source_yaml) from None
    data = read_data_yaml(source_yaml)
    names = normalise_names(data["names"], source=source_yaml)
    if "nc" in data and data["nc"] != len(names):
        raise DatasetError(f"'nc: {data['nc']}' but {len(names)} names", stage=STAGE, path=source_yaml, key="nc")
    folders = {s: _split_folder(root, data, s, source_yaml) for s in SPLITS}
    if folders["train"] is None:
        raise DatasetError("'train' is missing", stage=STAGE, path=source_yaml, key="train")
    has_val = folders["val"] is not None

    entries: list[Entry] = []
    orphans: list[tuple[str | None, Path, Path]] = []
    problems: list[SourceProblem] = []
    for split, folder in folders.items():
        if folder is None:
            continue
        target = split if has_val or split != "train" else None
        labels = _labels_folder(folder, root)
        expected = set()
        leaving: list[Path] = []
        for image in iter_images(folder, within=root.root, outside=leaving):
            label = label_path_for(image, folder, labels)
            expected.add(label)
            if not _inside(root, image, "image", problems):
                continue
            has_label = is_file(label) and _inside(root, label, "label file", problems)
            entries.append(
                Entry(split=target, image=image, rel=image.relative_to(folder), label=label if has_label else None)
            )
        for link in leaving:
            problems.append(SourceProblem(link, "path_outside_dataset", "folder link out of the dataset; not entered"))
        if is_dir(labels):
            for label in sorted(labels.rglob("*.txt")):
                if label not in expected and is_file(label) and _inside(root, label, "label file", problems):
                    orphans.append((target, label, label.relative_to(labels)))
    return Source(
        format="yolo", names=names, entries=entries, orphan_labels=orphans, problems=problems, source_ids=list(names)
    )
