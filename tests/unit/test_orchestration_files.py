"""prefect.yaml and the GitHub workflow agree with the code they call."""

import inspect

import yaml

from flows.pipeline import pipeline
from tests.conftest import REPO


def test_prefect_yaml_deployments_call_the_flow_with_its_parameters():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    accepted = set(inspect.signature(pipeline.fn).parameters)
    names = set()
    for deployment in spec["deployments"]:
        names.add(deployment["name"])
        path, _, func = deployment["entrypoint"].partition(":")
        assert (REPO / path).is_file() and func == "pipeline"
        assert set(deployment["parameters"]) <= accepted
        assert deployment["schedules"], f"{deployment['name']} has no schedule"
    assert names == {"retrain", "retrain-on-new-data"}


def test_workflow_runs_only_the_tested_script():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "retrain.yml").read_text())
    steps = workflow["jobs"]["retrain"]["steps"]
    commands = [step["run"] for step in steps if "run" in step]
    assert commands == ["make install", 'PATH="$PWD/.venv/bin:$PATH" bash scripts/ci_retrain.sh']
    # 'on' parses as True in YAML 1.1
    triggers = workflow[True]
    assert "workflow_dispatch" in triggers and "runner" in triggers["workflow_dispatch"]["inputs"]
    assert "params.yaml" in triggers["push"]["paths"]
