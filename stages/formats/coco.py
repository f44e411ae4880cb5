"""COCO: ``instances_<split>*.json`` (at the top or under ``annotations/``) and the images they name.

Written by hand: Ultralytics' ``convert_coco`` maps category ids with COCO-80 assumptions and writes
its own folder layout; here any category ids are mapped to contiguous YOLO ids in id order, and
every annotation problem names its file and annotation id.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.errors import DatasetError
from stages.formats.base import ConvertedBox, Entry, Source, SourceProblem


def coco_annotation_files(dataset: Path) -> list[Path]:
    """The ``instances_*.json`` files of a COCO dataset."""
    found = list(dataset.glob("instances_*.json")) + list(dataset.glob("annotations/instances_*.json"))
    return sorted(found)


def _split_of(path: Path) -> str:
    stem = path.stem.removeprefix("instances_").lower()
    for split in ("train", "val", "test"):
        if stem.startswith(split):
            return split
    raise DatasetError(
        f"cannot tell the split of {path.name}: name it instances_train*.json, instances_val*.json "
        "or instances_test*.json",
        stage="prepare",
        path=path,
    )


def _image_folder(dataset: Path, annotation: Path, file_name: str) -> Path | None:
    """Where the images of ``annotation`` live: the first usual folder holding its first image."""
    subset = annotation.stem.removeprefix("instances_")
    for folder in (dataset / "images" / subset, dataset / subset, dataset / "images", dataset):
        if (folder / file_name).is_file():
            return folder
    return None


def read_coco(dataset: Path) -> Source:
    """Read a COCO detection dataset.

    Returns:
        Entries with converted boxes (crowd annotations skipped, with a warning) and the problems
        met, each naming its JSON file and annotation id.

    Raises:
        DatasetError: When there is no annotation file, one is not valid JSON, or the splits
            disagree on the categories.
    """
    files = coco_annotation_files(dataset)
    if not files:
        raise DatasetError("a COCO dataset needs instances_<split>.json", stage="prepare", path=dataset)
    categories: dict[int, str] | None = None
    entries: list[Entry] = []
    problems: list[SourceProblem] = []
    for annotation in files:
        split = _split_of(annotation)
        try:
            data = json.loads(annotation.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"not valid JSON: {exc}", stage="prepare", path=annotation) from None
        cats = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        if categories is None:
            categories = cats
        elif cats != categories:
            raise DatasetError(
                "categories differ from the other annotation files; every split must share them",
                stage="prepare",
                path=annotation,
            )
        images = {int(im["id"]): im for im in data.get("images", [])}
        folder = _image_folder(dataset, annotation, next(iter(images.values()))["file_name"]) if images else None
        if images and folder is None:
            raise DatasetError(
                f"cannot find the images it names (looked in images/{annotation.stem.removeprefix('instances_')}/, "
                f"{annotation.stem.removeprefix('instances_')}/, images/ and the dataset root)",
                stage="prepare",
                path=annotation,
            )
        ids = {cat: i for i, cat in enumerate(sorted(cats))}
        boxes: dict[int, list[ConvertedBox]] = {image_id: [] for image_id in images}
        for ann in data.get("annotations", []):
            ref = f"annotation id {ann.get('id')}"
            image = images.get(int(ann.get("image_id", -1)))
            if image is None:
                problems.append(
                    SourceProblem(
                        annotation, "annotation_unknown_image", f"{ref}: image_id {ann.get('image_id')} unknown"
                    )
                )
                continue
            if int(ann.get("category_id", -1)) not in ids:
                problems.append(
                    SourceProblem(
                        annotation, "class_out_of_range", f"{ref}: category_id {ann.get('category_id')} unknown"
                    )
                )
                continue
            if ann.get("iscrowd", 0):
                problems.append(
                    SourceProblem(annotation, "annotation_crowd_skipped", f"{ref}: crowd region, not a box; skipped")
                )
                continue
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
                width, height = float(image["width"]), float(image["height"])
            except (KeyError, TypeError, ValueError):
                problems.append(SourceProblem(annotation, "label_not_number", f"{ref}: bbox needs 4 numbers"))
                continue
            cls = ids[int(ann["category_id"])]
            box = (cls, (x + w / 2) / width, (y + h / 2) / height, w / width, h / height)
            boxes[int(ann["image_id"])].append(ConvertedBox(box=box, line=None, ref=ref))
        for image_id, image in images.items():
            path = folder / image["file_name"] if folder else Path(image["file_name"])
            if not path.is_file():
                problems.append(
                    SourceProblem(annotation, "image_missing", f"image id {image_id}: {image['file_name']} not found")
                )
                continue
            entries.append(
                Entry(
                    split=split,
                    image=path,
                    rel=Path(image["file_name"]),
                    boxes=tuple(boxes[image_id]),
                    annotation=annotation,
                )
            )
    assert categories is not None
    order = sorted(categories)
    return Source(
        format="coco",
        names=[categories[c] for c in order],
        entries=entries,
        problems=problems,
        source_ids=[f"category {c}" for c in order],
    )
