"""The one way a benchmark script reports: print its table and append it to its results file."""

from __future__ import annotations

from pathlib import Path


def publish(table: str, results: Path) -> None:
    """Print ``table`` and append it to ``results`` (created with its folder if missing)."""
    print(table)
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a", encoding="utf-8") as out:
        out.write(table + "\n")
