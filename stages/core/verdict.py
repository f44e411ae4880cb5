"""The quality gate's recorded verdict (``metrics/evaluate.json``'s ``gates``) in words.

Core: read by the stages that refuse on a failed gate (export, report, gate, promote) and by the
flows, none of which may import another stage entry (the layers in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def describe(name: str, check: Mapping[str, Any]) -> str:
    """One check in words, e.g. ``map50 0.3120 < 0.5`` (from the numbers in ``metrics/evaluate.json``)."""
    value, threshold = check["value"], check["threshold"]
    if value is None:
        return f"{name}: no validation boxes to measure it on (needs ≥ {threshold})"
    return f"{name} {value:.4f} {'≥' if check['passed'] else '<'} {threshold}"


def failed_checks(gates: Mapping[str, Any]) -> list[str]:
    """Every failed check of a recorded verdict (``metrics/evaluate.json``'s ``gates``), in words."""
    return [describe(name, c) for name, c in gates["checks"].items() if not c["passed"]]
