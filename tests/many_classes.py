"""The inputs of a model card at many classes, built synthetically (no training): what the evaluate,
train and benchmark stages would have written for a dataset with the given class names.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stages.reporting import card_html, pictures

# 80 classes, as COCO has, with names a real dataset brings: Cyrillic, Chinese and a slash.
SPECIAL = {3: "автобус", 17: "公共汽车", 42: "bus/coach"}
NAMES = [SPECIAL.get(i, f"class_{i:02d}") for i in range(80)]


@dataclass(frozen=True)
class CardInputs:
    """The files ``card_html.figures`` reads, and the evaluate metrics' ``per_class``."""

    paths: tuple[Path, ...]
    per_class: dict[str, dict[str, Any]]
    png: bytes


def per_class(names: list[str], seed: int = 0) -> dict[str, dict[str, Any]]:
    """``metrics/evaluate.json``'s ``per_class``: boxes 0 to 40 per class, AP where there are boxes."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        boxes = int(rng.integers(0, 41))
        ap = None if boxes == 0 else round(float(rng.uniform(0.1, 0.9)), 4)
        out[name] = {"instances": boxes, "precision": ap, "recall": ap, "ap50": ap, "ap50_95": ap}
    return out


def build(folder: Path, names: list[str], seed: int = 0) -> CardInputs:
    """Write the plot files of a card for ``names`` under ``folder``."""
    rng = np.random.default_rng(seed)
    classes = per_class(names, seed)
    measured = [i for i, c in enumerate(classes.values()) if c["instances"]]
    recall = np.linspace(0, 1, 200)
    precision = np.clip(1 - recall[None, :] * rng.uniform(0.2, 1.0, (len(measured), 1)), 0, 1)
    pr = folder / "pr_curve.csv"
    pictures.write_csv(pr, ["class", "recall", "precision"], pictures.pr_curve_rows(recall, precision, measured, names))
    n = len(names) + 1
    matrix = rng.integers(0, 3, (n, n)) * (rng.random((n, n)) < 0.05)
    np.fill_diagonal(matrix, [c["instances"] for c in classes.values()] + [0])
    confusion = folder / "confusion.csv"
    pictures.write_csv(confusion, ["actual", "predicted"], pictures.confusion_rows(matrix, names))

    image = Image.new("RGB", (320, 240), (120, 140, 160))
    shown = [i for i in SPECIAL if i < len(names)] or [0]
    truth = [pictures.Box(20 + 90 * k, 60, 90 + 90 * k, 200, i) for k, i in enumerate(shown)]
    predicted = [pictures.Box(25 + 90 * k, 70, 95 + 90 * k, 190, i, conf=0.8) for k, i in enumerate(shown)]
    tile = pictures.draw_tile(image, truth, predicted, names, 256)
    buffer = io.BytesIO()
    pictures.image_grid([tile, tile], 2, "green: true boxes; red: predicted").save(buffer, format="PNG")
    png = folder / "val_predictions.png"
    png.write_bytes(buffer.getvalue())

    train = folder / "train_curves.csv"
    train.write_text("epoch,train_box_loss,val_box_loss,map50,map50_95\n1,1.5,1.4,0.2,0.1\n2,1.2,1.1,0.3,0.2\n")
    lr = folder / "lr.csv"
    lr.write_text("epoch,group,lr\n1,pg0+pg1,0.001\n2,pg0+pg1,0.002\n1,pg2,0.05\n2,pg2,0.002\n")
    latency = folder / "latency.csv"
    latency.write_text("backend,p10_ms,p50_ms,p90_ms\nonnx-fp32,10,11,13\nopenvino-fp32,8,9,10\n")
    return CardInputs((train, lr, pr, confusion, png, latency), classes, png.read_bytes())


def figures(inputs: CardInputs, top_classes: int = 10) -> list[card_html.Figure]:
    """The card's figures for ``inputs``."""
    return card_html.figures(*inputs.paths, per_class=inputs.per_class, top_classes=top_classes)


def svg_size(svg: str) -> tuple[float, float]:
    """An SVG document's width and height, pixels."""
    import re

    found = re.search(r'<svg[^>]*\swidth="([\d.]+)"[^>]*\sheight="([\d.]+)"', svg)
    assert found, svg[:300]
    return float(found.group(1)), float(found.group(2))
