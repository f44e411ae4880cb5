"""A TCP proxy on 127.0.0.1 that can drop a connection mid-transfer, to test what a client does then.

It forwards every connection to a server on loopback. The first ``drops`` connections are cut, both
ways at once and with a reset (not a polite close), once ``cut_after`` bytes have gone from the client
to the server: the server and the client both see the connection die in the middle of whatever was
being sent. Later connections pass untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

from tests.servers import free_port


class DroppingProxy:
    """Forward ``127.0.0.1:port`` to ``127.0.0.1:target``, cutting the first ``drops`` connections.

    Args:
        target: The server's port on 127.0.0.1.
        cut_after: Bytes from client to server after which a connection to be dropped is cut.
        drops: How many connections (the first ones) to cut.
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
            with self._lock:
                cut = self.drops_left > 0
                self.drops_left -= int(cut)
            upstream = socket.create_connection(("127.0.0.1", self.target))
            pair = _Pair(client, upstream, self.cut_after if cut else None, self._count_drop)
            threading.Thread(target=pair.pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=pair.pump, args=(upstream, client, False), daemon=True).start()

    def _count_drop(self) -> None:
        with self._lock:
            self.dropped += 1


class _Pair:
    """One proxied connection: two pumps, one per direction, and the cut."""

    def __init__(self, client: socket.socket, upstream: socket.socket, cut_after: int | None, on_cut) -> None:  # type: ignore[no-untyped-def]
        self.client, self.upstream = client, upstream
        self.cut_after = cut_after
        self.sent = 0
        self.on_cut = on_cut
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
                        dst.sendall(data[: max(room, 0)])
                        self.cut()
                        return
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def cut(self) -> None:
        """Reset both sockets: SO_LINGER 0 makes close() send RST rather than FIN."""
        with self.lock:
            if self.done:
                return
            self.done = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.close()
        self.on_cut()

    def close(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
        for sock in (self.client, self.upstream):
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
