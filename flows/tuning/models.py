"""The study's typed models: its settings, a trial's plan and outcome, and ``reports/tune.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from flows.tune_storage import StorageSpec, resolve_storage
from stages import PIPELINE
from stages.core.config import Params, TuneParams

State = Literal["complete", "pruned", "failed", "running"]


class TuneConfig(BaseModel):
    """Where a study runs and what it searches."""

    model_config = ConfigDict(frozen=True)

    workspace: Path
    tune: TuneParams
    storage: Path  # the study's SQLite file when tune.storage is empty
    store: StorageSpec  # where the study lives (tune.storage resolved)
    report: Path
    evaluate_metrics: Path  # holds the gate verdict

    @classmethod
    def from_params(cls, params: Params, root: Path) -> TuneConfig:
        """The study of ``params.tune`` in the workspace ``root``."""
        default_file = params.paths.resolve("tune_studies", root) / f"{params.tune.study}.db"
        return cls(
            workspace=root,
            tune=params.tune,
            storage=default_file,
            store=resolve_storage(params.tune.storage, root, default_file),
            report=params.paths.resolve("tune_report", root),
            evaluate_metrics=params.paths.resolve("evaluate_metrics", root),
        )

    @property
    def metric_name(self) -> str:
        """``file:key``, e.g. ``metrics/evaluate.json:map50_95``."""
        return f"{self.tune.metric.file}:{self.tune.metric.key}"

    @property
    def gate_applies(self) -> bool:
        """Whether each trial runs ``evaluate``, so that its gate verdict is the trial's own."""
        target = self.tune.target
        return not target or PIPELINE.index(target) >= PIPELINE.index("evaluate")


class TrialPlan(BaseModel):
    """One trial to run: its number, its experiment's name and the params values it sets."""

    model_config = ConfigDict(frozen=True)

    number: int
    experiment: str
    values: dict[str, Any]


class TrialOutcome(BaseModel):
    """How a trial ended."""

    model_config = ConfigDict(frozen=True)

    state: Literal["complete", "pruned", "failed"]
    value: float | None = None
    gate_passed: bool | None = None
    error: str | None = None
    seconds: float = 0.0
    ran: list[str] = []  # the stages DVC ran; the others it found up to date or restored from its cache


class TrialRecord(BaseModel):
    """One trial in ``reports/tune.json``."""

    number: int
    state: State
    experiment: str | None
    params: dict[str, Any]
    value: float | None  # pruned trials keep theirs too
    gate_passed: bool | None
    error: str | None
    seconds: float | None
    ran: list[str] | None


class TuneReport(BaseModel):
    """``reports/tune.json``: the study, every trial and the best one."""

    study: str
    storage: str
    metric: str
    direction: str
    target: str
    counts: dict[str, int]
    # Null when no trial completed, or when every complete trial (two or more) scored the same: no trial
    # is better than another then, and calling the first one 'best' would send the user to apply it.
    best: TrialRecord | None
    trials: list[TrialRecord]
    # The value every complete trial scored when they all tied (best is then null); null otherwise.
    tied: float | None = None


class TuneResult(BaseModel):
    """What one run of the study did."""

    report: TuneReport
    ran: list[int]  # the trials run this time
