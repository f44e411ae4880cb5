"""Pascal VOC: ``Annotations/*.xml`` and ``JPEGImages/``, optional ``ImageSets/Main/{train,val,test}.txt``.

Written by hand: the format is a few XML fields, and no maintained converter keeps the source line of
each object (which problems must name) or a class order that stays stable as data is added.

The files are untrusted: ``<filename>`` is resolved through :class:`~stages.data.datasets.DatasetRoot` (one
that leaves the dataset is a ``path_outside_dataset`` problem of its XML file, never read), and
``<path>``, where annotation tools record the annotator's own absolute path, is never used.
"""

from __future__ import annotations

import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.parsers import expat

from stages.core.errors import DatasetError
from stages.data.datasets import IMAGE_SUFFIXES, SPLITS, DatasetRoot, OutsideDataset, is_file, open_image
from stages.data.formats.base import ConvertedBox, Entry, Source, SourceProblem, crashed, outside

STAGE = "prepare"


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


def _splits(root: DatasetRoot) -> dict[str, str]:
    """Image stem -> split, from ``ImageSets/Main/<split>.txt`` when the dataset has them.

    The listed stems are only looked up among the XML files, never opened as paths.

    Raises:
        DatasetError: When a listing is a link out of the dataset or not UTF-8 text.
    """
    main = root.root / "ImageSets" / "Main"
    result: dict[str, str] = {}
    for split in SPLITS:
        listing = main / f"{split}.txt"
        if not is_file(listing):
            continue
        try:
            text = root.contains(listing).read_text(encoding="utf-8")
        except (OutsideDataset, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot use this split list: {exc}", stage=STAGE, path=listing) from None
        for line in text.split():
            result.setdefault(line.strip(), split)
    return result


def _find_image(root: DatasetRoot, folder: Path, filename: str | None, stem: str) -> Path | None:
    """The image of an XML file: its ``<filename>`` in ``folder``, else ``<stem>.<image suffix>``.

    Raises:
        OutsideDataset: When ``<filename>`` or the file found leaves the dataset folder.
    """
    if filename and is_file(named := root.named(filename, folder)):
        return named
    for suffix in sorted(IMAGE_SUFFIXES):
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if is_file(candidate):
                return root.contains(candidate)
    return None


def _image_size(root: ET.Element, image: Path) -> tuple[float, float] | None:
    """The image size from ``<size>``, else from the image's header (never decoded here)."""
    try:
        width = float(root.findtext("size/width", "0"))
        height = float(root.findtext("size/height", "0"))
    except ValueError:
        width = height = 0.0
    if math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0:
        return width, height
    try:
        # No pixel limit here: only the header is read; validate refuses images over the limit.
        with open_image(image, sys.maxsize) as im:
            return float(im.width), float(im.height)
    except Exception:  # PIL raises many types for data it cannot identify; validate reports the image
        return None


def _objects(root: ET.Element, lines: list[int], xml_file: Path, include_difficult: bool, problems: list) -> list:
    """The objects of one XML file as (name, xmin, ymin, xmax, ymax, line, ref)."""
    objects = []
    for index, obj in enumerate(root.findall("object")):
        line = lines[index] if index < len(lines) else None
        ref = f"object {index + 1}"
        if not include_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        name = (obj.findtext("name") or "").strip()
        try:
            coords = [float(obj.findtext(f"bndbox/{k}") or "") for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            problems.append(
                SourceProblem(xml_file, "label_not_number", f"{ref}: bndbox needs numeric xmin/ymin/xmax/ymax", line)
            )
            continue
        objects.append((name, *coords, line, ref))
    return objects


def _parse(
    root: DatasetRoot, xml_file: Path, images: Path, include_difficult: bool, problems: list[SourceProblem]
) -> tuple[Path, tuple[float, float] | None, list] | None:
    """One XML file's image, image size and objects; ``None`` (with a problem) when it cannot be used."""
    try:
        data = root.contains(xml_file).read_bytes()
        tree = ET.fromstring(data)
        lines = _object_lines(data)
    except OutsideDataset as exc:
        problems.append(outside(xml_file, "the annotation file", exc))
        return None
    except (ET.ParseError, expat.ExpatError) as exc:
        problems.append(SourceProblem(xml_file, "annotation_malformed", f"not valid XML: {exc}"))
        return None
    try:
        image = _find_image(root, images, tree.findtext("filename"), xml_file.stem)
    except OutsideDataset as exc:
        problems.append(outside(xml_file, "filename", exc))
        return None
    if image is None:
        problems.append(
            SourceProblem(xml_file, "image_missing", f"no image for it in {images.name}/ (filename, or stem)")
        )
        return None
    # <path> is deliberately ignored (never read): annotation tools write the annotator's own absolute path.
    return image, _image_size(tree, image), _objects(tree, lines, xml_file, include_difficult, problems)


def read_voc(dataset: Path, classes: list[str], include_difficult: bool) -> Source:
    """Read a Pascal VOC dataset.

    Args:
        dataset: Folder holding ``Annotations/`` and ``JPEGImages/``.
        classes: Class names in id order; empty means every name found, sorted.
        include_difficult: Keep objects marked ``<difficult>1</difficult>``.

    Returns:
        Entries with converted boxes and the problems met, each naming its XML file and line.

    Raises:
        DatasetError: When a folder is missing or leaves the dataset, or a split list cannot be read.
    """
    root = DatasetRoot(dataset)
    annotations, images = dataset / "Annotations", dataset / "JPEGImages"
    if not annotations.is_dir() or not images.is_dir():
        raise DatasetError("a VOC dataset needs Annotations/ and JPEGImages/", stage=STAGE, path=dataset)
    for folder in (annotations, images):
        try:
            root.contains(folder)
        except OutsideDataset as exc:
            raise DatasetError(str(exc), stage=STAGE, path=folder) from None
    splits = _splits(root)
    problems: list[SourceProblem] = []
    # (xml file, image, image size, [(name, xmin, ymin, xmax, ymax, line, ref)])
    parsed = []
    unusable: set[str] = set()  # stems of XML files that could not be used: their images are not backgrounds
    for xml_file in sorted(p for p in annotations.glob("*.xml") if is_file(p)):
        try:
            found = _parse(root, xml_file, images, include_difficult, problems)
        except Exception as exc:  # no input may crash the stage: recorded as an error of this file
            problems.append(crashed(xml_file, exc))
            found = None
        if found is None:
            unusable.add(xml_file.stem)
        else:
            parsed.append((xml_file, *found))

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
    entries += _backgrounds(root, images, {e.image for e in entries}, unusable, splits, problems)
    return Source(format="voc", names=names, entries=entries, problems=problems, source_ids=list(names))


def _backgrounds(
    root: DatasetRoot,
    images: Path,
    annotated: set[Path],
    unusable: set[str],
    splits: dict[str, str],
    problems: list[SourceProblem],
) -> list[Entry]:
    """Images no XML file annotates (nor was meant to): trained as backgrounds."""
    entries = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and is_file(p)):
        if image in annotated or image.stem in unusable:
            continue
        try:
            root.contains(image)
        except OutsideDataset as exc:
            problems.append(outside(image, "image", exc))
            continue
        entries.append(Entry(split=splits.get(image.stem) if splits else None, image=image, rel=Path(image.name)))
    return entries
