"""``python -m stages.gate``: stop (exit 2) when the recorded evaluation gate failed.

A failed gate is a result of the pipeline, not a crash: ``evaluate`` records it in
``metrics/evaluate.json`` (``gates.passed: 0``) and ``export`` builds nothing deployable, so
``dvc repro`` and ``dvc exp run`` complete and a failed experiment keeps its own metrics. Whoever
acts on the verdict runs this afterwards: the Prefect flow (before promoting), CI and ``make demo``.
It names every failed check. ``stages.promote`` applies the same verdict on its own.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from stages.core.common import read_json, stage_main
from stages.core.config import Params
from stages.core.errors import GateFailed
from stages.core.verdict import failed_checks

log = logging.getLogger(__name__)

STAGE = "gate"


class GateConfig(BaseModel):
    """Where the verdict is recorded."""

    model_config = ConfigDict(frozen=True)

    metrics: Path

    @classmethod
    def from_params(cls, params: Params, root: Path) -> GateConfig:
        """Build the config from ``params.yaml`` values and the workspace root."""
        return cls(metrics=params.paths.resolve("evaluate_metrics", root))


class GateResult(BaseModel):
    """A passed verdict and how many checks it holds."""

    checks: int


def run(cfg: GateConfig) -> GateResult:
    """Read the recorded verdict and fail when any check failed.

    Raises:
        GateFailed: Naming every failed check.
        PipelineError: When ``evaluate`` has not run.
    """
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
