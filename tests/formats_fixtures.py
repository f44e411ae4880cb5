"""Build small VOC and COCO datasets from the sample generator (real files in each format)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from PIL import Image

from stages.data.sample_data import CLASSES, SampleSpec, generate


def _yolo_boxes(label: Path) -> list[tuple[int, float, float, float, float]]:
    rows = []
    for line in label.read_text().splitlines():
        c, x, y, w, h = line.split()
        rows.append((int(c), float(x), float(y), float(w), float(h)))
    return rows


def make_voc(out: Path, train: int = 8, val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """A Pascal VOC dataset with ImageSets/Main/{train,val}.txt."""
    tmp = out.parent / f".{out.name}-yolo"
    generate(SampleSpec(out=tmp, train=train, val=val, size=size, seed=seed))
    (out / "Annotations").mkdir(parents=True)
    (out / "JPEGImages").mkdir()
    (out / "ImageSets" / "Main").mkdir(parents=True)
    for split in ("train", "val"):
        stems = []
        for image in sorted((tmp / "images" / split).glob("*.jpg")):
            shutil.copy(image, out / "JPEGImages" / image.name)
            w, h = Image.open(image).size
            objects = []
            for c, x, y, bw, bh in _yolo_boxes(tmp / "labels" / split / f"{image.stem}.txt"):
                xmin, xmax = (x - bw / 2) * w + 1, (x + bw / 2) * w + 1
                ymin, ymax = (y - bh / 2) * h + 1, (y + bh / 2) * h + 1
                objects.append(
                    "  <object>\n"
                    f"    <name>{CLASSES[c]}</name>\n    <difficult>0</difficult>\n"
                    f"    <bndbox><xmin>{xmin:.2f}</xmin><ymin>{ymin:.2f}</ymin>"
                    f"<xmax>{xmax:.2f}</xmax><ymax>{ymax:.2f}</ymax></bndbox>\n"
                    "  </object>\n"
                )
            (out / "Annotations" / f"{image.stem}.xml").write_text(
                "<annotation>\n"
                f"  <filename>{image.name}</filename>\n"
                f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n"
                + "".join(objects)
                + "</annotation>\n"
            )
            stems.append(image.stem)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    shutil.rmtree(tmp)
    return out


def make_coco(out: Path, train: int = 8, val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """A COCO dataset: annotations/instances_{train,val}2017.json, images under images/{train,val}2017/."""
    tmp = out.parent / f".{out.name}-yolo"
    generate(SampleSpec(out=tmp, train=train, val=val, size=size, seed=seed))
    (out / "annotations").mkdir(parents=True)
    # Category ids deliberately not contiguous: they must map to YOLO ids 0..n-1 in id order.
    categories = [{"id": 10 * (i + 1), "name": name} for i, name in enumerate(CLASSES)]
    ann_id = 1
    for split in ("train", "val"):
        folder = out / "images" / f"{split}2017"
        folder.mkdir(parents=True)
        images, annotations = [], []
        for image_id, image in enumerate(sorted((tmp / "images" / split).glob("*.jpg")), start=1):
            shutil.copy(image, folder / image.name)
            w, h = Image.open(image).size
            images.append({"id": image_id, "file_name": image.name, "width": w, "height": h})
            for c, x, y, bw, bh in _yolo_boxes(tmp / "labels" / split / f"{image.stem}.txt"):
                box = [(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h]
                annotations.append(
                    {"id": ann_id, "image_id": image_id, "category_id": categories[c]["id"], "bbox": box, "iscrowd": 0}
                )
                ann_id += 1
        (out / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    shutil.rmtree(tmp)
    return out


def tree_listing(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[str, str]]:
    """Every entry under ``root`` except those under ``skip``: relative path -> (kind, content digest).

    Links are listed as links (their target), never followed, so a link planted outside the
    workspace or a file overwritten through one shows up as a difference.
    """
    listing: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*")):
        if any(path == s or s in path.parents for s in skip):
            continue
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            listing[rel] = ("link", os.readlink(path))
        elif path.is_file():
            listing[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            listing[rel] = ("dir", "")
    return listing
