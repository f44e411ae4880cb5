"""Charts that draw with no network: Vega-Lite specs rendered to SVG, and DVC's offline page template.

Both come from ``vl-convert-python``, which carries Vega, Vega-Lite and vega-embed inside its wheel
(pinned in ``pyproject.toml``), so no third-party JavaScript lives in this repository and nothing is
fetched from a CDN:

- the model card's charts are rendered here to inline SVG (:func:`to_svg`): the HTML card is one file
  with no script at all;
- ``python -m stages.reporting.charts`` writes :data:`OFFLINE_TEMPLATE`, the HTML template ``dvc plots show`` and
  ``dvc plots diff`` fill (``.dvc/config``: ``plots.html_template``). DVC's own page loads Vega from
  jsDelivr and is blank offline; this one holds the scripts inline (about 0.9 MB) and leaves out
  DVC's ``{scripts}`` placeholder, where DVC would put its CDN ``<script>`` tags.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.core.common import configure_logging, write_text

log = logging.getLogger(__name__)

# DVC's built-in templates and ours in .dvc/plots/ are Vega-Lite 5 specs: load the same major version.
VL_VERSION = "5.21"
# Machine-local, like the virtual environment it is generated from (gitignored with .cache/); the path
# .dvc/config names, relative to .dvc/.
OFFLINE_TEMPLATE = Path(".cache/plots/offline.html")
# The card's charts stay within this many pixels on a side, whatever the class count.
CHART_MAX_PX = 1280
# Above this many classes the confusion matrix names its axes by class id.
CONFUSION_NAMES_MAX = 20
# Longest axis label of the confusion matrix, pixels (a longer class name is cut with an ellipsis).
CONFUSION_LABEL_PX = 160
# Smallest cell that still shows its count.
CONFUSION_TEXT_MIN_PX = 16

# DVC's page calls vegaEmbed('#id', spec) once per chart while it loads. Draw every chart as SVG
# (inspectable, sharp when zoomed), keep only the export menu entries that work offline, and mark the
# page once every chart has drawn or failed: data-charts-done, data-charts, data-charts-failed on <body>.
_EMBED_WRAPPER = """
(function () {
  var embed = window.vegaEmbed;
  var pending = [];
  window.vegaEmbed = function (el, spec, options) {
    var defaults = {renderer: "svg", actions: {export: true, source: false, compiled: false, editor: false}};
    var drawn = embed(el, spec, Object.assign(defaults, options || {}));
    pending.push(drawn);
    return drawn;
  };
  window.addEventListener("load", function () {
    Promise.allSettled(pending).then(function (results) {
      var failed = results.filter(function (r) { return r.status === "rejected"; });
      failed.forEach(function (r) { console.error("chart failed:", r.reason); });
      document.body.dataset.charts = String(results.length);
      document.body.dataset.chartsFailed = String(failed.length);
      document.body.dataset.chartsDone = "true";
    });
  });
})();
"""

_PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  {refresh_tag}
  <title>DVC plots</title>
  <!-- {versions}: bundled by vl-convert-python (python -m stages.reporting.charts); no network needed. -->
  <script>{bundle}</script>
  <script>{wrapper}</script>
  <style>
    body { font-family: sans-serif; margin: 1em; }
    table { border-spacing: 15px; }
  </style>
</head>
<body>
  {plot_divs}
</body>
</html>
"""


def versions() -> str:
    """The bundled library versions, e.g. ``Vega 6.2.0, Vega-Lite 5.21, vega-embed 7.0.2``."""
    import vl_convert

    return (
        f"Vega {vl_convert.get_vega_version()}, Vega-Lite {VL_VERSION}, "
        f"vega-embed {vl_convert.get_vega_embed_version()}"
    )


def offline_template() -> str:
    """DVC's page template with Vega, Vega-Lite and vega-embed inline, and DVC's placeholders kept.

    Raises:
        ValueError: When the bundle holds text that would break the page (a closing script tag or
            one of DVC's placeholders).
    """
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VL_VERSION)
    for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in bundle:
            raise ValueError(f"the JavaScript bundle contains {bad!r}: it cannot be inlined in DVC's template")
    page = _PAGE.replace("{versions}", versions()).replace("{wrapper}", _EMBED_WRAPPER.strip())
    return page.replace("{bundle}", bundle)


def write_offline_template(path: Path) -> bool:
    """Write :func:`offline_template` to ``path`` unless it already holds exactly that.

    Returns:
        Whether the file was (re)written.
    """
    page = offline_template()
    if path.is_file() and path.read_text(encoding="utf-8") == page:
        return False
    write_text(path, page)
    return True


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings (Vega-Lite parses the numbers)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def to_svg(spec: dict[str, Any]) -> str:
    """Render a Vega-Lite spec (data inline) to an SVG document, in this process, with no network."""
    import vl_convert

    # allowed_base_urls=[]: a spec that names a URL fails instead of fetching it.
    return vl_convert.vegalite_to_svg(spec, vl_version=VL_VERSION, allowed_base_urls=[])


def _base(title: str, rows: Sequence[dict[str, Any]], numbers: Sequence[str]) -> dict[str, Any]:
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": 420,
        "height": 260,
        "data": {"values": list(rows), "format": {"parse": {n: "number" for n in numbers}}},
        # Names in full (class names, backends, param groups): Vega cuts labels at 180 px by default.
        "config": {"axis": {"labelLimit": 0}, "legend": {"labelLimit": 0}},
    }


def lines_chart(
    title: str, rows: Sequence[dict[str, Any]], x: str, fields: Sequence[str], y_title: str
) -> dict[str, Any]:
    """One line per column of ``fields`` against ``x`` (the training curves)."""
    present = [f for f in fields if rows and f in rows[0]]
    spec = _base(title, rows, [x, *present])
    spec["transform"] = [{"fold": present, "as": ["series", "value"]}]
    spec["mark"] = {"type": "line", "point": True}
    spec["encoding"] = {
        "x": {"field": x, "type": "quantitative"},
        "y": {"field": "value", "type": "quantitative", "title": y_title},
        "color": {"field": "series", "type": "nominal", "title": None},
    }
    return spec


def grouped_lines_chart(
    title: str, rows: Sequence[dict[str, Any]], x: str, y: str, group: str, *, unit_square: bool = False
) -> dict[str, Any]:
    """One line per value of the ``group`` column (learning rate per schedule, PR curve per class).

    Every group gets its legend entry (Vega would otherwise cut the legend short with "…N entries");
    the card keeps the number of groups small (:func:`top_by_support`) so the legend stays readable.
    """
    spec = _base(title, rows, [x, y])
    spec["mark"] = {"type": "line", "point": not unit_square, "interpolate": "step-after" if unit_square else "linear"}
    scale = {"domain": [0, 1]} if unit_square else {}
    groups = len({r.get(group) for r in rows})
    colour: dict[str, Any] = {"field": group, "type": "nominal", "legend": {"symbolLimit": 0}}
    if groups > 10:
        colour["scale"] = {"scheme": "tableau20"}  # the default scheme repeats its 10 colours
    spec["encoding"] = {
        "x": {"field": x, "type": "quantitative", "scale": scale},
        "y": {"field": y, "type": "quantitative", "scale": scale},
        "color": colour,
    }
    return spec


def top_by_support(support: dict[str, int], n: int) -> list[str]:
    """The ``n`` classes with the most validation boxes, most first (ties: in the order given, i.e. by id).

    Classes without a box are never chosen: they have no PR curve.
    """
    ranked = sorted((name for name, boxes in support.items() if boxes > 0), key=lambda name: -support[name])
    return ranked[:n]


def confusion_by_id(labels: Sequence[str]) -> bool:
    """Whether the confusion matrix names its axes by class id (``#<id>``).

    It does above :data:`CONFUSION_NAMES_MAX` classes (``background``, the confusion rows' label for a
    missed box or a box on nothing, is no class).
    """
    return len([label for label in labels if label != "background"]) > CONFUSION_NAMES_MAX


def confusion_chart(title: str, rows: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Counts of ``actual`` against ``predicted`` as a heat map, at most :data:`CHART_MAX_PX` on a side.

    Cells shrink with the class count (at most 48 x 36 px); each cell shows its count while there is
    room for it. Above :data:`CONFUSION_NAMES_MAX` classes the axes name classes by id (``#<id>``,
    the card holds the id -> name table): 80 names side by side cannot be read at any size.

    Args:
        title: The chart title.
        rows: One ``{"actual", "predicted"}`` row per box (``plots/confusion.csv``).
        labels: Every class name in id order, then ``background``: the axes' order (and the ids).
            Without it, the names found in ``rows`` in alphabetical order.

    Raises:
        ValueError: When a row names a class that ``labels`` lacks.
    """
    found = {r[k] for r in rows for k in ("actual", "predicted")}
    order = list(labels) if labels is not None else sorted(found)
    unknown = sorted(found - set(order))
    if unknown:
        # The matrix and the class list come from different runs: a cell would have no place on the axes.
        raise ValueError(f"confusion rows name classes that are not among the labels: {unknown[:5]}")
    if confusion_by_id(order):
        ids = {name: name if name == "background" else f"#{i}" for i, name in enumerate(order)}
        rows = [{"actual": ids[r["actual"]], "predicted": ids[r["predicted"]]} for r in rows]
        order = [ids[name] for name in order]
    n = max(1, len(order))
    # What is not cells: axis labels (up to CONFUSION_LABEL_PX), axis titles, the chart title and the
    # colour legend.
    step_x = max(1, min(48, (CHART_MAX_PX - CONFUSION_LABEL_PX - 130) // n))
    step_y = max(1, min(36, (CHART_MAX_PX - CONFUSION_LABEL_PX - 70) // n))
    spec = _base(title, rows, [])
    spec.update(width={"step": step_x}, height={"step": step_y})
    spec["config"]["axis"] = {"labelLimit": CONFUSION_LABEL_PX}
    spec["transform"] = [{"aggregate": [{"op": "count", "as": "boxes"}], "groupby": ["actual", "predicted"]}]
    spec["encoding"] = {
        "x": {"field": "actual", "type": "nominal", "sort": order, "scale": {"domain": order}},
        "y": {"field": "predicted", "type": "nominal", "sort": order, "scale": {"domain": order}},
    }
    spec["layer"] = [
        {"mark": "rect", "encoding": {"color": {"field": "boxes", "type": "quantitative", "title": "boxes"}}},
    ]
    if min(step_x, step_y) >= CONFUSION_TEXT_MIN_PX:
        spec["layer"].append(
            {
                "mark": {"type": "text", "color": "black"},
                "encoding": {"text": {"field": "boxes", "type": "quantitative"}},
            }
        )
    return spec


def latency_chart(title: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """p50 latency per backend as a point, on a line from p10 to p90."""
    spec = _base(title, rows, ["p10_ms", "p50_ms", "p90_ms"])
    spec["height"] = {"step": 24}
    spec["encoding"] = {"y": {"field": "backend", "type": "nominal", "title": None}}
    spec["layer"] = [
        {
            "mark": {"type": "rule", "strokeWidth": 2},
            "encoding": {
                "x": {"field": "p10_ms", "type": "quantitative", "title": "latency, ms (point: p50; line: p10 to p90)"},
                "x2": {"field": "p90_ms"},
            },
        },
        {
            "mark": {"type": "point", "filled": True, "size": 60},
            "encoding": {"x": {"field": "p50_ms", "type": "quantitative"}},
        },
    ]
    return spec


def main(argv: list[str] | None = None) -> int:
    """Write the offline page template DVC fills (``make plots`` runs this before ``dvc plots show``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OFFLINE_TEMPLATE, help=f"default: {OFFLINE_TEMPLATE}")
    args = parser.parse_args(argv)
    configure_logging()
    written = write_offline_template(args.out)
    log.info("%s %s (%s)", "wrote" if written else "up to date:", args.out, versions())
    return 0


if __name__ == "__main__":
    sys.exit(main())
