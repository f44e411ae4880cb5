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


def test_only_an_existing_tag_is_a_lost_race_not_an_atomic_or_hook_refusal():
    """With --atomic every other ref of a refused push reads "atomic push failed", and a server hook's
    refusal "remote rejected": neither is another run's promotion, so neither is retried as one."""
    tags = ["production-v3", "yolo-detector@v3.0.0"]
    hook = (
        "!\tHEAD:refs/heads/results/x\t[remote rejected] (pre-receive hook declined)\n"
        "!\trefs/tags/production-v3:refs/tags/production-v3\t[remote rejected] (atomic transaction failed)\n"
    )
    atomic = "!\trefs/tags/production-v3:refs/tags/production-v3\t[rejected] (atomic push failed)\n"
    assert not _lost_race(hook, tags) and not _lost_race(atomic, tags)
    exists = "!\trefs/tags/yolo-detector@v3.0.0:refs/tags/yolo-detector@v3.0.0\t[rejected] (already exists)\n"
    assert _lost_race(atomic + exists, tags)


def test_credentials_in_a_url_never_reach_a_message():
    from flows.remote import redacted

    said = "fatal: unable to access 'https://ci-bot:ghp_SECRET@git.example.org/team/repo.git/': 403"
    assert "ghp_SECRET" not in redacted(said) and "ci-bot" not in redacted(said)
    assert "https://***@git.example.org/team/repo.git/" in redacted(said)
    assert redacted("ssh://git@host/repo.git and /srv/repo.git") == "ssh://***@host/repo.git and /srv/repo.git"


def test_a_tune_deployment_run_cannot_move_its_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`dvc exp run` executes the folder's dvc.yaml: a tune run's `workspace` must be its deployment's."""
    from flows.tune import tune

    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "0f4a2b9e-0000-4000-8000-000000000000")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(PipelineError, match="cannot move it elsewhere"):
        tune.fn(workspace=str(tmp_path / "elsewhere"), trials=1)


def test_a_dvc_remote_inside_the_runs_clone_is_refused(tmp_path: Path):
    """The shipped default remote (`.dvc-storage` in the workspace) would be deleted with the run's folder."""
    from flows.fleet import check_shared_dvc_remote

    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(
        "[core]\n    remote = local\n['remote \"local\"']\n    url = ../.dvc-storage\n"
    )
    with pytest.raises(PipelineError, match="inside this run's clone") as refused:
        check_shared_dvc_remote(tmp_path)
    assert "--global" in str(refused.value)
    shared = tmp_path.parent / "shared-storage"
    (tmp_path / ".dvc" / "config").write_text(f"[core]\n    remote = local\n['remote \"local\"']\n    url = {shared}\n")
    check_shared_dvc_remote(tmp_path)  # outside the clone: fine
