"""Open a page in real headless Chromium with no network, and report what it drew.

Chromium (Debian's ``chromium`` package) runs under ``unshare -rn``: in a network namespace of its
own with only a loopback device that is down, so a page that needs a CDN draws nothing. A probe
script is put at the top of a copy of the page (beside it, so relative image paths still resolve):
it records script errors and, once the page has loaded and its charts have drawn (or the virtual time
budget ran out), writes what it found onto ``<html data-probe=...>``, which ``--dump-dom`` prints.

A chart counts as drawn when its container holds an ``<svg>`` whose Vega data marks (``g.role-mark``)
hold at least one shape with geometry (axes and legends are not data marks), or a ``<canvas>`` with
more than one colour on it. An image counts when the browser decoded it (``naturalWidth > 0`` and
``img.decode()`` resolved) and, drawn on a canvas, it shows more than one colour that is not fully
transparent (Chromium decodes a truncated PNG without complaint and leaves the missing rows
transparent; cut short enough, nothing but one colour is left).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_PROBE = """
<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) { errors.push(String(e.message || e)); });
  window.addEventListener("unhandledrejection", function (e) { errors.push("unhandled: " + String(e.reason)); });
  var consoleError = console.error;
  console.error = function () {
    errors.push(Array.prototype.map.call(arguments, String).join(" "));
    return consoleError.apply(console, arguments);
  };
  var SELECTOR = __SELECTOR__, WAIT_FOR = __WAIT_FOR__;
  function svgMarks(svg) {
    var n = 0;
    svg.querySelectorAll("g.role-mark > *").forEach(function (el) {
      if (el.tagName.toLowerCase() === "g") return;
      if (el.tagName.toLowerCase() === "path" && !(el.getAttribute("d") || "").length) return;
      n += 1;
    });
    return n;
  }
  function imageColours(img) {
    if (!img.naturalWidth) return 0;
    var canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    canvas.getContext("2d").drawImage(img, 0, 0);
    return canvasColours(canvas, true);
  }
  function canvasColours(canvas, opaqueOnly) {
    try {
      var data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      var seen = {}, count = 0;
      for (var i = 0; i < data.length && count < 2; i += 4 * 17) {
        if (opaqueOnly && data[i + 3] === 0) continue;
        var key = data[i] + "," + data[i + 1] + "," + data[i + 2] + "," + data[i + 3];
        if (!seen[key]) { seen[key] = true; count += 1; }
      }
      return count;
    } catch (e) { return 0; }
  }
  function report() {
    var charts = Array.prototype.map.call(document.querySelectorAll(SELECTOR), function (el, i) {
      var svg = el.querySelector("svg"), canvas = el.querySelector("canvas");
      return {
        label: el.id || el.getAttribute("data-title") || ("#" + i),
        svg: !!svg, canvas: !!canvas,
        marks: svg ? svgMarks(svg) : 0,
        colours: canvas ? canvasColours(canvas) : 0
      };
    });
    var images = Array.prototype.map.call(document.images, function (img, i) {
      return {
        src: img.getAttribute("src").slice(0, 80), complete: img.complete, width: img.naturalWidth,
        decodes: decoded[i] === true, colours: img.complete ? imageColours(img) : 0
      };
    });
    return {charts: charts, images: images, errors: errors, body: Object.assign({}, document.body.dataset)};
  }
  function finished(r) {
    var chartsDrawn = r.charts.every(function (c) { return c.marks > 0 || c.colours > 1; });
    var imagesDone = r.images.every(function (i, n) { return i.complete && decoded[n] !== undefined; });
    var pageDone = WAIT_FOR === null || document.body.dataset[WAIT_FOR] === "true";
    return chartsDrawn && imagesDone && pageDone;
  }
  var decoded = [];
  window.addEventListener("load", function () {
    var tries = 0;
    // img.decode() rejects an image the browser cannot decode at all.
    Array.prototype.forEach.call(document.images, function (img, i) {
      img.decode().then(function () { decoded[i] = true; }, function () { decoded[i] = false; });
    });
    (function check() {
      var r = report();
      tries += 1;
      if (finished(r) || tries > 200) {
        r.tries = tries;
        document.documentElement.setAttribute("data-probe", JSON.stringify(r));
      } else {
        setTimeout(check, 50);
      }
    })();
  });
})();
</script>
"""


@dataclass(frozen=True)
class Chart:
    """One chart container and what it holds."""

    label: str
    svg: bool
    canvas: bool
    marks: int
    colours: int

    @property
    def drawn(self) -> bool:
        """Whether the chart shows data, not just axes or an empty frame."""
        return self.marks > 0 or self.colours > 1


@dataclass(frozen=True)
class PageImage:
    """One ``<img>`` of the page."""

    src: str
    complete: bool
    width: int
    decodes: bool
    colours: int

    @property
    def decoded(self) -> bool:
        """Whether the browser loaded and decoded it, and it shows something (not one flat colour)."""
        return self.complete and self.width > 0 and self.decodes and self.colours > 1


@dataclass(frozen=True)
class PageReport:
    """What the page drew in Chromium."""

    charts: list[Chart]
    images: list[PageImage]
    errors: list[str]
    body: dict[str, str]

    def problems(self, expected_charts: int | None = None) -> list[str]:
        """Every blank chart, undecoded image and script error, in words (empty when all is well).

        Args:
            expected_charts: How many charts the page should hold; a chart that never got a
                container (its script failed first) is then missing too.
        """
        out = [
            f"chart {c.label} is blank (svg {c.svg}, canvas {c.canvas}, marks {c.marks})"
            for c in self.charts
            if not c.drawn
        ]
        if expected_charts is not None and len(self.charts) != expected_charts:
            out.append(f"{len(self.charts)} chart(s) on the page, expected {expected_charts}")
        out += [
            f"image {i.src}... was not decoded (width {i.width}, decodes {i.decodes}, colours {i.colours})"
            for i in self.images
            if not i.decoded
        ]
        out += [f"script error: {e}" for e in self.errors]
        return out


def chromium() -> str | None:
    """The Chromium executable, or ``None``."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def skip_reason() -> str | None:
    """Why pages cannot be checked here (no Chromium, no ``unshare``, or no network namespace), or ``None``."""
    if chromium() is None:
        return "chromium is not installed (Debian: apt-get install -y --no-install-recommends chromium)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed: Chromium cannot be cut off from the network"
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no unprivileged network namespace here (unshare -rn: {probe.stderr.strip()})"
    return None


def _with_probe(page: str, selector: str, wait_for: str | None) -> str:
    probe = _PROBE.replace("__SELECTOR__", json.dumps(selector)).replace("__WAIT_FOR__", json.dumps(wait_for))
    match = re.search(r"<head[^>]*>", page, flags=re.IGNORECASE)
    if match is None:
        return probe + page
    return page[: match.end()] + probe + page[match.end() :]


def open_page(
    page: Path, chart_selector: str, wait_for: str | None = None, budget_ms: int = 30_000, timeout_s: float = 180
) -> PageReport:
    """Load ``page`` from disk in headless Chromium with no network and report its charts and images.

    Args:
        page: The HTML file.
        chart_selector: CSS selector of the chart containers, e.g. ``figure.chart``.
        wait_for: A ``<body>`` data attribute (in its JavaScript name, e.g. ``chartsDone``) the page
            sets to ``"true"`` once it has drawn; the probe waits for it too.
        budget_ms: Chromium's virtual time budget: the page's timers run this far, then the DOM is dumped.
        timeout_s: Wall-clock limit for Chromium.

    Returns:
        What the probe found.

    Raises:
        AssertionError: When Chromium fails or the probe wrote nothing (the page never loaded).
    """
    exe = chromium()
    assert exe is not None, skip_reason()
    copy = page.with_name(f".{page.stem}.probe.html")
    copy.write_text(_with_probe(page.read_text(encoding="utf-8"), chart_selector, wait_for), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            cmd = ["unshare", "-rn", exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
            cmd += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
            # File pages may read their own images (the probe draws them on a canvas to see them).
            cmd += ["--disable-dev-shm-usage", "--allow-file-access-from-files", f"--user-data-dir={profile}"]
            cmd += [f"--virtual-time-budget={budget_ms}", "--dump-dom", copy.resolve().as_uri()]
            env = {**os.environ, "HOME": profile}
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    finally:
        copy.unlink(missing_ok=True)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-3000:]}"
    found = re.search(r'<html[^>]*\sdata-probe="([^"]*)"', proc.stdout)
    assert found, f"the page never finished loading; chromium said: {proc.stderr[-3000:]}"
    data = json.loads(html.unescape(found.group(1)))
    return PageReport(
        charts=[Chart(**c) for c in data["charts"]],
        images=[PageImage(**i) for i in data["images"]],
        errors=list(data["errors"]),
        body=dict(data["body"]),
    )


def served_skip_reason() -> str | None:
    """Why a page served on loopback cannot be opened here (no Chromium), or ``None``."""
    if chromium() is None:
        return "chromium is not installed (Debian: apt-get install -y --no-install-recommends chromium)"
    return None


def served_page_dom(url: str, budget_ms: int = 30_000, timeout_s: float = 180) -> str:
    """The DOM of a page served on this machine's loopback, as headless Chromium leaves it.

    A page served by a local server (the Prefect UI) cannot be opened from a network namespace of its
    own: its loopback is not this machine's. So Chromium runs in this one, but reaches loopback only:
    every other host name fails to resolve (``--host-resolver-rules``) and every other address goes
    to a proxy on a closed loopback port (Chromium never sends loopback through a proxy).

    Args:
        url: An ``http://127.0.0.1:<port>/...`` address.
        budget_ms: Chromium's virtual time budget: the page's timers run this far (network waits do
            not count), then the DOM is dumped.
        timeout_s: Wall-clock limit for Chromium.

    Returns:
        The page's DOM, serialised.

    Raises:
        AssertionError: When ``url`` is not on loopback, or Chromium fails.
    """
    assert url.startswith("http://127.0.0.1:"), f"only loopback pages are opened: {url}"
    exe = chromium()
    assert exe is not None, served_skip_reason()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
        cmd += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
        cmd += ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9"]
        cmd += ["--disable-dev-shm-usage", f"--user-data-dir={profile}"]
        cmd += [f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "HOME": profile}
        )
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return proc.stdout
