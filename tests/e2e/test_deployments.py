"""End to end: the deployments in prefect.yaml on a real local Prefect server, run by a process worker.

Starts `prefect server start` (SQLite) on a free loopback port, creates the work pool, deploys
`prefect.yaml`, checks the schedules produce scheduled runs, then triggers a run of `retrain` and
has `prefect worker start --run-once` execute it over a tiny workspace. The server runs with the
project's `prefect.toml`, as under `make server`: the flow run's and the deployment's UI pages answer,
with every script and style served by the server itself, and headless Chromium (where installed)
draws them from the API: the run's name and state, the deployment's schedule.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import browser
from tests.e2e.workspace import Workspace

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return Workspace.with_sample_data(tmp_path_factory, "ws-deploy", repro=True)


@pytest.fixture(scope="module")
def server(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    port = _free_port()
    env = dict(ws.env)
    env.update(
        PREFECT_HOME=str(tmp_path_factory.mktemp("server-home")),
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        # As `make server` sets them: the UI asks the API here, not at the default port 4200.
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    log = (tmp_path_factory.mktemp("server-log") / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ws.root,  # the project's prefect.toml applies, as under `make server`
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"Prefect server did not start; see {log.name}")
            time.sleep(0.5)
    env.update(PREFECT_API_URL=url, PIPELINE_WORKSPACE=str(ws.root))
    try:
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def prefect(env: dict[str, str], cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def api(env: dict[str, str]):
    """A synchronous Prefect client for the test server."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]})
    settings.__enter__()
    client = get_client(sync_client=True)
    return settings, client


def assert_ui_page(url: str) -> None:
    """``url`` answers with Prefect's UI, and every script and style the page loads is served locally."""
    request = urllib.request.Request(url, headers={"Accept": "text/html"})  # as a browser navigates
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, url
        page = response.read().decode()
    assets = re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css))"', page)
    assert "<!DOCTYPE html>" in page and assets, page[:500]
    origin = url.split("/", 3)
    for asset in assets:
        with urllib.request.urlopen(f"{origin[0]}//{origin[2]}{asset}", timeout=10) as response:
            assert response.status == 200 and response.read(), asset


def test_deployments_schedule_runs_and_a_worker_completes_one(ws: Workspace, server: dict[str, str]):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    pool = prefect(server, ws.root, "work-pool", "create", "yolo-cpu", "--type", "process")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = prefect(server, ws.root, "--no-prompt", "deploy", "--all")
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    settings, client = api(server)
    try:
        with client:
            retrain = client.read_deployment_by_name("yolo-train-to-deploy/retrain")
            polling = client.read_deployment_by_name("yolo-train-to-deploy/retrain-on-new-data")
            assert retrain.parameters["workspace"] == str(ws.root)
            assert [s.schedule.cron for s in retrain.schedules] == ["0 2 * * *"]
            assert polling.parameters["only_if_data_changed"] is True
            tune = client.read_deployment_by_name("yolo-tune/tune")
            assert tune.parameters == {"workspace": str(ws.root), "trials": 20}
            assert tune.schedules == [], "the study runs on demand"
            deadline = time.monotonic() + 60
            scheduled = []
            while time.monotonic() < deadline and not scheduled:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[retrain.id]))
                )
                scheduled = [r for r in runs if r.state and r.state.is_scheduled()]
                time.sleep(1)
            assert scheduled, "the cron schedule produced no scheduled run"

            triggered = prefect(server, ws.root, "deployment", "run", "yolo-train-to-deploy/retrain")
            assert triggered.returncode == 0, triggered.stdout + triggered.stderr
            worker = prefect(server, ws.root, "worker", "start", "--pool", "yolo-cpu", "--run-once", timeout=600)
            assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[retrain.id])))
            finished = [r for r in runs if r.state and r.state.is_final()]
            assert finished, worker.stdout[-3000:] + worker.stderr[-3000:]
            assert all(r.state.is_completed() for r in finished), [r.state for r in finished]
            assert all(re.fullmatch(r"pipeline data [0-9a-f]{8} params [0-9a-f]{8}", r.name) for r in finished)
            ui = server["PREFECT_API_URL"].removesuffix("/api")
            for page in (f"{ui}/runs/flow-run/{finished[0].id}", f"{ui}/deployments/deployment/{retrain.id}"):
                assert_ui_page(page)
            if browser.served_skip_reason() is None:
                # What a person sees: the UI draws the run from its API (a blank or "can't connect"
                # page has neither the run's name nor its state).
                dom = browser.served_page_dom(f"{ui}/runs/flow-run/{finished[0].id}")
                assert finished[0].name in dom and "Completed" in dom, dom[-3000:]
                assert "Can't connect to Server API" not in dom
                dom = browser.served_page_dom(f"{ui}/deployments/deployment/{retrain.id}")
                assert "yolo-train-to-deploy" in dom and "At 02:00 AM every day" in dom, dom[-3000:]
    finally:
        settings.__exit__(None, None, None)
    production = ws.json("models/production/metadata.json")
    assert production["version"] == 1, "the deployment run promotes the model"
