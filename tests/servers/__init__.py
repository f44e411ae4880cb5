"""Real server processes for tests, each on 127.0.0.1 with a free port, one module per server.

Nothing here listens beyond loopback; a server whose program the machine lacks makes its fixture skip,
naming the package that provides it (``.ci/run`` installs it).
"""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 20.0, alive: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on ``127.0.0.1:port``.

    Args:
        port: The port.
        timeout_s: How long to wait.
        alive: A ``subprocess.Popen`` whose early exit ends the wait at once.

    Raises:
        RuntimeError: Nothing listened in time, or the process exited first.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"the server process exited with code {alive.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout_s} s")
