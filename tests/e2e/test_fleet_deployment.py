"""End to end: fleet deployments bring their own workspace (issue 22, item 1 and item 7's pinned workspace).

The remotes are real and on this machine only: a bare git repository and a DVC remote folder, both
outside any workspace, into which the shared reproduced workspace is pushed (``git push``, ``dvc push
--run-cache``). A local Prefect server (``make server`` with authentication and CSRF, on PostgreSQL
where Debian's package is installed) runs the fleet deployment; a process worker started in an EMPTY
folder executes it: the run clones the repository, restores every result from the pushed
run-cache (no training), promotes against the remote's production and pushes its results branch
and production tag. A fresh clone of that branch then reproduces nothing. A run asking for another
``workspace`` and a deployment pinned to a ref that does not exist fail with a message naming why.
The promotion race is driven without Prefect: three clones promote before any pushes.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows import remote
from stages.core.errors import PipelineError
from tests.e2e.test_deployments import prefect
from tests.e2e.test_prefect_server import AUTH, _skip_without_the_venv, make_server
from tests.e2e.workspace import GIT_ENV, Workspace
from tests.servers import postgres

pytestmark = pytest.mark.e2e

DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.with_sample_data(tmp_path_factory, "ws-fleet", repro=True)


@pytest.fixture(scope="module")
def server(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`make server` as a fleet runs it: basic auth and CSRF on, on PostgreSQL where Debian's
    ``postgresql`` is installed (`.ci/run` installs it), else on its default SQLite; the environment
    every client here uses (the API URL and the credential)."""
    _skip_without_the_venv()
    secrets = tmp_path_factory.mktemp("secrets")
    auth = secrets / "auth_string"
    auth.write_text(AUTH + "\n")
    auth.chmod(0o600)
    port = postgres.free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(ws.env, PREFECT_HOME=str(tmp_path_factory.mktemp("server-home")), DO_NOT_TRACK="1")
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PIPELINE_WORKSPACE=str(ws.root))
    served = dict(env, AUTH_STRING_FILE=str(auth), PUBLIC_URL=url.removesuffix("/api"), PREFECT_PORT=str(port))
    pg = None
    with contextlib.ExitStack() as stack:
        if postgres.skip_reason() is None:
            pg = stack.enter_context(postgres.postgres_server())
            database = secrets / "database_url"
            database.write_text(pg.url() + "\n")
            database.chmod(0o600)
            served["DATABASE_URL_FILE"] = str(database)
        print(f"Prefect server on {'PostgreSQL' if 'DATABASE_URL_FILE' in served else 'SQLite'}, with auth")
        stack.enter_context(make_server(served, url, tmp_path_factory.mktemp("server-log") / "server.log"))
        yield dict(env, PREFECT_API_URL=url, PREFECT_API_AUTH_STRING=AUTH)
        if pg is not None:  # the completed fleet run is PostgreSQL's record, not a file's
            assert "COMPLETED" in pg.psql("SELECT state_type FROM flow_run"), "no completed run in PostgreSQL"


def api(env: dict[str, str]):
    """A synchronous Prefect client for the test server, with its credential."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates = {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}
    settings = temporary_settings(updates=updates)
    settings.__enter__()
    return settings, get_client(sync_client=True)


def sh(cwd: Path, env: dict[str, str], *cmd: str, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env={**env, **GIT_ENV}, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def remotes(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The bare git repository and the DVC remote folder the reproduced workspace was pushed to."""
    base = tmp_path_factory.mktemp("remotes")
    bare, storage = base / "project.git", base / "dvc-storage"
    sh(base, ws.env, "git", "init", "-q", "--bare", "-b", "main", str(bare))
    # Workspace.create makes .dvc/ by hand: keep DVC's own cache and temporary files out of git.
    (ws.root / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    sh(ws.root, ws.env, *DVC, "remote", "modify", "local", "url", str(storage))
    sh(ws.root, ws.env, "git", "add", "-A")
    sh(ws.root, ws.env, "git", "commit", "-q", "-m", "the project, reproduced")
    sh(ws.root, ws.env, "git", "remote", "add", "origin", str(bare))
    sh(ws.root, ws.env, "git", "push", "-q", "origin", "HEAD:refs/heads/main")
    sh(ws.root, ws.env, *DVC, "push", "-q", "--run-cache")
    return bare, storage


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_a_worker_in_an_empty_folder_runs_the_fleet_deployment(
    ws: Workspace, remotes: tuple[Path, Path], server: dict[str, str], tmp_path: Path
):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, LogFilter, LogFilterFlowRunId

    bare, _ = remotes
    env = {k: v for k, v in server.items() if k != "PIPELINE_WORKSPACE"}
    pool = prefect(env, ws.root, "work-pool", "create", "yolo-cpu", "--type", "process")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deployments = (
        ("yolo-train-to-deploy-fleet/retrain-fleet", "main"),
        ("yolo-train-to-deploy-fleet/retrain-on-new-data-fleet", "no-such-ref"),
        ("yolo-train-to-deploy/retrain", ""),  # a local one, over PIPELINE_WORKSPACE
    )
    for name, ref in deployments:
        deploy_env = {**env, "PIPELINE_REPOSITORY": str(bare), "PIPELINE_REF": ref, "PIPELINE_WORKSPACE": str(ws.root)}
        deploy = prefect(deploy_env, ws.root, "--no-prompt", "deploy", "--name", name.split("/")[1])
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        # Only the runs this test starts: no schedule may add one while the worker polls.
        cleared = prefect(env, ws.root, "deployment", "schedule", "clear", name, "-y")
        assert cleared.returncode == 0, cleared.stdout + cleared.stderr

    settings, client = api(env)
    try:
        with client:
            good = client.read_deployment_by_name("yolo-train-to-deploy-fleet/retrain-fleet")
            bad = client.read_deployment_by_name("yolo-train-to-deploy-fleet/retrain-on-new-data-fleet")
            local = client.read_deployment_by_name("yolo-train-to-deploy/retrain")
            # Repository and ref were fixed when deploying, in the job's environment (the worker's own
            # environment names another repository and ref below: they play no part).
            assert good.job_variables["env"] == {"PIPELINE_REPOSITORY": str(bare), "PIPELINE_REF": "main"}
            assert bad.job_variables["env"]["PIPELINE_REF"] == "no-such-ref"
            assert "workspace" not in good.parameters
            for stale in client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[good.id, bad.id, local.id]))
            ):
                client.delete_flow_run(stale.id)

            started = time.monotonic()
            run = prefect(env, ws.root, "deployment", "run", "yolo-train-to-deploy-fleet/retrain-fleet")
            assert run.returncode == 0, run.stdout + run.stderr
            elsewhere = prefect(
                env, ws.root, "deployment", "run", "yolo-train-to-deploy-fleet/retrain-fleet",
                "--param", f"workspace={ws.root}",
            )  # fmt: skip
            polling = "yolo-train-to-deploy-fleet/retrain-on-new-data-fleet"
            wrong_ref = prefect(env, ws.root, "deployment", "run", polling)
            assert wrong_ref.returncode == 0, wrong_ref.stdout + wrong_ref.stderr
            # The local deployment's run asking for another folder: refused, that folder untouched.
            (tmp_path / "elsewhere").mkdir()
            moved = prefect(
                env, ws.root, "deployment", "run", "yolo-train-to-deploy/retrain",
                "--param", f"workspace={tmp_path / 'elsewhere'}",
            )  # fmt: skip
            assert moved.returncode == 0, moved.stdout + moved.stderr
            empty = tmp_path / "worker"
            empty.mkdir()
            decoy = {**env, "PIPELINE_REPOSITORY": str(tmp_path / "decoy.git"), "PIPELINE_REF": "decoy"}
            decoy["PIPELINE_WORKSPACE"] = str(ws.root)  # the local deployment's pull step reads it on the worker
            worker = prefect(decoy, empty, "worker", "start", "--pool", "yolo-cpu", "--run-once", timeout=600)
            seconds = time.monotonic() - started
            logs = worker.stdout + worker.stderr
            assert worker.returncode == 0, logs[-4000:]
            assert not any(empty.iterdir()), "the runs worked in their own folders, not the worker's"

            [local_run] = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[local.id]))
            )
            print(f"local run elsewhere: {local_run.state.name}: {local_run.state.message}")
            assert local_run.state.is_failed(), local_run.state
            assert "cannot move it elsewhere" in (local_run.state.message or ""), local_run.state.message
            assert not any((tmp_path / "elsewhere").iterdir())
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[good.id, bad.id]))
            )
            by_kind = {"good": [], "elsewhere": [], "bad": []}
            for r in runs:
                kind = "bad" if r.deployment_id == bad.id else "elsewhere" if "workspace" in r.parameters else "good"
                by_kind[kind].append(r)
            [completed] = by_kind["good"]
            assert completed.state.is_completed(), (completed.state, logs[-4000:])

            # A run asking for another workspace does not run there: refused when created, or failed.
            print(f"run with --param workspace: create rc {elsewhere.returncode}: {elsewhere.stdout[-400:]}")
            if elsewhere.returncode == 0:
                [refused] = by_kind["elsewhere"]
                print(f"its state: {refused.state.name}: {refused.state.message}")
                assert refused.state.is_final() and not refused.state.is_completed(), refused.state
                said = refused.state.message or ""
                said += " ".join(log.message for log in client.read_logs())
                assert "workspace" in said, said[-3000:]
            else:
                assert "workspace" in elsewhere.stdout + elsewhere.stderr

            [failed] = by_kind["bad"]
            print(f"wrong ref: {failed.state.name}: {failed.state.message}")
            assert failed.state.is_final() and not failed.state.is_completed(), failed.state
            # The check-ref pull step says which ref, in which repository, and what to do: on the worker's
            # console, and in the run's log where Prefect sent it before the run's process crashed.
            run_log = " ".join(
                log.message
                for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[failed.id])))
            )
            said = f"ref 'no-such-ref' does not exist in the repository {bare}: deploy again with PIPELINE_REF"
            print(f"wrong ref said in the run's log: {said in run_log}, on the worker's console: {said in logs}")
            assert said in run_log + logs, (run_log + logs)[-3000:]
    finally:
        settings.__exit__(None, None, None)
    print(f"fleet runs, worker started to finished: {seconds:.1f} s")

    # On the remotes: the run's results branch and the production tag, in one commit.
    branch = f"results/{completed.id}"
    heads = sh(bare, env, "git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads", "refs/tags")
    refs = dict(line.split() for line in heads.splitlines())
    assert f"refs/heads/{branch}" in refs and "refs/tags/production-v1" in refs, heads
    assert len([r for r in refs if r.startswith("refs/heads/results/")]) == 1, "only the good run pushed results"
    # A fresh clone of that branch, pulled, reproduces nothing but the two stages never cached by design
    # (the machine fingerprint and the links to the images): no training, no evaluation.
    clone = tmp_path / "fresh"
    sh(tmp_path, env, "git", "clone", "-q", "--branch", branch, str(bare), str(clone))
    sh(clone, env, *DVC, "pull", "-q")
    repro = sh(clone, env, *DVC, "repro", timeout=600)
    assert ran_stages(repro) <= {"environment", "prepare"}, repro[-3000:]
    status = sh(clone, env, *DVC, "status")
    assert "changed" not in status.replace("always changed", ""), status
    assert (clone / "models/production/metadata.json").is_file()


def _clone_and_reproduce(bare: Path, env: dict[str, str], dest: Path) -> Path:
    sh(dest.parent, env, "git", "clone", "-q", "--depth", "1", "--branch", "main", str(bare), str(dest))
    sh(dest, env, *DVC, "pull", "-q", "--run-cache")
    sh(dest, env, *DVC, "repro", "-q", timeout=600)
    return dest


# What a first promotion tags: the pointer's tag and the model registry's (GTO's) version and stage.
V1_TAGS = ["production-v1", "yolo-detector#prod#1", "yolo-detector@v1.0.0"]


def test_two_runs_promoting_at_once_never_lose_or_overwrite_production(
    ws: Workspace, remotes: tuple[Path, Path], tmp_path: Path
):
    src, storage = remotes
    env = {**ws.env, **GIT_ENV}
    # A repository of its own with the project's main branch only: no production yet.
    bare = tmp_path / "race.git"
    sh(tmp_path, env, "git", "clone", "-q", "--bare", "--single-branch", "--no-tags", "-b", "main", str(src), str(bare))
    a = _clone_and_reproduce(bare, env, tmp_path / "a")
    b, c = tmp_path / "b", tmp_path / "c"
    shutil.copytree(a, b, symlinks=True)
    shutil.copytree(a, c, symlinks=True)
    bases = {}
    for clone in (a, b, c):  # each fetched production (none) and promoted before any pushed
        assert remote.sync_production(clone) is None
        bases[clone] = sh(clone, env, "git", "rev-parse", "HEAD").strip()
        promoted = remote.promote(clone)
        assert promoted.returncode == 0, promoted.stderr
        assert sh(clone, env, "git", "tag", "--list").split() == V1_TAGS

    won = remote.publish(a, "a", bases[a])
    assert won.tag == "production-v1" and won.retried_on is None
    promoted_by_a = sh(a, env, "git", "rev-parse", "production-v1").strip()
    # b lost: it withdrew its v1, promoted again against a's (the same model: unchanged), pushed its results.
    retried = remote.publish(b, "b", bases[b])
    assert retried.retried_on == "production-v1" and retried.tag is None
    assert sh(b, env, "git", "rev-parse", "production-v1").strip() == promoted_by_a
    # c lost and does not retry: refused, naming the winner; nothing of its promotion is left.
    with pytest.raises(PipelineError, match="another run promoted production-v1 first") as refused:
        remote.publish(c, "c", bases[c], retry=False)
    assert "withdrawn" in str(refused.value)
    assert sh(c, env, "git", "rev-parse", "production-v1").strip() == promoted_by_a
    assert sh(c, env, "git", "rev-parse", "HEAD").strip() == bases[c]
    assert (c / "models/production.dvc").read_text() == (a / "models/production.dvc").read_text()

    refs = sh(bare, env, "git", "for-each-ref", "--format=%(refname) %(objectname)")
    refs = dict(line.split() for line in refs.splitlines())
    assert refs["refs/tags/production-v1"] == promoted_by_a, "the first promotion stays production"
    assert refs["refs/heads/results/a"] == won.commit
    assert [r for r in refs if r.startswith("refs/tags/")] == [f"refs/tags/{t}" for t in V1_TAGS]
    # The model registry names the winner's version too, never a withdrawn one.
    for tag in V1_TAGS[1:]:
        assert sh(bare, env, "git", "rev-parse", f"{tag}^{{commit}}") == sh(
            bare, env, "git", "rev-parse", "production-v1^{commit}"
        )
    assert sorted(won.registry_tags) == V1_TAGS[1:] and not retried.registry_tags
    assert {r for r in refs if r.startswith("refs/heads/results/")} == {"refs/heads/results/a", "refs/heads/results/b"}
    assert storage.is_dir()

    # Faults: an unreachable git remote and an unwritable DVC remote, each named with what to do.
    sh(c, env, "git", "remote", "set-url", "origin", str(tmp_path / "gone.git"))
    with pytest.raises(PipelineError, match=r"(?s)cannot read the git remote .*gone\.git.*reachable"):
        remote.sync_production(c)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the DVC remote should be")
    sh(c, env, *DVC, "remote", "modify", "--local", "local", "url", str(blocked))
    with pytest.raises(PipelineError, match="cannot push to the DVC remote"):
        remote.dvc_push(c)
