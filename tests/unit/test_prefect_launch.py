"""`make server` / `make worker` settings (scripts/prefect_launch.py): what reaches Prefect, and what is refused.

The real server on PostgreSQL with authentication is tests/e2e/test_prefect_server.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "prefect_launch.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prefect_launch", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


launch = _load()


def secret_file(tmp_path: Path, text: str, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_loopback_default_has_csrf_on_cors_own_origin_and_no_database_override():
    plan = launch.plan_server("127.0.0.1", 4300, {})
    assert plan.env == {
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": "4300",
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": "http://127.0.0.1:4300",
    }
    assert plan.args() == ["server", "start", "--host", "127.0.0.1", "--port", "4300"]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "prefect.internal"])
def test_beyond_loopback_without_an_auth_string_is_refused(host: str):
    with pytest.raises(launch.LaunchRefused, match=rf"on {host} without authentication.*AUTH_STRING_FILE"):
        launch.plan_server(host, 4200, {"PUBLIC_URL": "https://prefect.example.org"})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"])
def test_loopback_names_count_as_loopback(host: str):
    assert launch.is_loopback(host)


def test_beyond_loopback_needs_a_public_https_url(tmp_path: Path):
    env = {"AUTH_STRING_FILE": str(secret_file(tmp_path, "fleet:pw\n"))}
    with pytest.raises(launch.LaunchRefused, match="PUBLIC_URL is not set"):
        launch.plan_server("0.0.0.0", 4200, env)
    with pytest.raises(launch.LaunchRefused, match="plain HTTP to another machine"):
        launch.plan_server("0.0.0.0", 4200, {**env, "PUBLIC_URL": "http://prefect.example.org"})


def test_exposed_server_gets_auth_ui_api_url_and_cors_of_the_public_origin(tmp_path: Path):
    env = {"AUTH_STRING_FILE": str(secret_file(tmp_path, "fleet:s3cret\n")), "PUBLIC_URL": "https://p.example.org/"}
    plan = launch.plan_server("0.0.0.0", 4200, env)
    assert plan.env["PREFECT_SERVER_API_AUTH_STRING"] == "fleet:s3cret", "one trailing newline dropped, no more"
    assert plan.env["PREFECT_SERVER_UI_API_URL"] == "https://p.example.org/api"
    assert plan.env["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] == "https://p.example.org"
    assert plan.env["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    assert "s3cret" not in " ".join(plan.args()), "the secret is not on the command line"


def test_public_url_without_auth_is_refused_even_on_loopback():
    # A reverse proxy on this machine exposes a loopback server just the same.
    with pytest.raises(launch.LaunchRefused, match=r"PUBLIC_URL is set.*AUTH_STRING_FILE"):
        launch.plan_server("127.0.0.1", 4200, {"PUBLIC_URL": "https://prefect.example.org"})


def test_auth_string_from_prefects_own_variable_and_its_form_checked():
    plan = launch.plan_server("127.0.0.1", 4200, {"PREFECT_SERVER_API_AUTH_STRING": "a:b"})
    assert plan.env["PREFECT_SERVER_API_AUTH_STRING"] == "a:b"
    with pytest.raises(launch.LaunchRefused, match="expected 'user:password'"):
        launch.plan_server("127.0.0.1", 4200, {"PREFECT_SERVER_API_AUTH_STRING": "just-a-password"})


def test_unreadable_or_empty_secret_file_is_refused(tmp_path: Path):
    with pytest.raises(launch.LaunchRefused, match="AUTH_STRING_FILE: cannot read"):
        launch.plan_server("127.0.0.1", 4200, {"AUTH_STRING_FILE": str(tmp_path / "missing")})
    with pytest.raises(launch.LaunchRefused, match="is empty"):
        launch.plan_server("127.0.0.1", 4200, {"AUTH_STRING_FILE": str(secret_file(tmp_path, "\n"))})


def test_database_url_from_a_file_becomes_prefects_connection_url(tmp_path: Path):
    url = "postgresql+asyncpg://prefect:pw@127.0.0.1:5432/prefect"
    plan = launch.plan_server("127.0.0.1", 4200, {"DATABASE_URL_FILE": str(secret_file(tmp_path, url + "\n"))})
    assert plan.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == url
    plan = launch.plan_server("127.0.0.1", 4200, {"DATABASE_URL": url})
    assert plan.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == url


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "mysql"])
def test_database_url_without_an_async_driver_is_refused_without_echoing_the_password(scheme: str):
    with pytest.raises(launch.LaunchRefused) as refused:
        launch.plan_server("127.0.0.1", 4200, {"DATABASE_URL": f"{scheme}://prefect:hunter2@db/prefect"})
    assert f"scheme '{scheme}'" in str(refused.value) and "hunter2" not in str(refused.value)
    if scheme.startswith("postgres"):
        assert "postgresql+asyncpg://" in str(refused.value)


def test_a_world_readable_secret_file_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = secret_file(tmp_path, "a:b")
    path.chmod(0o644)
    launch.plan_server("127.0.0.1", 4200, {"AUTH_STRING_FILE": str(path)})
    assert "readable by other users" in capsys.readouterr().err


def test_cli_refusal_is_one_line_exit_2_and_starts_nothing():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "server", "--host", "0.0.0.0", "--port", "4200"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "without authentication" in proc.stderr


def test_worker_without_an_api_url_is_refused(tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "PREFECT_HOME": str(tmp_path)}  # no profile, no PREFECT_API_URL
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "worker", "--pool", "yolo-cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,  # no prefect.toml either
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "PREFECT_API_URL is not set" in proc.stderr and "Traceback" not in proc.stderr


def test_worker_check_names_an_unreachable_server():
    with pytest.raises(launch.LaunchRefused, match=r"cannot reach the Prefect API at http://127.0.0.1:9/api"):
        launch.check_api("http://127.0.0.1:9/api", None, timeout_s=5)


def test_server_answers_collection_views_from_prefects_bundled_copy_not_github(monkeypatch: pytest.MonkeyPatch):
    # Unpatched, `prefect work-pool create` made the server fetch raw.githubusercontent.com (seen by
    # tests/netguard in tests/e2e/test_prefect_server.py): that request must not even be tried.
    import asyncio

    import httpx
    from fastapi import HTTPException
    from prefect.server.api import collections

    monkeypatch.setattr(collections, "get_collection_view", collections.get_collection_view)  # undone after
    monkeypatch.setattr(collections, "GLOBAL_COLLECTIONS_VIEW_CACHE", {})
    tried: list[str] = []

    async def no_network(self: httpx.AsyncClient, url: str, **kwargs: object) -> httpx.Response:
        tried.append(str(url))
        raise httpx.ConnectError("no network in this test")

    monkeypatch.setattr(httpx.AsyncClient, "get", no_network)
    launch.serve_collection_views_offline()
    workers = asyncio.run(collections.read_view_content("aggregate-worker-metadata"))
    assert workers["prefect"]["process"]["type"] == "process"
    with pytest.raises(HTTPException) as missing:  # no bundled copy: 404, as an unknown view
        asyncio.run(collections.read_view_content("demo-flows"))
    assert missing.value.status_code == 404
    assert tried == []


def test_worker_refuses_to_send_its_password_over_plain_http_to_another_machine(tmp_path: Path):
    """The server refuses a plain-http PUBLIC_URL to another machine; the worker side refuses the same."""
    secret = tmp_path / "auth"
    secret.write_text("fleet:s3cret\n")
    secret.chmod(0o600)
    env = {
        "PATH": "/usr/bin:/bin",
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_API_URL": "http://prefect.example.org:4200/api",  # never contacted: refused before
        "AUTH_STRING_FILE": str(secret),
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "worker", "--pool", "yolo-cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "plain http to another machine" in proc.stderr and "s3cret" not in proc.stdout + proc.stderr
