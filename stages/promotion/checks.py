"""The rules a candidate must pass, and whether production is what its pointer records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from stages import PIPELINE
from stages.core.common import file_sha256
from stages.core.data_version import dvc_file_version, folder_version
from stages.core.errors import PipelineError
from stages.core.verdict import failed_checks
from stages.promotion.outcome import STAGE, PromotionCheck

# The files that make a model what it is: a candidate whose files match production's is production.
MODEL_FILES = ("model.pt", "model.onnx")


def promotion_checks(
    evaluate: dict[str, Any],
    export: dict[str, Any],
    production: dict[str, Any] | None,
    max_drop: float,
    deploy: dict[str, Any] | None = None,
    lineage: PromotionCheck | None = None,
    compare: bool = True,
) -> list[PromotionCheck]:
    """The rules a candidate must pass, evaluated on its metrics and production's.

    Args:
        evaluate: The candidate's ``metrics/evaluate.json``.
        export: The candidate's ``metrics/export.json``.
        production: Production's ``metadata.json``, or ``None`` when there is no production model.
        max_drop: Largest allowed mAP50-95 drop against production.
        deploy: The candidate's ``metrics/deploy.json``; when given, its FP32 ONNX model must be deployable
            (the other artifacts are promoted when deployable and left out otherwise).
        lineage: Whether the candidate detects production's classes (``lineage.lineage_check``); it goes
            before the no-regression check.
        compare: ``False`` when the candidate is not compared with production: its classes differ (refused by
            ``lineage``) or it starts a new production line. The no-regression check is then not made.

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
    if lineage is not None:
        checks.append(lineage)
    if production is None:
        checks.append(PromotionCheck(name="no regression", passed=True, message="no production model yet"))
    # Not compared (``compare`` False): mAP over other classes says nothing about production's; the
    # lineage check says what happens instead.
    elif compare:
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
