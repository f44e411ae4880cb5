"""Network guard for the end-to-end tests' subprocesses: loopback and Unix sockets only.

``tests/e2e/workspace.py`` puts this folder first on ``PYTHONPATH``, so every Python process a test
starts (DVC, each stage, Prefect's temporary server, a worker) imports it at start-up. Connecting to,
or resolving, anything but the local machine is refused with an ``OSError`` and recorded, one line
each, in the file named by ``NETGUARD_LOG``; the tests then assert that the log stays empty. A refusal
alone could be swallowed by a caller that falls back to offline behaviour, the log cannot.

Without ``NETGUARD_LOG`` nothing is patched. Another ``sitecustomize`` later on ``sys.path`` (a
virtualenv's or the distribution's) still runs, after this one.
"""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

_LOG_ENV = "NETGUARD_LOG"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
# Families that never leave the machine; anything else must go to a loopback address.
_LOCAL_FAMILIES = {getattr(socket, name) for name in ("AF_UNIX", "AF_NETLINK") if hasattr(socket, name)}


def _is_local_host(host: Any) -> bool:
    if host is None or host == "" or host == b"":
        return True  # getaddrinfo(None, port): the local wildcard or loopback address, no lookup
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).split("%", 1)[0]  # an IPv6 zone ("fe80::1%eth0") is not part of the address
    if host.lower() in _LOCAL_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: resolving it is already network traffic (DNS)


def _refuse(what: str, target: Any) -> OSError:
    """Record an attempt in the log and return the error to raise."""
    stack = "".join(traceback.format_stack(limit=8)[:-2]).replace("\n", " | ")
    line = f"pid {os.getpid()} {' '.join(sys.argv)[:200]}: {what} {target!r}; at {stack}\n"
    with open(os.environ[_LOG_ENV], "a", encoding="utf-8") as fh:
        fh.write(line)
    return OSError(errno.ENETUNREACH, f"network access refused by tests/netguard: {what} {target!r}")


def _install() -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo
    real_gethostbyname = socket.gethostbyname
    real_gethostbyname_ex = socket.gethostbyname_ex

    def allowed(sock: socket.socket, address: Any) -> bool:
        if sock.family in _LOCAL_FAMILIES:
            return True
        host = address[0] if isinstance(address, tuple) and address else address
        return _is_local_host(host)

    def connect(self: socket.socket, address: Any) -> None:
        if not allowed(self, address):
            raise _refuse("connect", address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not allowed(self, address):
            return _refuse("connect_ex", address).errno  # connect_ex reports errors as its return value
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local_host(host):
            _refuse("getaddrinfo", host)
            raise socket.gaierror(socket.EAI_NONAME, f"name resolution refused by tests/netguard: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if not _is_local_host(host):
            _refuse("gethostbyname", host)
            raise socket.gaierror(socket.EAI_NONAME, f"name resolution refused by tests/netguard: {host!r}")
        return real_gethostbyname(host)

    def gethostbyname_ex(host: str) -> Any:
        if not _is_local_host(host):
            _refuse("gethostbyname_ex", host)
            raise socket.gaierror(socket.EAI_NONAME, f"name resolution refused by tests/netguard: {host!r}")
        return real_gethostbyname_ex(host)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    socket.gethostbyname = gethostbyname
    socket.gethostbyname_ex = gethostbyname_ex


def _run_next_sitecustomize() -> None:
    """Run the ``sitecustomize`` this one hides (the first one on ``sys.path`` after this folder)."""
    here = Path(__file__).resolve().parent
    rest = [p for p in sys.path if Path(p or ".").resolve() != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if os.environ.get(_LOG_ENV):
    _install()
_run_next_sitecustomize()
