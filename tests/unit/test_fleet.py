"""Fleet mode's pure pieces: the pinned workspace, the production tag's name, a lost promotion race."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.pinned import check_pinned_workspace
from flows.remote import _lost_race, production_tag_version
from stages.core.errors import PipelineError
from tests.conftest import REPO


def test_a_deployment_run_cannot_move_its_workspace(tmp_path: Path):
    pinned, elsewhere = tmp_path / "pinned", tmp_path / "elsewhere"
    pinned.mkdir()
    elsewhere.mkdir()
    with pytest.raises(PipelineError, match=r"works in .*pinned.*cannot move it elsewhere") as refused:
        check_pinned_workspace(str(elsewhere), "a-deployment-id", cwd=pinned)
    assert refused.value.key == "workspace"
    check_pinned_workspace(str(pinned / "."), "a-deployment-id", cwd=pinned)  # its own folder, however spelled
    check_pinned_workspace(str(elsewhere), None, cwd=pinned)  # not a deployment run: python -m flows.pipeline


def test_only_production_tags_name_a_version():
    assert production_tag_version("production-v12") == 12
    for other in ("production-v", "production-vx", "v1", "production-v1-rc", "release-1"):
        assert production_tag_version(other) is None


def test_a_rejected_tag_is_a_lost_race_and_nothing_else_is():
    rejected = (
        "To /r.git\n=\tHEAD:refs/heads/results/x\t[up to date]\n"
        "!\trefs/tags/production-v2:refs/tags/production-v2\t[rejected] (already exists)\nDone\n"
    )
    assert _lost_race(rejected, ["production-v2"])
    assert not _lost_race(rejected, [])  # no promotion pushed: another failure
    unreachable = "fatal: '/gone.git' does not appear to be a git repository\n"
    assert not _lost_race(unreachable, ["production-v2"])
    # The registry's tags race like the pointer's: whichever of them is refused, the run lost.
    registry = "!\trefs/tags/yolo-detector@v2.0.0:refs/tags/yolo-detector@v2.0.0\t[rejected] (already exists)\n"
    assert _lost_race(registry, ["production-v2", "yolo-detector@v2.0.0", "yolo-detector#prod#2"])


def _check_ref(repository: str, ref: str) -> subprocess.CompletedProcess[str]:
    """Run the fleet deployments' first pull step as Prefect does (``shell: true``), with the job's env."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (fleet,) = [d for d in spec["deployments"] if d["name"] == "retrain-fleet"]
    step = fleet["pull"][0]["prefect.deployments.steps.run_shell_script"]
    assert step["shell"] is True and "\n" not in step["script"]  # Prefect runs each line on its own
    env = {**os.environ, "PIPELINE_REPOSITORY": repository, "PIPELINE_REF": ref}
    return subprocess.run(["sh", "-c", step["script"]], env=env, capture_output=True, text=True, timeout=60)


def test_the_fleet_pull_steps_name_a_missing_ref_and_an_unreachable_repository(tmp_path: Path):
    repo = tmp_path / "project.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(repo), str(work)], check=True, capture_output=True)
    ident = ["-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(["git", *ident, "commit", "-q", "--allow-empty", "-m", "x"], cwd=work, check=True)
    subprocess.run(["git", "push", "-q", "origin", "HEAD:main"], cwd=work, check=True, capture_output=True)

    assert _check_ref(str(repo), "main").returncode == 0
    assert _check_ref(str(repo), "").returncode == 0  # no ref: the default branch
    missing = _check_ref(str(repo), "no-such-ref")
    assert missing.returncode == 1
    assert f"ref 'no-such-ref' does not exist in the repository {repo}" in missing.stderr
    assert "PIPELINE_REF" in missing.stderr
    gone = _check_ref(str(tmp_path / "gone.git"), "main")
    assert gone.returncode == 1
    assert f"cannot read the repository '{tmp_path / 'gone.git'}'" in gone.stderr and "credentials" in gone.stderr
