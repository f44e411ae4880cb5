"""The model card's markdown, ``reports/model_card.md``, from the records the stages wrote.

In order: the headline table (data and code versions, model, gate, mAP, export parity, engine), the
evaluation per class and its gate, training, export and the deploy artifacts, the latency table, the
machine, the dataset validation summary and the params. The HTML card (:mod:`stages.reporting.card_html`)
is rendered from this same text.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from stages.core.verdict import failed_checks
from stages.reporting.card_sections import (
    deploy_table,
    engine_cell,
    export_text,
    fmt,
    int8_note,
    latency_table,
    parity_cell,
    trainer_text,
)


class CardInputs(BaseModel):
    """Everything the card says, read by the ``report`` stage: each stage's record as it wrote it."""

    model_config = ConfigDict(frozen=True)

    title: str
    params: dict[str, Any]  # the pipeline's sections of params.yaml
    data_version: str  # in words (stages.reporting.card_sections.data_version)
    commit: str  # the workspace's git commit
    validate_report: dict[str, Any]
    validate_summary: str  # markdown, empty when validate wrote none
    train: dict[str, Any]  # metrics/train.json
    train_facts: dict[str, Any]  # reports/train.json
    evaluate: dict[str, Any]
    export: dict[str, Any]  # the export's numbers and text, merged
    deploy_metrics: dict[str, Any]
    deploy_facts: dict[str, Any]
    engine: dict[str, Any]  # the engine's numbers and text, merged
    benchmark: dict[str, Any]  # stages.reporting.card_sections.merged_benchmark
    env: dict[str, Any]  # the machine's fingerprint (environment stage)


def markdown(card: CardInputs) -> str:
    """The model card's markdown.

    Args:
        card: The records the card is written from.

    Returns:
        The card, with a warning on top when the gate failed or the dataset validation found errors.
    """
    validate, train, train_facts, evaluate = card.validate_report, card.train, card.train_facts, card.evaluate
    export, deploy_metrics, deploy_facts, engine = card.export, card.deploy_metrics, card.deploy_facts, card.engine
    benchmark, env, version = card.benchmark, card.env, card.data_version
    gates = evaluate["gates"]
    parity = export.get("parity")

    out = [
        f"# Model card: {card.title}",
        "",
        "| | |",
        "|---|---|",
        f"| Data version (DVC) | `{version}` |",
        f"| Code version (git) | `{card.commit}` |",
        f"| Model | `{train_facts['model']}`, {train['epochs_run']} epochs, imgsz {card.params['train']['imgsz']} |",
        f"| Gate | **{'PASSED' if gates['passed'] else 'FAILED: not deployable'}** |",
        f"| mAP50 / mAP50-95 | {fmt(evaluate['map50'])} / {fmt(evaluate['map50_95'])} |",
        f"| Export parity | {parity_cell(parity)} |",
        f"| TensorRT engine | {engine_cell(engine)} |",
        "",
        "## Evaluation",
        "",
        f"Precision {fmt(evaluate['precision'])}, recall {fmt(evaluate['recall'])}, "
        f"{evaluate['instances']} validation boxes.",
        "",
        "| class | boxes | precision | recall | AP50 | AP50-95 |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in evaluate["per_class"].items():
        out.append(
            f"| {name} | {c['instances']} | {fmt(c['precision'])} | {fmt(c['recall'])} | "
            f"{fmt(c['ap50'])} | {fmt(c['ap50_95'])} |"
        )
    out += ["", "### Gate", "", "| check | value | threshold | result |", "|---|---|---|---|"]
    for name, check in gates["checks"].items():
        out.append(
            f"| {name} | {fmt(check['value'])} | {check['threshold']} | {'pass' if check['passed'] else '**FAIL**'} |"
        )
    out += [
        "",
        "## Training",
        "",
        f"{train['epochs_run']} epochs in {train['seconds']:.0f} s on `{train_facts['device']}` "
        f"(AMP {train_facts['amp']}){trainer_text(train_facts)}; best epoch {train['best_epoch']}. "
        f"{train['distributed']['world_size']} training process(es) on {train['distributed']['nnodes']} node(s)"
        f"{', ' + train_facts['backend'] if train_facts['backend'] != 'none' else ''}; global batch "
        f"{train['recipe']['global_batch']} ({train['recipe']['images_per_step']} images per optimizer step); "
        f"{train_facts['optimizer']} at peak lr {train['recipe']['lr_peak']:.4g} (rule {train_facts['lr_rule']}, "
        f"SyncBN {train_facts['sync_bn']}); last epoch {train['throughput']['images_per_s']:.1f} images/s, "
        f"{100 * train['throughput']['dataloader_wait_share']:.0f}% of it waiting for data.",
        "",
        "## Export",
        "",
        export_text(export),
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
    summary = card.validate_summary
    out += [
        summary.rstrip(),
        "",
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump(card.params, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    if not validate.get("ok", False):
        out.insert(2, "> **Warning:** the dataset validation report has errors.\n")
    if not gates["passed"]:
        out.insert(2, "> **Not deployable:** the quality gate failed: " + "; ".join(failed_checks(gates)) + ".\n")
    return "\n".join(out)
