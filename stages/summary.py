"""``metrics/summary.json``: the few numbers people compare across experiments.

``dvc exp show`` and ``dvc metrics diff`` draw a column for every number of every file that
``dvc.yaml`` declares as metrics. The stages' own files hold every number they measured (latency
percentiles, round spreads, parity differences, losses per epoch...): dozens of columns, most of
which differ on every run, so two experiments that differ in one param filled a table 2,700
characters wide. So ``dvc.yaml`` declares this one file as the pipeline's metrics, and the stages'
files stay where they are as cached outputs, numbers still, for ``dvc metrics show <file>`` and the
model card.

Keys, kept short because each is a column header:

- ``gate``: 1 when every quality gate passed, else 0; ``deployable``: how many deploy artifacts
  passed their accuracy gate.
- ``map50``, ``map50_95``: the PyTorch model on the val split (``evaluate``).
- ``ap.<class>``: each class's AP50-95.
- ``ms.<artifact>``: the forward pass's p50 latency (``model_ms``) of each deploy artifact on the
  CPU, under the artifact's name (``onnx-fp32``, ``onnx-int8``, ...); GPU rows under their benchmark
  row's name (``pytorch-cuda``, ``tensorrt``, ...). The PyTorch checkpoint on the CPU is the
  reference, not a deploy artifact: it stays in ``metrics/benchmark.json``.
- ``mb.<artifact>``: each deployable artifact's size in MB.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stages.benchmark import ROWS

# The row that times the PyTorch checkpoint on the CPU: the reference, not a deploy artifact.
REFERENCE_ROW = "pytorch-cpu"


def latency_key(row: str) -> str:
    """The summary's name for a benchmark row: the deploy artifact it opens on the CPU, else the row's name."""
    spec = ROWS.get(row)
    if spec is not None and spec.device == "cpu" and spec.artifact not in ("checkpoint", "engine"):
        return spec.artifact
    return row


def summarize(
    evaluate: Mapping[str, Any],
    deploy: Mapping[str, Any] | None,
    benchmark: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The numbers of ``metrics/summary.json`` from the stages' own metrics files.

    Args:
        evaluate: ``metrics/evaluate.json``.
        deploy: ``metrics/deploy.json``, or ``None`` when nothing was exported (failed gate).
        benchmark: ``metrics/benchmark.json``, or ``None`` when nothing was measured.

    Returns:
        The summary, numbers only.
    """
    artifacts = {name: m for name, m in (deploy or {}).items() if name != "pytorch"}
    deployable = {name: m for name, m in artifacts.items() if m.get("deployable")}
    summary: dict[str, Any] = {
        "gate": int(evaluate["gates"]["passed"]),
        "deployable": len(deployable),
        "map50": evaluate["map50"],
        "map50_95": evaluate["map50_95"],
        "ap": {name: c["ap50_95"] for name, c in evaluate.get("per_class", {}).items()},
    }
    latency = {
        latency_key(row): numbers["model_ms"]
        for row, numbers in (benchmark or {}).get("backends", {}).items()
        if row != REFERENCE_ROW and "model_ms" in numbers
    }
    if latency:
        summary["ms"] = latency
    sizes = {name: m["size_mb"] for name, m in deployable.items() if m.get("size_mb") is not None}
    if sizes:
        summary["mb"] = sizes
    return summary
