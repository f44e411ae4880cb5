"""Stage ``report``: write the model card, ``reports/model_card.md``, and ``reports/model_card.html``.

The card gathers what a reviewer needs to decide whether to deploy: the data version (DVC's hash of
the input dataset, read from ``dvc.lock``, or from ``data/dataset.dvc`` outside a DVC run), the
params, the dataset validation summary, training and evaluation metrics, the gate verdict, export
parity, the engine build and the latency table, and the machine the numbers come from. The HTML card
(``stages/reporting/card_html.py``) says the same with the pictures: validation predictions, PR curve, confusion
matrix, training curves and latency, in one file that opens offline.

The card's content lives in ``stages.reporting`` (``card_sections``: tables and notes; ``card_markdown``:
the card in order); this entry reads the stages' records and writes the two files.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.core.common import git_commit, read_json, stage_main, write_text
from stages.core.config import PIPELINE_SECTIONS, Params
from stages.core.errors import PipelineError
from stages.data import sample_defaults
from stages.reporting import card_html
from stages.reporting.card_markdown import CardInputs, markdown

# merged_benchmark is also the entry's public name for flows.artifacts (flows import only stage entries).
from stages.reporting.card_sections import data_version, merged_benchmark

log = logging.getLogger(__name__)

STAGE = "report"


class ReportConfig(BaseModel):
    """Every input of the model card and its output path."""

    model_config = ConfigDict(frozen=True)

    title: str
    top_classes: int
    params: dict[str, Any]
    sample_values: dict[str, Any] = {}  # values made for the sample (stages/data/sample_defaults.py)
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
            top_classes=params.report.top_classes,
            params={k: v for k, v in params.as_dict().items() if k in PIPELINE_SECTIONS},
            sample_values=sample_defaults.current_values(params),
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


def render(cfg: ReportConfig) -> tuple[str, str, bool]:
    """The card's markdown, the data version, and the gate verdict.

    Raises:
        PipelineError: When an earlier stage's output is missing.
    """
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
    summary = cfg.validate_summary.read_text(encoding="utf-8") if cfg.validate_summary.is_file() else ""
    card = CardInputs(
        title=cfg.title,
        params=cfg.params,
        data_version=version,
        commit=git_commit(cfg.workspace),
        validate_report=validate,
        validate_summary=summary,
        train=train,
        train_facts=train_facts,
        evaluate=evaluate,
        export=export,
        deploy_metrics=deploy_metrics,
        deploy_facts=deploy_facts,
        engine=engine,
        benchmark=benchmark,
        env=env,
    )
    text = with_sample_note(markdown(card), list(evaluate["per_class"]), cfg.sample_values)
    return text, version, bool(evaluate["gates"]["passed"])


def with_sample_note(card: str, class_names: list[str], sample_values: dict[str, Any]) -> str:
    """The card with a note under its title naming params made for the sample, when the data is other."""
    note = sample_defaults.card_note(sample_defaults.in_place(class_names, sample_values))
    if not note:
        return card
    title, _, rest = card.partition("\n\n")
    return f"{title}\n\n{note}\n{rest}"


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
        card_html.figures(
            *pictures,
            per_class=read_json(cfg.evaluate_metrics, stage=STAGE)["per_class"],
            top_classes=cfg.top_classes,
        ),
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
