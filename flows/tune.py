"""Hyper-parameter search over the pipeline: an Optuna study, one DVC experiment per trial.

What is searched, for which metric and in which direction is ``params.yaml``'s ``tune`` section;
the study itself is the ``flows/tuning`` package. The run holds the workspace (``stages/core/lock.py``)
like a pipeline flow run, so the two never interleave.

Usage::

    python -m flows.tune --trials 20 [--workers N] [--workspace .] [--flow]

``--trials N``: the study holds N trials when the run ends (complete, pruned and failed ones;
not those an interruption cut off), so running it again with a larger N continues the same study.
``--workers N`` (default ``tune.workers``) runs N trials at a time, each in a private clone of the
workspace sharing its DVC cache, their experiments brought back here (``flows/trial_workspaces.py``).
``--flow`` runs it as the Prefect flow (each trial a task, the trials as a table artifact), as the
``tune`` deployment in ``prefect.yaml`` does; without it the study runs in this process alone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.pinned import check_pinned_workspace
from flows.trial_workspaces import TrialWorkspaces, check_git_remote, push_experiment
from flows.tuning import (
    TrialOutcome,
    TrialPlan,
    TuneConfig,
    TuneReport,
    TuneResult,
    WorkspaceTrials,
    check_metric_file,
    run_study,
)
from flows.tuning.report import best_line
from stages.core.cli import configure_logging
from stages.core.config import load_params
from stages.core.errors import PipelineError
from stages.core.lock import workspace_lock

log = logging.getLogger(__name__)


def tune_workspace(
    workspace: Path,
    trials: int,
    owner: str,
    logger: logging.Logger | logging.LoggerAdapter,
    execute: Any = None,
    workers: int | None = None,
) -> TuneResult:
    """Hold the workspace and run the study of its ``params.yaml``.

    Args:
        workspace: The folder holding ``dvc.yaml`` and ``params.yaml``.
        trials: How many trials the study should hold at the end.
        owner: Who holds the workspace, for the message a waiting run gets.
        logger: Where DVC's output goes.
        execute: Wraps each trial (the flow makes each one a task); called as ``execute(runner, plan)``.
        workers: Trials at a time (default ``tune.workers``); above 1 each runs in a clone of its own
            (``flows/trial_workspaces.py``), with one it runs in the workspace itself.

    Returns:
        The report and the trials run this time.

    Raises:
        ConfigError: When ``params.yaml`` is invalid, ``tune.space`` empty, or no trial would write the metric.
        TuneError: When the study cannot go on (begun with other settings, experiment names taken).
        WorkspaceBusy: When another run holds the workspace past ``orchestration.lock_timeout_s``.
    """
    params = load_params(workspace / "params.yaml")
    cfg = TuneConfig.from_params(params, workspace)
    check_metric_file(cfg, params)
    workers = workers or params.tune.workers
    remote = params.tune.git_remote
    with workspace_lock(workspace, params.orchestration.lock_timeout_s, owner) as token, stop_on_sigterm():
        if remote:
            check_git_remote(workspace, remote)
        runner = WorkspaceTrials(cfg, logger, token)
        clones = TrialWorkspaces(cfg, params, logger, workers) if workers > 1 else None
        trial: Any = clones or (lambda plan: _pushed(runner(plan), workspace, remote, plan))
        try:
            return run_study(
                cfg,
                trials,
                trial if execute is None else lambda plan: execute(trial, plan),
                before=runner.check_names_free,
                workers=workers,
                stop=clones.stop if clones else None,
            )
        finally:
            runner.restore()
            if clones:
                clones.close()


def _pushed(outcome: TrialOutcome, workspace: Path, remote: str, plan: TrialPlan) -> TrialOutcome:
    """The outcome of a trial run in the workspace, once its experiment is pushed to ``remote`` (if any)."""
    if not remote or outcome.state == "failed":  # DVC saves no experiment for a failed run
        return outcome
    error = push_experiment(workspace, remote, plan.experiment)
    return outcome.model_copy(update={"error": error}) if error else outcome


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C, so the running trial's DVC is stopped and params restored."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` in the main thread for the block.

    Python's default for SIGTERM ends the process at once: no ``finally`` runs, so the trial's
    ``dvc exp run`` (in a session of its own) went on alone and ``params.yaml`` kept the trial's
    values. As an exception it reaches ``run_dvc`` (which stops DVC's process group) and the
    restore of ``params.yaml``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; there the caller's own handling applies
        return

    def _raise(signum: int, _frame: Any) -> None:
        raise Terminated(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _quiet_optuna() -> None:
    """Optuna's own INFO lines repeat what the study logs; keep its warnings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


@task(name="tune-trial", task_run_name="trial {plan.number}", cache_policy=NO_CACHE)
def trial_task(runner: Callable[[TrialPlan], TrialOutcome], plan: TrialPlan) -> TrialOutcome:
    """One trial: ``dvc exp run`` with its values (never retried: a failed trial is a result)."""
    return runner(plan)


@flow(name="yolo-tune")
def tune(workspace: str = ".", trials: int = 10, workers: int | None = None) -> TuneReport:
    """Run or continue the hyper-parameter study of the workspace's ``tune`` section.

    Args:
        workspace: The folder holding ``dvc.yaml`` and ``params.yaml``.
        trials: How many trials the study should hold at the end (a larger number continues it).
        workers: Trials at a time (default: ``tune.workers``).

    Returns:
        Every trial and the best one (also written to ``paths.tune_report``).

    Raises:
        ConfigError: When ``params.yaml`` is invalid or ``tune.space`` empty.
        TuneError: When the study cannot go on.
        WorkspaceBusy: When another run holds the workspace.
        PipelineError: When a deployment's run names a workspace other than the deployment's own.
    """
    from prefect.artifacts import create_table_artifact
    from prefect.runtime import deployment, flow_run

    # The deployment's folder, never a run's parameter: `dvc exp run` executes that folder's dvc.yaml.
    check_pinned_workspace(workspace, deployment.id)
    _quiet_optuna()
    result = tune_workspace(
        Path(workspace).resolve(),
        trials,
        f"tune flow run {flow_run.name or flow_run.id}",
        get_run_logger(),
        execute=trial_task,
        workers=workers,
    )
    report = result.report
    create_table_artifact(
        key="tune-trials",
        table=[
            {"trial": t.number, "state": t.state, "value": t.value, "experiment": t.experiment, "error": t.error}
            | {k: v for k, v in t.params.items()}
            for t in report.trials
        ],
        description=f"Study {report.study}: {report.metric} ({report.direction}); {best_line(report)}",
    )
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: run or continue the study."""
    parser = argparse.ArgumentParser(prog="python -m flows.tune", description="Hyper-parameter search over DVC.")
    parser.add_argument("--trials", type=int, required=True, help="trials the study should hold at the end")
    parser.add_argument("--workers", type=int, help="trials at a time, each in its own clone (default: tune.workers)")
    parser.add_argument("--workspace", default=".", help="folder holding dvc.yaml (default: %(default)s)")
    parser.add_argument("--flow", action="store_true", help="run as the Prefect flow (temporary server if none)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if not args.flow:  # the flow logs through Prefect's handlers
        root = logging.getLogger()
        for handler in list(root.handlers):  # importing Prefect's `flow` put its own there, at WARNING
            root.removeHandler(handler)
        configure_logging(args.verbose)
    _quiet_optuna()
    workspace = Path(args.workspace).resolve()
    try:
        if args.flow:
            os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
            os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
            report = tune(workspace=str(workspace), trials=args.trials, workers=args.workers)
        else:
            owner = f"python -m flows.tune (pid {os.getpid()})"
            report = tune_workspace(workspace, args.trials, owner, log, workers=args.workers).report
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Terminated as exc:
        print(f"error: {exc}: the running trial was stopped and params.yaml restored", file=sys.stderr)
        return 128 + signal.SIGTERM
    counts = ", ".join(f"{n} {state}" for state, n in report.counts.items() if n)
    print(f"study {report.study}: {len(report.trials)} trials ({counts})")
    print(best_line(report))
    if report.best:
        later = f", then dvc repro (trials run the stages up to {report.target} only)" if report.target else ""
        print(f"apply it with: dvc exp apply {report.best.experiment}{later}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
