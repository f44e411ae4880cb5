"""`make server` and `make worker`: Prefect's server and a process worker, set up for one machine or a fleet.

``server`` checks its settings, turns them into Prefect's own environment variables and runs
``prefect server start`` in its own process, with the server's collection views served from the
copies bundled with Prefect (``serve_collection_views_offline``: no request to GitHub). ``worker``
checks that the server answers and accepts the credential, then replaces itself with ``prefect
worker start``. A refusal prints one line naming what
is wrong and what to do, and exits 2; nothing starts.

Inputs (environment; secrets from a file or the environment, never the command line, where ``ps``
shows them to every user):

- ``DATABASE_URL`` or ``DATABASE_URL_FILE``: the server's database, ``postgresql+asyncpg://user:pw@host:5432/db``
  (or ``sqlite+aiosqlite:///path``). Unset: Prefect's own ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` if
  set, else SQLite in ``PREFECT_HOME``.
- ``AUTH_STRING_FILE`` (a file holding ``user:password``) or Prefect's ``PREFECT_SERVER_API_AUTH_STRING``
  (server) / ``PREFECT_API_AUTH_STRING`` (worker): HTTP basic authentication of every API call.
- ``PUBLIC_URL``: where other machines reach the server (the TLS reverse proxy, ``https://...``).
- ``--host``/``--port`` (``PREFECT_HOST``/``PREFECT_PORT`` in the Makefile): where the server listens.

The server always runs with CSRF protection on and CORS limited to its own origin (its UI is served
from that origin, so nothing of its own is refused). It refuses to listen beyond loopback without an
authentication string, without ``PUBLIC_URL``, or with a plain-HTTP ``PUBLIC_URL``: basic
authentication over HTTP hands the password to anyone on the path.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import os
import ssl
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFUSED_EXIT = 2  # as stages.core.cli: a refusal on purpose, which a retry cannot fix
DB_SCHEMES = ("postgresql+asyncpg", "sqlite+aiosqlite")  # the async drivers Prefect's server runs on
LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


class LaunchRefused(Exception):
    """A setting is missing or unsafe; the message names it and what to do."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to listen on or connect to) stays on this machine."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard-free address of an interface: other machines reach it


def read_secret(env: Mapping[str, str], name: str, fallback: str | None = None) -> str | None:
    """The secret in the file ``env[name + '_FILE']``, else ``env[name]``, else ``env[fallback]``.

    One trailing newline is dropped (editors and ``echo`` add it; it is never part of a password).

    Raises:
        LaunchRefused: When the file cannot be read or holds nothing.
    """
    file_var = f"{name}_FILE"
    if env.get(file_var):
        path = Path(env[file_var])
        try:
            value = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
            mode = path.stat().st_mode
        except OSError as exc:
            raise LaunchRefused(f"{file_var}: cannot read '{path}': {exc.strerror}") from None
        if not value:
            raise LaunchRefused(f"{file_var}: '{path}' is empty")
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            print(f"warning: {file_var} '{path}' is readable by other users (chmod 600 it)", file=sys.stderr)
        return value
    for var in (name, fallback):
        if var and env.get(var):
            return env[var]
    return None


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _check_database_url(url: str) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in DB_SCHEMES:
        # Only the scheme is echoed: the rest of the URL holds the password.
        hint = " (Prefect needs the asyncpg driver: postgresql+asyncpg://...)" if scheme.startswith("postgres") else ""
        raise LaunchRefused(f"DATABASE_URL: scheme '{scheme or '(none)'}' is not one of {', '.join(DB_SCHEMES)}{hint}")


@dataclass(frozen=True)
class ServerPlan:
    """What ``prefect server start`` gets: its arguments and the environment variables set for it."""

    host: str
    port: int
    env: dict[str, str]

    def args(self) -> list[str]:
        """The ``prefect`` command line that serves the API and the UI."""
        return ["server", "start", "--host", self.host, "--port", str(self.port)]


def plan_server(host: str, port: int, env: Mapping[str, str]) -> ServerPlan:
    """Check the server's settings and turn them into Prefect's environment variables.

    Args:
        host: The address to listen on.
        port: The port to listen on.
        env: The environment (``DATABASE_URL``, ``AUTH_STRING_FILE``, ``PUBLIC_URL``, Prefect's own).

    Returns:
        The command's host and port and the variables to add to its environment.

    Raises:
        LaunchRefused: When a setting is missing or unsafe (the message says which and what to do).
    """
    out: dict[str, str] = {}
    exposed = not is_loopback(host)
    auth = read_secret(env, "AUTH_STRING", fallback="PREFECT_SERVER_API_AUTH_STRING")
    public = env.get("PUBLIC_URL", "").rstrip("/")
    if exposed and not auth:
        raise LaunchRefused(
            f"refusing to serve the Prefect API on {host} without authentication: put 'user:password' in a "
            "file only the server's user can read and give AUTH_STRING_FILE=<file> "
            "(or PREFECT_SERVER_API_AUTH_STRING in the environment), or listen on 127.0.0.1"
        )
    if auth is not None and ":" not in auth:
        raise LaunchRefused("AUTH_STRING: expected 'user:password' (basic authentication), found no ':'")
    if exposed and not public:
        raise LaunchRefused(
            f"PUBLIC_URL is not set: listening on {host} needs the https:// address workers and browsers use "
            "(the TLS reverse proxy in front of this server, see infra/proxy/)"
        )
    if public:
        parts = urllib.parse.urlsplit(public)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LaunchRefused(f"PUBLIC_URL: '{public}' is not an http(s) URL with a host")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise LaunchRefused(
                f"PUBLIC_URL: '{public}' is plain HTTP to another machine, which would send the password in "
                "clear; serve it through a TLS reverse proxy (infra/proxy/) and give its https:// URL"
            )
        if not auth:
            raise LaunchRefused(
                "PUBLIC_URL is set, so other machines reach this server: give AUTH_STRING_FILE=<file> "
                "(or PREFECT_SERVER_API_AUTH_STRING) too"
            )
        out["PREFECT_SERVER_UI_API_URL"] = f"{public}/api"  # the UI asks the API where the browser reached it
        origin = _origin(public)
    else:
        origin = f"http://{host}:{port}"
    # The UI asks the API at PREFECT_SERVER_API_HOST:PORT (4200 unless set), not at the --port it is served on.
    out["PREFECT_SERVER_API_HOST"] = host
    out["PREFECT_SERVER_API_PORT"] = str(port)
    out["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] = "true"
    out["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] = origin
    if auth:
        out["PREFECT_SERVER_API_AUTH_STRING"] = auth
    database = read_secret(env, "DATABASE_URL")
    if database:
        _check_database_url(database)
        out["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database
    return ServerPlan(host, port, out)


def serve_collection_views_offline() -> None:
    """Make Prefect's server answer its collection views from the copies bundled with Prefect.

    Unpatched, the server fetches them from raw.githubusercontent.com: on every ``prefect work-pool
    create`` (which asks for the known work-pool types) and when the UI lists integrations. The
    project runs with no network; offline, Prefect itself falls back to the same bundled copy, after
    a failed lookup. A view with no bundled copy answers 404, as an unknown view does.

    Raises:
        LaunchRefused: When this Prefect no longer has the function or folder patched here (its
            internals moved: check ``prefect/server/api/collections.py`` and adapt this).
    """
    import json

    from prefect.server.api import collections

    views = Path(collections.__file__).parent / "collections_data" / "views"
    if not callable(getattr(collections, "get_collection_view", None)) or not views.is_dir():
        raise LaunchRefused(
            "this Prefect's server no longer has prefect.server.api.collections.get_collection_view or its "
            "bundled views: scripts/prefect_launch.py cannot keep the server offline; adapt it"
        )

    async def bundled_view(view: str) -> dict[str, Any]:
        path = views / f"{view}.json"
        if view not in collections.KNOWN_VIEWS or not path.is_file():
            raise KeyError(view)  # the endpoint answers 404 "not found in registry"
        return json.loads(path.read_text(encoding="utf-8"))

    collections.get_collection_view = bundled_view


def check_api(
    api_url: str, auth: str | None, timeout_s: float = 15, cafile: str | None = None, verify: bool = True
) -> str:
    """Ask the Prefect API for its version, as a worker's first call would; returns the version.

    ``cafile`` and ``verify`` are Prefect's ``PREFECT_API_SSL_CERT_FILE`` (``SSL_CERT_FILE`` by
    default) and the opposite of ``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``, so this trusts what the
    worker will.

    Raises:
        LaunchRefused: When the server cannot be reached or refuses the credential.
    """
    request = urllib.request.Request(f"{api_url.rstrip('/')}/admin/version")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            return response.read().decode().strip('"')
    except urllib.error.HTTPError as exc:
        if exc.code == 401 and auth:
            raise LaunchRefused(
                f"the Prefect API at {api_url} refused the credential (401 Unauthorized): AUTH_STRING_FILE "
                "(or PREFECT_API_AUTH_STRING) must hold the server's 'user:password'"
            ) from None
        if exc.code == 401:
            raise LaunchRefused(
                f"the Prefect API at {api_url} needs a credential (401 Unauthorized) and none is set: give the "
                "server's 'user:password' in a file as AUTH_STRING_FILE=<file> (or PREFECT_API_AUTH_STRING)"
            ) from None
        raise LaunchRefused(f"the Prefect API at {api_url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise LaunchRefused(
                f"the TLS certificate of {api_url} is not trusted ({reason.verify_message}): give the "
                "certificate of the CA that signed it as SSL_CERT_FILE=<file>"
            ) from None
        raise LaunchRefused(
            f"cannot reach the Prefect API at {api_url} ({reason}): start the server (make server) or "
            "correct PREFECT_API_URL"
        ) from None


def plan_worker(env: Mapping[str, str]) -> tuple[str, str, dict[str, str]]:
    """The API URL a worker uses, the server's version, and the variables to add to the worker's
    environment (the credential).

    Prefect resolves ``PREFECT_API_URL`` from the environment, ``prefect.toml`` or the active profile;
    so does this, through Prefect's own settings.

    Raises:
        LaunchRefused: When no API URL is configured or the secret file cannot be read.
    """
    out: dict[str, str] = {}
    auth = read_secret(env, "AUTH_STRING", fallback="PREFECT_API_AUTH_STRING")
    if auth:
        out["PREFECT_API_AUTH_STRING"] = auth
    from prefect.settings import Settings

    saved = dict(os.environ)
    os.environ.update(out)
    try:
        settings = Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if not settings.api.url:
        raise LaunchRefused(
            "PREFECT_API_URL is not set: a worker takes its runs from a Prefect server; "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api (or the server's PUBLIC_URL + /api)"
        )
    if auth is None and settings.api.auth_string is not None:
        auth = settings.api.auth_string.get_secret_value()  # from the profile or prefect.toml
    parts = urllib.parse.urlsplit(settings.api.url)
    if auth and parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        raise LaunchRefused(
            f"PREFECT_API_URL {settings.api.url} is plain http to another machine: the worker's password would "
            "travel in clear on every request; use the server's https:// URL (its reverse proxy, README: TLS)"
        )
    version = check_api(
        settings.api.url, auth, cafile=settings.api.ssl_cert_file, verify=not settings.api.tls_insecure_skip_verify
    )
    return settings.api.url, version, out


def _serve(plan: ServerPlan) -> None:
    """Run ``prefect server start`` in this process, with the settings of ``plan``."""
    # Prefect reads its settings from the environment at import; `prefect server start` serves from
    # the process that calls it (uvicorn, one worker), so the patch holds for every request.
    os.environ.update(plan.env)
    serve_collection_views_offline()
    from prefect.cli import app

    sys.argv = ["prefect", *plan.args()]
    app()


def main(argv: list[str] | None = None) -> int:
    """CLI: check, then serve (``server``) or replace this process with ``prefect worker start`` (``worker``)."""
    parser = argparse.ArgumentParser(prog="python scripts/prefect_launch.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="serve the Prefect API and UI")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=4200)
    worker = sub.add_parser("worker", help="a worker of a work pool")
    worker.add_argument("--pool", required=True)
    # Anything else after `worker` goes to `prefect worker start` (e.g. --run-once, --limit 2).
    args, worker_args = parser.parse_known_args(argv)
    if worker_args and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(worker_args)}")
    try:
        if args.command == "server":
            plan = plan_server(args.host, args.port, os.environ)
            where = plan.env.get("PREFECT_SERVER_UI_API_URL", f"http://{args.host}:{args.port}/api")
            url = plan.env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL", "")
            database = "PostgreSQL" if url.startswith("postgresql") else "SQLite" if url else "the default database"
            auth = "on" if "PREFECT_SERVER_API_AUTH_STRING" in plan.env else "off (loopback only)"
            print(f"Prefect server: API {where}, {database}, authentication {auth}, CSRF protection on", flush=True)
            _serve(plan)
            return 0
        url, version, extra = plan_worker(os.environ)
    except LaunchRefused as exc:
        print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
        return REFUSED_EXIT
    print(f"Prefect worker: pool '{args.pool}', API {url} answers (Prefect {version})", flush=True)
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", args.pool, *worker_args]
    os.execve(sys.executable, command, {**os.environ, **extra})
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
