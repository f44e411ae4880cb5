"""The Prefect flow: every pipeline stage, in order, one task each, run through DVC in one workspace.

DVC decides what runs and caches every result, so a ``dvc repro`` and this flow reuse each other's
work; Prefect adds the run history, logs and artifacts (gate verdict, metrics, latency table, model
card). A failed stage, a failed gate included, fails its task and the flow with the stage's message.

Usage::

    python -m flows.pipeline [--workspace .]

With no Prefect server configured, Prefect starts a temporary local one for the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows import artifacts
from flows.dvc_runner import StageRun, repro_stage
from stages import PIPELINE
from stages.config import load_params
from stages.errors import PipelineError, StageFailed


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(stage: str, workspace: str) -> StageRun:
    """Reproduce one stage through DVC (skipped by DVC when its results are up to date)."""
    return repro_stage(stage, Path(workspace), get_run_logger())


@flow(name="yolo-train-to-deploy", flow_run_name="{workspace}")
def pipeline(workspace: str = ".") -> list[StageRun]:
    """Run the whole chain in ``workspace`` and publish the run's artifacts.

    Args:
        workspace: The folder holding ``dvc.yaml`` and ``params.yaml``.

    Returns:
        What happened to each stage.

    Raises:
        StageFailed: When a stage fails; the artifacts of what did run are published first.
    """
    root = Path(workspace).resolve()
    params = load_params(root / "params.yaml")
    logger = get_run_logger()
    runs: list[StageRun] = []
    failed: str | None = None
    try:
        for stage in PIPELINE:
            runs.append(run_stage(stage, str(root)))
    except StageFailed as exc:
        failed = exc.stage
        raise
    finally:
        artifacts.publish(root, params, runs, failed)
    ran = [r.stage for r in runs if r.ran]
    logger.info(
        "stages run: %s; reused from the DVC cache: %s",
        ran or "none",
        [r.stage for r in runs if not r.ran] or "none",
    )
    return runs


def main(argv: list[str] | None = None) -> int:
    """CLI: run the flow over a workspace."""
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description="Run the pipeline as a Prefect flow.")
    parser.add_argument("--workspace", default=".", help="folder holding dvc.yaml (default: %(default)s)")
    args = parser.parse_args(argv)
    # prefect.toml turns these off when run from the project folder; keep them off from anywhere.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
    try:
        runs = pipeline(workspace=str(Path(args.workspace).resolve()))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("ran: " + (", ".join(r.stage for r in runs if r.ran) or "nothing (all cached)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
