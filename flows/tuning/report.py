"""``reports/tune.json`` from a study's Optuna trials: one row per trial, the counts, the best (none on a tie)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flows.tuning.models import State, TrialRecord, TuneConfig, TuneReport

# Optuna's finished states as the report names them; a trial in any other state is still running.
_STATES: dict[str, State] = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}


def record(trial: Any, interrupted: frozenset[int] = frozenset()) -> TrialRecord:
    """A finished or running Optuna trial (``FrozenTrial``) as a report row.

    Args:
        trial: The trial.
        interrupted: Numbers of the study's trials that an interruption cut off.
    """
    attrs = trial.user_attrs
    error = attrs.get("error") or (
        "interrupted: the tuning run ended during this trial" if trial.number in interrupted else None
    )
    state = _STATES.get(trial.state.name, "running")
    value = trial.value if state == "complete" else attrs.get("value")
    return TrialRecord(
        number=trial.number,
        state=state,
        experiment=attrs.get("experiment"),
        params=dict(trial.params),
        value=value,
        gate_passed=attrs.get("gate_passed"),
        error=error,
        seconds=attrs.get("seconds"),
        ran=attrs.get("ran"),
    )


def _complete(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The complete trials that have a value."""
    return [r for r in records if r.state == "complete" and r.value is not None]


def tied_value(records: Sequence[TrialRecord]) -> float | None:
    """The value every complete trial scored, when two or more completed and all scored exactly the same.

    Args:
        records: The study's trials.

    Returns:
        That value, or None when fewer than two trials completed or their values differ.
    """
    values = {float(r.value or 0.0) for r in _complete(records)}
    return values.pop() if len(_complete(records)) > 1 and len(values) == 1 else None


def best_of(records: Sequence[TrialRecord], direction: str) -> TrialRecord | None:
    """The complete trial with the best value; pruned and failed ones never are.

    On a tie at the top between some trials the earliest is the best; when every complete trial tied
    (see ``tied_value``), none is: the search told nothing apart.

    Args:
        records: The study's trials.
        direction: ``maximize`` or ``minimize``.

    Returns:
        The best trial, or None when no trial completed or all tied.
    """
    complete = _complete(records)
    if not complete or tied_value(records) is not None:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(complete, key=lambda r: (sign * float(r.value or 0.0), r.number))


def build_report(trials: Sequence[Any], cfg: TuneConfig, interrupted: frozenset[int] = frozenset()) -> TuneReport:
    """The report of a study from its trials (Optuna ``FrozenTrial`` objects).

    Args:
        trials: Every trial of the study.
        cfg: The study's settings.
        interrupted: Numbers of the trials an interruption cut off.
    """
    records = [record(t, interrupted) for t in sorted(trials, key=lambda t: t.number)]
    counts = {state: sum(r.state == state for r in records) for state in ("complete", "pruned", "failed", "running")}
    return TuneReport(
        study=cfg.tune.study,
        storage=cfg.store.label,
        metric=cfg.metric_name,
        direction=cfg.tune.direction,
        target=cfg.tune.target,
        counts=counts,
        best=best_of(records, cfg.tune.direction),
        trials=records,
        tied=tied_value(records),
    )


def best_line(report: TuneReport) -> str:
    """The one line saying which trial is best, or why none is (for the CLI and the flow's artifact).

    Args:
        report: The study's report.
    """
    if report.best:
        return f"best: trial {report.best.number} ({report.best.experiment}) {report.metric} = {report.best.value}"
    if report.tied is not None:
        n = report.counts.get("complete", 0)
        return f"best: none: all {n} complete trials tied at {report.metric} = {report.tied}: no best"
    return "best: none (no trial completed)"
