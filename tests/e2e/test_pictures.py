"""End to end: the pictures a reproduced pipeline writes, and the pages they are shown in, opened in
real headless Chromium with no network (``tests/browser.py``).

One tiny reproduced workspace for the module. The plot files and their dvc.yaml declarations are read
back; then the HTML model card and the page ``dvc plots show`` writes with the project's offline
template must draw every chart and decode every image with the network gone. DVC's own page, which
loads Vega from a CDN, is the control: offline it draws nothing, and the same check says so.
"""

from __future__ import annotations

import csv
import html
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from stages.reporting.charts import OFFLINE_TEMPLATE
from tests import browser
from tests.e2e.workspace import Workspace

pytestmark = pytest.mark.e2e

NAMES = {"square", "disc", "triangle"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.with_sample_data(tmp_path_factory, "pictures", repro=True)


@pytest.fixture
def chromium_offline() -> None:
    reason = browser.skip_reason()
    if reason:
        pytest.skip(reason)


def _rows(ws: Workspace, rel: str) -> list[dict[str, str]]:
    with (ws.root / rel).open(newline="") as fh:
        return list(csv.DictReader(fh))


def _dvc_plots_json(ws: Workspace) -> dict:
    shown = ws.run("-m", "dvc", "plots", "show", "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    data = json.loads(shown.stdout)
    assert not data.get("errors"), data["errors"]
    return data["data"]


def test_evaluate_writes_the_pr_curve_confusion_matrix_and_image_grid(ws: Workspace):
    evaluate = ws.json("metrics/evaluate.json")
    pr = _rows(ws, "plots/pr_curve.csv")
    curves = Counter(r["class"] for r in pr)
    measured = {name for name, c in evaluate["per_class"].items() if c["instances"]}
    assert set(curves) == measured | {"all classes"} and set(curves.values()) == {101}
    assert all(0 <= float(r["recall"]) <= 1 and 0 <= float(r["precision"]) <= 1 for r in pr)

    confusion = _rows(ws, "plots/confusion.csv")
    assert confusion and set(confusion[0]) == {"actual", "predicted"}
    assert {r["actual"] for r in confusion} <= NAMES | {"background"}
    # Every true box is counted once: found as some class, or missed (predicted: background).
    assert sum(r["actual"] != "background" for r in confusion) == evaluate["instances"]

    with Image.open(ws.root / "plots/val_predictions.png") as grid:
        assert grid.format == "PNG"
        # 8 validation images in rows of 4 tiles of 256 px with 4 px gaps, under a caption line.
        assert grid.width == 4 * 260 + 4 and grid.height > 2 * 256

    lr = _rows(ws, "plots/lr.csv")
    assert lr and all(r["group"].startswith("pg") and float(r["lr"]) > 0 for r in lr)
    curves_header = (ws.root / "plots/train_curves.csv").read_text().splitlines()[0].split(",")
    logged = sorted(c for c in curves_header if c.startswith("lr_pg"))
    named = [g for r in lr for g in r["group"].split("+")]
    assert sorted(f"lr_{g}" for g in named) == logged, "every logged group is drawn once, in one schedule"


def test_dvc_plots_declares_every_chart(ws: Workspace):
    data = _dvc_plots_json(ws)
    expected = {"losses", "mAP", "learning rate", "precision against recall", "confusion matrix"}
    expected |= {"latency per backend", "plots/val_predictions.png"}
    assert expected <= set(data), sorted(data)
    loss_fields = {d["field"] for d in data["losses"][0]["content"]["data"]["values"]}
    assert loss_fields and all("loss" in f for f in loss_fields)
    map_fields = {d["field"] for d in data["mAP"][0]["content"]["data"]["values"]}
    assert map_fields == {"map50", "map50_95"}
    assert data["plots/val_predictions.png"][0]["type"] == "image"


def test_html_model_card_draws_every_picture_offline(ws: Workspace, chromium_offline: None):
    card = ws.root / "reports/model_card.html"
    text = card.read_text()
    markdown = (ws.root / "reports/model_card.md").read_text()
    version = re.search(r"\| Data version \(DVC\) \| `([^`]+)` \|", markdown)
    assert version and html.escape(version.group(1)) in text, "the data version"
    assert "<h3>Gate</h3>" in text and "<td>map50_95</td>" in text  # the gates, thresholds and verdicts
    assert "<td>triangle</td>" in text  # the per-class table
    assert "<h3>Deploy artifacts</h3>" in text and "<td>onnx-int8</td>" in text
    assert "<h2>Environment</h2>" in text and ws.json("reports/environment.json")["cpu"] in text
    assert "|---" not in text, "a markdown table was left unrendered"

    report = browser.open_page(card, "figure.chart")
    labels = [c.label for c in report.charts]
    assert labels == ["Precision against recall", "Confusion matrix", "Losses", "mAP", "Learning rate", "Latency"]
    assert len(report.images) == 1 and report.images[0].src.startswith("data:image/png;base64,")
    assert report.problems(expected_charts=6) == []


def _dvc_page(ws: Workspace, out: Path, *template: str) -> Path:
    shown = ws.run("-m", "dvc", "plots", "show", "-o", str(out), *template)
    assert shown.returncode == 0, shown.stderr[-2000:]
    return out / "index.html"


def test_dvc_plots_page_draws_every_chart_offline(
    ws: Workspace, chromium_offline: None, tmp_path_factory: pytest.TempPathFactory
):
    written = ws.run("-m", "stages.reporting.charts")  # what `make install` and `make plots` run
    assert written.returncode == 0, written.stderr
    assert (ws.root / OFFLINE_TEMPLATE).is_file()
    plots = _dvc_plots_json(ws)
    vega = sum(1 for plot in plots.values() if plot[0]["type"] == "vega")
    images = sum(1 for plot in plots.values() if plot[0]["type"] == "image")

    # .dvc/config names the template: plain `dvc plots show` draws offline.
    page = _dvc_page(ws, tmp_path_factory.mktemp("dvc-plots"))
    assert "cdn.jsdelivr" not in page.read_text()
    report = browser.open_page(page, ".vega-embed", wait_for="chartsDone")
    assert report.body == {"charts": str(vega), "chartsFailed": "0", "chartsDone": "true"}
    assert len(report.images) == images and images >= 1
    assert report.problems(expected_charts=vega) == []


def test_dvcs_own_page_is_blank_offline_and_the_check_says_so(
    ws: Workspace, chromium_offline: None, tmp_path_factory: pytest.TempPathFactory
):
    """The control: DVC's built-in page loads Vega from jsDelivr; with no network no chart draws."""
    from dvc_render.html import PAGE_HTML

    folder = tmp_path_factory.mktemp("dvc-cdn")
    default = folder / "default.html"
    default.write_text(PAGE_HTML)
    page = _dvc_page(ws, folder / "out", "--html-template", str(default))
    assert "cdn.jsdelivr" in page.read_text()
    vega = sum(1 for plot in _dvc_plots_json(ws).values() if plot[0]["type"] == "vega")
    report = browser.open_page(page, "div[id]:has(> script)")
    assert len(report.charts) == vega and not any(c.drawn for c in report.charts), report
    assert len(report.problems(expected_charts=vega)) >= vega
    assert any("vegaEmbed is not defined" in e for e in report.errors), report.errors
