"""The end-to-end tests' network guard (tests/netguard): loopback passes, anything else is refused and logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, venv_env
from tests.e2e.workspace import NETGUARD

PROBE = """
import socket

def attempt(what, call):
    try:
        call()
        print(what, "allowed")
    except OSError as exc:
        print(what, "refused" if "tests/netguard" in str(exc) else "failed: " + type(exc).__name__)

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
attempt("loopback", lambda: socket.create_connection(server.getsockname(), timeout=2).close())
attempt("localhost-lookup", lambda: socket.getaddrinfo("localhost", 80))
attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443))
attempt("connect", lambda: socket.socket().connect(("192.0.2.1", 443)))  # TEST-NET-1: never routed
attempt("connect_ex", lambda: socket.socket().connect_ex(("192.0.2.1", 443)) and None)
"""


def run_probe(tmp_path: Path, code: str, guarded: bool) -> tuple[list[str], list[str]]:
    log = tmp_path / "netguard.log"
    env = venv_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), env.get("PYTHONPATH")]))
    if guarded:
        env["NETGUARD_LOG"] = str(log)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.splitlines(), log.read_text().splitlines() if log.is_file() else []


def test_guard_refuses_and_logs_everything_but_loopback(tmp_path: Path):
    answers, logged = run_probe(tmp_path, PROBE, guarded=True)
    assert answers == [
        "loopback allowed",
        "localhost-lookup allowed",
        "dns refused",
        "connect refused",
        "connect_ex allowed",  # connect_ex reports the refusal as its return value, not an exception
    ]
    assert [line.split(": ", 1)[1].split(";")[0] for line in logged] == [
        "getaddrinfo 'pypi.org'",
        "connect ('192.0.2.1', 443)",
        "connect_ex ('192.0.2.1', 443)",
    ]


def test_without_its_log_the_guard_patches_nothing(tmp_path: Path):
    # Only looks at the functions: an unguarded probe must not reach the network itself.
    code = "import socket; print(socket.getaddrinfo.__module__, type(socket.socket.connect).__name__)"
    answers, logged = run_probe(tmp_path, code, guarded=False)
    assert answers == ["socket method_descriptor"] and logged == []
