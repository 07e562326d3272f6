"""A TCP proxy between a worker and its broker that can play a silent peer.

``freeze()`` stops forwarding in both directions but closes nothing: the worker's writes still
succeed (they fill kernel buffers) and no reply, no FIN and no RST ever comes back, which is
what a broker host that vanished, a dropped NAT entry or a network partition looks like.
Only a timeout or a heartbeat can tell. ``cut()`` closes every connection (a reset peer).
"""

from __future__ import annotations

import select
import socket
import threading

POLL = 0.05  # seconds a pump waits before looking at the freeze flag again


class TcpProxy:
    """Listens on 127.0.0.1:<port> and forwards each connection to ``target``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    def url(self, scheme_and_auth: str, path: str) -> str:
        """``<scheme_and_auth>127.0.0.1:<port><path>``, e.g. ``url("redis://", "/0")``."""
        return f"{scheme_and_auth}127.0.0.1:{self.port}{path}"

    # -- control ----------------------------------------------------------------------------
    def freeze(self) -> None:
        """Stop forwarding, both ways, on every connection, old and new."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Close every connection now; the proxy keeps accepting new ones."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _close(sock)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        _close(self._listener)
        self.cut()
        for thread in self._threads:
            thread.join(5)

    # -- forwarding -------------------------------------------------------------------------
    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], POLL)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:  # the broker is down: the client sees its connection close
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy ``source`` to ``sink`` while flowing; when frozen, read nothing, send nothing."""
        while not self._closed.is_set():
            if not self._flowing.wait(POLL):
                continue
            try:
                readable, _, _ = select.select([source], [], [], POLL)
                if not readable:
                    continue
                if not self._flowing.is_set():  # froze while waiting: leave the bytes unread
                    continue
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
            except (OSError, ValueError):  # closed under us (cut) or reset by the other end
                break
        self._forget(source, sink)

    def _forget(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            self._pairs = [p for p in self._pairs if a not in p]
        _close(a)
        _close(b)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
