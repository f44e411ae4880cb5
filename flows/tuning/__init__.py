"""Hyper-parameter search: an Optuna study whose every trial is a DVC experiment in the workspace.

The search space, the metric and its direction come from ``params.yaml``'s ``tune`` section
(``stages/core/config.py``: ``TuneParams``). Each trial asks Optuna's TPE sampler for values, runs
``dvc exp run --name <study>-<n> -S key=value ... <tune.target>`` in the workspace (through
``flows/dvc_runner.py``, as the pipeline flow runs its stages), checks DVC wrote the values it was
given, and reads the trial's number from the metrics file the experiment left in the workspace. So
every trial is an experiment in ``dvc exp show``, and DVC's run-cache serves a trial whose
params were already tried.

States: a trial whose ``dvc exp run`` fails (or whose metric is missing) is FAILED, with its error
line; a trial whose quality gate failed (``gates.passed: 0``) is PRUNED: its metric is reported to
the sampler, which learns from it, but it can never be the best trial (one that could not be
deployed). Every other trial is COMPLETE.

The study lives in SQLite (``paths.tune_studies/<study>.db``): running again with the same study
name continues it. ``trials`` is the number of trials the study holds when the run ends, counting
complete, pruned and failed ones; a trial cut off by an interruption is marked failed as
``interrupted`` and does not count. ``paths.tune_report`` gets every trial and the best after each
trial. ``params.yaml`` is put back as it was after every trial and at the end.

The modules: ``models`` (the settings, a trial's plan and outcome, the report's rows), ``trial``
(one trial through ``dvc exp run`` and the number it left), ``study`` (the Optuna study and the loop
with its workers), ``report`` (``reports/tune.json``). Their public names are importable from here.
"""

from flows.tuning.models import State, TrialOutcome, TrialPlan, TrialRecord, TuneConfig, TuneReport, TuneResult
from flows.tuning.report import best_of, build_report, record
from flows.tuning.study import (
    Execute,
    counted,
    held,
    interrupted_trials,
    open_study,
    run_study,
    suggest,
    worker_gone,
    worker_id,
)
from flows.tuning.trial import (
    WorkspaceTrials,
    check_metric_file,
    exp_run_command,
    experiment_name,
    format_value,
    metric_stage,
    read_metric,
    set_arguments,
)

__all__ = [
    "Execute",
    "State",
    "TrialOutcome",
    "TrialPlan",
    "TrialRecord",
    "TuneConfig",
    "TuneReport",
    "TuneResult",
    "WorkspaceTrials",
    "best_of",
    "build_report",
    "check_metric_file",
    "counted",
    "exp_run_command",
    "experiment_name",
    "format_value",
    "held",
    "interrupted_trials",
    "metric_stage",
    "open_study",
    "read_metric",
    "record",
    "run_study",
    "set_arguments",
    "suggest",
    "worker_gone",
    "worker_id",
]
