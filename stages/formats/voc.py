"""Pascal VOC: ``Annotations/*.xml`` and ``JPEGImages/``, optional ``ImageSets/Main/{train,val,test}.txt``.

Written by hand: the format is a few XML fields, and no maintained converter keeps the source line of
each object (which problems must name) or a class order that stays stable as data is added.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from xml.parsers import expat

from stages.datasets import IMAGE_SUFFIXES, SPLITS
from stages.errors import DatasetError
from stages.formats.base import ConvertedBox, Entry, Source, SourceProblem


def _object_lines(data: bytes) -> list[int]:
    """Line numbers of the ``<object>`` elements, in document order."""
    lines: list[int] = []
    parser = expat.ParserCreate()

    def start(name: str, _attrs: dict[str, str]) -> None:
        if name == "object":
            lines.append(parser.CurrentLineNumber)

    parser.StartElementHandler = start
    parser.Parse(data, True)
    return lines


def _splits(dataset: Path) -> dict[str, str]:
    """Image stem -> split, from ``ImageSets/Main/<split>.txt`` when the dataset has them."""
    main = dataset / "ImageSets" / "Main"
    result: dict[str, str] = {}
    for split in SPLITS:
        listing = main / f"{split}.txt"
        if listing.is_file():
            for line in listing.read_text(encoding="utf-8").split():
                result.setdefault(line.strip(), split)
    return result


def _find_image(folder: Path, filename: str | None, stem: str) -> Path | None:
    if filename and (folder / filename).is_file():
        return folder / filename
    for suffix in sorted(IMAGE_SUFFIXES):
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _image_size(root: ET.Element, image: Path) -> tuple[float, float] | None:
    try:
        width = float(root.findtext("size/width", "0"))
        height = float(root.findtext("size/height", "0"))
    except ValueError:
        width = height = 0.0
    if width > 0 and height > 0:
        return width, height
    from PIL import Image

    try:
        with Image.open(image) as im:  # header only; validate decodes the pixels
            return float(im.width), float(im.height)
    except OSError:
        return None


def read_voc(dataset: Path, classes: list[str], include_difficult: bool) -> Source:
    """Read a Pascal VOC dataset.

    Args:
        dataset: Folder holding ``Annotations/`` and ``JPEGImages/``.
        classes: Class names in id order; empty means every name found, sorted.
        include_difficult: Keep objects marked ``<difficult>1</difficult>``.

    Returns:
        Entries with converted boxes and the problems met, each naming its XML file and line.
    """
    annotations, images = dataset / "Annotations", dataset / "JPEGImages"
    if not annotations.is_dir() or not images.is_dir():
        raise DatasetError("a VOC dataset needs Annotations/ and JPEGImages/", stage="prepare", path=dataset)
    splits = _splits(dataset)
    problems: list[SourceProblem] = []
    # (xml file, image, image size, [(name, xmin, ymin, xmax, ymax, line, ref)])
    parsed = []
    for xml_file in sorted(annotations.glob("*.xml")):
        data = xml_file.read_bytes()
        try:
            root = ET.fromstring(data)
            lines = _object_lines(data)
        except (ET.ParseError, expat.ExpatError) as exc:
            problems.append(SourceProblem(xml_file, "annotation_malformed", f"not valid XML: {exc}"))
            continue
        image = _find_image(images, root.findtext("filename"), xml_file.stem)
        if image is None:
            problems.append(
                SourceProblem(xml_file, "image_missing", f"no image for it in {images.name}/ (filename, or stem)")
            )
            continue
        size = _image_size(root, image)
        objects = []
        for index, obj in enumerate(root.findall("object")):
            line = lines[index] if index < len(lines) else None
            ref = f"object {index + 1}"
            if not include_difficult and obj.findtext("difficult", "0").strip() == "1":
                continue
            name = (obj.findtext("name") or "").strip()
            try:
                coords = [float(obj.findtext(f"bndbox/{k}", "")) for k in ("xmin", "ymin", "xmax", "ymax")]
            except ValueError:
                problems.append(
                    SourceProblem(
                        xml_file, "label_not_number", f"{ref}: bndbox needs numeric xmin/ymin/xmax/ymax", line
                    )
                )
                continue
            objects.append((name, *coords, line, ref))
        parsed.append((xml_file, image, size, objects))

    names = list(classes) or sorted({obj[0] for *_, objects in parsed for obj in objects if obj[0]})
    ids = {name: i for i, name in enumerate(names)}
    entries = []
    for xml_file, image, size, objects in parsed:
        boxes = []
        for name, xmin, ymin, xmax, ymax, line, ref in objects:
            if name not in ids:
                problems.append(
                    SourceProblem(
                        xml_file,
                        "class_out_of_range",
                        f"{ref}: class {name!r} is not in prepare.classes {names}",
                        line,
                    )
                )
                continue
            if size is None:
                problems.append(SourceProblem(xml_file, "image_unreadable", "image size unknown and unreadable", line))
                break
            width, height = size
            # VOC corners are 1-based pixel indices.
            cx, cy = ((xmin + xmax) / 2 - 1) / width, ((ymin + ymax) / 2 - 1) / height
            bw, bh = (xmax - xmin) / width, (ymax - ymin) / height
            boxes.append(ConvertedBox(box=(ids[name], cx, cy, bw, bh), line=line, ref=ref))
        entries.append(
            Entry(
                split=splits.get(xml_file.stem) if splits else None,
                image=image,
                rel=Path(image.name),
                boxes=tuple(boxes),
                annotation=xml_file,
            )
        )
    annotated = {e.image for e in entries}
    unreadable = {p.file.stem for p in problems if p.code == "annotation_malformed"}
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image not in annotated and image.stem not in unreadable:
            entries.append(Entry(split=splits.get(image.stem) if splits else None, image=image, rel=Path(image.name)))
    return Source(format="voc", names=names, entries=entries, problems=problems, source_ids=list(names))
