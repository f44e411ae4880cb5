"""A real OpenSSH server on 127.0.0.1 for tests: key authentication only, for the user running the tests.

Everything it needs lies in one temporary folder: its host key, its configuration, a throwaway client
key and the ``authorized_keys`` that admits it, and a ``known_hosts`` naming the host key (so a client
verifies the server rather than trusting whatever answers). It listens on a free port and is stopped
when the fixture ends.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, wait_for_port

SSHD = "/usr/sbin/sshd"
# Where sshd started as root insists on its privilege-separation folder (compiled in; Debian's
# service unit creates it at boot, which a container never does).
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(frozen=True)
class Sshd:
    """A running sshd and what a client needs to log in.

    Attributes:
        port: Its port on 127.0.0.1.
        user: The login name (the user running the tests).
        key: The private key it accepts (no passphrase).
        other_key: A private key it does not accept (for wrong-credential tests).
        home: A home folder for clients: ``.ssh/known_hosts`` names this server's host key.
        process: The sshd process.
    """

    port: int
    user: str
    key: Path
    other_key: Path
    home: Path
    process: subprocess.Popen[bytes]


def sshd_program() -> str | None:
    """The sshd binary, or ``None`` when the machine has none."""
    return shutil.which("sshd") or (SSHD if os.access(SSHD, os.X_OK) else None)


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def start_sshd(folder: Path) -> Sshd:
    """Start sshd on a free loopback port with everything it needs in ``folder``.

    Skips the calling test when sshd or ssh-keygen is missing, or when sshd cannot run here.
    """
    program = sshd_program()
    if program is None or shutil.which("ssh-keygen") is None:
        pytest.skip("sshd or ssh-keygen not installed (Debian package 'openssh-server'; .ci/run installs it)")
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
    folder.mkdir(parents=True, exist_ok=True)
    host_key, key, other_key = folder / "host_ed25519", folder / "client_ed25519", folder / "stranger_ed25519"
    _keygen(host_key, "test sshd host key")
    _keygen(key, "test client key")
    _keygen(other_key, "a key the server does not know")
    authorized = folder / "authorized_keys"
    authorized.write_text(key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                # The test folders lie under /tmp (world-writable), which StrictModes refuses.
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    log = folder / "sshd.log"
    # -D: stay in the foreground (so the fixture owns the process); -e/-E: log to a file of ours.
    process = subprocess.Popen([program, "-D", "-f", str(config), "-E", str(log)], stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, alive=process)
    except RuntimeError as exc:
        process.kill()
        process.wait()
        pytest.skip(f"sshd cannot run here: {exc}: {log.read_text() if log.is_file() else ''}")
    home = folder / "home"
    (home / ".ssh").mkdir(parents=True)
    host_pub = host_key.with_suffix(".pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return Sshd(port=port, user=getpass.getuser(), key=key, other_key=other_key, home=home, process=process)


def stop_sshd(server: Sshd) -> None:
    """Stop the sshd (its connections' child processes end with it)."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real sshd on 127.0.0.1 for one test, stopped after it."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        stop_sshd(server)
