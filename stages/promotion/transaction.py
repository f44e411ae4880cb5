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
cannot lose a promoted version. Killed at any point, the next promotion (or ``python -m
stages.promote --recover``) finishes it or undoes it from the journal: production is then the old
version or the new one, complete, its folder and pointer agreeing, and nothing is left beside it. A
failing ``dvc add`` or commit undoes the swap. The version number follows every version ever tagged,
and a pointer older than the newest tag (an experiment applied, a checkout) is refused with the
command that restores it. The CLI holds the workspace lock (``stages/core/lock.py``) for the whole run.
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
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict

from stages import PIPELINE
from stages.core.common import file_sha256, git_commit, read_json, stage_main, write_json, write_text
from stages.core.config import Params, PromoteParams
from stages.core.data_version import dvc_file_version, folder_version, production_metadata, recorded_data_version
from stages.core.errors import PipelineError
from stages.core.lock import hold_workspace
from stages.core.verdict import failed_checks
from stages.deploy.targets import TARGETS

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
    lock_timeout_s: float = 60.0

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
            lock_timeout_s=params.orchestration.lock_timeout_s,
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
    commit: str | None = None  # the git commit holding the new pointer (None: not a git work tree)
    tag: str | None = None  # production-v<N>


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
        raise PipelineError(f"'dvc add' failed: {proc.stderr.strip()[-500:]}", stage=STAGE, path=target)


# --- git: every promoted version is a commit of the pointer and a tag, so no checkout loses it ------------

TAG_PREFIX = "production-v"
# Used only where git has no identity of its own (a fresh CI runner): a commit needs one.
FALLBACK_IDENTITY = ("-c", "user.name=yolo-pipeline promotion", "-c", "user.email=promotion@localhost")


def _git(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True)


def _git_checked(workspace: Path, *args: str) -> str:
    proc = _git(workspace, *args)
    if proc.returncode != 0:
        raise PipelineError(f"'git {' '.join(args)}' failed: {proc.stderr.strip()[-500:]}", stage=STAGE)
    return proc.stdout.strip()


def in_git(workspace: Path) -> bool:
    """Whether the workspace is inside a git work tree."""
    return _git(workspace, "rev-parse", "--is-inside-work-tree").stdout.strip() == "true"


def latest_tag(workspace: Path) -> tuple[str, int] | None:
    """The newest production tag (``production-v<N>``) and its N, or ``None`` when there is none."""
    if not in_git(workspace):
        return None
    numbers = []
    for name in _git(workspace, "tag", "--list", f"{TAG_PREFIX}*").stdout.split():
        suffix = name.removeprefix(TAG_PREFIX)
        if suffix.isdigit():
            numbers.append(int(suffix))
    return (f"{TAG_PREFIX}{max(numbers)}", max(numbers)) if numbers else None


def _pointer_md5(text: str | None) -> str | None:
    outs = (yaml.safe_load(text) or {}).get("outs", []) if text else []
    return outs[0].get("md5") if outs else None


def tag_mismatch(workspace: Path, pointer: Path) -> str | None:
    """Why the workspace's pointer is not the one the newest production tag holds, or ``None`` when it is.

    A ``dvc exp apply`` of an experiment begun before the last promotion, or a checkout of an older
    commit, puts an older pointer back; promoting over it would compare against, and number after, a
    version that is no longer the latest.
    """
    latest = latest_tag(workspace)
    if latest is None:
        return None
    tag, _ = latest
    rel = pointer.relative_to(workspace).as_posix()
    # ./: relative to the workspace, which may be a subfolder of the repository.
    shown = _git(workspace, "show", f"{tag}:./{rel}")
    recorded = _pointer_md5(shown.stdout) if shown.returncode == 0 else None
    current = _pointer_md5(pointer.read_text(encoding="utf-8")) if pointer.is_file() else None
    if recorded is None or recorded == current:
        return None
    return (
        f"{rel} ({current}) is not the latest promoted version, tag {tag} ({recorded}): an experiment applied "
        f"or a checkout put an older one back; restore it with 'git checkout {tag} -- {rel}' and "
        f"'dvc checkout {rel}'"
    )


def _commit(workspace: Path, pointer: Path, version: int) -> tuple[str, str] | None:
    """Commit the pointer (only it, and its folder's ``.gitignore``) and tag the commit.

    Idempotent: a pointer already committed is not committed again, an existing tag is kept.

    Returns:
        The commit and the tag, or ``None`` outside a git work tree.
    """
    if not in_git(workspace):
        return None
    paths = [pointer.relative_to(workspace).as_posix()]
    ignore = pointer.parent / ".gitignore"
    if ignore.is_file() and _git(workspace, "status", "--porcelain", "--", str(ignore)).stdout.strip():
        paths.append(ignore.relative_to(workspace).as_posix())
    identity = () if _git(workspace, "config", "user.email").stdout.strip() else FALLBACK_IDENTITY
    if _git(workspace, "status", "--porcelain", "--", *paths).stdout.strip():
        _git_checked(workspace, "add", "--", *paths)
        # --no-verify: the commit holds the pointer alone, and a hook must not leave production half done.
        message = f"Promote production version {version}"
        # No hooks and no signing: a worker or CI has no gpg agent, and a refused commit would undo the promotion.
        unsigned = ("-c", "commit.gpgsign=false")
        _git_checked(workspace, *identity, *unsigned, "commit", "--quiet", "--no-verify", "-m", message, "--", *paths)
    tag = f"{TAG_PREFIX}{version}"
    if _git(workspace, "rev-parse", "--quiet", "--verify", f"refs/tags/{tag}").returncode != 0:
        _git_checked(workspace, "-c", "tag.gpgsign=false", "tag", tag, "HEAD")
    return _git_checked(workspace, "rev-parse", "HEAD"), tag


# --- the promotion as a transaction: a journal beside production says how to finish or undo it ----------


class Journal(BaseModel):
    """What a promotion in progress needs to be finished or undone after a kill."""

    version: int
    old_pointer: str | None  # the text of <production>.dvc before, None when there was none
    result: PromoteResult


class Places(NamedTuple):
    """Where a promotion works, all beside the production folder (same file system: renames are atomic)."""

    staging: Path
    retired: Path
    journal: Path
    pointer: Path


def places(production: Path) -> Places:
    """The staging and retired folders, the journal and the DVC pointer of a production folder."""
    name = production.name
    return Places(
        staging=production.with_name(f".{name}.staging"),
        retired=production.with_name(f".{name}.retired"),
        journal=production.with_name(f".{name}.promotion.json"),
        pointer=production.with_name(f"{name}.dvc"),
    )


def step(name: str) -> None:
    """A point between two steps of a promotion (see ``STEPS``): the tests kill the process at each."""


# Every point ``step`` is called at, in order.
STEPS = ("staged", "journaled", "retired", "swapped", "versioned", "committed", "reported", "cleaned")


def _versioned(cfg: PromoteConfig) -> bool:
    return cfg.options.version_with_dvc and (cfg.workspace / ".dvc").is_dir()


def _roll_back(cfg: PromoteConfig, journal: Journal) -> None:
    """Put the previous production and its pointer back; every step may be cut off and run again."""
    pl = places(cfg.production)
    if not pl.staging.exists() and cfg.production.exists():
        cfg.production.rename(pl.staging)  # the new version goes back out
    if pl.retired.exists() and not cfg.production.exists():
        pl.retired.rename(cfg.production)
    if journal.old_pointer is None:
        pl.pointer.unlink(missing_ok=True)
    elif not pl.pointer.is_file() or pl.pointer.read_text(encoding="utf-8") != journal.old_pointer:
        write_text(pl.pointer, journal.old_pointer)
    if in_git(cfg.workspace):  # a commit that failed may have staged the new pointer: unstage it
        _git(cfg.workspace, "reset", "--quiet", "--", pl.pointer.relative_to(cfg.workspace).as_posix())
    shutil.rmtree(pl.staging, ignore_errors=True)
    pl.journal.unlink(missing_ok=True)


def _finish(cfg: PromoteConfig, journal: Journal) -> PromoteResult:
    """After the swap: version, commit, report, clean up; a failure to version or commit undoes the swap.

    Raises:
        PipelineError: When ``dvc add`` or the git commit fails (production is then the previous version).
    """
    pl = places(cfg.production)
    result = journal.result.model_copy()
    try:
        if _versioned(cfg):
            _dvc_add(cfg.workspace, cfg.production)
        step("versioned")
        if _versioned(cfg) and cfg.options.commit:
            committed = _commit(cfg.workspace, pl.pointer, journal.version)
            if committed is not None:
                result.commit, result.tag = committed
        step("committed")
    except PipelineError as exc:
        _roll_back(cfg, journal)
        check = PromotionCheck(name="versioned", passed=False, message=exc.message)
        write_json(cfg.report, result.model_copy(update={"promoted": False, "checks": [*result.checks, check]}))
        raise PipelineError(
            f"not promoted, production is still the previous version: {exc.message}", stage=STAGE, path=exc.path
        ) from None
    write_json(cfg.report, result)
    step("reported")
    shutil.rmtree(pl.retired, ignore_errors=True)
    step("cleaned")
    pl.journal.unlink(missing_ok=True)
    return result


def recover(cfg: PromoteConfig) -> str | None:
    """Finish or undo a promotion that was cut off, and remove what it left; says what it did.

    With a journal: before the swap, or with the new folder moved aside, the promotion is undone
    (production and its pointer are the previous version); after it, it is finished (versioned,
    committed, reported). Without one, the promotion never reached the swap: its staging folder goes.

    Returns:
        What was done, or ``None`` when nothing was left over.
    """
    pl = places(cfg.production)
    if pl.journal.is_file():
        journal = Journal.model_validate_json(pl.journal.read_text(encoding="utf-8"))
        if pl.staging.exists() or not cfg.production.exists():
            _roll_back(cfg, journal)
            return f"undid the promotion to version {journal.version} that was cut off before its swap"
        _finish(cfg, journal)
        return f"finished the promotion to version {journal.version} that was cut off after its swap"
    # The names the code before the journal used (``.production.staging-<pid>``), and ours.
    leftovers = (
        sorted(cfg.production.parent.glob(f".{cfg.production.name}.*")) if cfg.production.parent.is_dir() else []
    )
    leftovers = [p for p in leftovers if p.is_dir()]
    if not leftovers:
        return None
    retired = [p for p in leftovers if ".retired" in p.name]
    if not cfg.production.exists() and len(retired) == 1:  # killed between the old code's two renames
        retired[0].rename(cfg.production)
        leftovers.remove(retired[0])
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return f"removed what an interrupted promotion left: {', '.join(p.name for p in leftovers) or 'nothing'}"


def _digests(paths: dict[str, Path]) -> dict[str, str]:
    return {name: file_sha256(path) for name, path in paths.items() if path.is_file()}


def _refuse(cfg: PromoteConfig, checks: list[PromotionCheck], version: str | None, shown: str) -> PromotionRefused:
    write_json(
        cfg.report, PromoteResult(promoted=False, version=None, checks=checks, data_version=version, production=shown)
    )
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
    read = _digests(cfg.files)
    evaluate = read_json(cfg.files["evaluate.json"], stage=STAGE)
    export = read_json(cfg.files["export.json"], stage=STAGE)
    # Absent when export failed before building the artifacts (its parity check): nothing is deployable.
    deploy = read_json(cfg.files["deploy.json"], stage=STAGE) if cfg.files["deploy.json"].is_file() else {}
    current = production_metadata(cfg.production)
    recorded = recorded_data_version(cfg.workspace, cfg.dataset)
    version = recorded.md5 if recorded else None
    checks = promotion_checks(evaluate, export, current, cfg.options.max_map50_95_drop, deploy)
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
        raise _refuse(cfg, checks, version, shown)
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

    tagged = latest_tag(cfg.workspace)
    # After every version ever promoted here, not only the one in the folder (a rolled-back folder).
    new_version = max(current["version"] if current else 0, tagged[1] if tagged else 0) + 1
    staging = pl.staging
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
    # What was checked is what was copied, and still up to date: a run that did not hold the workspace
    # (a plain 'dvc repro', which removes a stage's outputs before running it) may have changed them since.
    copied = _digests({name: staging / name for name in cfg.files})
    changed = sorted(name for name in cfg.files if copied.get(name) != read.get(name))
    stale_now = stale_stages(cfg.workspace) if dvc_project else []
    if changed or stale_now:
        shutil.rmtree(staging, ignore_errors=True)
        what = ", ".join(changed) if changed else f"stages out of date: {', '.join(stale_now)}"
        check = PromotionCheck(
            name="unchanged while promoting", passed=False, message=f"changed during promotion: {what}"
        )
        raise _refuse(cfg, [*checks, check], version, shown)
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
    step("staged")
    journal = Journal(
        version=new_version,
        old_pointer=pl.pointer.read_text(encoding="utf-8") if pl.pointer.is_file() else None,
        result=PromoteResult(promoted=True, version=new_version, checks=checks, data_version=version, production=shown),
    )
    write_text(pl.journal, journal.model_dump_json(indent=2))
    step("journaled")
    # Swap: two renames; the journal says how to finish or undo them whenever the process stops.
    if cfg.production.exists():
        cfg.production.rename(pl.retired)
    step("retired")
    staging.rename(cfg.production)
    step("swapped")
    result = _finish(cfg, journal)
    log.info("promoted to %s as version %d (data %s, commit %s)", cfg.production, new_version, version, result.commit)
    return result


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
    """CLI entry point: ``python -m stages.promote [--recover]``.

    ``--recover`` only finishes or undoes a promotion that was cut off (the flow and CI run it before
    pulling, which a half-done promotion would make fail).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--recover" in args:
        args.remove("--recover")
        return stage_main(STAGE, PromoteConfig.from_params, recover_locked, args)
    return stage_main(STAGE, PromoteConfig.from_params, run_locked, args)


if __name__ == "__main__":
    sys.exit(main())
