"""Promotion: replace the production model with the one the chain just produced, only when it earns it.

Not a DVC stage: production is what the pipeline is compared against (the no-regression gate reads
its baseline from here), so it cannot be one of the pipeline's own outputs. The Prefect flow runs
it after a passing chain, CI runs ``python -m stages.promote`` after ``dvc repro``.

Checks, all required: the pipeline's results are up to date (``dvc status``), the evaluation gate
passed, export parity passed, and the model's mAP50-95 is not below production's by more than
``promote.max_map50_95_drop``. On success the new production folder is assembled beside the old one
and swapped in, so a failure part-way leaves production as it was; then it is versioned with
``dvc add`` (commit ``models/production.dvc``). Every attempt writes ``reports/promotion.json``; a
refusal exits non-zero naming each failed check and leaves production untouched.
"""

from __future__ import annotations

import hashlib
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
from stages.common import read_json, stage_main, write_json
from stages.config import Params, PromoteParams
from stages.data_version import production_metadata, recorded_data_version
from stages.errors import PipelineError
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
    options: PromoteParams

    @classmethod
    def from_params(cls, params: Params, root: Path) -> PromoteConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        p = params.paths
        names = {
            "model.pt": "model",
            "model.onnx": "onnx",
            "model_card.md": "model_card",
            "train.json": "train_metrics",
            "evaluate.json": "evaluate_metrics",
            "export.json": "export_metrics",
            "engine.json": "engine_metrics",
            "benchmark.json": "benchmark_metrics",
            "validate.json": "validate_report",
        }
        return cls(
            workspace=root,
            dataset=p.dataset,
            production=p.resolve("production", root),
            report=p.resolve("promotion_report", root),
            files={name: p.resolve(key, root) for name, key in names.items()},
            engine_dir=p.resolve("engine_dir", root),
            options=params.promote,
        )


class PromotionCheck(BaseModel):
    """One promotion rule and its outcome."""

    name: str
    passed: bool
    message: str


class PromoteResult(BaseModel):
    """What ``reports/promotion.json`` holds."""

    promoted: bool
    version: int | None
    checks: list[PromotionCheck]
    data_version: str | None
    production: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def promotion_checks(
    evaluate: dict[str, Any], export: dict[str, Any], production: dict[str, Any] | None, max_drop: float
) -> list[PromotionCheck]:
    """The rules a candidate must pass, evaluated on its metrics and production's.

    Args:
        evaluate: The candidate's ``metrics/evaluate.json``.
        export: The candidate's ``metrics/export.json``.
        production: Production's ``metadata.json``, or ``None`` when there is no production model.
        max_drop: Largest allowed mAP50-95 drop against production.

    Returns:
        One check per rule.
    """
    failed_gates = [c["message"] for c in evaluate["gate"]["checks"] if not c["passed"]]
    checks = [
        PromotionCheck(
            name="evaluation gate",
            passed=bool(evaluate["gate"]["passed"]),
            message="passed" if evaluate["gate"]["passed"] else "failed: " + "; ".join(failed_gates),
        ),
        PromotionCheck(
            name="export parity",
            passed=bool(export["parity"]["passed"]),
            message="passed" if export["parity"]["passed"] else "ONNX output differs from PyTorch beyond tolerance",
        ),
    ]
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
    evaluate = read_json(cfg.files["evaluate.json"], stage=STAGE)
    export = read_json(cfg.files["export.json"], stage=STAGE)
    current = production_metadata(cfg.production)
    checks = promotion_checks(evaluate, export, current, cfg.options.max_map50_95_drop)
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
    recorded = recorded_data_version(cfg.workspace, cfg.dataset)
    version = recorded.md5 if recorded else None
    shown = cfg.production.relative_to(cfg.workspace).as_posix()
    if not all(c.passed for c in checks):
        result = PromoteResult(promoted=False, version=None, checks=checks, data_version=version, production=shown)
        write_json(cfg.report, result)
        raise PromotionRefused(
            "not promoted: " + "; ".join(f"{c.name} {c.message}" for c in checks if not c.passed),
            stage=STAGE,
            path=cfg.report,
        )
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
    engine = cfg.engine_dir / "model.engine"
    if engine.is_file():
        shutil.copy2(engine, staging / "model.engine")
    metadata = {
        "version": new_version,
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_version": version,
        "code_version": git_commit(cfg.workspace),
        "metrics": {k: evaluate[k] for k in ("map50", "map50_95", "precision", "recall")},
        "checks": [c.model_dump() for c in checks],
        "files": {p.name: _sha256(p) for p in sorted(staging.iterdir())},
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
