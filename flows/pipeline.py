"""The Prefect flow: every pipeline stage, in order, one task each, run through DVC in one workspace.

DVC decides what runs and caches every result, so a ``dvc repro`` and this flow reuse each other's
work; Prefect adds the run history, logs, retries, schedules and artifacts (gate verdict, metrics,
latency table, model card, promotion). A failed stage, a failed gate included, fails its task and the
flow with the stage's message. After a passing chain the model is promoted to production
(``stages/promote.py``) unless ``promote=False``. A failed gate is recorded by ``evaluate`` and
builds nothing deployable, so every stage completes; the flow then fails on it (``stages/gate.py``),
before promoting, naming every failed check. With ``only_if_data_changed=True`` the run ends
early, successfully, when the dataset is the one production was trained on.

Only a crashed or killed training is retried (``orchestration.train_retries``), and it resumes from
its last checkpoint; a refusal (bad config or data, failed gate) is never retried. One run at a time
holds the workspace (``stages/core/lock.py``).

Usage::

    python -m flows.pipeline [--workspace .] [--pull] [--only-if-data-changed] [--no-promote]

With no Prefect server configured, Prefect starts a temporary local one for the run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel

from flows import artifacts
from flows.dvc_runner import StageRun, dvc_environment, repro_stage
from flows.pinned import check_pinned_workspace
from stages import PIPELINE
from stages.core.common import read_json
from stages.core.config import Params, load_params
from stages.core.data_version import DataCheck, check, dvc_file_version
from stages.core.errors import PipelineError, StageFailed
from stages.core.lock import workspace_lock


class PipelineResult(BaseModel):
    """What a flow run did."""

    skipped: bool = False
    reason: str = ""
    stages: list[StageRun] = []
    promoted_version: int | None = None
    unchanged_version: int | None = None  # the model was already this production version


@task(name="check-data")
def check_data(workspace: str, dataset: str, production: str) -> DataCheck:
    """Compare the dataset's DVC hash with the one the production model was trained on."""
    return check(Path(workspace), dataset, Path(production))


def _run_logged(cmd: list[str], workspace: str, token: str) -> subprocess.CompletedProcess[str]:
    """Run a command in the workspace with this run's lock token; its output goes to the task log."""
    proc = subprocess.run(cmd, cwd=workspace, env=dvc_environment(token), capture_output=True, text=True)
    logger = get_run_logger()
    for line in (proc.stdout + proc.stderr).splitlines():
        logger.info("%s", line)
    return proc


@task(name="recover-promotion")
def recover_promotion(workspace: str, token: str) -> None:
    """Finish or undo a promotion a killed run left (``python -m stages.promote --recover``).

    First of all: a production folder swapped in but not yet versioned would make ``dvc pull`` refuse
    ("unsaved files"), and the journal beside it says which of the two versions it must be.
    """
    proc = _run_logged([sys.executable, "-m", "stages.promote", "--recover"], workspace, token)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        raise StageFailed("\n".join(errors) or proc.stderr[-2000:], stage="promote", exit_code=proc.returncode)


@task(name="pull-cache", retries=2, retry_delay_seconds=10)
def pull_cache(workspace: str, token: str) -> None:
    """``dvc pull --run-cache``: results computed elsewhere (a GPU machine, CI) are then restored.

    Network I/O, so it retries; nothing to pull yet is not an error.
    """
    proc = _run_logged([sys.executable, "-m", "dvc", "pull", "--run-cache", "--allow-missing"], workspace, token)
    if proc.returncode != 0:
        raise PipelineError(f"dvc pull failed: {proc.stderr.strip()[-1000:]}", stage="pull-cache")


def _retry_if_crashed(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry a stage only when it crashed or was killed, never when it refused (exit code 2)."""
    return isinstance(state.data, StageFailed) and state.data.retryable


@task(name="dvc-stage", task_run_name="{stage}", retry_condition_fn=_retry_if_crashed)
def run_stage(stage: str, workspace: str, timeout_s: float, token: str) -> StageRun:
    """Reproduce one stage through DVC (skipped by DVC when its results are up to date)."""
    return repro_stage(stage, Path(workspace), get_run_logger(), timeout_s=timeout_s, token=token)


@task(name="gate")
def gate(workspace: str, token: str) -> None:
    """Fail when the recorded evaluation gate failed (``python -m stages.gate``), naming each failed check."""
    proc = _run_logged([sys.executable, "-m", "stages.gate"], workspace, token)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        raise StageFailed("\n".join(errors) or proc.stderr[-2000:], stage="evaluate", exit_code=proc.returncode)


@task(name="promote")
def promote(workspace: str, token: str, report: str) -> dict[str, Any]:
    """Promote the new model to production (``python -m stages.promote``, in its own process).

    Returns:
        The promotion report it wrote to ``report``.
    """
    proc = _run_logged([sys.executable, "-m", "stages.promote"], workspace, token)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        raise StageFailed("\n".join(errors) or proc.stderr[-2000:], stage="promote", exit_code=proc.returncode)
    return read_json(Path(report), stage="promote")


def _stage_options(params: Params, stage: str) -> dict[str, Any]:
    o = params.orchestration
    return {
        "retries": o.train_retries if stage == "train" else 0,
        "retry_delay_seconds": o.retry_delay_s,
    }


def run_name(workspace: str | Path) -> str:
    """A flow run's name: ``pipeline data <8> params <8>``, so runs on the same inputs look alike.

    ``data`` is the dataset version its ``.dvc`` file records (what is versioned, not uncommitted
    edits), ``params`` a hash of the validated params; either reads ``none``/``invalid`` when there is
    none, and the run itself then says why.
    """
    root = Path(workspace).resolve()
    try:
        params = load_params(root / "params.yaml")
    except PipelineError:
        return "pipeline data ? params invalid"
    recorded = dvc_file_version(root, params.paths.dataset)
    data = recorded.md5.removesuffix(".dir")[:8] if recorded else "none"
    digest = hashlib.sha256(params.model_dump_json(by_alias=True).encode()).hexdigest()[:8]
    return f"pipeline data {data} params {digest}"


def _flow_run_name() -> str:
    return run_name(flow_run.parameters.get("workspace", "."))


@flow(name="yolo-train-to-deploy", flow_run_name=_flow_run_name)
def pipeline(
    workspace: str = ".", only_if_data_changed: bool = False, promote_model: bool = True, pull: bool = False
) -> PipelineResult:
    """Run the whole chain in ``workspace``, promote the model, and publish the run's artifacts.

    Args:
        workspace: The folder holding ``dvc.yaml`` and ``params.yaml``.
        only_if_data_changed: End early when the dataset is the one production was trained on.
        promote_model: Promote a model that passes every check to ``paths.production``.
        pull: First pull data and run-cache from the DVC remote, so that results computed on
            another machine are restored instead of recomputed.

    Returns:
        What happened: skipped (and why), each stage, and the promoted version.

    Raises:
        StageFailed: When a stage or the promotion fails; the artifacts of what did run are published.
        WorkspaceBusy: When another run holds the workspace past ``orchestration.lock_timeout_s``.
        PipelineError: When a deployment's run names a workspace other than the deployment's own.
    """
    check_pinned_workspace(workspace, deployment.id)
    root = Path(workspace).resolve()
    params = load_params(root / "params.yaml")
    logger = get_run_logger()
    owner = f"flow run {flow_run.name or flow_run.id}"
    with workspace_lock(root, params.orchestration.lock_timeout_s, owner) as token:
        if promote_model or pull:
            recover_promotion(str(root), token)
        if pull:
            pull_cache(str(root), token)
        if only_if_data_changed:
            data = check_data(str(root), params.paths.dataset, str(params.paths.resolve("production", root)))
            logger.info("%s", data.reason)
            if not data.changed:
                artifacts.publish_skip(data.reason)
                return PipelineResult(skipped=True, reason=data.reason)
        baseline = artifacts.production_metrics(root, params)
        result = PipelineResult()
        failed: str | None = None
        attempted = False
        timeouts = params.orchestration.stage_timeout_s
        try:
            for stage in PIPELINE:
                task_ = run_stage.with_options(**_stage_options(params, stage))
                result.stages.append(task_(stage, str(root), timeouts.get(stage, timeouts["default"]), token))
            gate(str(root), token)
            if promote_model:
                attempted = True
                promotion = promote(str(root), token, str(params.paths.resolve("promotion_report", root)))
                if promotion["promoted"]:
                    result.promoted_version = promotion["version"]
                else:
                    result.unchanged_version = promotion["version"]
        except StageFailed as exc:
            failed = exc.stage
            raise
        finally:
            artifacts.publish(root, params, result.stages, failed, attempted, baseline)
    ran = [r.stage for r in result.stages if r.ran]
    logger.info(
        "stages run: %s; reused from the DVC cache: %s; promoted: %s",
        ran or "none",
        [r.stage for r in result.stages if not r.ran] or "none",
        f"version {result.promoted_version}"
        if result.promoted_version
        else f"no, already production version {result.unchanged_version}"
        if result.unchanged_version
        else "no",
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: run the flow over a workspace."""
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description="Run the pipeline as a Prefect flow.")
    parser.add_argument("--workspace", default=".", help="folder holding dvc.yaml (default: %(default)s)")
    parser.add_argument("--only-if-data-changed", action="store_true", help="skip when the data is production's")
    parser.add_argument("--no-promote", action="store_true", help="do not promote the model to production")
    parser.add_argument("--pull", action="store_true", help="dvc pull data and run-cache first")
    args = parser.parse_args(argv)
    # prefect.toml turns these off when run from the project folder; keep them off from anywhere.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
    try:
        result = pipeline(
            workspace=str(Path(args.workspace).resolve()),
            only_if_data_changed=args.only_if_data_changed,
            promote_model=not args.no_promote,
            pull=args.pull,
        )
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if result.skipped:
        print(f"skipped: {result.reason}")
        return 0
    print("ran: " + (", ".join(r.stage for r in result.stages if r.ran) or "nothing (all cached)"))
    if result.promoted_version:
        print(f"promoted: version {result.promoted_version}")
    elif result.unchanged_version:
        print(f"production unchanged: this model is already version {result.unchanged_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
