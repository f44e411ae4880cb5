"""Generate the embedded sample detection dataset: seeded, deterministic, YOLO layout.

A fresh clone has no data of the user's. This module draws a small dataset of filled shapes
(squares, discs, triangles) on textured backgrounds, with exact boxes, so that the whole chain can run
and learn something within minutes on a CPU. Users replace ``data/dataset/`` with their own data.

Usage::

    python -m stages.data.sample_data --out data/dataset [--train 96 --val 24 --size 160 --seed 0]
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

CLASSES = ("square", "disc", "triangle")


@dataclass(frozen=True)
class SampleSpec:
    """What to generate.

    Attributes:
        out: Destination folder (created; must be empty or absent).
        train: Number of training images.
        val: Number of validation images.
        size: Image side in pixels.
        seed: Random seed; the same seed gives the same images and labels.
    """

    out: Path
    train: int = 96
    val: int = 24
    size: int = 160
    seed: int = 0


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(40, 200, size=3)
    gradient = np.linspace(-30, 30, size)[None, :, None] * rng.choice([-1, 1], size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(base + gradient + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").filter(ImageFilter.GaussianBlur(0.6))


def _shape_polygon(cls: int, cx: float, cy: float, half: float, angle: float) -> list[tuple[float, float]]:
    if cls == 0:
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        return [(cx + half * x, cy + half * y) for x, y in corners]
    if cls == 2:
        return [
            (
                cx + half * math.cos(angle + k * 2 * math.pi / 3),
                cy + half * math.sin(angle + k * 2 * math.pi / 3),
            )
            for k in range(3)
        ]
    raise ValueError(cls)


def _draw_image(
    rng: np.random.Generator, size: int
) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[int, float, float, float, float]] = []
    occupied: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(0, len(CLASSES)))
        half = float(rng.uniform(0.08, 0.2) * size)
        cx, cy = (float(v) for v in rng.uniform(half + 1, size - half - 1, size=2))
        x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
        if any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in occupied):
            continue  # keep objects apart so every box is fully visible
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if cls == 1:
            draw.ellipse([x0, y0, x1, y1], fill=color, outline=(255, 255, 255), width=2)
        else:
            points = _shape_polygon(cls, cx, cy, half, float(rng.uniform(0, 2 * math.pi)))
            draw.polygon(points, fill=color, outline=(255, 255, 255))
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        occupied.append((x0, y0, x1, y1))
        boxes.append((cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size))
    return image, boxes


def generate(spec: SampleSpec) -> Path:
    """Write the sample dataset.

    Args:
        spec: What to generate and where.

    Returns:
        The path of the dataset's ``data.yaml``.

    Raises:
        FileExistsError: When ``spec.out`` exists and is not empty (the input dataset is never overwritten).
    """
    if spec.out.exists() and any(spec.out.iterdir()):
        raise FileExistsError(f"{spec.out} is not empty; remove it first to regenerate the sample dataset")
    rng = np.random.default_rng(spec.seed)
    random.seed(spec.seed)
    for split, count in (("train", spec.train), ("val", spec.val)):
        images = spec.out / "images" / split
        labels = spec.out / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, boxes = _draw_image(rng, spec.size)
            stem = f"{split}_{i:05d}"
            image.save(images / f"{stem}.jpg", format="JPEG", quality=90)
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in boxes]
            (labels / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    data_yaml = spec.out / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump(
            {"train": "images/train", "val": "images/val", "names": dict(enumerate(CLASSES))}, sort_keys=False
        ),
        encoding="utf-8",
    )
    log.info("wrote %d train and %d val images to %s", spec.train, spec.val, spec.out)
    return data_yaml


def main(argv: list[str] | None = None) -> int:
    """CLI: generate the sample dataset unless the destination already holds data."""
    parser = argparse.ArgumentParser(prog="python -m stages.data.sample_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/dataset"))
    parser.add_argument("--train", type=int, default=SampleSpec.train)
    parser.add_argument("--val", type=int, default=SampleSpec.val)
    parser.add_argument("--size", type=int, default=SampleSpec.size)
    parser.add_argument("--seed", type=int, default=SampleSpec.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        generate(SampleSpec(out=args.out, train=args.train, val=args.val, size=args.size, seed=args.seed))
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
