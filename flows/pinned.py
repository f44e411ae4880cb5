"""A deployment's workspace is the deployment's, never a run's parameter (issue 22, item 7).

A deployment's pull steps set the run's working directory (the local folder ``PIPELINE_WORKSPACE``
named at deploy time, or a fresh clone in fleet mode); a ``workspace`` parameter that names another
folder would let anyone who may start a run point it at any folder of the worker.
"""

from __future__ import annotations

from pathlib import Path

from stages.core.errors import PipelineError


def check_pinned_workspace(workspace: str | Path, deployment_id: str | None, cwd: Path | None = None) -> None:
    """Refuse a deployment run whose ``workspace`` is not the folder its deployment set it to work in.

    Args:
        workspace: The run's ``workspace`` parameter.
        deployment_id: The run's deployment (``None``: not a deployment run, e.g. ``python -m flows.pipeline``).
        cwd: The working directory the deployment's pull steps set (default: the current one).

    Raises:
        PipelineError: When a deployment run names another folder.
    """
    if deployment_id is None:
        return
    pinned = (cwd or Path.cwd()).resolve()
    if Path(workspace).resolve() != pinned:
        raise PipelineError(
            f"this deployment works in {pinned} (set at deploy time by its pull steps); a run's 'workspace' "
            f"parameter ({workspace}) cannot move it elsewhere: run it without that parameter, or deploy "
            "another deployment for that folder",
            key="workspace",
        )
