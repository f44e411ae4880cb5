"""A TCP proxy on 127.0.0.1 that can drop a connection mid-transfer, to test what a client does then.

It forwards every connection to a server on loopback. The first ``drops`` connections that carry
``cut_after`` bytes from the client to the server are cut there, both ways at once and with a reset
(not a polite close): the server and the client both see the connection die in the middle of whatever
was being sent. Short connections (a login, a listing) and every connection after those pass untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

from tests.servers import free_port


class DroppingProxy:
    """Forward ``127.0.0.1:port`` to ``127.0.0.1:target``, cutting the first ``drops`` long connections.

    Args:
        target: The server's port on 127.0.0.1.
        cut_after: Bytes from client to server at which a connection is cut (while drops are left).
        drops: How many connections to cut; set ``drops_left`` again to cut more.
    """

    def __init__(self, target: int, cut_after: int, drops: int = 1) -> None:
        self.target = target
        self.cut_after = cut_after
        self.drops_left = drops
        self.dropped = 0  # connections cut so far
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> DroppingProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting connections (open ones end when either side closes)."""
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            pair = _Pair(client, upstream, self.cut_after, self._take_drop)
            threading.Thread(target=pair.pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=pair.pump, args=(upstream, client, False), daemon=True).start()

    def _take_drop(self) -> bool:
        """Whether a connection that reached ``cut_after`` is to be cut (and counted)."""
        with self._lock:
            if self.drops_left <= 0:
                return False
            self.drops_left -= 1
            self.dropped += 1
            return True


class _Pair:
    """One proxied connection: two pumps, one per direction, and the cut."""

    def __init__(
        self, client: socket.socket, upstream: socket.socket, cut_after: int, take_drop: Callable[[], bool]
    ) -> None:
        self.client, self.upstream = client, upstream
        self.cut_after: int | None = cut_after  # None once this connection is spared
        self.sent = 0
        self.take_drop = take_drop
        self.lock = threading.Lock()
        self.done = False

    def pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upward and self.cut_after is not None:
                    with self.lock:
                        room = self.cut_after - self.sent
                        self.sent += len(data)
                    if room <= len(data):
                        if self.take_drop():
                            dst.sendall(data[: max(room, 0)])
                            self.cut()
                            return
                        self.cut_after = None  # no drops left: this one passes untouched
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def cut(self) -> None:
        """Reset both sockets: SO_LINGER 0 makes close() send RST rather than FIN."""
        self._shut(reset=True)

    def close(self) -> None:
        self._shut(reset=False)

    def _shut(self, reset: bool) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
        for sock in (self.client, self.upstream):
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def dropping_proxy(target: int, cut_after: int, drops: int = 1) -> Iterator[DroppingProxy]:
    """A running :class:`DroppingProxy`, closed at the end of the block."""
    proxy = DroppingProxy(target, cut_after, drops).start()
    try:
        yield proxy
    finally:
        proxy.close()
