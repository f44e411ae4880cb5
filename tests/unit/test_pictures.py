"""The pictures' pure pieces: PR curve and confusion rows, labels, the image grid, LR schedules, the
charts and the offline page template, the HTML card, and their declarations in dvc.yaml."""

from __future__ import annotations

import configparser
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stages.core.config import Params
from stages.reporting import card_html, charts, pictures
from stages.training.outputs import lr_rows
from tests.conftest import REPO

NAMES = ["square", "disc", "triangle"]


def test_pr_curve_rows_per_class_and_all_classes():
    recall = np.linspace(0, 1, 1000)
    precision = np.vstack([1 - recall, np.full(1000, 0.5)])  # two classes measured: square and triangle
    rows = pictures.pr_curve_rows(recall, precision, [0, 2], NAMES)
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(row["class"], []).append(row)
    assert list(by_class) == ["square", "triangle", "all classes"]
    assert all(len(r) == pictures.PR_POINTS for r in by_class.values())
    assert [r["recall"] for r in by_class["square"]][:3] == [0.0, 0.01, 0.02]
    assert by_class["square"][0]["precision"] == pytest.approx(1.0)
    assert by_class["square"][-1]["precision"] == pytest.approx(0.0, abs=1e-6)
    assert by_class["triangle"][50]["precision"] == pytest.approx(0.5)
    # The mean over the measured classes, as Ultralytics' own PR plot draws "all classes".
    assert by_class["all classes"][50]["precision"] == pytest.approx((0.5 + 0.5) / 2, abs=1e-3)


def test_pr_curve_rows_refuse_misaligned_shapes():
    with pytest.raises(ValueError, match="expected \\(2, 1000\\)"):
        pictures.pr_curve_rows(np.linspace(0, 1, 1000), np.zeros((3, 1000)), [0, 1], NAMES)


def test_pr_curve_rows_without_measured_classes_are_empty():
    assert pictures.pr_curve_rows(np.linspace(0, 1, 5), np.zeros((0, 5)), [], NAMES) == []


def test_confusion_rows_count_back_into_the_matrix():
    # [predicted, actual]; last row and column: background.
    matrix = np.array([[3, 1, 0, 2], [0, 4, 0, 0], [0, 0, 0, 1], [1, 0, 5, 0]], dtype=float)
    rows = pictures.confusion_rows(matrix, NAMES)
    counts = Counter((r["actual"], r["predicted"]) for r in rows)
    labels = [*NAMES, "background"]
    for p, predicted in enumerate(labels):
        for a, actual in enumerate(labels):
            assert counts[(actual, predicted)] == matrix[p, a], (actual, predicted)
    assert counts[("triangle", "background")] == 5  # missed triangles
    assert counts[("background", "square")] == 2  # squares found on nothing
    assert len(rows) == matrix.sum()


@pytest.mark.parametrize(
    ("matrix", "message"),
    [(np.zeros((3, 3)), "expected \\(4, 4\\)"), (np.full((4, 4), 0.5), "counts"), (-np.ones((4, 4)), "counts")],
)
def test_confusion_rows_refuse_what_is_not_a_count_matrix(matrix: np.ndarray, message: str):
    with pytest.raises(ValueError, match=message):
        pictures.confusion_rows(matrix, NAMES)


def test_write_csv_writes_the_header_and_rows(tmp_path: Path):
    path = tmp_path / "plots" / "confusion.csv"
    pictures.write_csv(path, ["actual", "predicted"], [{"actual": "disc", "predicted": "background"}])
    assert path.read_text() == "actual,predicted\ndisc,background\n"


def test_yolo_labels_in_pixels_and_a_missing_file_is_no_box(tmp_path: Path):
    label = tmp_path / "a.txt"
    label.write_text("1 0.5 0.25 0.2 0.1\n\n")
    (box,) = pictures.read_yolo_labels(label, 200, 100)
    assert (box.x1, box.y1, box.x2, box.y2, box.cls) == pytest.approx((80, 20, 120, 30, 1))
    assert pictures.read_yolo_labels(tmp_path / "none.txt", 10, 10) == []


def _has_colour(image: Image.Image, colour: tuple[int, int, int]) -> bool:
    return colour in {c for _, c in image.getcolors(maxcolors=1 << 20)}


def test_tile_draws_truth_green_and_predictions_red_and_the_grid_holds_every_tile():
    image = Image.new("RGB", (128, 64), (128, 128, 128))
    truth = [pictures.Box(10, 10, 50, 50, 0)]
    predicted = [pictures.Box(70, 10, 120, 60, 2, conf=0.9)]
    tile = pictures.draw_tile(image, truth, predicted, NAMES, 256)
    assert tile.size == (256, 256)
    assert _has_colour(tile, pictures.TRUTH_COLOUR) and _has_colour(tile, pictures.PREDICTION_COLOUR)
    # Scaled by 2: the truth box's left edge at x=20, the prediction's at x=140, both at mid-height.
    assert tile.getpixel((20, 60)) == pictures.TRUTH_COLOUR
    assert tile.getpixel((140, 80)) == pictures.PREDICTION_COLOUR
    bare = pictures.draw_tile(image, [], [], NAMES, 256)
    assert not _has_colour(bare, pictures.TRUTH_COLOUR) and not _has_colour(bare, pictures.PREDICTION_COLOUR)

    grid = pictures.image_grid([tile] * 5, columns=4, caption="legend")
    assert grid.width == 4 * (256 + 4) + 4 and grid.height > 2 * 256
    with pytest.raises(ValueError, match="no image"):
        pictures.image_grid([], 4, "legend")


def test_lr_rows_keep_one_line_per_distinct_schedule():
    # Weights and BN weights share a schedule; biases warm up from above (Ultralytics' warmup_bias_lr).
    rows = [
        {"epoch": 1.0, "lr_pg0": 0.001, "lr_pg1": 0.001, "lr_pg2": 0.05, "map50": 0.1},
        {"epoch": 2.0, "lr_pg0": 0.002, "lr_pg1": 0.002, "lr_pg2": 0.002, "map50": 0.2},
    ]
    out = lr_rows(rows)
    assert {r["group"] for r in out} == {"pg0+pg1", "pg2"}
    assert [r["lr"] for r in out if r["group"] == "pg2"] == ["0.05", "0.002"]
    assert [r["epoch"] for r in out if r["group"] == "pg0+pg1"] == [1, 2]
    same = [{"epoch": 1.0, "lr_pg0": 0.01, "lr_pg1": 0.01, "lr_pg2": 0.01, "lr_pg10": 0.03}]
    assert [r["group"] for r in lr_rows(same)] == ["pg0+pg1+pg2", "pg10"]


def test_charts_render_to_svg_with_data_marks_and_never_fetch():
    rows = [{"epoch": "1", "train_box_loss": "1.5", "val_box_loss": "1.2"}, {"epoch": "2", "train_box_loss": "1.1"}]
    svg = charts.to_svg(charts.lines_chart("losses", rows, "epoch", ["train_box_loss", "val_box_loss"], "loss"))
    assert svg.startswith("<svg") and "role-mark" in svg and "mark-line" in svg
    confusion = charts.to_svg(charts.confusion_chart("cm", [{"actual": "disc", "predicted": "disc"}] * 3))
    assert "mark-rect" in confusion and ">3<" in confusion
    with pytest.raises(ValueError):
        charts.to_svg({"data": {"url": "https://example.invalid/data.csv"}, "mark": "point"})


def test_offline_template_carries_the_scripts_and_keeps_dvcs_placeholders(tmp_path: Path):
    page = charts.offline_template()
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page, "DVC would put its CDN <script> tags there"
    assert "cdn.jsdelivr" not in page and "<script src" not in page
    assert len(page) > 500_000 and "vegaEmbed" in page
    out = tmp_path / "offline.html"
    assert charts.write_offline_template(out) is True
    assert charts.write_offline_template(out) is False  # unchanged: not rewritten


def test_dvc_config_names_the_offline_template():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    named = (REPO / ".dvc" / config["plots"]["html_template"].strip()).resolve()
    assert named == (REPO / charts.OFFLINE_TEMPLATE).resolve()


def test_html_card_holds_the_markdown_the_pictures_and_the_environment():
    markdown = "# Model card: x\n\n| a | b |\n|---|---|\n| <b>1</b> | **FAIL** |\n\n## Evaluation\n\ntext\n"
    figures = [
        card_html.Figure("PR", "curve", svg='<?xml version="1.0"?><svg class="marks"><g/></svg>'),
        card_html.Figure("grid", "images", png=b"\x89PNG fake"),
    ]
    page = card_html.render("Model card: x", markdown, figures, {"cpu": "EPYC", "packages": {"torch": "2"}})
    assert page.index("<h1>") < page.index("<h2>Pictures</h2>") < page.index("<h2>Evaluation</h2>")
    assert '<figure class="chart" data-title="PR"><svg class="marks">' in page and "<?xml" not in page
    assert 'src="data:image/png;base64,' in page
    assert "&lt;b&gt;1&lt;/b&gt;" in page and "<strong>FAIL</strong>" in page  # markdown HTML escaped
    assert "<h2>Environment</h2>" in page and "EPYC" in page and "&quot;torch&quot;" in page
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org", "")
    with pytest.raises(ValueError, match="neither"):
        card_html.render("t", markdown, [card_html.Figure("empty", "nothing")], {})


DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())


def _plot(name: str) -> dict:
    return next(d[name] for d in DVC["plots"] if isinstance(d, dict) and name in d)


def test_dvc_yaml_declares_every_picture():
    paths = Params().paths
    losses, maps = _plot("losses"), _plot("mAP")
    ((loss_fields,),) = [losses["y"].values()]
    assert all("loss" in f for f in loss_fields) and {"train_box_loss", "val_box_loss"} <= set(loss_fields)
    assert list(maps["y"].values()) == [["map50", "map50_95"]], "mAP on its own axis, apart from the losses"
    assert _plot("learning rate") == {"template": "lr_by_group", "x": "epoch", "y": {"${paths.lr_plot}": "lr"}}
    assert _plot("precision against recall")["template"] == "pr_by_class"
    assert _plot("confusion matrix") == {
        "template": "confusion",
        "x": "actual",
        "y": {"${paths.confusion_plot}": "predicted"},
    }
    assert "${paths.val_predictions_plot}" in DVC["plots"]
    assert _plot("latency per backend")["template"] == "latency_range"
    assert paths.val_predictions_plot.endswith(".png")

    stages = DVC["stages"]
    pictures_out = ["${paths.pr_curve_plot}", "${paths.confusion_plot}", "${paths.val_predictions_plot}"]
    assert all(p in stages["evaluate"]["outs"] for p in pictures_out)
    assert "stages/reporting/pictures.py" in stages["evaluate"]["deps"]
    assert "${paths.lr_plot}" in stages["train"]["outs"]
    for needed in [*pictures_out, "${paths.train_plot}", "${paths.lr_plot}", "${paths.latency_plot}"]:
        assert needed in stages["report"]["deps"], needed
    assert {"stages/reporting/card_html.py", "stages/reporting/charts.py"} <= set(stages["report"]["deps"])
    assert "${paths.model_card_html}" in stages["report"]["outs"]


def test_every_plot_file_is_drawn_once_by_its_own_definition():
    # A stage-level `plots:` entry makes DVC draw the file again with its default template (a line
    # chart of whatever columns it guesses), next to the chart defined for it at the top level.
    assert not [name for name, stage in DVC["stages"].items() if stage.get("plots")]
    drawn = set()
    for definition in DVC["plots"]:
        if isinstance(definition, str):
            drawn.add(definition)
        else:
            ((spec,),) = [definition.values()]
            drawn.update(spec["y"])
    outs = {o if isinstance(o, str) else next(iter(o)) for s in DVC["stages"].values() for o in s.get("outs", [])}
    assert drawn <= outs, f"a plot draws a file no stage writes: {drawn - outs}"
    for name in ("train_plot", "lr_plot", "pr_curve_plot", "confusion_plot", "latency_plot", "throughput_plot"):
        assert f"${{paths.{name}}}" in drawn, name
