"""The HTML model card at 80 classes opened in real headless Chromium with no network
(``tests/browser.py``): every chart draws its data, the image decodes, and every chart stays within
1280 px. The inputs are synthetic (``tests/many_classes.py``; no training), with Cyrillic, Chinese and
slashed class names; a second card uses COCO's 80 real names when ``../shared/datasets/coco128``
(beside the repository) is there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stages.reporting import card_html, charts, pictures
from tests import browser, many_classes
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

COCO128 = REPO.parent / "shared" / "datasets" / "coco128"


def _coco_names() -> list[str]:
    data = yaml.safe_load((COCO128 / "data.yaml").read_text(encoding="utf-8"))
    names = data["names"]
    return [names[i] for i in range(len(names))] if isinstance(names, dict) else list(names)


def _card(folder: Path, names: list[str]) -> tuple[Path, list[card_html.Figure]]:
    inputs = many_classes.build(folder, names)
    figures = many_classes.figures(inputs)
    markdown = "# Model card: many classes\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Evaluation\n\ntext\n"
    page = folder / "model_card.html"
    page.write_text(card_html.render("Model card", markdown, figures, {"cpu": "test"}), encoding="utf-8")
    return page, figures


def _check(page: Path, figures: list[card_html.Figure]) -> None:
    for figure in figures:
        if figure.svg is not None:
            width, height = many_classes.svg_size(figure.svg)
            assert width <= charts.CHART_MAX_PX and height <= charts.CHART_MAX_PX, (figure.title, width, height)
            assert "entries" not in figure.svg, f"{figure.title}: a legend was cut short"
    reason = browser.skip_reason()
    if reason:
        pytest.skip(reason)
    report = browser.open_page(page, "figure.chart")
    labels = [c.label for c in report.charts]
    assert labels == ["Precision against recall", "Confusion matrix", "Losses", "mAP", "Learning rate", "Latency"]
    assert report.problems(expected_charts=6) == []
    assert len(report.images) == 1


def test_card_at_80_classes_draws_every_chart_in_chromium(tmp_path: Path):
    page, figures = _card(tmp_path, many_classes.NAMES)
    text = page.read_text(encoding="utf-8")
    assert "<td>#17</td><td>公共汽车</td>" in text and re.search(r"the other 7\d classes", text)
    _check(page, figures)


@pytest.mark.skipif(not (COCO128 / "data.yaml").is_file(), reason=f"coco128 is not at {COCO128}")
def test_card_on_coco128s_80_names_draws_every_chart_in_chromium(tmp_path: Path):
    names = _coco_names()
    assert len(names) == 80
    # COCO's names are Latin: the image draws every one of them, none by id.
    assert pictures.names_by_id(names) == {}
    page, figures = _card(tmp_path, names)
    by_title = {f.title: f for f in figures}
    assert by_title["Validation predictions"].table is None
    confusion = by_title["Confusion matrix"].table
    assert confusion is not None and confusion.rows[0] == ("#0", names[0]) and len(confusion.rows) == 80
    _check(page, figures)
