"""Promotion: replace the production model with the one the chain just produced, only when it earns it.

Not a DVC stage: production is what the pipeline is compared against (the no-regression gate reads
its baseline from here), so it cannot be one of the pipeline's own outputs. The Prefect flow runs
it after a passing chain, CI runs ``python -m stages.promote`` after ``dvc repro``.

First, production must be the one ``models/production.dvc`` records: a folder that is missing (a
fresh clone before ``dvc pull``) or differs would make the no-regression check compare against
nothing or against the wrong model, so promotion refuses and names the command that restores it.
A candidate that is already production (same weights and ONNX file) changes nothing and says so.

Checks, all required: the pipeline's results are up to date (``dvc status``), the evaluation gate
passed, export parity passed, the FP32 ONNX model is deployable (its mAP within ``deploy.max_drop``
of the PyTorch model's), and the model's mAP50-95 is not below production's by more than
``promote.max_map50_95_drop``. The other deploy artifacts (CPU INT8, OpenVINO, TorchScript, the
TensorRT engine with its sidecar) go to production when they are deployable and are left out when
not. Every attempt writes ``reports/promotion.json``; a refusal exits non-zero naming each failed
check and leaves production untouched.

A promotion is a transaction. The new folder is assembled beside the old one (``.production.staging``)
and checked against what was read (a run that did not hold the workspace may have changed the files
since); a journal (``.production.promotion.json``) is written; two renames swap it in; then
``dvc add`` versions it, and the pointer ``models/production.dvc`` is committed to git (that file
alone) and tagged ``production-v<N>``, so a ``dvc exp apply``, a checkout or a ``dvc gc --all-tags``
cannot lose a promoted version. Where ``dvc.yaml`` declares the production folder as an artifact
(``artifacts:``), the commit is also version ``v<N>.0.0`` of it and assigned to stage ``prod`` in
GTO's tag format, so ``dvc artifacts get <repo> <name> --stage prod`` fetches production anywhere.
Killed at any point, the next promotion (or ``python -m stages.promote --recover``) finishes it or
undoes it from the journal: production is then the old version or the new one, complete, its folder
and pointer agreeing, and nothing is left beside it. A failing ``dvc add`` or commit undoes the swap.
The version number follows every version ever tagged, and a pointer older than the newest tag (an
experiment applied, a checkout) is refused with the command that restores it.
The CLI holds the workspace lock (``stages/core/lock.py``) for the whole run.

Production records the class names it detects (from the prepared ``data.yaml``) and its data version.
A candidate whose class names differ (order included: the ids) is refused before any comparison of
mAPs, naming both and the command that starts a new production line: ``python -m stages.promote
--new-line "<reason>"`` promotes it as the next version (the same counter: every ``production-v<N>``
and ``v<N>.0.0`` keeps naming one model, and the registry's ``prod`` stage moves to it) without the
no-regression check, records the line's number and reason in ``metadata.json`` and
``reports/promotion.json``, and leaves every earlier version fetchable by its tags. A candidate of
production's classes trained on another data version is promoted as usual; the change is recorded.

This module is the entry (configuration, ``run``, the CLI); the work is in ``stages/promotion/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.core.common import read_json, stage_main, write_json
from stages.core.config import Params, PromoteParams
from stages.core.data_version import production_metadata, recorded_data_version
from stages.core.errors import PipelineError
from stages.core.lock import hold_workspace
from stages.promotion import transaction
from stages.promotion.checks import (
    MODEL_FILES,
    already_in_production,
    production_mismatch,
    promotion_checks,
    stale_stages,
)
from stages.promotion.lineage import CHECK as LINEAGE_CHECK
from stages.promotion.lineage import Lineage, candidate_classes, lineage_check
from stages.promotion.outcome import PromoteResult, PromotionCheck, PromotionRefused
from stages.promotion.staging import assemble, digests, write_metadata
from stages.promotion.tags import latest_tag, registry_name, tag_mismatch
from stages.promotion.transaction import STEPS, Journal, places

__all__ = [
    "MODEL_FILES",
    "STEPS",
    "PromoteConfig",
    "PromoteResult",
    "PromotionCheck",
    "PromotionRefused",
    "already_in_production",
    "main",
    "production_mismatch",
    "promotion_checks",
    "recover",
    "run",
    "tag_mismatch",
]

log = logging.getLogger(__name__)

STAGE = "promote"


class PromoteConfig(BaseModel):
    """What to promote, where to, and the rules."""

    model_config = ConfigDict(frozen=True)

    workspace: Path
    dataset: str
    production: Path
    report: Path
    files: dict[str, Path]  # name in production -> file in the workspace
    data_yaml: Path  # the prepared data.yaml: the candidate's class names
    engine_dir: Path
    deploy_dir: Path
    options: PromoteParams
    lock_timeout_s: float = 60.0
    new_line: str | None = None  # --new-line: why the candidate starts a new production line

    @classmethod
    def from_params(cls, params: Params, root: Path) -> PromoteConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        p = params.paths
        names = {
            "model.pt": "model",
            "model_card.md": "model_card",
            "train.json": "train_metrics",
            "train_facts.json": "train_report",
            "evaluate.json": "evaluate_metrics",
            "export.json": "export_metrics",
            "export_facts.json": "export_report",
            "deploy.json": "deploy_metrics",
            "deploy_facts.json": "deploy_report",
            "engine.json": "engine_metrics",
            "engine_facts.json": "engine_report",
            "benchmark.json": "benchmark_metrics",
            "benchmark_facts.json": "benchmark_report",
            "validate.json": "validate_report",
        }
        return cls(
            workspace=root,
            dataset=p.dataset,
            production=p.resolve("production", root),
            report=p.resolve("promotion_report", root),
            files={name: p.resolve(key, root) for name, key in names.items()} | {"model.onnx": p.onnx_model(root)},
            data_yaml=p.resolve("prepared", root) / "data.yaml",
            engine_dir=p.resolve("engine_dir", root),
            deploy_dir=p.resolve("deploy_dir", root),
            options=params.promote,
            lock_timeout_s=params.orchestration.lock_timeout_s,
        )


def recover(cfg: PromoteConfig) -> str | None:
    """Finish or undo a promotion that was cut off, and remove what it left (``transaction.recover``)."""
    return transaction.recover(cfg)


def _refuse(
    cfg: PromoteConfig, checks: list[PromotionCheck], version: str | None, shown: str, line: Lineage | None = None
) -> PromotionRefused:
    result = PromoteResult(promoted=False, version=None, checks=checks, data_version=version, production=shown)
    if line is not None:
        result = result.model_copy(update={"classes": line.classes, "new_line": cfg.new_line})
    write_json(cfg.report, result)
    return PromotionRefused(
        "not promoted: " + "; ".join(f"{c.name} {c.message}" for c in checks if not c.passed),
        stage=STAGE,
        path=cfg.report,
    )


def run(cfg: PromoteConfig) -> PromoteResult:
    """Promote the workspace's model to production when every check passes.

    Args:
        cfg: Paths and rules.

    Returns:
        The outcome (also written to ``cfg.report``).

    Raises:
        PromotionRefused: When a check fails (production is left untouched).
        PipelineError: When versioning or committing the new production fails (it is then undone).
    """
    shown = cfg.production.relative_to(cfg.workspace).as_posix()
    done = recover(cfg)
    if done:
        log.warning("%s", done)
    pl = places(cfg.production)
    mismatch = production_mismatch(cfg.workspace, cfg.production) or tag_mismatch(cfg.workspace, pl.pointer)
    if mismatch is not None:
        raise _refuse(cfg, [PromotionCheck(name="production intact", passed=False, message=mismatch)], None, shown)
    dvc_project = (cfg.workspace / "dvc.yaml").is_file()
    # Up to date first, then read: the metrics read are those of the results found up to date.
    stale = stale_stages(cfg.workspace) if dvc_project else []
    read = digests(cfg.files)
    evaluate = read_json(cfg.files["evaluate.json"], stage=STAGE)
    export = read_json(cfg.files["export.json"], stage=STAGE)
    # Absent when export failed before building the artifacts (its parity check): nothing is deployable.
    deploy = read_json(cfg.files["deploy.json"], stage=STAGE) if cfg.files["deploy.json"].is_file() else {}
    current = production_metadata(cfg.production)
    recorded = recorded_data_version(cfg.workspace, cfg.dataset)
    version = recorded.md5 if recorded else None
    lineage, line = _lineage(cfg, current, version)
    # Compared with production only on its line: same classes, and no new line begun.
    compare = lineage.passed and cfg.new_line is None
    checks = promotion_checks(evaluate, export, current, cfg.options.max_map50_95_drop, deploy, lineage, compare)
    if dvc_project:
        checks.insert(
            0,
            PromotionCheck(
                name="pipeline up to date",
                passed=not stale,
                message="passed" if not stale else f"out of date: {', '.join(stale)}; run 'dvc repro' first",
            ),
        )
    if not all(c.passed for c in checks):
        raise _refuse(cfg, checks, version, shown, line)
    # Every check passed: a model that is already production is reported, not promoted again.
    if current is not None and already_in_production(cfg.files, current):
        message = f"this model is already production version {current['version']}; nothing changed"
        check = PromotionCheck(name="already in production", passed=True, message=message)
        result = PromoteResult(
            promoted=False,
            unchanged=True,
            version=current["version"],
            checks=[*checks, check],
            data_version=version,
            production=shown,
            classes=line.classes,
            line=line.number,
        )
        write_json(cfg.report, result)
        log.info("%s", message)
        return result
    missing = [str(p) for p in cfg.files.values() if not p.is_file()]
    if missing or version is None:
        raise PipelineError(
            f"cannot promote: missing {missing or 'the data version (run the chain through DVC)'}", stage=STAGE
        )

    # A dvc.yaml artifact the registry tags cannot name is refused before production changes.
    registry_name(cfg.workspace, cfg.production)
    tagged = latest_tag(cfg.workspace)
    # After every version ever promoted here, not only the one in the folder (a rolled-back folder).
    new_version = max(current["version"] if current else 0, tagged[1] if tagged else 0) + 1
    engine = cfg.engine_dir / "model.engine"
    deployable_engine = engine.is_file() and read_json(cfg.files["engine.json"], stage=STAGE).get("deployable")
    assemble(pl.staging, cfg.files, deploy, cfg.deploy_dir, engine if deployable_engine else None)
    # What was checked is what was copied, and still up to date: a run that did not hold the workspace
    # (a plain 'dvc repro', which removes a stage's outputs before running it) may have changed them since.
    copied = digests({name: pl.staging / name for name in cfg.files})
    changed = sorted(name for name in cfg.files if copied.get(name) != read.get(name))
    stale_now = stale_stages(cfg.workspace) if dvc_project else []
    if changed or stale_now:
        shutil.rmtree(pl.staging, ignore_errors=True)
        what = ", ".join(changed) if changed else f"stages out of date: {', '.join(stale_now)}"
        check = PromotionCheck(
            name="unchanged while promoting", passed=False, message=f"changed during promotion: {what}"
        )
        raise _refuse(cfg, [*checks, check], version, shown, line)
    if cfg.new_line is not None:
        line = line.model_copy(update={"started_at": new_version})
    write_metadata(pl.staging, new_version, version, cfg.workspace, evaluate, checks, line)
    transaction.step("staged")
    promoted = PromoteResult(
        promoted=True,
        version=new_version,
        checks=checks,
        data_version=version,
        production=shown,
        classes=line.classes,
        line=line.number,
        new_line=cfg.new_line,
    )
    journal = Journal(
        version=new_version,
        old_pointer=pl.pointer.read_text(encoding="utf-8") if pl.pointer.is_file() else None,
        result=promoted,
    )
    # Swap: two renames; the journal says how to finish or undo them whenever the process stops.
    transaction.swap(cfg, journal)
    result = transaction.finish(cfg, journal)
    log.info("promoted to %s as version %d (data %s, commit %s)", cfg.production, new_version, version, result.commit)
    return result


def _lineage(cfg: PromoteConfig, current: dict[str, Any] | None, version: str | None) -> tuple[PromotionCheck, Lineage]:
    """The class check (``lineage.lineage_check``); a prepared data.yaml that cannot be read fails it."""
    try:
        classes = candidate_classes(cfg.data_yaml)
    except PipelineError as exc:
        message = f"cannot read the candidate's class names: {exc}"
        return PromotionCheck(name=LINEAGE_CHECK, passed=False, message=message), Lineage(classes=[])
    return lineage_check(classes, cfg.production, current, version, cfg.new_line, workspace=cfg.workspace)


def run_locked(cfg: PromoteConfig) -> PromoteResult:
    """``run`` holding the workspace (``stages/core/lock.py``) for the whole promotion, as the CLI does."""
    with hold_workspace(cfg.workspace, cfg.lock_timeout_s, f"python -m stages.promote (pid {os.getpid()})"):
        return run(cfg)


def recover_locked(cfg: PromoteConfig) -> str | None:
    """``recover`` holding the workspace; logs what it did."""
    with hold_workspace(cfg.workspace, cfg.lock_timeout_s, f"python -m stages.promote --recover (pid {os.getpid()})"):
        done = recover(cfg)
    log.info("%s", done or "no interrupted promotion to finish or undo")
    return done


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m stages.promote [--recover | --new-line REASON]``.

    ``--recover`` only finishes or undoes a promotion that was cut off (the flow and CI run it before
    pulling, which a half-done promotion would make fail). ``--new-line REASON`` promotes a model whose
    classes differ from production's as the first version of a new production line (every other check
    still applies; the earlier versions stay fetchable by their tags).
    """
    parser = argparse.ArgumentParser(prog="python -m stages.promote", add_help=False)
    parser.add_argument("--recover", action="store_true")
    parser.add_argument("--new-line", metavar="REASON")
    ours, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if ours.recover:
        return stage_main(STAGE, PromoteConfig.from_params, recover_locked, rest)
    if ours.new_line is not None and not ours.new_line.strip():
        print('error: --new-line needs a reason, e.g. --new-line "coco128: 80 classes, not shapes"', file=sys.stderr)
        return 2
    reason = ours.new_line.strip() if ours.new_line is not None else None

    def build(params: Params, root: Path) -> PromoteConfig:
        return PromoteConfig.from_params(params, root).model_copy(update={"new_line": reason})

    return stage_main(STAGE, build, run_locked, rest)


if __name__ == "__main__":
    sys.exit(main())
