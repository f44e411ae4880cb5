"""The card at 80 classes: a label font that draws Cyrillic (and a name it cannot draw by its id), a
confusion matrix that stays within 1280 px, and a PR chart of the top classes with the rest in a table.

Inputs are synthetic (``tests/many_classes.py``): 80 names, among them ``автобус``, ``公共汽车`` and
``bus/coach``.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.core.config import Params
from stages.core.errors import ConfigError
from stages.reporting import card_html, charts, pictures
from tests import many_classes
from tests.conftest import REPO
from tests.many_classes import NAMES

# A private-use code point of plane 16: no font has it, so it draws as the font's .notdef glyph (the box).
MISSING = "\U0010fffd"


def _mask(font, text: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(text)
    return mask.size, bytes(mask)


@pytest.mark.parametrize("size", [9, 12, 16])
def test_label_font_draws_cyrillic_greek_and_latin_as_letters_not_boxes(size: int):
    font = pictures.label_font(size)
    notdef = _mask(font, MISSING)
    for name in ["автобус", "Ωμέγα", "bus/coach", "traffic light"]:
        assert pictures.drawable(name), name
        for ch in name.replace(" ", ""):
            assert _mask(font, ch) != notdef, f"{ch!r} of {name!r} draws as the .notdef box"
    # The coverage check agrees with the glyphs: what it calls undrawable is the box.
    assert not pictures.drawable("公共汽车")
    assert all(_mask(font, ch) == notdef for ch in "公共汽车")


def test_a_name_the_font_cannot_draw_is_shown_by_id_and_every_shown_name_is_drawn():
    assert pictures.shown_name(NAMES, 17) == "#17"
    assert pictures.shown_name(NAMES, 3) == "автобус" and pictures.shown_name(NAMES, 42) == "bus/coach"
    assert pictures.shown_name(NAMES, 80) == "#80"  # an id the dataset does not have
    assert pictures.names_by_id(NAMES) == {17: "公共汽车"}
    font = pictures.label_font(12)
    notdef = _mask(font, MISSING)
    for cls in range(len(NAMES)):
        shown = pictures.shown_name(NAMES, cls)
        assert all(_mask(font, ch) != notdef for ch in shown), shown


def test_tile_writes_an_undrawable_name_as_its_id():
    image = Image.new("RGB", (200, 160), (90, 90, 90))
    truth = [pictures.Box(20, 40, 120, 140, 17)]
    predicted = [pictures.Box(30, 50, 110, 130, 17, conf=0.7)]
    tile = pictures.draw_tile(image, truth, predicted, NAMES, 256)
    as_id = pictures.draw_tile(image, truth, predicted, [*NAMES[:17], "#17", *NAMES[18:]], 256)
    assert np.array_equal(np.asarray(tile), np.asarray(as_id))
    # A Cyrillic name draws as itself, not as the boxes a name of missing glyphs would make.
    cyrillic = pictures.draw_tile(image, [pictures.Box(20, 40, 120, 140, 3)], [], NAMES, 256)
    boxes = pictures.draw_tile(image, [pictures.Box(20, 40, 120, 140, 0)], [], [MISSING * 7], 256)
    assert not np.array_equal(np.asarray(cyrillic), np.asarray(boxes))


def _legend(svg: str) -> list[str]:
    """The legend's entries, in order (each entry is a text of its own ``role-legend-label`` group)."""
    found = re.findall(r'<g class="mark-text role-legend-label"[^>]*><text[^>]*>([^<]*)</text>', svg)
    return [html.unescape(t) for t in found]


def test_confusion_matrix_at_80_classes_stays_within_1280_px_by_id_in_id_order(tmp_path: Path):
    inputs = many_classes.build(tmp_path, NAMES)
    labels = [*NAMES, "background"]
    svg = charts.to_svg(charts.confusion_chart("cm", charts.read_csv(inputs.paths[3]), labels))
    width, height = many_classes.svg_size(svg)
    assert width <= charts.CHART_MAX_PX and height <= charts.CHART_MAX_PX, (width, height)
    assert "mark-rect role-mark" in svg
    axis = re.findall(r'<g class="mark-text role-axis-label"[^>]*>(.*?)</g>', svg, flags=re.S)
    assert len(axis) == 2
    for group in axis:
        shown = re.findall(r"<text[^>]*>([^<]*)</text>", group)
        assert shown == [*(f"#{i}" for i in range(80)), "background"], shown[:5]


def test_confusion_matrix_at_three_classes_keeps_names_counts_and_id_order():
    rows = [{"actual": "triangle", "predicted": "square"}] * 2 + [{"actual": "disc", "predicted": "disc"}]
    svg = charts.to_svg(charts.confusion_chart("cm", rows, ["square", "disc", "triangle", "background"]))
    axis = re.findall(r'<g class="mark-text role-axis-label"[^>]*>(.*?)</g>', svg, flags=re.S)
    assert re.findall(r"<text[^>]*>([^<]*)</text>", axis[0]) == ["square", "disc", "triangle", "background"]
    assert "mark-text role-mark" in svg and ">2<" in svg
    assert many_classes.svg_size(svg)[0] <= charts.CHART_MAX_PX
    with pytest.raises(ValueError, match="triangle"):
        charts.confusion_chart("cm", rows, ["square", "disc", "background"])


def test_top_by_support_most_boxes_first_ties_by_id_never_an_empty_class():
    support = {"a": 3, "b": 9, "c": 0, "d": 9, "e": 1}
    assert charts.top_by_support(support, 3) == ["b", "d", "a"]
    assert charts.top_by_support(support, 10) == ["b", "d", "a", "e"]


def test_pr_chart_at_80_classes_draws_the_top_classes_with_a_complete_legend_and_tables_the_rest(tmp_path: Path):
    inputs = many_classes.build(tmp_path, NAMES)
    figure = card_html.pr_figure(charts.read_csv(inputs.paths[2]), inputs.per_class, 10)
    top = charts.top_by_support({n: c["instances"] for n, c in inputs.per_class.items()}, 10)
    assert len(top) == 10
    assert figure.svg is not None and "entries" not in figure.svg, "the legend was cut short"
    assert sorted(_legend(figure.svg)) == sorted([*top, "all classes"])
    width, height = many_classes.svg_size(figure.svg)
    assert width <= charts.CHART_MAX_PX and height <= charts.CHART_MAX_PX
    assert figure.table is not None
    rest = [row[0] for row in figure.table.rows]
    assert sorted([*top, *rest]) == sorted(NAMES) and not set(top) & set(rest)
    assert "the other 70 classes" in figure.caption


def test_a_pr_chart_of_many_groups_lists_every_one_in_its_legend():
    rows = [{"class": f"c{i}", "recall": r / 4, "precision": 1 - r / 4} for i in range(40) for r in range(5)]
    svg = charts.to_svg(charts.grouped_lines_chart("pr", rows, "recall", "precision", "class", unit_square=True))
    assert "entries" not in svg
    assert sorted(_legend(svg)) == sorted(f"c{i}" for i in range(40))


def test_card_at_80_classes_holds_the_id_tables_and_escapes_names(tmp_path: Path):
    inputs = many_classes.build(tmp_path, NAMES)
    figs = many_classes.figures(inputs)
    by_title = {f.title: f for f in figs}
    confusion = by_title["Confusion matrix"].table
    assert confusion is not None and len(confusion.rows) == 80 and confusion.rows[17] == ("#17", "公共汽车")
    predictions = by_title["Validation predictions"].table
    assert predictions is not None and predictions.rows == (("#17", "公共汽车"),)
    assert "shown by id" in by_title["Validation predictions"].caption
    page = card_html.render("card", "# Model card\n\n## Evaluation\n", figs, {})
    assert page.count("<details>") == 3 and "<td>#17</td><td>公共汽车</td>" in page
    assert "<td>bus/coach</td>" in page and "<td>автобус</td>" in page


def test_card_at_three_classes_has_no_id_tables(tmp_path: Path):
    inputs = many_classes.build(tmp_path, ["square", "disc", "triangle"])
    figs = many_classes.figures(inputs)
    assert all(f.table is None for f in figs), [f.title for f in figs if f.table]


@pytest.mark.parametrize("value", [0, 20])
def test_report_top_classes_is_bounded(value: int):
    assert Params().report.top_classes == 10
    with pytest.raises((ConfigError, ValueError), match="top_classes"):
        Params.model_validate({**Params().as_dict(), "report": {"top_classes": value}})


def test_dvc_pr_template_at_81_curves_lists_every_class_within_1280_px():
    # What `dvc plots show` fills in: DVC puts the rows in for <DVC_METRIC_DATA>, with a rev column.
    template = (REPO / ".dvc" / "plots" / "pr_by_class.json").read_text()
    classes = [*NAMES, "all classes"]
    rows = [
        {"class": c, "recall": r / 10, "precision": 1 - r / 10, "rev": "workspace"} for c in classes for r in range(11)
    ]
    filled = template.replace('"<DVC_METRIC_TITLE>"', '"pr"').replace('"<DVC_METRIC_DATA>"', json.dumps(rows))
    svg = charts.to_svg(json.loads(filled))
    assert "entries" not in svg, "the legend was cut short"
    assert sorted(_legend(svg)) == sorted([*classes, "workspace"])
    width, height = many_classes.svg_size(svg)
    assert width <= charts.CHART_MAX_PX and height <= charts.CHART_MAX_PX, (width, height)


def test_a_missing_label_font_is_a_typed_error_naming_the_file(monkeypatch, tmp_path):
    import matplotlib

    from stages.core.errors import PipelineError
    from stages.reporting import pictures

    monkeypatch.setattr(matplotlib, "get_data_path", lambda: str(tmp_path))
    with pytest.raises(PipelineError, match="DejaVu Sans is missing") as caught:
        pictures.label_font_path()
    assert str(tmp_path) in str(caught.value)
