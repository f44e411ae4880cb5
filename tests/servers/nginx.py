"""A real nginx TLS reverse proxy for tests: the project's ``infra/proxy/nginx.conf``, with its public
name, ports, certificate and upstream replaced for loopback, and a self-signed certificate for
127.0.0.1 made by ``openssl``.

``tls_proxy(upstream_port)`` is a context manager: it writes the certificate and the configuration in
a temporary folder, checks the configuration (``nginx -t``), runs nginx in the foreground, waits until
it accepts TLS connections, yields a :class:`Proxy`, and stops it (SIGQUIT, then SIGKILL) and deletes
the folder on exit. ``skip_reason()`` says why this machine cannot (Debian's ``nginx-light`` and
``openssl`` packages), for ``pytest.skip``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO
from tests.servers.postgres import free_port

SITE = REPO / "infra" / "proxy" / "nginx.conf"
PACKAGES = {"nginx": "nginx-light", "openssl": "openssl"}  # binary -> Debian package (.ci/run installs them)


def skip_reason() -> str | None:
    """Why nginx cannot run here, or ``None`` when it can."""
    missing = [package for binary, package in PACKAGES.items() if shutil.which(binary) is None]
    return f"nginx TLS proxy test needs Debian's package(s): {', '.join(missing)}" if missing else None


@dataclass(frozen=True)
class Proxy:
    """A running proxy: its HTTPS and plain-HTTP addresses and the certificate a client must trust."""

    https_url: str
    http_url: str
    ca_file: Path


def render(site: str, replacements: dict[str, str]) -> str:
    """``site`` with each key replaced; a key missing from it fails, so an edit of the file the test
    no longer matches is not silently tested as something else."""
    for old, new in replacements.items():
        if old not in site:
            raise AssertionError(f"{SITE} no longer holds {old!r}: update tests/servers/nginx.py")
        site = site.replace(old, new)
    return site


def _wait_tls(port: int, ca_file: Path, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nginx did not answer TLS in {timeout_s:.0f} s: {log.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def tls_proxy(upstream_port: int, start_timeout_s: float = 30) -> Iterator[Proxy]:
    """Run ``infra/proxy/nginx.conf`` on 127.0.0.1 in front of ``127.0.0.1:upstream_port``.

    Raises:
        RuntimeError: When the certificate cannot be made, the configuration is refused by
            ``nginx -t``, or nginx does not start (with its log).
    """
    base = Path(tempfile.mkdtemp(prefix="pytest-nginx-"))
    base.chmod(0o755)  # nginx's worker processes (www-data under root) create their temp folders here
    cert, key, log = base / "cert.pem", base / "key.pem", base / "error.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        made = subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
                *("-addext", "subjectAltName=IP:127.0.0.1"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if made.returncode != 0:
            raise RuntimeError(f"openssl could not make a certificate: {made.stderr[-2000:]}")
        https_port, http_port = free_port(), free_port()
        site = render(
            SITE.read_text(),
            {
                "listen 80;": f"listen 127.0.0.1:{http_port};",
                "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
                "server_name prefect.example.org;": "server_name 127.0.0.1;",
                "/etc/ssl/certs/prefect.example.org.pem": str(cert),
                "/etc/ssl/private/prefect.example.org.key": str(key),
                "proxy_pass http://127.0.0.1:4200;": f"proxy_pass http://127.0.0.1:{upstream_port};",
            },
        )
        (base / "site.conf").write_text(site)
        main = base / "nginx.conf"
        main.write_text(
            f"daemon off;\npid {base}/nginx.pid;\nerror_log {log};\nevents {{}}\n"
            f"http {{\n  access_log {base}/access.log;\n  client_body_temp_path {base}/body;\n"
            f"  proxy_temp_path {base}/proxy;\n  include {base}/site.conf;\n}}\n"
        )
        checked = subprocess.run(["nginx", "-t", "-q", "-c", str(main)], capture_output=True, text=True, timeout=30)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t refused infra/proxy/nginx.conf: {checked.stderr[-2000:]}")
        proc = subprocess.Popen(
            ["nginx", "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_tls(https_port, cert, proc, log, start_timeout_s)
        yield Proxy(f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", cert)
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGQUIT)  # graceful: finish open requests, then exit
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the master and its workers, whatever is left
            proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
