"""Hyper-parameter search, the pieces that need no DVC run: the ``tune`` section, suggestions turned
into ``dvc exp run -S`` arguments (parsed back by DVC's own code), and the study loop on a real
SQLite Optuna storage with a stand-in for ``dvc exp run``: states, the best trial, resuming,
interruptions, and a study begun with other settings.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from flows.tuning import (
    TrialOutcome,
    TrialPlan,
    TrialRecord,
    TuneConfig,
    TuneReport,
    best_of,
    check_metric_file,
    exp_run_command,
    format_value,
    metric_stage,
    read_metric,
    run_study,
    set_arguments,
    suggest,
)
from flows.tuning.models import State
from flows.tuning.report import best_line, tied_value
from stages.core.config import Params, SearchDim, load_params, parse_params
from stages.core.errors import ConfigError, TuneError
from tests.conftest import REPO

SPACE = {
    "train.optimizer": {"type": "categorical", "choices": ["SGD", "AdamW"]},
    "train.lr0": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "train.epochs": {"type": "int", "low": 1, "high": 5},
    "train.imgsz": {"type": "int", "low": 64, "high": 256, "step": 32},
    "train.cos_lr": {"type": "categorical", "choices": [True, False]},
}


def params_with(space: dict[str, Any], **tune: Any) -> Params:
    return parse_params({"tune": {"space": space, **tune}})


def config_error(space: dict[str, Any], **tune: Any) -> str:
    with pytest.raises(ConfigError) as err:
        params_with(space, **tune)
    return str(err.value)


# --- the tune section ---------------------------------------------------------------------------


def test_repo_tune_section_is_valid_and_searches_pipeline_params():
    params = load_params(REPO / "params.yaml")
    assert params.tune.space, "params.yaml's tune.space should hold a search space"
    data = params.as_dict()
    for key in params.tune.space:
        section, *rest = key.split(".")
        assert section not in {"tune", "paths"} and rest
    assert params.tune.metric.file == params.paths.evaluate_metrics
    assert "train.optimizer" in params.tune.space, "optimizer: auto ignores lr0 and momentum"
    assert "auto" not in params.tune.space["train.optimizer"].choices
    assert data["tune"]["direction"] in {"maximize", "minimize"}


def test_space_of_every_kind_is_accepted():
    params = params_with(SPACE)
    assert params.tune.space["train.imgsz"].step == 32
    assert params.tune.space["train.cos_lr"].choices == [True, False]


@pytest.mark.parametrize(
    ("space", "words"),
    [
        ({"train.lr00": {"type": "float", "low": 0.1, "high": 1}}, ["'train.lr00'", "did you mean 'train.lr0'"]),
        ({"trian.lr0": {"type": "float", "low": 0.1, "high": 1}}, ["'trian.lr0'", "did you mean 'train'"]),
        ({"train": {"type": "int", "low": 1, "high": 2}}, ["'train'", "whole section"]),
        ({"train.lr0.x": {"type": "float", "low": 0.1, "high": 1}}, ["'train.lr0.x'", "holds a value"]),
        ({"tune.seed": {"type": "int", "low": 1, "high": 2}}, ["'tune.seed'", "never tuned"]),
        ({"paths.model": {"type": "categorical", "choices": ["a.pt"]}}, ["'paths.model'", "never tuned"]),
        ({"train.epochs": {"type": "float", "low": 1, "high": 3}}, ["'train.epochs'", "type int"]),
    ],
)
def test_space_key_that_is_no_tunable_params_key_is_refused_by_name(space, words):
    message = config_error(space)
    assert "tune.space" in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("space", "words"),
    [
        ({"train.lr0": {"type": "float", "low": 0.0, "high": 0.1}}, ["'train.lr0'", "0.0", "greater than 0"]),
        ({"train.imgsz": {"type": "categorical", "choices": [64, 50]}}, ["'train.imgsz'", "50", "multiple of 32"]),
        ({"train.optimizer": {"type": "categorical", "choices": ["SGD", "Adagrad"]}}, ["'Adagrad'"]),
        ({"train.momentum": {"type": "float", "low": 0.5, "high": 1.5}}, ["'train.momentum'", "1.5"]),
    ],
)
def test_space_value_the_params_refuse_is_refused_by_key_and_value(space, words):
    message = config_error(space)
    assert "key 'tune'" in message and "refused" in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("dim", "words"),
    [
        ({"type": "categorical"}, ["non-empty list of choices"]),
        ({"type": "categorical", "choices": ["SGD"], "low": 1}, ["choices only"]),
        ({"type": "categorical", "choices": ["SGD", "SGD"]}, ["twice"]),
        ({"type": "float", "low": 0.1}, ["needs numbers low and high"]),
        ({"type": "float", "low": 0.2, "high": 0.1}, ["above high"]),
        ({"type": "float", "low": 0.01, "high": 0.1, "log": True, "step": 0.01}, ["exclude each other"]),
        ({"type": "float", "low": 0.01, "high": 0.1, "choices": [0.1]}, ["not choices"]),
        ({"type": "float", "low": 0.01, "high": 0.1, "colour": "red"}, ["unknown key 'tune.space.train.lr0.colour'"]),
        ({"type": "grid", "low": 0.01, "high": 0.1}, ["tune.space.train.lr0.type"]),
    ],
)
def test_malformed_dimension_is_refused(dim, words):
    message = config_error({"train.lr0": dim})
    for word in words:
        assert word in message, message


def test_log_int_and_whole_numbers():
    assert "log needs low > 0" in config_error({"train.epochs": {"type": "int", "low": 0, "high": 4, "log": True}})
    assert "whole numbers" in config_error({"train.epochs": {"type": "int", "low": 1, "high": 4.5}})


def test_study_name_target_and_direction_are_checked():
    assert "tune.study" in config_error(SPACE, study="my study")
    assert "unknown stage 'evaluation'" in config_error(SPACE, target="evaluation")
    assert "tune.direction" in config_error(SPACE, direction="up")
    assert params_with(SPACE, target="").tune.target == ""


def test_space_is_checked_against_the_values_of_this_file_not_the_defaults():
    # 16 splits over 2 processes, 15 does not: the refusal comes from this file's distributed settings.
    space = {"train.batch": {"type": "categorical", "choices": [16, 15]}}
    assert parse_params({"tune": {"space": space}}).tune.space
    with pytest.raises(ConfigError, match="the value 15 is refused"):
        parse_params({"train": {"distributed": {"nproc_per_node": 2}}, "tune": {"space": space}})


# --- suggestions and -S arguments -----------------------------------------------------------


def test_suggestions_lie_in_the_space_with_the_right_types():
    params = params_with(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
    for _ in range(20):
        values = suggest(study.ask(), params.tune.space)
        assert list(values) == list(SPACE)
        assert values["train.optimizer"] in {"SGD", "AdamW"}
        assert isinstance(values["train.lr0"], float) and 1e-4 <= values["train.lr0"] <= 0.1
        assert isinstance(values["train.epochs"], int) and 1 <= values["train.epochs"] <= 5
        assert values["train.imgsz"] in {64, 96, 128, 160, 192, 224, 256}
        assert values["train.cos_lr"] in {True, False}


def test_a_range_without_bounds_is_a_config_error_naming_its_key_not_a_type_error():
    """``suggest`` narrows low and high itself: a dimension built around SearchDim's validator
    (``model_construct``) gets the typed error naming the key, not ``int(None)``'s TypeError."""
    dim = SearchDim.model_construct(type="int", low=None, high=5, log=False, step=None, choices=None)
    with pytest.raises(ConfigError, match=r"tune\.space\.train\.epochs.*int needs numbers low and high"):
        suggest(optuna.trial.FixedTrial({"train.epochs": 2}), {"train.epochs": dim})


def test_fixed_suggestion_becomes_s_arguments_and_the_command():
    params = params_with(SPACE)
    fixed = {"train.optimizer": "SGD", "train.lr0": 0.003, "train.epochs": 2, "train.imgsz": 96, "train.cos_lr": True}
    values = suggest(optuna.trial.FixedTrial(fixed), params.tune.space)
    assert values == fixed
    args = set_arguments(values)
    assert args == [
        "-S",
        "train.optimizer='SGD'",
        "-S",
        "train.lr0=0.003",
        "-S",
        "train.epochs=2",
        "-S",
        "train.imgsz=96",
        "-S",
        "train.cos_lr=true",
    ]
    plan = TrialPlan(number=4, experiment="study-4", values=values)
    assert exp_run_command(plan, "evaluate") == ["exp", "run", "--name", "study-4", *args, "evaluate"]
    assert exp_run_command(plan, "") == ["exp", "run", "--name", "study-4", *args]


@pytest.mark.parametrize(
    "value", [1e-05, 0.1 + 0.2, 3, True, False, None, "SGD", "1e-3", "true", "null", "it's", "a b.yaml", "x=y"]
)
def test_dvc_parses_each_formatted_value_back_to_itself(tmp_path: Path, value):
    """The -S text goes through DVC's own override code into params.yaml, and reads back unchanged."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  model: yolo11n.yaml  # a comment DVC keeps\n")
    apply_overrides(str(path), [f"train.model={format_value(value)}"])
    text = path.read_text()
    assert "# a comment DVC keeps" in text
    read = yaml.safe_load(text)["train"]["model"]
    if isinstance(value, float):
        assert float(read) == value  # PyYAML reads 1e-05 as text; the params models take it as the float
    else:
        assert read == value and type(read) is type(value)


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError):
        format_value(float("nan"))


def test_metric_is_read_by_dotted_key_and_must_be_a_number(tmp_path: Path):
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps({"map50_95": 0.25, "per_class": {"disc": {"ap50": 0.5, "ap50_95": None}}, "ok": True}))
    assert read_metric(path, "map50_95") == 0.25
    assert read_metric(path, "per_class.disc.ap50") == 0.5
    for key, words in (("per_class.disc.ap50_95", "not a finite number"), ("ok", "not a finite number")):
        with pytest.raises(ConfigError, match=words):
            read_metric(path, key)
    with pytest.raises(ConfigError) as err:
        read_metric(path, "map")
    assert err.value.key == "tune.metric.key" and err.value.path == path


def row(n: int, state: State, value: float | None) -> TrialRecord:
    """A trial's report row with only what choosing the best reads."""
    return TrialRecord(
        number=n, state=state, experiment=f"s-{n}", params={}, value=value, gate_passed=None, error=None,
        seconds=1.0, ran=[],
    )  # fmt: skip


def test_best_is_the_best_complete_trial_earliest_on_a_tie():
    rows = [row(0, "complete", 0.2), row(1, "pruned", 0.9), row(2, "complete", 0.4), row(3, "complete", 0.4)]
    rows.append(row(4, "failed", None))
    assert best_of(rows, "maximize").number == 2
    assert best_of(rows, "minimize").number == 0
    assert best_of([rows[1], rows[4]], "maximize") is None


# --- the study loop, with a stand-in for dvc exp run --------------------------------------------


class FakeTrials:
    """Plays ``dvc exp run``: the metric is a function of the values; some trials fail or miss the gate."""

    def __init__(self, fail: set[int] = frozenset(), gate_fails: set[int] = frozenset(), raise_at: int | None = None):
        self.fail, self.gate_fails, self.raise_at = fail, gate_fails, raise_at
        self.plans: list[TrialPlan] = []

    def __call__(self, plan: TrialPlan) -> TrialOutcome:
        self.plans.append(plan)
        if plan.number == self.raise_at:
            raise KeyboardInterrupt
        if plan.number in self.fail:
            return TrialOutcome(state="failed", error="error: [stage 'train'] boom", seconds=1.0, ran=["train"])
        value = 1.0 - abs(plan.values["train.lr0"] - 0.01)
        if plan.number in self.gate_fails:
            return TrialOutcome(state="pruned", value=value + 1.0, gate_passed=False, seconds=1.0)
        return TrialOutcome(state="complete", value=value, gate_passed=True, seconds=1.0, ran=["train", "evaluate"])


def tune_config(tmp_path: Path, **tune: Any) -> TuneConfig:
    space = {"train.lr0": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}
    params = parse_params({"tune": {"study": "unit", "space": space, **tune}})
    return TuneConfig.from_params(params, tmp_path)


def test_states_report_and_best(tmp_path: Path):
    cfg = tune_config(tmp_path)
    fake = FakeTrials(fail={1}, gate_fails={2})
    result = run_study(cfg, 4, fake)
    assert result.ran == [0, 1, 2, 3]
    assert cfg.storage == tmp_path / ".cache/tune/unit.db" and cfg.storage.is_file()
    report = json.loads(cfg.report.read_text())
    assert cfg.report == tmp_path / "reports/tune.json"
    states = [t["state"] for t in report["trials"]]
    assert states == ["complete", "failed", "pruned", "complete"]
    assert report["counts"] == {"complete": 2, "pruned": 1, "failed": 1, "running": 0}
    failed, pruned = report["trials"][1], report["trials"][2]
    assert failed["error"] == "error: [stage 'train'] boom" and failed["value"] is None
    assert pruned["value"] > 1.0 and pruned["gate_passed"] is False  # kept in the report, never the best
    assert [t["experiment"] for t in report["trials"]] == ["unit-0", "unit-1", "unit-2", "unit-3"]
    assert all(set(t["params"]) == {"train.lr0"} for t in report["trials"])
    completes = [t for t in report["trials"] if t["state"] == "complete"]
    assert report["best"] == max(completes, key=lambda t: t["value"])
    assert report["metric"] == "metrics/evaluate.json:map50_95" and report["direction"] == "maximize"
    study = optuna.load_study(study_name="unit", storage=f"sqlite:///{cfg.storage}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "PRUNED", "COMPLETE"]
    assert study.trials[2].intermediate_values == {0: pruned["value"]}  # what TPE ranks a pruned trial by


def test_resuming_runs_only_the_missing_trials_and_continues_the_same_study(tmp_path: Path):
    cfg = tune_config(tmp_path)
    first = FakeTrials(fail={1})
    run_study(cfg, 2, first)
    earlier = json.loads(cfg.report.read_text())["trials"]

    again = FakeTrials()
    result = run_study(cfg, 3, again)
    assert result.ran == [2] and [p.number for p in again.plans] == [2]  # the failed trial counts too
    assert result.report.trials[:2] == [TrialRecord(**t) for t in earlier]
    assert again.plans[0].values != first.plans[0].values, "a resumed study must not ask for trial 0's values again"

    full = FakeTrials()
    assert run_study(cfg, 3, full).ran == [] and not full.plans
    assert len(json.loads(cfg.report.read_text())["trials"]) == 3


def test_same_seed_same_suggestions(tmp_path: Path):
    plans = []
    for name in ("a", "b"):
        fake = FakeTrials()
        run_study(tune_config(tmp_path, study=name), 3, fake)
        plans.append([p.values for p in fake.plans])
    assert plans[0] == plans[1]
    other = FakeTrials()
    run_study(tune_config(tmp_path, study="c", seed=1), 3, other)
    assert [p.values for p in other.plans] != plans[0]


def test_interrupted_trial_is_failed_not_counted_and_the_report_written(tmp_path: Path):
    cfg = tune_config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, 3, FakeTrials(raise_at=1))
    report = json.loads(cfg.report.read_text())
    assert [t["state"] for t in report["trials"]] == ["complete", "failed"]
    assert report["trials"][1]["error"].startswith("interrupted: KeyboardInterrupt")

    result = run_study(cfg, 3, FakeTrials())
    assert result.ran == [2, 3], "the interrupted trial does not count toward --trials"
    assert [t.state for t in result.report.trials] == ["complete", "failed", "complete", "complete"]


def test_a_trial_left_running_by_a_killed_run_is_closed_at_the_next_start(tmp_path: Path):
    cfg = tune_config(tmp_path)
    run_study(cfg, 1, FakeTrials())
    study = optuna.load_study(study_name="unit", storage=f"sqlite:///{cfg.storage}")
    study.ask()  # as a run killed during trial 1 leaves it: RUNNING
    result = run_study(cfg, 2, FakeTrials())
    assert result.ran == [2]
    stale = result.report.trials[1]
    assert stale.state == "failed" and stale.error.startswith("interrupted")


def test_a_study_begun_with_another_direction_or_metric_is_refused(tmp_path: Path):
    run_study(tune_config(tmp_path), 1, FakeTrials())
    with pytest.raises(TuneError) as err:
        run_study(tune_config(tmp_path, direction="minimize"), 2, FakeTrials())
    assert err.value.key == "tune.direction" and "tune.study" in str(err.value)
    with pytest.raises(TuneError, match=r"tune\.metric"):
        run_study(tune_config(tmp_path, metric={"file": "metrics/train.json", "key": "final.map50"}), 2, FakeTrials())
    # A changed space is allowed: Optuna keeps each trial's own distributions.
    wider = {"train.lr0": {"type": "float", "low": 1e-5, "high": 0.2, "log": True}}
    assert run_study(tune_config(tmp_path, space=wider), 2, FakeTrials()).ran == [1]


def test_empty_space_and_the_names_check(tmp_path: Path):
    cfg = TuneConfig.from_params(Params(), tmp_path)
    with pytest.raises(ConfigError, match=r"tune\.space is empty"):
        run_study(cfg, 1, FakeTrials())
    seen = []
    run_study(tune_config(tmp_path), 2, FakeTrials(), before=seen.append)
    run_study(tune_config(tmp_path), 2, FakeTrials(), before=seen.append)  # nothing to run: no check
    run_study(tune_config(tmp_path), 3, FakeTrials(), before=seen.append)
    assert seen == [0, 2]


def test_params_data_is_not_changed_by_validation():
    data = {"tune": {"space": copy.deepcopy(SPACE)}}
    before = copy.deepcopy(data)
    parse_params(data)
    assert data == before


def test_the_metric_file_must_be_written_by_the_target_or_a_stage_before_it():
    params = load_params(REPO / "params.yaml")
    assert metric_stage(REPO, params, params.paths.evaluate_metrics) == "evaluate"
    assert metric_stage(REPO, params, params.paths.train_metrics) == "train"
    assert metric_stage(REPO, params, "metrics/nothing.json") is None
    check_metric_file(TuneConfig.from_params(params, REPO), params)  # the repo's own study is fine

    def refused(**tune: Any) -> ConfigError:
        data = params.as_dict()
        data["tune"].update(tune)
        changed = parse_params(data)
        with pytest.raises(ConfigError) as err:
            check_metric_file(TuneConfig.from_params(changed, REPO), changed)
        assert err.value.key == "tune.metric.file"
        return err.value

    early = refused(target="train")
    assert "stage 'evaluate', which runs after tune.target 'train'" in str(early)
    assert "no stage of dvc.yaml writes metrics/nothing.json" in str(
        refused(metric={"file": "metrics/nothing.json", "key": "x"})
    )
    data = params.as_dict()
    data["tune"].update(target="train", metric={"file": params.paths.train_metrics, "key": "final.map50_95"})
    train_only = parse_params(data)
    check_metric_file(TuneConfig.from_params(train_only, REPO), train_only)


def test_no_best_when_every_complete_trial_tied():
    """All complete trials at one value: no best (the search told nothing apart), and the line says so."""
    tied = [row(0, "complete", 0.5), row(1, "complete", 0.5), row(2, "pruned", 0.9), row(3, "complete", 0.5)]
    assert best_of(tied, "maximize") is None and best_of(tied, "minimize") is None
    assert tied_value(tied) == 0.5
    report = TuneReport(
        study="s",
        storage="sqlite",
        metric="map50",
        direction="maximize",
        target="evaluate",
        counts={"complete": 3, "pruned": 1},
        best=best_of(tied, "maximize"),
        trials=tied,
        tied=tied_value(tied),
    )
    assert best_line(report) == "best: none: all 3 complete trials tied at map50 = 0.5: no best"
    # One complete trial is not a tie; two that differ are not either.
    assert tied_value(tied[:1]) is None and best_of(tied[:1], "maximize").number == 0
    assert tied_value([row(0, "complete", 0.5), row(1, "complete", 0.6)]) is None
