"""The study loop: Optuna asks for values, ``execute`` runs each trial, the storage is told how it ended.

The study lives in its storage (``flows/tune_storage.py``): SQLite in ``paths.tune_studies`` or a
shared database (``tune.storage``). Only the calling thread talks to Optuna; with several workers
the trials themselves run in threads. ``paths.tune_report`` is written after every trial
(``flows/tuning/report.py``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from flows.tune_storage import open_storage
from flows.tuning.models import TrialOutcome, TrialPlan, TuneConfig, TuneResult
from flows.tuning.report import build_report
from flows.tuning.trial import experiment_name
from stages.core.common import write_json
from stages.core.config import SearchDim
from stages.core.errors import ConfigError, TuneError

# The name the study has always logged under (the log format shows it), kept across the split.
log = logging.getLogger("flows.tuning")

# The study's own settings that make its trials comparable; a resumed study must keep them.
_FIXED = ("metric", "direction", "target")


def suggest(trial: Any, space: dict[str, SearchDim]) -> dict[str, Any]:
    """Ask an Optuna trial for a value of every key in ``space``.

    Args:
        trial: An ``optuna.Trial``.
        space: The ``tune.space`` mapping.

    Returns:
        Params key -> value, in the order of ``space``.
    """
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.type == "categorical":
            values[key] = trial.suggest_categorical(key, list(dim.choices or []))
            continue
        low, high = dim.low, dim.high
        if low is None or high is None:  # SearchDim's validator refuses it; a model built around it must not get far
            raise ConfigError(f"{dim.type} needs numbers low and high", key=f"tune.space.{key}")
        if dim.type == "int":
            values[key] = trial.suggest_int(key, int(low), int(high), step=int(dim.step or 1), log=dim.log)
        else:
            values[key] = trial.suggest_float(key, float(low), float(high), step=dim.step, log=dim.log)
    return values


def counted(trials: Sequence[Any], interrupted: frozenset[int] = frozenset()) -> int:
    """Trials that count toward ``--trials``: finished ones, except those an interruption cut off."""
    return sum(t.state.is_finished() and t.number not in interrupted for t in trials)


def interrupted_trials(study: Any) -> frozenset[int]:
    """Numbers of the trials an interruption cut off (kept in the study's ``interrupted`` attribute)."""
    return frozenset(study.user_attrs.get("interrupted", []))


def _mark_interrupted(study: Any, number: int) -> None:
    import optuna

    study.set_user_attr("interrupted", sorted(interrupted_trials(study) | {number}))
    study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def open_study(cfg: TuneConfig) -> Any:
    """Create the study, or load it when its database already holds one of that name.

    The sampler's seed is ``tune.seed`` plus the trials the study already holds, so a resumed study
    does not ask for its first values again, and the same study and seed ask for the same values.

    Raises:
        TuneError: When the stored study was begun with another metric, direction or target.
    """
    import optuna

    url = open_storage(cfg.store)
    study = optuna.create_study(
        study_name=cfg.tune.study, storage=url, direction=cfg.tune.direction, load_if_exists=True
    )
    fixed = {"metric": cfg.metric_name, "direction": cfg.tune.direction, "target": cfg.tune.target}
    stored = {k: study.user_attrs[k] for k in _FIXED if k in study.user_attrs}
    if not stored:
        for key, value in fixed.items():
            study.set_user_attr(key, value)
    changed = {k: (stored[k], fixed[k]) for k in stored if stored[k] != fixed[k]}
    if changed:
        what = ", ".join(f"tune.{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise TuneError(
            f"study '{cfg.tune.study}' was begun with other settings ({what}): its trials would not compare; "
            f"set tune.study to a new name, or put the settings back",
            path=cfg.storage if not cfg.store.shared else None,
            key=f"tune.{next(iter(changed))}",
        )
    sampler = optuna.samplers.TPESampler(seed=cfg.tune.seed + len(study.trials))
    return optuna.load_study(study_name=cfg.tune.study, storage=url, sampler=sampler)


def worker_id() -> str:
    """This process as a trial's ``worker`` attribute: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_gone(worker: str | None, host: str | None = None) -> bool:
    """Whether the process ``worker`` (``host:pid``) is known to be gone: it ran on this machine
    (``host``, default this one) and no process has its pid. A trial of another machine is never
    known to be gone."""
    name, _, pid = (worker or "").rpartition(":")
    if not name or name != (host or socket.gethostname()) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _close_interrupted(study: Any, shared: bool = False) -> None:
    """Mark trials left running by a run that ended early (killed) as failed and interrupted.

    In the study's own file only one run works at a time (the caller holds the workspace lock), so
    every running trial found at the start belongs to a run that is gone. In a shared storage other
    runs may be running trials right now: only those of a process of this machine that is gone are closed.
    """
    import optuna

    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = frozen.user_attrs.get("worker")
        if shared and not worker_gone(worker):
            log.info("trial %d is running elsewhere (%s): left to its run", frozen.number, worker or "unknown")
            continue
        _mark_interrupted(study, frozen.number)
        log.warning("trial %d was cut off by an interruption: marked failed (not counted)", frozen.number)


Execute = Callable[[TrialPlan], TrialOutcome]


def held(trials: Sequence[Any], interrupted: frozenset[int] = frozenset()) -> int:
    """Trials the study holds or is running now: the counted ones and the running ones (any run's)."""
    return counted(trials, interrupted) + sum(t.state.name == "RUNNING" and t.number not in interrupted for t in trials)


def run_study(
    cfg: TuneConfig,
    trials: int,
    execute: Execute,
    before: Callable[[int], None] | None = None,
    workers: int = 1,
    stop: Callable[[], None] | None = None,
) -> TuneResult:
    """Run trials until the study holds ``trials`` counted ones, writing the report after each.

    With ``workers`` above 1, that many trials run at a time, each ``execute`` in a thread of its
    own; this thread alone talks to Optuna (``ask`` for a trial as a worker frees up, ``tell`` when
    it ends), so trial numbers come from the storage and never repeat, and SQLite never sees two
    writers. Another run sharing the storage (``tune.storage``) asks the same way: the study stops
    asking once the trials it holds, the running ones of every run included, reach ``trials``.

    Args:
        cfg: The study's settings and paths.
        trials: How many trials the study should hold at the end (see the module docstring).
        execute: Runs one trial (:class:`WorkspaceTrials` in the workspace, or in a trial's own clone).
        before: Called once with the next trial's number before any trial runs (a check that may raise).
        workers: Trials run at a time.
        stop: Stops every running ``execute`` (called when this run is interrupted, before waiting for them).

    Returns:
        The report and the trials run this time.

    Raises:
        ConfigError: When ``tune.space`` is empty.
        TuneError: When the stored study was begun with other settings.
    """
    if not cfg.tune.space:
        raise ConfigError("tune.space is empty: nothing to search", key="tune.space")
    study = open_study(cfg)
    _close_interrupted(study, shared=cfg.store.shared)
    done = counted(study.trials, interrupted_trials(study))
    if before is not None and done < trials:
        before(len(study.trials))
    if done >= trials:
        log.info("study '%s' already holds %d trials (asked for %d): nothing to run", cfg.tune.study, done, trials)
    ran: list[int] = []
    running: dict[Future[TrialOutcome], tuple[Any, TrialPlan]] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trial") if workers > 1 else None
    try:
        while True:
            while len(running) < workers and held(study.trials, interrupted_trials(study)) < trials:
                trial, plan = _ask(study, cfg)
                if pool is None:
                    try:
                        outcome = execute(plan)
                    except BaseException as exc:  # Ctrl-C, a cancelled flow run: the trial did not end
                        _interrupt(study, cfg, [(trial, exc)])
                        raise
                    _tell(study, cfg, trial, plan, outcome)
                    ran.append(plan.number)
                    continue
                # Each thread runs in a copy of this context: a Prefect task then finds its flow run.
                running[pool.submit(contextvars.copy_context().run, execute, plan)] = (trial, plan)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                trial, plan = running[future]
                error = future.exception()
                if error is not None:
                    raise error  # still among the running: recorded as cut off below, with the others
                del running[future]
                _tell(study, cfg, trial, plan, future.result())
                ran.append(plan.number)
    except BaseException as exc:
        if running:  # stop the others, then record them as cut off by this
            if stop is not None:
                stop()
            wait(running)
            _interrupt(study, cfg, [(trial, exc) for trial, _ in running.values()])
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    report = build_report(study.trials, cfg, interrupted_trials(study))
    write_json(cfg.report, report)
    return TuneResult(report=report, ran=ran)


def _ask(study: Any, cfg: TuneConfig) -> tuple[Any, TrialPlan]:
    """A new trial from the storage and its plan (its values, its experiment's name, its worker)."""
    trial = study.ask()
    plan = TrialPlan(
        number=trial.number,
        experiment=experiment_name(cfg.tune.study, trial.number),
        values=suggest(trial, cfg.tune.space),
    )
    trial.set_user_attr("experiment", plan.experiment)
    trial.set_user_attr("worker", worker_id())
    log.info("trial %d (%s): %s", plan.number, plan.experiment, plan.values)
    return trial, plan


def _interrupt(study: Any, cfg: TuneConfig, cut: Sequence[tuple[Any, BaseException]]) -> None:
    """Record trials an interruption (or another trial's error) cut off, and write the report."""
    for trial, exc in cut:
        trial.set_user_attr("error", f"interrupted: {type(exc).__name__}: {exc}"[:2000])
        _mark_interrupted(study, trial.number)
    write_json(cfg.report, build_report(study.trials, cfg, interrupted_trials(study)))


def _tell(study: Any, cfg: TuneConfig, trial: Any, plan: TrialPlan, outcome: TrialOutcome) -> None:
    """Give the storage a trial's outcome and write the report."""
    import optuna

    for key, value in (
        ("value", outcome.value),
        ("gate_passed", outcome.gate_passed),
        ("error", outcome.error),
        ("seconds", outcome.seconds),
        ("ran", outcome.ran),
    ):
        if value is not None:
            trial.set_user_attr(key, value)
    if outcome.state == "complete":
        study.tell(trial, outcome.value)
    elif outcome.state == "pruned":
        if outcome.value is not None:
            trial.report(outcome.value, step=0)  # TPE ranks a pruned trial by its last reported value
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    log.info(
        "trial %d %s: %s=%s%s",
        plan.number,
        outcome.state,
        cfg.tune.metric.key,
        outcome.value,
        f" ({outcome.error})" if outcome.error else "",
    )
    write_json(cfg.report, build_report(study.trials, cfg, interrupted_trials(study)))
