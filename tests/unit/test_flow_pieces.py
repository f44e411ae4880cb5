"""Flow pieces that need no Prefect server: which artifacts a run publishes, and run names."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from flows import artifacts
from flows.dvc_runner import StageRun
from stages.core.config import parse_params
from tests.conftest import REPO


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict:
    import prefect.artifacts

    seen: dict = {}
    monkeypatch.setattr(prefect.artifacts, "create_table_artifact", lambda key, table, **kw: seen.update({key: table}))
    monkeypatch.setattr(
        prefect.artifacts, "create_markdown_artifact", lambda key, markdown, **kw: seen.update({key: markdown})
    )
    return seen


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    checks = {"map50": {"value": 0.2, "threshold": 0.5, "passed": 0}}
    evaluate = {
        "map50": 0.2,
        "map50_95": 0.1,
        "precision": 0.3,
        "recall": 0.4,
        "gates": {"passed": 0, "failed": 1, "checks": checks},
    }
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(evaluate))
    (tmp_path / "metrics" / "benchmark.json").write_text(json.dumps({"backends": {}}))  # stale, from an earlier run
    return tmp_path


def runs(*stages: str) -> list[StageRun]:
    return [StageRun(stage=s, ran=True, seconds=1.0) for s in stages]


def test_failed_gate_publishes_its_verdict_but_no_stale_outputs(outputs: Path, recorded: dict):
    keys = artifacts.publish(outputs, parse_params({}), runs("environment", "prepare", "validate", "train"), "evaluate")
    assert keys == ["stage-runs", "gate-verdict", "evaluation-metrics"]
    assert recorded["gate-verdict"] == [{"check": "map50", "value": 0.2, "threshold": 0.5, "passed": False}]
    assert "Gate FAILED" in recorded["evaluation-metrics"]
    assert "map50 0.2000 < 0.5" in recorded["evaluation-metrics"]


def test_outputs_of_stages_not_completed_are_not_published(outputs: Path, recorded: dict):
    keys = artifacts.publish(outputs, parse_params({}), runs("environment", "prepare"), "validate")
    assert keys == ["stage-runs"]
    assert recorded["stage-runs"][0] == {"stage": "environment", "ran": True, "seconds": 1.0}


def test_metrics_are_compared_with_production_as_it_was(outputs: Path, recorded: dict):
    baseline = {"version": 2, "map50": 0.3, "map50_95": 0.2, "precision": 0.5, "recall": 0.5}
    done = runs("environment", "prepare", "validate", "train", "evaluate")
    keys = artifacts.publish(outputs, parse_params({}), done, baseline=baseline)
    assert "metrics-vs-production" in keys
    rows = {r["metric"]: r for r in recorded["metrics-vs-production"]}
    assert rows["map50"] == {"metric": "map50", "production v2": 0.3, "this run": 0.2, "change": -0.1}


def test_flow_runs_are_named_by_data_version_and_params(tmp_path: Path):
    from flows.pipeline import run_name

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    untracked = run_name(tmp_path)
    assert untracked.startswith("pipeline data none params ") and run_name(tmp_path) == untracked  # stable
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.dvc").write_text(
        yaml.safe_dump({"outs": [{"md5": "8a91014407bbd54fe9e233e0a5da296f.dir", "path": "dataset"}]})
    )
    name = run_name(tmp_path)
    assert re.fullmatch(r"pipeline data 8a910144 params [0-9a-f]{8}", name), name
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"]["epochs"] += 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert run_name(tmp_path) != name and run_name(tmp_path).startswith("pipeline data 8a910144 params ")
    (tmp_path / "params.yaml").write_text("train: {epocs: 1}\n")
    assert run_name(tmp_path) == "pipeline data ? params invalid"
