"""Stage ``report``: write the model card, ``reports/model_card.md``, and ``reports/model_card.html``.

The card gathers what a reviewer needs to decide whether to deploy: the data version (DVC's hash of
the input dataset, read from ``dvc.lock``, or from ``data/dataset.dvc`` outside a DVC run), the
params, the dataset validation summary, training and evaluation metrics, the gate verdict, export
parity, the engine build and the latency table, and the machine the numbers come from. The HTML card
(``stages/reporting/card_html.py``) says the same with the pictures: validation predictions, PR curve, confusion
matrix, training curves and latency, in one file that opens offline.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from stages.core.common import git_commit, read_json, stage_main, write_text
from stages.core.config import PIPELINE_SECTIONS, Params
from stages.core.data_version import recorded_data_version
from stages.core.errors import PipelineError
from stages.core.verdict import failed_checks
from stages.reporting import card_html

log = logging.getLogger(__name__)

STAGE = "report"


class ReportConfig(BaseModel):
    """Every input of the model card and its output path."""

    model_config = ConfigDict(frozen=True)

    title: str
    params: dict[str, Any]
    workspace: Path
    dataset: str
    validate_report: Path
    validate_summary: Path
    train_metrics: Path
    train_report: Path
    evaluate_metrics: Path
    export_metrics: Path
    export_report: Path
    deploy_metrics: Path
    deploy_report: Path
    engine_metrics: Path
    engine_report: Path
    benchmark_metrics: Path
    benchmark_report: Path
    environment: Path
    train_plot: Path
    lr_plot: Path
    pr_curve_plot: Path
    confusion_plot: Path
    val_predictions_plot: Path
    latency_plot: Path
    output: Path
    output_html: Path

    @classmethod
    def from_params(cls, params: Params, root: Path) -> ReportConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        p = params.paths
        return cls(
            title=params.report.title,
            params={k: v for k, v in params.as_dict().items() if k in PIPELINE_SECTIONS},
            workspace=root,
            dataset=p.dataset,
            validate_report=p.resolve("validate_report", root),
            validate_summary=p.resolve("validate_summary", root),
            train_metrics=p.resolve("train_metrics", root),
            train_report=p.resolve("train_report", root),
            evaluate_metrics=p.resolve("evaluate_metrics", root),
            export_metrics=p.resolve("export_metrics", root),
            export_report=p.resolve("export_report", root),
            deploy_metrics=p.resolve("deploy_metrics", root),
            deploy_report=p.resolve("deploy_report", root),
            engine_metrics=p.resolve("engine_metrics", root),
            engine_report=p.resolve("engine_report", root),
            benchmark_metrics=p.resolve("benchmark_metrics", root),
            benchmark_report=p.resolve("benchmark_report", root),
            environment=p.resolve("environment", root),
            train_plot=p.resolve("train_plot", root),
            lr_plot=p.resolve("lr_plot", root),
            pr_curve_plot=p.resolve("pr_curve_plot", root),
            confusion_plot=p.resolve("confusion_plot", root),
            val_predictions_plot=p.resolve("val_predictions_plot", root),
            latency_plot=p.resolve("latency_plot", root),
            output=p.resolve("model_card", root),
            output_html=p.resolve("model_card_html", root),
        )


class ReportResult(BaseModel):
    """Where the card went and the headline facts in it."""

    path: Path
    html: Path
    data_version: str
    gate_passed: bool


def data_version(workspace: Path, dataset: str) -> str:
    """DVC's hash of the dataset this pipeline ran on, described for a reader."""
    found = recorded_data_version(workspace, dataset)
    if found is None:
        return "unknown: the dataset is not tracked by DVC and the pipeline did not run through DVC"
    return f"{found.md5} ({found.nfiles} files, {found.size} bytes; from {found.source})"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def merged_benchmark(numbers: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """``metrics/benchmark.json`` and ``reports/benchmark.json`` as one record per backend, with the skips."""
    facts = text.get("backends", {})
    backends = {
        name: {"backend": name, **row, **facts.get(name, {})} for name, row in numbers.get("backends", {}).items()
    }
    return {"backends": backends, "skipped": text.get("skipped", {})}


def latency_table(benchmark: dict[str, Any]) -> list[str]:
    """Markdown rows of the latency table, and a warning under it for every row that is not stable."""
    columns = ["backend", "provider", "device", "precision", "threads", "batch", "imgsz"]
    columns += ["p50 ms", "p90 ms", "end-to-end ms", "cv", "stable", "img/s"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    unstable = []
    for r in benchmark.get("backends", {}).values():
        lat = r["latency_ms"]
        lines.append(
            f"| {r['backend']} | {r['provider']} | {r['device']} | {r['precision']} | {_fmt(r.get('threads'))} | "
            f"{r['batch']} | {r['imgsz']} | {lat['p50']:.2f} | {lat['p90']:.2f} | {_fmt(r.get('end_to_end_ms'), 2)} | "
            f"{r['cv']:.2f} | {'yes' if r['stable'] else '**NO**'} | {r['throughput_ips']:.1f} |"
        )
        if not r["stable"]:
            unstable.append(r["backend"])
    if unstable:
        lines += [
            "",
            f"**Not stable:** {', '.join(unstable)}: the rounds disagree (cv above 0.10, or a p50 over 3 "
            "times the fastest call); the machine was busy. Rerun before comparing.",
        ]
    return lines


def int8_note(env: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """The CPU each INT8 artifact was built for and how that was chosen, and whether this CPU is one.

    An artifact built for VNNI CPUs (8-bit weights) loses accuracy on a CPU without VNNI, whose 16-bit
    pair sums saturate: the card says so when the machine it is written on is such a CPU.
    """
    built = {name: f for name, f in facts.items() if f["precision"] == "int8"}
    if not built:
        return []
    found = env.get("cpu_int8") or []
    lines = []
    for name, f in built.items():
        cpu = f.get("int8_cpu")
        if not cpu:
            continue
        weights = "7-bit weights, which cannot saturate" if cpu["reduce_range"] else "full 8-bit weights"
        flags = ", ".join(cpu["machine_int8_flags"]) or "none"
        lines.append(
            f"{name} is built for **{cpu['target']}** CPUs ({weights}; chosen by {cpu['chosen_by']}; "
            f"built on {cpu['machine']}, INT8 flags: {flags})."
        )
        if cpu["target"] == "vnni" and not found:
            lines.append(
                f"**This CPU has no VNNI:** {name}'s 8-bit products can saturate here and lose accuracy; "
                "build it with deploy.int8.target_cpu: no-vnni for such CPUs."
            )
    if found:
        lines.append(f"This CPU has {', '.join(found)}: INT8 convolutions run on integer dot-product instructions.")
    else:
        lines.append(
            "This CPU reports no integer dot-product extension (VNNI, AMX, dot-product): INT8 is not expected "
            "to be faster here; the latency table says what it measured."
        )
    return [*(f"{line}\n" for line in lines[:-1]), lines[-1], ""]


def deploy_table(metrics: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """Markdown rows of the deploy artifacts: accuracy against the PyTorch model, size, and the verdict."""
    if not facts:
        return ["Nothing was built: nothing was exported."]
    reference = metrics["pytorch"]
    lines = [
        f"PyTorch model, same preprocessing, NMS and mAP code: mAP50 {reference['map50']:.4f}, "
        f"mAP50-95 {reference['map50_95']:.4f}.",
        "",
        "| artifact | precision | runtime | mAP50 | mAP50-95 | drop (points) | size MB | deployable | why |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in facts.items():
        m = metrics[name]
        drop = m.get("drop_map50_95")
        share = m.get("integer_conv_share")
        lines.append(
            f"| {name} | {f['precision']} | {f.get('provider') or '—'} | "
            f"{_fmt(m.get('map50'))} | {_fmt(m.get('map50_95'))} | "
            f"{'—' if drop is None else f'{drop * 100:+.2f}'} | {_fmt(m.get('size_mb'), 2)} | "
            f"{'yes' if f['deployable'] else '**no**'} | {f['reason']}"
            f"{'; ' + f['scheme'] if f.get('scheme') else ''}"
            f"{'' if share is None else f'; {share:.0%} of convolutions run as integer ops'} |"
        )
    return lines


def _engine_cell(engine: dict[str, Any]) -> str:
    if engine["status"] != "built":
        return f"{engine['status']}: {engine.get('reason')}"
    verdict = "deployable" if engine.get("deployable") else "**not deployable** (over deploy.max_drop)"
    return (
        f"built, {engine['precision']}, TensorRT {engine['tensorrt']} on {engine['gpu']}; mAP50-95 "
        f"{_fmt(engine.get('map50_95'))}, a drop of {100 * (engine.get('drop_map50_95') or 0):.2f} points: {verdict}"
    )


def _parity_cell(parity: dict[str, Any] | None) -> str:
    if parity is None:
        return "not measured: nothing was exported"
    return (
        f"{'passed' if parity['passed'] else 'FAILED'} (max Δbox {parity['max_abs_diff_boxes_px']:.2e} px, "
        f"max Δscore {parity['max_abs_diff_scores']:.2e})"
    )


def _export_text(export: dict[str, Any]) -> str:
    if not export.get("exported"):
        return "Nothing was exported: the model failed the evaluation gate, so it is not deployable."
    parity = export["parity"]
    return (
        f"ONNX opset {export['opset']}, {export['size_mb']} MB, batch {export['batch']}"
        f"{' (dynamic)' if export['dynamic'] else ''}; parity measured with {export['onnxruntime_provider']} "
        f"against PyTorch on {parity['images']} validation images: max |Δ| boxes "
        f"{parity['max_abs_diff_boxes_px']:.3g} px, scores {parity['max_abs_diff_scores']:.3g}, "
        f"top-1 agreement {100 * parity['top_class_agreement']:.0f}%."
    )


def render(cfg: ReportConfig) -> tuple[str, str, bool]:
    """The card's markdown, the data version, and the gate verdict."""
    validate = read_json(cfg.validate_report, stage=STAGE)
    train = read_json(cfg.train_metrics, stage=STAGE)
    train_facts = read_json(cfg.train_report, stage=STAGE)
    evaluate = read_json(cfg.evaluate_metrics, stage=STAGE)
    # A stage's numbers (metrics/) and its text (reports/) side by side, as the card prints them.
    export = read_json(cfg.export_metrics, stage=STAGE) | read_json(cfg.export_report, stage=STAGE)
    deploy_metrics = read_json(cfg.deploy_metrics, stage=STAGE)
    deploy_facts = read_json(cfg.deploy_report, stage=STAGE)
    engine = read_json(cfg.engine_metrics, stage=STAGE) | read_json(cfg.engine_report, stage=STAGE)
    benchmark = merged_benchmark(
        read_json(cfg.benchmark_metrics, stage=STAGE), read_json(cfg.benchmark_report, stage=STAGE)
    )
    env = read_json(cfg.environment, stage=STAGE)
    version = data_version(cfg.workspace, cfg.dataset)
    gates = evaluate["gates"]
    parity = export.get("parity")

    out = [
        f"# Model card: {cfg.title}",
        "",
        "| | |",
        "|---|---|",
        f"| Data version (DVC) | `{version}` |",
        f"| Code version (git) | `{git_commit(cfg.workspace)}` |",
        f"| Model | `{train_facts['model']}`, {train['epochs_run']} epochs, imgsz {cfg.params['train']['imgsz']} |",
        f"| Gate | **{'PASSED' if gates['passed'] else 'FAILED: not deployable'}** |",
        f"| mAP50 / mAP50-95 | {_fmt(evaluate['map50'])} / {_fmt(evaluate['map50_95'])} |",
        f"| Export parity | {_parity_cell(parity)} |",
        f"| TensorRT engine | {_engine_cell(engine)} |",
        "",
        "## Evaluation",
        "",
        f"Precision {_fmt(evaluate['precision'])}, recall {_fmt(evaluate['recall'])}, "
        f"{evaluate['instances']} validation boxes.",
        "",
        "| class | boxes | precision | recall | AP50 | AP50-95 |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in evaluate["per_class"].items():
        out.append(
            f"| {name} | {c['instances']} | {_fmt(c['precision'])} | {_fmt(c['recall'])} | "
            f"{_fmt(c['ap50'])} | {_fmt(c['ap50_95'])} |"
        )
    out += ["", "### Gate", "", "| check | value | threshold | result |", "|---|---|---|---|"]
    for name, check in gates["checks"].items():
        out.append(
            f"| {name} | {_fmt(check['value'])} | {check['threshold']} | {'pass' if check['passed'] else '**FAIL**'} |"
        )
    out += [
        "",
        "## Training",
        "",
        f"{train['epochs_run']} epochs in {train['seconds']:.0f} s on `{train_facts['device']}` "
        f"(AMP {train_facts['amp']}); best epoch {train['best_epoch']}. "
        f"{train['distributed']['world_size']} training process(es) on {train['distributed']['nnodes']} node(s)"
        f"{', ' + train_facts['backend'] if train_facts['backend'] != 'none' else ''}; global batch "
        f"{train['recipe']['global_batch']} ({train['recipe']['images_per_step']} images per optimizer step); "
        f"{train_facts['optimizer']} at peak lr {train['recipe']['lr_peak']:.4g} (rule {train_facts['lr_rule']}, "
        f"SyncBN {train_facts['sync_bn']}); last epoch {train['throughput']['images_per_s']:.1f} images/s, "
        f"{100 * train['throughput']['dataloader_wait_share']:.0f}% of it waiting for data.",
        "",
        "## Export",
        "",
        _export_text(export),
        "",
        "### Deploy artifacts",
        "",
        *deploy_table(deploy_metrics, deploy_facts),
        "",
        *int8_note(env, deploy_facts),
        "## Latency",
        "",
        *latency_table(benchmark),
        "",
    ]
    if benchmark.get("skipped"):
        out += [
            "Not measured here: " + ", ".join(f"{k} ({v})" for k, v in benchmark["skipped"].items()) + ".",
            "",
        ]
    gpus = ", ".join(f"{g['name']} (driver {g['driver']})" for g in env["gpus"]) or "none"
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    out += [
        f"Machine: {env['cpu']} ({env['cpu_count']} cores), GPUs: {gpus}; {env['system']}, "
        f"Python {env['python']}; {pkgs}.",
        "",
    ]
    summary = cfg.validate_summary.read_text(encoding="utf-8") if cfg.validate_summary.is_file() else ""
    out += [
        summary.rstrip(),
        "",
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump(cfg.params, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    if not validate.get("ok", False):
        out.insert(2, "> **Warning:** the dataset validation report has errors.\n")
    if not gates["passed"]:
        out.insert(2, "> **Not deployable:** the quality gate failed: " + "; ".join(failed_checks(gates)) + ".\n")
    return "\n".join(out), version, bool(gates["passed"])


def run(cfg: ReportConfig) -> ReportResult:
    """Write the model card.

    Args:
        cfg: Inputs and output path.

    Returns:
        The card's path and headline facts.

    Raises:
        PipelineError: When an earlier stage's output is missing.
    """
    text, version, passed = render(cfg)
    write_text(cfg.output, text)
    pictures = [
        cfg.train_plot,
        cfg.lr_plot,
        cfg.pr_curve_plot,
        cfg.confusion_plot,
        cfg.val_predictions_plot,
        cfg.latency_plot,
    ]
    missing = [p for p in pictures if not p.is_file()]
    if missing:
        raise PipelineError(
            "a picture of the HTML card is missing; run 'dvc repro' (train, evaluate and benchmark write them)",
            stage=STAGE,
            path=missing[0],
        )
    page = card_html.render(
        f"Model card: {cfg.title}",
        text,
        card_html.figures(*pictures),
        read_json(cfg.environment, stage=STAGE),
    )
    write_text(cfg.output_html, page)
    log.info(
        "wrote %s and %s (data %s, gate %s)", cfg.output, cfg.output_html, version, "passed" if passed else "failed"
    )
    return ReportResult(path=cfg.output, html=cfg.output_html, data_version=version, gate_passed=passed)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, ReportConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
