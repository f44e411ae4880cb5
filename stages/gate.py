"""``python -m stages.gate``: stop (exit 2) when the recorded evaluation gate failed.

A failed gate is a result of the pipeline, not a crash: ``evaluate`` records it in
``metrics/evaluate.json`` (``gates.passed: 0``) and ``export`` builds nothing deployable, so
``dvc repro`` and ``dvc exp run`` complete and a failed experiment keeps its own metrics. Whoever
acts on the verdict runs this afterwards: the Prefect flow (before promoting), CI and ``make demo``.
It names every failed check. ``stages.promote`` applies the same verdict on its own.

A verdict made with other params than ``params.yaml`` holds now (a threshold raised after
``evaluate`` ran) is refused as stale rather than reported: the params ``evaluate`` ran with are the
ones ``dvc.lock`` recorded for it. Without a ``dvc.lock`` entry (``evaluate`` run outside DVC) there
is nothing to compare with and the verdict is taken as it is.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from stages.core.common import read_json, stage_main
from stages.core.config import Params
from stages.core.data_version import dvc_lock_stage, load_as_dvc
from stages.core.errors import GateFailed, StaleResult
from stages.core.verdict import failed_checks

log = logging.getLogger(__name__)

STAGE = "gate"


class GateConfig(BaseModel):
    """Where the verdict is recorded."""

    model_config = ConfigDict(frozen=True)

    metrics: Path
    workspace: Path | None = None  # where dvc.lock and the params files are; None: no staleness check

    @classmethod
    def from_params(cls, params: Params, root: Path) -> GateConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(metrics=params.paths.resolve("evaluate_metrics", root), workspace=root)


class GateResult(BaseModel):
    """A passed verdict and how many checks it holds."""

    checks: int


_MISSING = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _MISSING else repr(value)


def _leaves(value: Any, key: str) -> dict[str, Any]:
    """A params value as dotted keys to its leaves, so that a change names the exact key."""
    if isinstance(value, dict) and value:
        return {k: v for name, sub in value.items() for k, v in _leaves(sub, f"{key}.{name}").items()}
    return {key: value}


def _lookup(params: Any, dotted: str) -> Any:
    """The value at a DVC params key (``evaluate``, ``train.imgsz``) of a parsed params file."""
    for part in dotted.split("."):
        if not isinstance(params, dict) or part not in params:
            return _MISSING
        params = params[part]
    return params


def changed_params(workspace: Path, stage: str) -> list[str]:
    """The params a stage's recorded run used that have another value now, as ``key: then -> now``.

    Args:
        workspace: The workspace root (holding ``dvc.lock`` and the params files it names).
        stage: The stage in ``dvc.lock``.

    Returns:
        One line per changed leaf key; empty when nothing changed or ``dvc.lock`` has no entry for the stage.
    """
    changes = []
    # Both read as DVC reads them: PyYAML would see a change in ``1e-3`` where DVC sees none.
    for file, recorded in (dvc_lock_stage(workspace, stage).get("params") or {}).items():
        now_file = load_as_dvc(workspace / file) or {}
        for key, then in recorded.items():
            now = _lookup(now_file, key)
            then_leaves = _leaves(then, key)
            now_leaves = {} if now is _MISSING else _leaves(now, key)
            for leaf in sorted(then_leaves.keys() | now_leaves.keys()):
                before, after = then_leaves.get(leaf, _MISSING), now_leaves.get(leaf, _MISSING)
                if before != after:
                    changes.append(f"{leaf}: {_show(before)} -> {_show(after)}")
    return changes


def run(cfg: GateConfig) -> GateResult:
    """Read the recorded verdict and fail when any check failed, or when it was made with other params.

    Raises:
        StaleResult: When params ``evaluate`` depends on changed since ``dvc.lock`` recorded its run.
        GateFailed: Naming every failed check.
        PipelineError: When ``evaluate`` has not run.
    """
    changes = changed_params(cfg.workspace, "evaluate") if cfg.workspace is not None else []
    if changes:
        # The recorded verdict answers other thresholds than the ones asked now: reporting it would mislead.
        raise StaleResult(
            "the recorded verdict is stale: params changed since 'evaluate' ran (dvc.lock): "
            + "; ".join(changes)
            + ". Run `dvc repro evaluate` (or the whole pipeline), then the gate again",
            stage=STAGE,
            path=cfg.metrics,
        )
    gates = read_json(cfg.metrics, stage=STAGE)["gates"]
    failed = failed_checks(gates)
    if failed:
        raise GateFailed(failed, path=cfg.metrics)
    log.info("quality gate passed (%d checks)", len(gates["checks"]))
    return GateResult(checks=len(gates["checks"]))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    return stage_main(STAGE, GateConfig.from_params, run, argv)


if __name__ == "__main__":
    sys.exit(main())
