"""prefect.yaml and the GitHub workflow agree with the code they call."""

import importlib
import inspect

import yaml

from tests.conftest import REPO

# Deployment name -> the flow it runs; the tuning study runs on demand, the others on a schedule.
FLOWS = {
    "retrain": "flows.pipeline:pipeline",
    "retrain-on-new-data": "flows.pipeline:pipeline",
    "tune": "flows.tune:tune",
}
SCHEDULED = {"retrain", "retrain-on-new-data"}


def test_prefect_yaml_deployments_call_the_flow_with_its_parameters():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = set()
    for deployment in spec["deployments"]:
        name = deployment["name"]
        names.add(name)
        path, _, func = deployment["entrypoint"].partition(":")
        assert (REPO / path).is_file()
        assert f"{path.removesuffix('.py').replace('/', '.')}:{func}" == FLOWS[name], name
        module, _, attr = FLOWS[name].partition(":")
        flow = getattr(importlib.import_module(module), attr)
        signature = inspect.signature(flow.fn)
        assert set(deployment["parameters"]) <= set(signature.parameters), name
        required = {p for p, v in signature.parameters.items() if v.default is inspect.Parameter.empty}
        assert required <= set(deployment["parameters"]), name
        assert deployment["parameters"]["workspace"] == "{{ $PIPELINE_WORKSPACE }}"
        if name in SCHEDULED:
            assert deployment["schedules"], f"{name} has no schedule"
        else:
            assert not deployment.get("schedules"), f"{name} runs on demand: a schedule would start studies unasked"
    assert names == set(FLOWS)


def test_tune_deployment_asks_for_a_positive_number_of_trials():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (tune,) = [d for d in spec["deployments"] if d["name"] == "tune"]
    assert isinstance(tune["parameters"]["trials"], int) and tune["parameters"]["trials"] >= 1


def test_workflow_runs_only_the_tested_script():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "retrain.yml").read_text())
    steps = workflow["jobs"]["retrain"]["steps"]
    commands = [step["run"] for step in steps if "run" in step]
    assert commands == ["make install", 'PATH="$PWD/.venv/bin:$PATH" bash scripts/ci_retrain.sh']
    # 'on' parses as True in YAML 1.1
    triggers = workflow[True]
    assert "workflow_dispatch" in triggers and "runner" in triggers["workflow_dispatch"]["inputs"]
    assert "params.yaml" in triggers["push"]["paths"]
