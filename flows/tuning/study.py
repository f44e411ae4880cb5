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
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from flows.dvc_runner import dvc_environment, run_dvc
from flows.tune_storage import StorageSpec, open_storage, resolve_storage
from stages import PIPELINE
from stages.core.common import read_json, write_json
from stages.core.config import Params, SearchDim, TuneParams, get_dotted, load_params
from stages.core.errors import ConfigError, PipelineError, TuneError

log = logging.getLogger(__name__)

State = Literal["complete", "pruned", "failed", "running"]
# The study's own settings that make its trials comparable; a resumed study must keep them.
_FIXED = ("metric", "direction", "target")


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
    best: TrialRecord | None
    trials: list[TrialRecord]


class TuneResult(BaseModel):
    """What one run of the study did."""

    report: TuneReport
    ran: list[int]  # the trials run this time


def metric_stage(workspace: Path, params: Params, file: str) -> str | None:
    """The stage of the workspace's ``dvc.yaml`` whose outputs, metrics or plots hold ``file``.

    Args:
        workspace: The folder holding ``dvc.yaml``.
        params: Its params (``${paths.*}`` in ``dvc.yaml`` are read from them).
        file: The metrics file, relative to the workspace.

    Returns:
        The stage's name, or ``None`` when no stage writes the file.
    """
    stages = (yaml.safe_load((workspace / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {})
    paths = params.paths.model_dump()

    def resolved(entry: Any) -> PurePosixPath:
        text = str(next(iter(entry)) if isinstance(entry, dict) else entry)
        return PurePosixPath(re.sub(r"\$\{paths\.(\w+)\}", lambda m: str(paths.get(m.group(1), m.group(0))), text))

    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            if any(resolved(entry) == PurePosixPath(file) for entry in stage.get(kind) or []):
                return name
    return None


def check_metric_file(cfg: TuneConfig, params: Params) -> None:
    """Every trial must write the metrics file it is judged by.

    Raises:
        ConfigError: When no stage writes ``tune.metric.file``, or one that runs after ``tune.target``
            does (each trial would then read the file an earlier run left).
    """
    file, target = cfg.tune.metric.file, cfg.tune.target
    stage = metric_stage(cfg.workspace, params, file)
    if stage is None:
        raise ConfigError(
            f"no stage of dvc.yaml writes {file}", path=cfg.workspace / "dvc.yaml", key="tune.metric.file"
        )
    if target and stage in PIPELINE and PIPELINE.index(stage) > PIPELINE.index(target):
        raise ConfigError(
            f"{file} is written by stage '{stage}', which runs after tune.target '{target}': every trial would "
            "read the file an earlier run left",
            key="tune.metric.file",
        )


def experiment_name(study: str, number: int) -> str:
    """The DVC experiment of trial ``number``: ``<study>-<number>``."""
    return f"{study}-{number}"


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
        elif dim.type == "int":
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            values[key] = trial.suggest_float(key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)
    return values


def format_value(value: Any) -> str:
    """A value as ``dvc exp run -S`` parses it back (Hydra's override grammar).

    Strings are quoted so that ``1e-3``, ``null`` or ``true`` written as text stay text.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"cannot set a non-finite value {value!r}")
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def set_arguments(values: dict[str, Any]) -> list[str]:
    """``-S key=value`` for every value, as ``dvc exp run`` takes them."""
    args: list[str] = []
    for key, value in values.items():
        args += ["-S", f"{key}={format_value(value)}"]
    return args


def exp_run_command(plan: TrialPlan, target: str) -> list[str]:
    """The DVC arguments of one trial: ``exp run --name <experiment> -S ... [target]``."""
    return ["exp", "run", "--name", plan.experiment, *set_arguments(plan.values), *([target] if target else [])]


def read_metric(path: Path, key: str) -> float:
    """The number at a dotted ``key`` of a metrics JSON file.

    Raises:
        PipelineError: When the file is missing or not JSON.
        ConfigError: When the key is missing or not a finite number; names the file and ``tune.metric.key``.
    """
    data = read_json(path)
    try:
        value = get_dotted(data, key)
    except KeyError:
        raise ConfigError(f"has no key '{key}'", path=path, key="tune.metric.key") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"'{key}' is {value!r}, not a finite number", path=path, key="tune.metric.key")
    return float(value)


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
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}.get(trial.state.name, "running")
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


def best_of(records: Sequence[TrialRecord], direction: str) -> TrialRecord | None:
    """The complete trial with the best value (the earliest on a tie); pruned and failed ones never are."""
    complete = [r for r in records if r.state == "complete" and r.value is not None]
    if not complete:
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
    )


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


class WorkspaceTrials:
    """Runs trials as ``dvc exp run`` in a workspace, each from the ``params.yaml`` it had at the start.

    Args:
        cfg: The study's settings and paths.
        logger: Where DVC's output goes, line by line.
        token: The workspace lock token of the calling run (``stages/core/lock.py``).
    """

    def __init__(
        self,
        cfg: TuneConfig,
        logger: logging.Logger | logging.LoggerAdapter,
        token: str | None,
        on_start: Callable[[subprocess.Popen[str]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.logger = logger
        self.token = token
        self.on_start = on_start  # told each trial's DVC process, so that another thread can stop it
        self.params_file = cfg.workspace / "params.yaml"
        self._snapshot = self.params_file.read_bytes()

    def restore(self) -> None:
        """Put ``params.yaml`` back as it was (``dvc exp run -S`` leaves a trial's values in it).

        Atomically (a new file renamed over it): a reader, or a kill in the middle, never sees half of it.
        """
        fd, tmp = tempfile.mkstemp(dir=self.params_file.parent, prefix=".params.yaml.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._snapshot)
            shutil.copymode(self.params_file, tmp)  # mkstemp makes it 0600; params.yaml keeps its own mode
            os.replace(tmp, self.params_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def check_names_free(self, next_number: int) -> None:
        """Refuse to start when experiments of later trials already exist (a study whose database is gone).

        Raises:
            TuneError: On such a name, or when DVC cannot list experiments (e.g. no git commit yet).
        """
        cmd = [sys.executable, "-m", "dvc", "exp", "list", "--name-only"]
        proc = subprocess.run(
            cmd, cwd=self.cfg.workspace, env=dvc_environment(self.token), capture_output=True, text=True
        )
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise TuneError(f"cannot list DVC experiments here: {detail[0]} (experiments need a git commit)")
        pattern = re.compile(rf"{re.escape(self.cfg.tune.study)}-(\d+)")
        taken = sorted(
            name
            for name in (line.strip() for line in proc.stdout.splitlines())
            if (m := pattern.fullmatch(name)) and int(m.group(1)) >= next_number
        )
        if taken:
            raise TuneError(
                f"experiments {taken} exist but study '{self.cfg.tune.study}' has no such trials "
                f"(its database {self.cfg.storage} was removed?): remove them (dvc exp remove {' '.join(taken)}) "
                f"or set tune.study to a new name",
                key="tune.study",
            )

    def __call__(self, plan: TrialPlan) -> TrialOutcome:
        """Run one trial and read its outcome.

        Args:
            plan: The trial's experiment name and values.

        Returns:
            Failed (with DVC's or the stage's error line) when ``dvc exp run`` fails or times out, when
            DVC did not write the values asked for, or when the metric is missing; pruned when the
            gate failed; complete otherwise.
        """
        self.restore()  # this trial's values over the params the study started from, nothing else
        started = time.perf_counter()
        out = run_dvc(
            exp_run_command(plan, self.cfg.tune.target),
            self.cfg.workspace,
            self.logger,
            timeout_s=self.cfg.tune.trial_timeout_s or None,
            token=self.token,
            on_start=self.on_start,
        )
        seconds = round(time.perf_counter() - started, 2)
        if out.timed_out:
            error = f"timed out after {out.seconds:.0f} s (tune.trial_timeout_s)"
            return TrialOutcome(state="failed", error=error, seconds=seconds, ran=out.ran)
        if out.code < 0:  # a signal, not DVC's own exit: a kill (OOM, an operator) leaves no error line
            name = signal.Signals(-out.code).name if -out.code in signal.valid_signals() else str(-out.code)
            error = f"dvc exp run was killed ({name}); the other trials go on"
            return TrialOutcome(state="failed", error=error, seconds=seconds, ran=out.ran)
        if out.code != 0:
            # The stage's own line ('error: [stage ...] ...') says more than DVC's 'failed to reproduce'.
            own = [e for e in out.errors if e.startswith("error:")]
            line = (own or out.errors or out.tail[-1:] or [f"dvc exp run exited with code {out.code}"])[0]
            return TrialOutcome(state="failed", error=line[:2000], seconds=seconds, ran=out.ran)
        try:
            self._check_values(plan)
            value = read_metric(self.cfg.workspace / self.cfg.tune.metric.file, self.cfg.tune.metric.key)
        except PipelineError as exc:
            return TrialOutcome(state="failed", error=str(exc), seconds=seconds, ran=out.ran)
        gate = self._gate_passed() if self.cfg.gate_applies else None
        state = "pruned" if gate is False else "complete"
        return TrialOutcome(state=state, value=value, gate_passed=gate, seconds=seconds, ran=out.ran)

    def _check_values(self, plan: TrialPlan) -> None:
        """The experiment ran with exactly the values asked for (as the stages read them).

        Raises:
            TuneError: Naming the first key whose value differs.
        """
        data = load_params(self.params_file).as_dict()
        for key, wanted in plan.values.items():
            got = get_dotted(data, key)
            same = (
                math.isclose(got, wanted, rel_tol=1e-12)
                if isinstance(wanted, float) and isinstance(got, int | float)
                else got == wanted and type(got) is type(wanted)
            )
            if not same:
                raise TuneError(f"dvc exp run set {key}={got!r}, not {wanted!r}", path=self.params_file, key=key)

    def _gate_passed(self) -> bool | None:
        verdict = read_json(self.cfg.evaluate_metrics, default=None)
        if not isinstance(verdict, dict) or "gates" not in verdict:
            return None
        return bool(verdict["gates"]["passed"])
