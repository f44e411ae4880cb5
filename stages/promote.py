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
not. On success the new production folder is assembled beside the old one and swapped in, so a
failure part-way leaves production as it was; then it is versioned with ``dvc add`` (commit
``models/production.dvc``). Every attempt writes ``reports/promotion.json``; a refusal exits
non-zero naming each failed check and leaves production untouched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages import PIPELINE
from stages.common import file_sha256, read_json, stage_main, write_json
from stages.config import Params, PromoteParams
from stages.data_version import dvc_file_version, folder_version, production_metadata, recorded_data_version
from stages.deploy.targets import TARGETS
from stages.errors import PipelineError
from stages.evaluate import failed_checks
from stages.report import git_commit

log = logging.getLogger(__name__)

STAGE = "promote"


class PromotionRefused(PipelineError):
    """The candidate model does not qualify for production; carries every failed check."""


class PromoteConfig(BaseModel):
    """What to promote, where to, and the rules."""

    model_config = ConfigDict(frozen=True)

    workspace: Path
    dataset: str
    production: Path
    report: Path
    files: dict[str, Path]  # name in production -> file in the workspace
    engine_dir: Path
    deploy_dir: Path
    options: PromoteParams

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
            engine_dir=p.resolve("engine_dir", root),
            deploy_dir=p.resolve("deploy_dir", root),
            options=params.promote,
        )


class PromotionCheck(BaseModel):
    """One promotion rule and its outcome."""

    name: str
    passed: bool
    message: str


# The files that make a model what it is: a candidate whose files match production's is production.
MODEL_FILES = ("model.pt", "model.onnx")


class PromoteResult(BaseModel):
    """What ``reports/promotion.json`` holds (``version``: the new one, or production's when unchanged)."""

    promoted: bool
    unchanged: bool = False
    version: int | None
    checks: list[PromotionCheck]
    data_version: str | None
    production: str


def promotion_checks(
    evaluate: dict[str, Any],
    export: dict[str, Any],
    production: dict[str, Any] | None,
    max_drop: float,
    deploy: dict[str, Any] | None = None,
) -> list[PromotionCheck]:
    """The rules a candidate must pass, evaluated on its metrics and production's.

    Args:
        evaluate: The candidate's ``metrics/evaluate.json``.
        export: The candidate's ``metrics/export.json``.
        production: Production's ``metadata.json``, or ``None`` when there is no production model.
        max_drop: Largest allowed mAP50-95 drop against production.
        deploy: The candidate's ``metrics/deploy.json``; when given, its FP32 ONNX model must be deployable
            (the other artifacts are promoted when deployable and left out otherwise).

    Returns:
        One check per rule.
    """
    failed_gates = failed_checks(evaluate["gates"])
    parity = export.get("parity")
    checks = [
        PromotionCheck(
            name="evaluation gate",
            passed=not failed_gates,
            message="failed: " + "; ".join(failed_gates) if failed_gates else "passed",
        ),
        PromotionCheck(
            name="export parity",
            passed=bool(parity and parity["passed"]),
            message="passed"
            if parity and parity["passed"]
            else "nothing was exported"
            if parity is None
            else "ONNX output differs from PyTorch beyond tolerance",
        ),
    ]
    if deploy is not None:
        onnx = deploy.get("onnx-fp32", {})
        checks.append(
            PromotionCheck(
                name="onnx-fp32 deployable",
                passed=bool(onnx.get("deployable")),
                message="passed"
                if onnx.get("deployable")
                else "nothing was exported"
                if not onnx
                else f"its mAP50-95 drop against PyTorch ({onnx.get('drop_map50_95')}) exceeds "
                f"deploy.max_drop.fp32 ({onnx.get('max_drop')}); see reports/deploy.json",
            )
        )
    if production is None:
        checks.append(PromotionCheck(name="no regression", passed=True, message="no production model yet"))
    else:
        baseline, candidate = production["metrics"]["map50_95"], evaluate["map50_95"]
        passed = candidate >= baseline - max_drop
        checks.append(
            PromotionCheck(
                name="no regression",
                passed=passed,
                message=f"mAP50-95 {candidate:.4f} vs production v{production['version']} {baseline:.4f} "
                f"({'within' if passed else 'beyond'} the allowed drop of {max_drop})",
            )
        )
    return checks


def production_mismatch(workspace: Path, production: Path) -> str | None:
    """Why the production folder is not the version ``<production>.dvc`` records, or ``None`` when it is.

    Without a ``.dvc`` file there is no record to hold it to (the first promotion, or DVC versioning off).
    """
    rel = production.relative_to(workspace).as_posix()
    recorded = dvc_file_version(workspace, rel)
    if recorded is None:
        return None
    restore = f"'dvc checkout {rel}.dvc' (or 'dvc pull {rel}.dvc' where the local cache does not have it)"
    if not production.is_dir():
        return f"{rel}.dvc records a production model ({recorded.md5}) but {rel}/ is missing: restore it with {restore}"
    current = folder_version(workspace, rel).md5
    if current != recorded.md5:
        return f"{rel}/ ({current}) differs from what {rel}.dvc records ({recorded.md5}): restore it with {restore}"
    return None


def already_in_production(files: dict[str, Path], production: dict[str, Any] | None) -> bool:
    """Whether the candidate's model files are byte for byte the production model's."""
    if production is None:
        return False
    recorded = production.get("files", {})
    return all(files[name].is_file() and recorded.get(name) == file_sha256(files[name]) for name in MODEL_FILES)


def stale_stages(workspace: Path) -> list[str]:
    """Pipeline stages whose results are out of date (``dvc status``), the always-run fingerprint aside.

    Raises:
        PipelineError: When ``dvc status`` itself fails.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"], cwd=workspace, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise PipelineError(f"'dvc status' failed: {proc.stderr.strip()[-500:]}", stage=STAGE)
    status = json.loads(proc.stdout or "{}")
    return [stage for stage in PIPELINE if stage != "environment" and stage in status]


def _dvc_add(workspace: Path, target: Path) -> None:
    """Version the production folder with DVC (writes ``<target>.dvc``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "add", "--quiet", str(target.relative_to(workspace))],
        cwd=workspace,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise PipelineError(
            f"production was updated but 'dvc add' failed: {proc.stderr.strip()[-500:]}", stage=STAGE, path=target
        )


def run(cfg: PromoteConfig) -> PromoteResult:
    """Promote the workspace's model to production when every check passes.

    Args:
        cfg: Paths and rules.

    Returns:
        The outcome (also written to ``cfg.report``).

    Raises:
        PromotionRefused: When a check fails (production is left untouched).
    """
    shown = cfg.production.relative_to(cfg.workspace).as_posix()
    mismatch = production_mismatch(cfg.workspace, cfg.production)
    if mismatch is not None:
        check = PromotionCheck(name="production intact", passed=False, message=mismatch)
        write_json(
            cfg.report, PromoteResult(promoted=False, version=None, checks=[check], data_version=None, production=shown)
        )
        raise PromotionRefused(f"not promoted: {mismatch}", stage=STAGE, path=cfg.report)
    evaluate = read_json(cfg.files["evaluate.json"], stage=STAGE)
    export = read_json(cfg.files["export.json"], stage=STAGE)
    # Absent when export failed before building the artifacts (its parity check): nothing is deployable.
    deploy = read_json(cfg.files["deploy.json"], stage=STAGE) if cfg.files["deploy.json"].is_file() else {}
    current = production_metadata(cfg.production)
    recorded = recorded_data_version(cfg.workspace, cfg.dataset)
    version = recorded.md5 if recorded else None
    checks = promotion_checks(evaluate, export, current, cfg.options.max_map50_95_drop, deploy)
    if (cfg.workspace / "dvc.yaml").is_file():
        stale = stale_stages(cfg.workspace)
        checks.insert(
            0,
            PromotionCheck(
                name="pipeline up to date",
                passed=not stale,
                message="passed" if not stale else f"out of date: {', '.join(stale)}; run 'dvc repro' first",
            ),
        )
    if not all(c.passed for c in checks):
        result = PromoteResult(promoted=False, version=None, checks=checks, data_version=version, production=shown)
        write_json(cfg.report, result)
        raise PromotionRefused(
            "not promoted: " + "; ".join(f"{c.name} {c.message}" for c in checks if not c.passed),
            stage=STAGE,
            path=cfg.report,
        )
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
        )
        write_json(cfg.report, result)
        log.info("%s", message)
        return result
    missing = [str(p) for p in cfg.files.values() if not p.is_file()]
    if missing or version is None:
        raise PipelineError(
            f"cannot promote: missing {missing or 'the data version (run the chain through DVC)'}", stage=STAGE
        )

    new_version = (current["version"] + 1) if current else 1
    staging = cfg.production.with_name(f".{cfg.production.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, source in cfg.files.items():
        shutil.copy2(source, staging / name)
    for name, numbers in deploy.items():  # the other deploy artifacts, only those that are deployable
        if name in TARGETS and name != "onnx-fp32" and numbers.get("deployable"):
            for path in TARGETS[name].files(cfg.deploy_dir):
                copied = staging / path.relative_to(cfg.deploy_dir)
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, copied)
    engine = cfg.engine_dir / "model.engine"
    if engine.is_file() and read_json(cfg.files["engine.json"], stage=STAGE).get("deployable"):
        for path in (engine, engine.with_name(engine.name + ".json")):  # the engine and its sidecar
            shutil.copy2(path, staging / path.name)
    metadata = {
        "version": new_version,
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_version": version,
        "code_version": git_commit(cfg.workspace),
        "metrics": {k: evaluate[k] for k in ("map50", "map50_95", "precision", "recall")},
        "checks": [c.model_dump() for c in checks],
        "files": {p.relative_to(staging).as_posix(): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()},
    }
    write_json(staging / "metadata.json", metadata)
    # Swap: the old folder is moved aside first and removed only once the new one is in place.
    retired = cfg.production.with_name(f".{cfg.production.name}.retired-{os.getpid()}")
    if cfg.production.exists():
        cfg.production.rename(retired)
    staging.rename(cfg.production)
    shutil.rmtree(retired, ignore_errors=True)
    if cfg.options.version_with_dvc and (cfg.workspace / ".dvc").is_dir():
        _dvc_add(cfg.workspace, cfg.production)
    result = PromoteResult(promoted=True, version=new_version, checks=checks, data_version=version, production=shown)
    write_json(cfg.report, result)
    log.info("promoted to %s as version %d (data %s)", cfg.production, new_version, version)
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, PromoteConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
