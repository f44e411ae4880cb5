"""COCO: ``instances_<split>*.json`` (at the top or under ``annotations/``) and the images they name.

Written by hand: Ultralytics' ``convert_coco`` maps category ids with COCO-80 assumptions and writes
its own folder layout; here any category ids are mapped to contiguous YOLO ids in id order, and
every annotation problem names its file and annotation id.

The JSON is untrusted: every ``file_name`` is resolved through :class:`~stages.data.datasets.DatasetRoot`
(one that leaves the dataset is a ``path_outside_dataset`` problem and is never read), and a value of
the wrong type anywhere is a problem of its image or annotation, never an exception.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from stages.core.errors import DatasetError
from stages.data.datasets import DatasetRoot, OutsideDataset, is_file, normalise_names, quoted
from stages.data.formats.base import ConvertedBox, Entry, Source, SourceProblem, crashed, outside

STAGE = "prepare"


def coco_annotation_files(dataset: Path) -> list[Path]:
    """The ``instances_*.json`` files of a COCO dataset."""
    found = list(dataset.glob("instances_*.json")) + list(dataset.glob("annotations/instances_*.json"))
    return sorted(p for p in found if is_file(p))


def _split_of(path: Path) -> str:
    stem = path.stem.removeprefix("instances_").lower()
    for split in ("train", "val", "test"):
        if stem.startswith(split):
            return split
    raise DatasetError(
        f"cannot tell the split of {path.name}: name it instances_train*.json, instances_val*.json "
        "or instances_test*.json",
        stage=STAGE,
        path=path,
    )


def _as_id(value: object) -> int | None:
    """A COCO id (an int, or a float or short digit string holding one), or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,18}\s*", value):
        return int(value)
    return None


def _load(annotation: Path) -> dict[str, Any]:
    """The annotation file's JSON object, with ``images``, ``annotations`` and ``categories`` lists.

    Raises:
        DatasetError: When the file is not UTF-8 JSON of that shape.
    """
    try:
        data = json.loads(annotation.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"not UTF-8 text: {exc}", stage=STAGE, path=annotation) from None
    except RecursionError:
        raise DatasetError("not a COCO file: nested too deeply", stage=STAGE, path=annotation) from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise DatasetError(f"not valid JSON: {exc}", stage=STAGE, path=annotation) from None
    if not isinstance(data, dict):
        raise DatasetError("not a COCO file: expected a JSON object", stage=STAGE, path=annotation)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise DatasetError(f"'{key}' must be a list", stage=STAGE, path=annotation, key=key)
    return data


def _categories(data: dict[str, Any], annotation: Path) -> dict[int, str]:
    """Category id -> name.

    Raises:
        DatasetError: When a category lacks an integer id or a name, or an id repeats.
    """
    categories: dict[int, str] = {}
    for index, category in enumerate(data.get("categories", [])):
        cid = _as_id(category.get("id")) if isinstance(category, dict) else None
        name = category.get("name") if isinstance(category, dict) else None
        if cid is None or not isinstance(name, str):
            why = f"categories[{index}] needs an integer 'id' and a 'name'"
            raise DatasetError(why, stage=STAGE, path=annotation, key="categories")
        if cid in categories:
            raise DatasetError(f"category id {cid} appears twice", stage=STAGE, path=annotation, key="categories")
        categories[cid] = name
    return categories


def _images(data: dict[str, Any], annotation: Path, problems: list[SourceProblem]) -> dict[int, dict[str, Any]]:
    """Image id -> image record; records without an integer id, or repeating one, are problems."""
    images: dict[int, dict[str, Any]] = {}
    for index, image in enumerate(data.get("images", [])):
        image_id = _as_id(image.get("id")) if isinstance(image, dict) else None
        if image_id is None or image_id in images:
            why = "needs an integer 'id'" if image_id is None else f"repeats image id {image_id}"
            problems.append(SourceProblem(annotation, "annotation_malformed", f"images[{index}]: {why}; skipped"))
            continue
        images[image_id] = image
    return images


def _image_folder(root: DatasetRoot, annotation: Path, images: dict[int, dict[str, Any]]) -> Path | None:
    """Where the images of ``annotation`` live: the first usual folder that holds one of them."""
    subset = annotation.stem.removeprefix("instances_")
    folders = []
    for candidate in (f"images/{subset}", subset, "images", "."):
        try:
            folders.append(root.named(candidate))
        except OutsideDataset:  # a crafted annotation file name
            continue
    for image in images.values():
        for folder in folders:
            try:
                if is_file(root.named(image.get("file_name"), folder)):
                    return folder
            except OutsideDataset:
                continue
    return None


def _yolo_box(bbox: object, image: dict[str, Any]) -> tuple[float, float, float, float] | None:
    """A COCO ``[x, y, w, h]`` in pixels as normalised (cx, cy, w, h); ``None`` when not computable."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
        width, height = float(image["width"]), float(image["height"])
    except (KeyError, TypeError, ValueError, OverflowError):  # float() of a huge int overflows
        return None
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        return None
    # Non-finite or huge box values pass through: validate reports them against this annotation.
    return (x + w / 2) / width, (y + h / 2) / height, w / width, h / height


def _boxes(
    data: dict[str, Any],
    annotation: Path,
    images: dict[int, dict[str, Any]],
    ids: dict[int, int],
    problems: list[SourceProblem],
) -> dict[int, list[ConvertedBox]]:
    """Converted boxes per image id; every annotation that cannot be converted is a problem."""
    boxes: dict[int, list[ConvertedBox]] = {image_id: [] for image_id in images}
    for index, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            problems.append(SourceProblem(annotation, "annotation_malformed", f"annotations[{index}]: not an object"))
            continue
        ref = f"annotation id {quoted(ann.get('id'))}"
        image_id = _as_id(ann.get("image_id"))
        if image_id not in images:
            problems.append(
                SourceProblem(
                    annotation, "annotation_unknown_image", f"{ref}: image_id {quoted(ann.get('image_id'))} unknown"
                )
            )
            continue
        category = _as_id(ann.get("category_id"))
        if category not in ids:
            problems.append(
                SourceProblem(
                    annotation, "class_out_of_range", f"{ref}: category_id {quoted(ann.get('category_id'))} unknown"
                )
            )
            continue
        if ann.get("iscrowd", 0):
            problems.append(
                SourceProblem(annotation, "annotation_crowd_skipped", f"{ref}: crowd region, not a box; skipped")
            )
            continue
        box = _yolo_box(ann.get("bbox"), images[image_id])
        if box is None:
            problems.append(
                SourceProblem(
                    annotation,
                    "label_not_number",
                    f"{ref}: bbox needs 4 numbers, and image id {image_id} a positive width and height",
                )
            )
            continue
        boxes[image_id].append(ConvertedBox(box=(ids[category], *box), line=None, ref=ref))
    return boxes


def _entries(
    root: DatasetRoot,
    annotation: Path,
    images: dict[int, dict[str, Any]],
    boxes: dict[int, list[ConvertedBox]],
    problems: list[SourceProblem],
) -> list[Entry]:
    """One entry per image whose ``file_name`` stays inside the dataset and exists.

    Raises:
        DatasetError: When no usual folder holds any of the images.
    """
    split = _split_of(annotation)
    folder = _image_folder(root, annotation, images)
    entries, missing = [], []
    for image_id, image in images.items():
        file_name = image.get("file_name")
        try:
            path = root.named(file_name, folder or root.root)
        except OutsideDataset as exc:
            problems.append(outside(annotation, f"image id {image_id}: file_name", exc))
            continue
        if not is_file(path):
            message = f"image id {image_id}: {quoted(file_name)} not found"
            missing.append(SourceProblem(annotation, "image_missing", message))
            continue
        assert folder is not None  # an existing image would have been found in a folder
        rel = path.relative_to(folder) if path.is_relative_to(folder) else path.relative_to(root.root)
        entries.append(Entry(split=split, image=path, rel=rel, boxes=tuple(boxes[image_id]), annotation=annotation))
    if folder is None and missing:
        subset = annotation.stem.removeprefix("instances_")
        raise DatasetError(
            f"cannot find the images it names (looked in images/{subset}/, {subset}/, images/ and the dataset root)",
            stage=STAGE,
            path=annotation,
        )
    problems.extend(missing)
    return entries


def _read_file(
    root: DatasetRoot, annotation: Path, problems: list[SourceProblem]
) -> tuple[dict[int, str], list[Entry]]:
    """The categories and entries of one annotation file; its problems are appended to ``problems``."""
    root.contains(annotation)
    data = _load(annotation)
    categories = _categories(data, annotation)
    images = _images(data, annotation, problems)
    ids = {cat: i for i, cat in enumerate(sorted(categories))}
    boxes = _boxes(data, annotation, images, ids, problems)
    return categories, _entries(root, annotation, images, boxes, problems)


def read_coco(dataset: Path) -> Source:
    """Read a COCO detection dataset.

    Returns:
        Entries with converted boxes (crowd annotations skipped, with a warning) and the problems
        met, each naming its JSON file and image or annotation id.

    Raises:
        DatasetError: When there is no annotation file, one is not valid JSON of the COCO shape, or
            the splits disagree on the categories.
    """
    files = coco_annotation_files(dataset)
    if not files:
        raise DatasetError("a COCO dataset needs instances_<split>.json", stage=STAGE, path=dataset)
    root = DatasetRoot(dataset)
    categories: dict[int, str] | None = None
    entries: list[Entry] = []
    problems: list[SourceProblem] = []
    for annotation in files:
        found: list[SourceProblem] = []
        try:
            cats, file_entries = _read_file(root, annotation, found)
        except DatasetError:
            raise
        except OutsideDataset as exc:
            problems.append(outside(annotation, "the annotation file", exc))
            continue
        except Exception as exc:  # no input may crash the stage: recorded as an error of this file
            problems.append(crashed(annotation, exc))
            continue
        problems.extend(found)
        if categories is None:
            categories = cats
        elif cats != categories:
            raise DatasetError(
                "categories differ from the other annotation files; every split must share them",
                stage=STAGE,
                path=annotation,
            )
        entries.extend(file_entries)
    if categories is None:
        why = "; ".join(f"{p.file.name}: {p.message}" for p in problems[:3])
        raise DatasetError(f"no annotation file could be read ({why})", stage=STAGE, path=dataset)
    order = sorted(categories)
    names = normalise_names([categories[c] for c in order], source=files[0])
    return Source(
        format="coco",
        names=names,
        entries=entries,
        problems=problems,
        source_ids=[f"category {c}" for c in order],
    )
