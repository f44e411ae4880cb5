"""A real, throw-away PostgreSQL server for tests: Debian's binaries, a fresh cluster in a temporary
folder, TCP on 127.0.0.1 only (no Unix socket), a random free port, password (SCRAM) authentication.

``postgres_server()`` is a context manager: it runs ``initdb``, starts ``postgres``, creates a login
role with a password and a database it owns, yields a :class:`Postgres`, and on exit stops the server
(fast shutdown, then SIGKILL) and deletes the folder. ``skip_reason()`` says why this machine cannot
(no binaries: Debian's ``postgresql`` package; root without the ``postgres`` user), for ``pytest.skip``.

PostgreSQL refuses to run as root; under root the cluster is owned by, and the server runs as, the
``postgres`` system user the Debian package creates. Passwords reach ``initdb`` and ``psql`` through a
file and the environment, never the command line.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "postgresql"  # Debian's package with initdb and postgres (.ci/run installs it)
SERVICE_USER = "postgres"  # who runs the server when the tests run as root


def bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``: on PATH, else Debian's newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian keeps the server binaries off PATH)."""
    found = shutil.which("initdb")
    # Resolved: a link on PATH (/usr/local/bin/initdb) leads to the folder with psql and pg_isready too.
    folder = Path(found).resolve().parent if found else None
    if folder is not None and all((folder / name).is_file() for name in ("postgres", "psql", "pg_isready")):
        return folder
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    return versions[-1].parent if versions else None


def _service_user() -> pwd.struct_passwd | None:
    """The account the server runs as: ``None`` for this one (not root), else the ``postgres`` user."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(SERVICE_USER)


def skip_reason() -> str | None:
    """Why a real PostgreSQL server cannot start here, or ``None`` when it can."""
    if bin_dir() is None:
        return (
            f"PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin: "
            f"install Debian's '{PACKAGE}' package"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return (
                f"running as root and no '{SERVICE_USER}' user to run PostgreSQL as (Debian's '{PACKAGE}' creates it)"
            )
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Postgres:
    """A running server: where it listens and the role and database a client uses."""

    host: str
    port: int
    user: str
    password: str
    database: str
    data_dir: Path
    pid: int

    def url(self, driver: str = "postgresql+asyncpg", password: str | None = None) -> str:
        """A SQLAlchemy URL for the database (``password`` overrides the role's, to test a wrong one)."""
        secret = self.password if password is None else password
        return f"{driver}://{self.user}:{secret}@{self.host}:{self.port}/{self.database}"

    def psql(self, sql: str, timeout: float = 30) -> str:
        """Run ``sql`` as the role (password from the environment); returns psql's unaligned output."""
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}
        proc = subprocess.run(
            [
                *(str(_require_bin() / "psql"), "-X", "-qAt", "-v", "ON_ERROR_STOP=1"),
                *("-h", self.host, "-p", str(self.port), "-U", self.user, "-d", self.database, "-c", sql),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip()


def _require_bin() -> Path:
    found = bin_dir()
    if found is None:
        raise RuntimeError(skip_reason() or "no PostgreSQL binaries")
    return found


def _run_as(user: pwd.struct_passwd | None) -> dict[str, int]:
    """Popen arguments that drop to ``user`` (nothing when running as ourselves)."""
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _wait_ready(bindir: Path, port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        ready = subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "2"], capture_output=True
        )
        if ready.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"postgres did not accept connections in {timeout_s:.0f} s: {log.read_text(errors='replace')[-2000:]}"
    )


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    """Fast shutdown (SIGINT: roll back open transactions, close connections), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # The backends are the postmaster's children, in its process group: none may outlive it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def postgres_server(
    user: str = "prefect", database: str = "prefect", start_timeout_s: float = 60
) -> Iterator[Postgres]:
    """Start a fresh PostgreSQL cluster on 127.0.0.1 and stop and delete it on exit.

    Args:
        user: The login role to create (not a superuser), with a random password.
        database: The database to create, owned by ``user``.
        start_timeout_s: How long the server may take to accept connections.

    Yields:
        The running server.

    Raises:
        RuntimeError: When the binaries are missing or the server does not start (with its log).
    """
    bindir = _require_bin()
    account = _service_user()
    # In the system temp folder, not pytest's (mode 0700 under root, which the postgres user cannot enter).
    base = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))
    data, log, pwfile = base / "data", base / "postgres.log", base / "pwfile"
    admin_password, password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    proc: subprocess.Popen[bytes] | None = None
    try:
        pwfile.write_text(admin_password + "\n")
        if account is not None:
            for path in (base, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        pwfile.chmod(0o600)
        init = subprocess.run(
            [
                *(str(bindir / "initdb"), "-D", str(data), "-U", "admin", f"--pwfile={pwfile}"),
                *("--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"),
                "--no-sync",  # a throw-away cluster: no fsync of the new files
            ],
            capture_output=True,
            text=True,
            timeout=120,
            **_run_as(account),
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
        port = free_port()
        with log.open("wb") as log_fh:
            proc = subprocess.Popen(
                [
                    *(str(bindir / "postgres"), "-D", str(data), "-p", str(port)),
                    # TCP on loopback only, no Unix socket; durability is not wanted of a throw-away cluster.
                    *("-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="),
                    *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
                ],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **_run_as(account),
            )
        _wait_ready(bindir, port, proc, log, start_timeout_s)
        admin = Postgres("127.0.0.1", port, "admin", admin_password, "postgres", data, proc.pid)
        # A password is a literal here; token_urlsafe has no quote in it.
        admin.psql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        admin.psql(f"CREATE DATABASE {database} OWNER {user}")
        yield Postgres("127.0.0.1", port, user, password, database, data, proc.pid)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)
