"""End to end: `make server` on a real PostgreSQL with authentication, and `make worker` against it.

A throw-away PostgreSQL cluster (tests/servers/postgres.py) listens on 127.0.0.1 with a password
role; `make server` gets its URL and a basic-auth string from files (DATABASE_URL_FILE,
AUTH_STRING_FILE), and PUBLIC_URL as a reverse proxy would give it (here the loopback address
itself). Then, over loopback only:

- without the credential the API answers 401, and `make worker` refuses in one line, exit 2;
- with the credential but without a CSRF token a change is refused (403); a foreign origin gets no CORS grant;
- with the credential, the project's `retrain-on-new-data` deployment (prefect.yaml) is deployed,
  run, and `make worker` executes it to Completed: a promoted workspace whose data has not changed,
  so the run checks the data and ends early, the cheapest real deployment there is;
- the run is in PostgreSQL's tables, no process tried to reach beyond this machine, and nothing is
  left running.

`make` runs with ``-o .venv/.installed``: this interpreter's virtual environment is installed
already, and a checkout newer than its stamp (a fresh worktree) must not reinstall it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import browser
from tests.conftest import REPO, venv_env
from tests.e2e.workspace import Workspace
from tests.servers import nginx, postgres

pytestmark = pytest.mark.e2e

DEPLOYMENT = "yolo-train-to-deploy/retrain-on-new-data"
AUTH = "fleet:" + base64.urlsafe_b64encode(os.urandom(12)).decode()
MAKE = ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.installed"]


@dataclass
class Server:
    url: str  # the API's URL
    env: dict[str, str]  # for clients: the workspace's environment, PREFECT_API_URL, no credential
    auth_file: Path
    pg: postgres.Postgres
    proc: subprocess.Popen[bytes]
    log: Path


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM to the process group (make, the launcher's prefect, its children), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    proc.wait(timeout=10)


def _group_alive(pgid: int, settle_s: float = 10) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies not counted), after up to ``settle_s``.

    ``os.killpg(pgid, 0)`` alone counts zombies: a child whose parent was killed is handed to PID 1,
    and until PID 1 reaps it (slowly, on some machines' init) it stays in the group, dead.
    """
    deadline = time.monotonic() + settle_s
    while True:
        running = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                # After the command's closing parenthesis: state, ppid, pgrp.
                state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
                if int(group) == pgid and state not in {"Z", "X"}:
                    running.append(stat.parent.name)
        if not running or time.monotonic() > deadline:
            return bool(running)
        time.sleep(0.2)


def _request(url: str, method: str = "GET", auth: str | None = None, headers: dict[str, str] | None = None):
    """(status, headers, body) of one request; an error status is returned, not raised."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    if method == "POST":
        request.data = b"{}"
        request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The reproduced sample workspace, its model promoted: the data-triggered deployment finds it unchanged."""
    reason = postgres.skip_reason()  # before the costly build: every test using it needs PostgreSQL
    if reason:
        pytest.skip(reason)
    _skip_without_the_venv()
    ws = Workspace.with_sample_data(tmp_path_factory, "ws-pgserver", repro=True)
    promoted = ws.run("-m", "stages.promote")
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    return ws


@pytest.fixture(scope="module")
def server(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    reason = postgres.skip_reason()
    if reason:
        pytest.skip(reason)
    _skip_without_the_venv()
    secrets_dir = tmp_path_factory.mktemp("secrets")
    with postgres.postgres_server() as pg:
        db_file, auth_file = secrets_dir / "database_url", secrets_dir / "auth_string"
        for path, text in ((db_file, pg.url()), (auth_file, AUTH)):
            path.write_text(text + "\n")
            path.chmod(0o600)
        port = postgres.free_port()
        url = f"http://127.0.0.1:{port}/api"
        env = dict(ws.env)
        env.update(
            PREFECT_HOME=str(tmp_path_factory.mktemp("server-home")),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            # Runs come from this test only: the schedules are test_deployments' concern.
            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
            DO_NOT_TRACK="1",
            PIPELINE_WORKSPACE=str(ws.root),
        )
        server_env = dict(env, DATABASE_URL_FILE=str(db_file), AUTH_STRING_FILE=str(auth_file))
        server_env.update(PUBLIC_URL=url.removesuffix("/api"), PREFECT_PORT=str(port))
        log = tmp_path_factory.mktemp("server-log") / "server.log"
        with make_server(server_env, url, log) as proc:
            yield Server(url, dict(env, PREFECT_API_URL=url), auth_file, pg, proc, log)


@contextlib.contextmanager
def make_server(env: dict[str, str], url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`make server` with ``env`` until it answers at ``url``; stopped on exit, and none of it left."""
    with log.open("wb") as fh:
        proc = subprocess.Popen([*MAKE, "server"], env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`make server` did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        _stop(proc)
    assert not _group_alive(proc.pid), "a process of `make server` outlived it"


def _skip_without_the_venv() -> None:
    if not (REPO / ".venv" / ".installed").is_file() or Path(sys.executable).parent != REPO / ".venv" / "bin":
        pytest.skip("`make server` runs the project's .venv: run the tests from it after `make install`")


def _healthy(url: str) -> bool:
    try:
        return _request(f"{url}/health")[0] == 200  # the one path Prefect answers without the credential
    except OSError:
        return False  # not listening yet


def prefect(server: Server, *args: str, auth: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(server.env, PREFECT_API_AUTH_STRING=AUTH) if auth else server.env
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=server.env["PIPELINE_WORKSPACE"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_server_runs_on_postgresql_and_refuses_what_it_must(server: Server):
    log = server.log.read_text()
    assert "PostgreSQL, authentication on, CSRF protection on" in log, log[-2000:]
    assert server.pg.password not in log and AUTH.split(":")[1] not in log, "a secret in the server's log"
    # Prefect's tables are in PostgreSQL (its migrations ran there).
    assert server.pg.psql("SELECT to_regclass('public.flow_run') IS NOT NULL") == "t"

    status, _, body = _request(f"{server.url}/admin/version")
    assert status == 401 and "Unauthorized" in body
    # A change without the credential: refused too (by the CSRF check, which comes first).
    assert _request(f"{server.url}/flows/filter", "POST")[0] in (401, 403)
    status, _, _ = _request(f"{server.url}/admin/version", auth="fleet:wrong")
    assert status == 401
    status, _, body = _request(f"{server.url}/flows/filter", "POST", auth=AUTH)
    assert status == 403 and "CSRF" in body, (status, body)

    preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
    _, headers, _ = _request(f"{server.url}/flows/filter", "OPTIONS", headers=preflight)
    assert headers.get("access-control-allow-origin") is None, dict(headers)
    own = server.url.removesuffix("/api")
    _, headers, _ = _request(f"{server.url}/flows/filter", "OPTIONS", headers={**preflight, "Origin": own})
    assert headers.get("access-control-allow-origin") == own, dict(headers)


def test_worker_without_the_credential_is_refused_clearly(server: Server):
    for env, words in (
        (server.env, "needs a credential (401 Unauthorized) and none is set"),
        (dict(server.env, PREFECT_API_AUTH_STRING="fleet:wrong"), "refused the credential (401 Unauthorized)"),
    ):
        proc = subprocess.run([*MAKE, "worker"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0, proc.stdout[-2000:]
        assert words in proc.stderr and server.url in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr + proc.stdout


def test_with_the_credential_a_deployment_runs_to_completed(server: Server, ws: Workspace):
    pool = prefect(server, "work-pool", "create", "yolo-cpu", "--type", "process")
    assert pool.returncode == 0, pool.stdout[-2000:] + pool.stderr[-2000:]
    deploy = prefect(server, "--no-prompt", "deploy", "--name", DEPLOYMENT.split("/")[1])
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    triggered = prefect(server, "deployment", "run", DEPLOYMENT)
    assert triggered.returncode == 0, triggered.stdout[-2000:] + triggered.stderr[-2000:]
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", triggered.stdout).group(1)

    worker_log = server.log.parent / "worker.log"
    with worker_log.open("wb") as fh:
        worker = subprocess.Popen(
            [*MAKE, "worker"],
            env=dict(server.env, AUTH_STRING_FILE=str(server.auth_file)),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and worker.poll() is None:
            status, _, body = _request(f"{server.url}/flow_runs/{run_id}", auth=AUTH)
            assert status == 200, body
            state = json.loads(body)["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(1)
        # The flow run's process ships its logs as it ends, after its state: stopping the worker (and the
        # run's process with it) at once lost them once. Wait for the reason while both still live.
        logs_deadline = time.monotonic() + 60
        while state is not None and state["type"] == "COMPLETED":
            logs = prefect(server, "flow-run", "logs", run_id)
            if "unchanged" in logs.stdout or time.monotonic() > logs_deadline:
                break
            time.sleep(2)
    finally:
        _stop(worker)
    output = worker_log.read_text()
    assert not _group_alive(worker.pid), "a process of `make worker` outlived it"
    assert "Prefect worker: pool 'yolo-cpu'" in output, output[-3000:]
    assert state is not None and state["type"] == "COMPLETED", (state, output[-3000:])
    # The run ended early on unchanged data, and its state is PostgreSQL's.
    assert server.pg.psql(f"SELECT state_type FROM flow_run WHERE id = '{run_id}'") == "COMPLETED"
    # The server stores logs after the state (through its messaging): wait for the reason, bounded.
    deadline = time.monotonic() + 60
    while "unchanged" not in (logs := prefect(server, "flow-run", "logs", run_id)).stdout:
        assert time.monotonic() < deadline, logs.stdout[-3000:] + logs.stderr[-2000:]
        time.sleep(2)
    assert ws.network_attempts() == [], "\n".join(ws.network_attempts())


def test_through_the_tls_proxy_of_infra_proxy_the_worker_connects(server: Server):
    reason = nginx.skip_reason()
    if reason:
        pytest.skip(reason)
    port = int(server.url.split(":")[-1].split("/")[0])
    worker = [sys.executable, str(REPO / "scripts" / "prefect_launch.py"), "worker", "--pool", "yolo-cpu"]
    with nginx.tls_proxy(port) as proxy:
        # Plain HTTP only redirects to HTTPS: basic authentication never travels in clear.
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirected:
            opener.open(f"{proxy.http_url}/api/health", timeout=10)
        assert redirected.value.code == 301 and redirected.value.headers["Location"].startswith("https://")

        env = dict(server.env, PREFECT_API_URL=f"{proxy.https_url}/api", AUTH_STRING_FILE=str(server.auth_file))
        env.pop("SSL_CERT_FILE", None)
        untrusted = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=120)
        assert untrusted.returncode == 2, untrusted.stdout[-2000:] + untrusted.stderr[-2000:]
        assert "certificate" in untrusted.stderr and "SSL_CERT_FILE" in untrusted.stderr, untrusted.stderr
        # With the CA trusted: the check passes through TLS, and Prefect's own client (httpx, with the
        # CSRF token and the credential) polls the pool once and stops.
        trusted = subprocess.run(
            [*worker, "--run-once"],
            env=dict(env, SSL_CERT_FILE=str(proxy.ca_file)),
            capture_output=True,
            text=True,
            timeout=180,
        )
        output = trusted.stdout + trusted.stderr
        assert trusted.returncode == 0, output[-3000:]
        assert f"API {proxy.https_url}/api answers" in output and "Traceback" not in output, output[-3000:]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 301 itself is what is checked


def test_default_make_server_has_csrf_on_and_its_ui_still_lists_what_it_posts_for(tmp_path: Path):
    """One machine, no settings: SQLite on loopback, no credential, but CSRF on and CORS its own origin;
    the UI (which fetches lists by POST) still works: it takes the CSRF token itself."""
    _skip_without_the_venv()
    port = postgres.free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(venv_env(), PREFECT_HOME=str(tmp_path / "home"), PREFECT_PORT=str(port), DO_NOT_TRACK="1")
    env.pop("PREFECT_API_URL", None)
    with make_server(env, url, tmp_path / "server.log"):
        assert "SQLite" not in (tmp_path / "server.log").read_text()
        assert (
            "the default database, authentication off (loopback only), CSRF protection on"
            in (tmp_path / "server.log").read_text()
        )
        status, _, body = _request(f"{url}/work_pools/filter", "POST")
        assert status == 403 and "CSRF" in body, (status, body)
        preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
        assert (
            _request(f"{url}/work_pools/filter", "OPTIONS", headers=preflight)[1].get("access-control-allow-origin")
            is None
        )
        pool = subprocess.run(
            [sys.executable, "-m", "prefect", "work-pool", "create", "csrf-checked", "--type", "process"],
            env=dict(env, PREFECT_API_URL=url),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert pool.returncode == 0, pool.stdout[-2000:] + pool.stderr[-2000:]
        if browser.served_skip_reason() is None:
            # "1 Work pool": the UI's POST /api/work_pools/count passed the CSRF check (the rows below
            # it may not be drawn yet when Chromium's virtual time runs out, so they are not asked for).
            dom = browser.served_page_dom(f"{url.removesuffix('/api')}/work-pools")
            assert re.search(r"\b1 Work pool\b", dom) and "Can't connect to Server API" not in dom, dom[-3000:]
