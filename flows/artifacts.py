"""Prefect artifacts of a pipeline run: gate verdict, metrics, deploy artifacts, latency table and stage runs.

They are read from the files the stages wrote, so they show exactly what DVC cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.dvc_runner import StageRun
from stages.core.common import read_json
from stages.core.config import Params
from stages.core.data_version import production_metadata
from stages.core.verdict import describe
from stages.report import merged_benchmark


def _read(path: Path) -> dict[str, Any] | None:
    return read_json(path, default=None)


METRICS = ("map50", "map50_95", "precision", "recall")


def production_metrics(workspace: Path, params: Params) -> dict[str, Any] | None:
    """Production's version and metrics, read before this run may replace them."""
    meta = production_metadata(params.paths.resolve("production", workspace))
    return {"version": meta["version"], **meta["metrics"]} if meta else None


def diff_rows(evaluate: dict[str, Any], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """This run's metrics next to production's, with the change."""
    return [
        {
            "metric": m,
            f"production v{baseline['version']}": baseline[m],
            "this run": evaluate[m],
            "change": round(evaluate[m] - baseline[m], 6),
        }
        for m in METRICS
    ]


def gate_rows(evaluate: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per gate check."""
    return [
        {"check": name, "value": c["value"], "threshold": c["threshold"], "passed": bool(c["passed"])}
        for name, c in evaluate["gates"]["checks"].items()
    ]


def latency_rows(benchmark: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per backend measured."""
    return [
        {
            "backend": r["backend"],
            "provider": r["provider"],
            "precision": r["precision"],
            "batch": r["batch"],
            "p50_ms": r["latency_ms"]["p50"],
            "p90_ms": r["latency_ms"]["p90"],
            "p99_ms": r["latency_ms"]["p99"],
            "end_to_end_ms": r.get("end_to_end_ms"),
            "cv": r.get("cv"),
            "stable": bool(r.get("stable", True)),
            "throughput_ips": r["throughput_ips"],
        }
        for r in benchmark.get("backends", {}).values()
    ]


def deploy_rows(metrics: dict[str, Any], facts: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per deploy artifact: its mAP against the PyTorch model's, and whether it may ship."""
    return [
        {
            "artifact": name,
            "precision": f["precision"],
            "map50_95": metrics[name].get("map50_95"),
            "drop_points": None if metrics[name].get("drop_map50_95") is None else metrics[name]["drop_map50_95"] * 100,
            "size_mb": metrics[name].get("size_mb"),
            "deployable": f["deployable"],
            "reason": f["reason"],
        }
        for name, f in facts.items()
    ]


def metrics_markdown(evaluate: dict[str, Any], export: dict[str, Any] | None) -> str:
    """A short markdown summary of the evaluation (and export parity when there is one)."""
    verdict = "PASSED" if evaluate["gates"]["passed"] else "FAILED"
    lines = [
        f"## Gate {verdict}",
        "",
        f"mAP50 **{evaluate['map50']:.4f}**, mAP50-95 **{evaluate['map50_95']:.4f}**, "
        f"precision {evaluate['precision']:.4f}, recall {evaluate['recall']:.4f}",
        "",
    ]
    lines += [f"- {'✅' if c['passed'] else '❌'} {describe(n, c)}" for n, c in evaluate["gates"]["checks"].items()]
    if export and export.get("parity"):
        p = export["parity"]
        lines += [
            "",
            f"Export parity {'passed' if p['passed'] else 'FAILED'}: max |Δbox| {p['max_abs_diff_boxes_px']:.3g} px, "
            f"max |Δscore| {p['max_abs_diff_scores']:.3g}",
        ]
    return "\n".join(lines)


def publish(
    workspace: Path,
    params: Params,
    runs: list[StageRun],
    failed: str | None = None,
    promotion_attempted: bool = False,
    baseline: dict[str, Any] | None = None,
) -> list[str]:
    """Create the run's artifacts from the outputs of the stages this run completed.

    Outputs of stages that did not complete in this run (left from an earlier one) are not shown,
    except the failed stage's own report when it wrote one (a failed gate writes its verdict).

    Args:
        workspace: The workspace root.
        params: The workspace's params (for the output paths).
        runs: The stages completed in this run, ran or reused from the cache.
        failed: The stage that failed, if one did.
        promotion_attempted: Whether this run tried to promote (then ``reports/promotion.json`` is its).
        baseline: Production's version and metrics as they were when the run started.

    Returns:
        The keys of the artifacts created.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    paths = params.paths
    created = []
    create_table_artifact(
        key="stage-runs",
        table=[{"stage": r.stage, "ran": r.ran, "seconds": r.seconds} for r in runs],
        description="Stages DVC ran in this flow run (ran=false: cached results reused)",
    )
    created.append("stage-runs")
    done = {r.stage for r in runs}
    shown = "evaluate" in done or failed == "evaluate"
    evaluate = _read(paths.resolve("evaluate_metrics", workspace)) if shown else None
    if evaluate is not None:
        create_table_artifact(key="gate-verdict", table=gate_rows(evaluate), description="Quality gate checks")
        export = _read(paths.resolve("export_metrics", workspace)) if "export" in done else None
        create_markdown_artifact(
            key="evaluation-metrics", markdown=metrics_markdown(evaluate, export), description="Evaluation"
        )
        created += ["gate-verdict", "evaluation-metrics"]
        if baseline is not None:
            create_table_artifact(
                key="metrics-vs-production", table=diff_rows(evaluate, baseline), description="Against production"
            )
            created.append("metrics-vs-production")
    deploy = _read(paths.resolve("deploy_metrics", workspace)) if "export" in done else None
    facts = _read(paths.resolve("deploy_report", workspace)) if deploy else None
    if deploy and facts:
        create_table_artifact(
            key="deploy-artifacts", table=deploy_rows(deploy, facts), description="Deploy artifacts, measured and gated"
        )
        created.append("deploy-artifacts")
    benchmark = _read(paths.resolve("benchmark_metrics", workspace)) if "benchmark" in done else None
    if benchmark is not None:
        benchmark = merged_benchmark(benchmark, _read(paths.resolve("benchmark_report", workspace)) or {})
        create_table_artifact(key="latency", table=latency_rows(benchmark), description="Latency per backend")
        created.append("latency")
    card = paths.resolve("model_card", workspace)
    if "report" in done and card.is_file():
        create_markdown_artifact(key="model-card", markdown=card.read_text(encoding="utf-8"), description=str(card))
        created.append("model-card")
    promotion = _read(paths.resolve("promotion_report", workspace)) if promotion_attempted else None
    if promotion is not None:
        outcome = (
            f"version {promotion['version']}"
            if promotion["promoted"]
            else f"unchanged (already version {promotion['version']})"
            if promotion.get("unchanged")
            else "refused"
        )
        create_table_artifact(
            key="promotion",
            table=[{"check": c["name"], "passed": c["passed"], "message": c["message"]} for c in promotion["checks"]],
            description=f"Promotion to production: {outcome}",
        )
        created.append("promotion")
    return created


def publish_skip(reason: str) -> None:
    """Say why a run ended early (the data had not changed)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key="data-check", markdown=f"## Skipped\n\n{reason}", description="Data-change check")
