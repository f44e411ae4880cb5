"""One trial as a DVC experiment: ``dvc exp run -S key=value ... <tune.target>`` and the number it left.

:class:`WorkspaceTrials` runs a trial in a workspace (through ``flows/dvc_runner.py``, as the
pipeline flow runs its stages), checks DVC wrote the values it was given, and reads the trial's
metric and gate verdict from the files the experiment left there. :func:`check_metric_file` makes
sure, before any trial, that every trial writes the file it is judged by.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from flows.dvc_runner import dvc_environment, run_dvc
from flows.tuning.models import TrialOutcome, TrialPlan, TuneConfig
from stages import PIPELINE
from stages.core.common import read_json
from stages.core.config import Params, get_dotted, load_params
from stages.core.errors import ConfigError, PipelineError, TuneError


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
        state: Literal["complete", "pruned"] = "pruned" if gate is False else "complete"
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
