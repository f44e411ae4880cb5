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
    "retrain-fleet": "flows.fleet:fleet",
    "retrain-on-new-data-fleet": "flows.fleet:fleet",
}
SCHEDULED = {"retrain", "retrain-on-new-data", "retrain-fleet", "retrain-on-new-data-fleet"}
FLEET = {"retrain-fleet", "retrain-on-new-data-fleet"}


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
        if name in FLEET:
            # Pinned by the deployment (issue 22, item 7): the clone is the workspace, no run names another.
            assert "workspace" not in signature.parameters, name
            _check_ref, clone, chdir = deployment["pull"]
            step = clone["prefect.deployments.steps.git_clone"]
            assert (step["repository"], step["branch"]) == ("{{ $PIPELINE_REPOSITORY }}", "{{ $PIPELINE_REF }}")
            assert (
                chdir["prefect.deployments.steps.set_working_directory"]["directory"]
                == f"{{{{ {step['id']}.directory }}}}"
            )
            # Pull steps are templated on the worker, job variables when deploying: the job's env pins both.
            env = deployment["work_pool"]["job_variables"]["env"]
            assert env == {"PIPELINE_REPOSITORY": "{{ $PIPELINE_REPOSITORY }}", "PIPELINE_REF": "{{ $PIPELINE_REF }}"}
        else:
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


# --- the workflow cannot be turned against the runner or the fleet (issue 21, item 9) -------------------


def test_pull_requests_from_forks_never_start_the_job():
    from tests.workflow import evaluate, load, pull_request, push_to_main

    job = load()["jobs"]["retrain"]
    assert evaluate(job["if"], push_to_main()) is True
    assert evaluate(job["if"], pull_request("team/yolo")) is True
    assert evaluate(job["if"], pull_request("someone/yolo-fork")) is False


def test_pull_request_runs_never_push_the_run_cache():
    from tests.workflow import load, pull_request, push_to_main, substitute

    job = load()["jobs"]["retrain"]
    (retrain,) = [s for s in job["steps"] if "ci_retrain.sh" in s.get("run", "")]
    assert substitute(retrain["env"]["PUSH_RUN_CACHE"], pull_request("team/yolo")) == "0"
    assert substitute(retrain["env"]["PUSH_RUN_CACHE"], push_to_main()) == "1"
    assert substitute(retrain["env"]["PROMOTE"], pull_request("team/yolo")) == "0"
    script = (REPO / "scripts" / "ci_retrain.sh").read_text()
    assert 'if [ "${PUSH_RUN_CACHE:-1}" = 1 ]; then\n  "$py" -m stages.core.remotes push --run-cache\nelse' in script


def test_actions_are_pinned_credentials_not_kept_and_permissions_least():
    import re

    from tests.workflow import load

    workflow = load()
    job = workflow["jobs"]["retrain"]
    uses = [s["uses"] for s in job["steps"] if "uses" in s]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in uses), uses
    (checkout,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@")]
    assert checkout["with"]["persist-credentials"] is False
    assert workflow["permissions"] == {} and job["permissions"] == {"contents": "read"}
    # Secrets only in the environment of the step that needs them, never the job's or a command line.
    text = yaml.safe_dump({"env": job.get("env", {}), "runs": [s.get("run", "") for s in job["steps"]]})
    assert "secrets." not in text and "secrets." not in yaml.safe_dump(workflow.get("env", {}))


def test_zizmor_finds_nothing_in_the_workflows():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    zizmor = shutil.which("zizmor", path=str(Path(sys.executable).parent))
    if zizmor is None:
        import pytest

        pytest.skip("zizmor is not installed (pip install -e '.[dev]' installs it)")
    proc = subprocess.run([zizmor, "--offline", str(REPO / ".github" / "workflows")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_make_deploy_names_every_deployment_and_the_fleet_ones_only_with_a_repository():
    """`make deploy` deploys by name (a fleet deployment without PIPELINE_REPOSITORY could clone nothing):
    every deployment of prefect.yaml is named there once, the fleet ones behind the repository check."""
    import re

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    recipe = (REPO / "Makefile").read_text().split("\ndeploy: install\n", 1)[1].split("\n\n", 1)[0]
    lines = [line for line in recipe.splitlines() if " deploy " in line]
    named = [re.findall(r"--name (\S+)", line) for line in lines]
    assert sorted(n for group in named for n in group) == sorted(names)
    fleet = {n for n in names if "PIPELINE_REPOSITORY" in str(next(d for d in spec["deployments"] if d["name"] == n))}
    assert fleet, "prefect.yaml has fleet deployments"
    for line, group in zip(lines, named, strict=True):
        assert (set(group) <= fleet) == ('test -z "$(PIPELINE_REPOSITORY)" ||' in line), line
