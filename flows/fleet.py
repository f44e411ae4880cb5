"""The fleet deployments' flow: the pipeline in a fresh clone, its results pushed to the remotes.

A fleet deployment (``retrain-fleet``, ``retrain-on-new-data-fleet`` in ``prefect.yaml``) clones the
project's git remote at the ref fixed when it was deployed into the run's own temporary folder and
works there: this flow has no ``workspace`` parameter, so no run can point it elsewhere. It makes
production the remote's (``flows/remote.py``), runs the pipeline flow (``dvc pull`` of data and
run-cache first, so results computed anywhere are restored, not recomputed), then pushes DVC outputs
and run-cache to the DVC remote and ``dvc.lock`` with the production pointer to the git branch
``results/<flow run id>``, the promotion's tag with it in one atomic push. A failure here (an
unreachable remote, a promotion another run beat) ends the run Failed with a message naming what
failed and what to do.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed, State
from pydantic import BaseModel

from flows import remote
from flows.pipeline import PipelineResult, pipeline, run_name
from stages.core.errors import PipelineError


class FleetResult(BaseModel):
    """What a fleet run did: the pipeline's result, and what it pushed."""

    production_before: str | None  # the remote's production tag when the run began
    pipeline: PipelineResult
    published: remote.Published | None  # None: the run ended early (data unchanged)


def clone_root(cwd: Path | None = None) -> Path:
    """The clone this run works in: the working directory the deployment's pull steps set.

    Raises:
        PipelineError: When it is not a git clone with a remote ``origin`` (a deployment without the
            fleet pull steps, or a run started by hand elsewhere).
    """
    root = (cwd or Path.cwd()).resolve()
    proc = subprocess.run(["git", "remote", "get-url", remote.REMOTE], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0 or not (root / "dvc.yaml").is_file():
        raise PipelineError(
            f"{root} is not a clone of the project with a git remote '{remote.REMOTE}': the fleet flow runs in the "
            "clone its deployment's pull steps make (prefect.yaml, retrain-fleet); use flows/pipeline.py elsewhere",
            stage=remote.STAGE,
        )
    check_shared_dvc_remote(root)
    return root


def check_shared_dvc_remote(root: Path) -> None:
    """Refuse a default DVC remote inside the clone: the clone is the run's temporary folder, deleted when
    the run ends, so whatever was pushed there (the new production model among it) would go with it
    while its git tag stays on the remote.

    Raises:
        PipelineError: Naming the remote and how to configure a shared one.
    """
    from stages.core.remotes import inside_workspace, resolve_remote

    target = resolve_remote(root)
    if inside_workspace(target, root):
        raise PipelineError(
            f"the DVC remote '{target.name}' ({target.url}) lies inside this run's clone, a temporary folder "
            "deleted when the run ends: nothing pushed there would survive. Commit a shared remote in "
            ".dvc/config (`dvc remote add -d NAME ssh://...` or `s3://...`; README: A shared DVC remote), "
            "with its credentials on each worker (`dvc remote modify --global` or the environment)",
            stage=remote.STAGE,
        )


# Plain functions, not tasks: a failed task logs its traceback, and these failures are a remote's, said
# in one message (the flow's Failed state).
def sync_production(root: str) -> str | None:
    """Production as the remote holds it: its newest tag's pointer and files, in the clone."""
    current = remote.sync_production(Path(root))
    get_run_logger().info("production on the remote: %s", current[0] if current else "none yet")
    return current[0] if current else None


def publish(root: str, run_id: str, base: str) -> remote.Published:
    """Push the run's DVC outputs and run-cache, then its results branch and production tag."""
    published = remote.publish(Path(root), run_id, base)
    logger = get_run_logger()
    if published.retried_on:
        logger.info("another run promoted %s first; this run promoted again on top of it", published.retried_on)
    with_tag = f" with {published.tag}" if published.tag else ""
    logger.info("pushed %s (%s)%s", published.branch, published.commit[:12], with_tag)
    return published


def _flow_run_name() -> str:
    return run_name(Path.cwd())


@flow(name="yolo-train-to-deploy-fleet", flow_run_name=_flow_run_name)
def fleet(only_if_data_changed: bool = False, promote_model: bool = True) -> FleetResult | State:
    """Run the pipeline in this run's clone against the remote's production, and push the results.

    Args:
        only_if_data_changed: End early when the dataset is the one production was trained on.
        promote_model: Promote a model that passes every check, against the remote's production.

    Returns:
        What happened; a Failed state, with the message only (no traceback), when a remote or the
        promotion race failed it.
    """
    logger = get_run_logger()
    try:
        root = clone_root()
        base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        before = sync_production(str(root))
        result = pipeline(
            workspace=str(root), only_if_data_changed=only_if_data_changed, promote_model=promote_model, pull=True
        )
        published = None if result.skipped else publish(str(root), str(flow_run.id), base)
    except PipelineError as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))
    return FleetResult(production_before=before, pipeline=result, published=published)
