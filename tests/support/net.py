"""Sockets in tests, on 127.0.0.1 only: free ports, u32-framed messages, and :class:`Listener`,
a TCP server that stands in for a receiver and keeps every byte it is sent."""
from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Callable

HOST = "127.0.0.1"


def free_port() -> int:
    """A port that was free a moment ago (only where port 0 cannot be used)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports of 127.0.0.1 that were free a moment ago (all bound at once,
    then closed)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def frame(text: str) -> bytes:
    """``text`` in UTF-8 behind a u32 big-endian length header."""
    data = text.encode("utf-8")
    return struct.pack(">I", len(data)) + data


class Listener:
    """A TCP server on ``HOST:port`` (0: any free port) that accepts every connection and keeps
    all the bytes it receives, in arrival order, in :attr:`data`.

    Usage (the ``listener`` fixture of tests/conftest.py closes it in teardown)::

        sink = Listener()
        ...                                    # point a sender at sink.address
        sink.wait_for(lambda data: data.count(b"\\n") >= 3)
        assert sink.wait_closed() == b"a\\nb\\nc\\n"
        sink.close()

    :attr:`accepted_at` and :attr:`closed_at` are the ``time.monotonic()`` of the first
    accepted connection and of the last connection the peer closed.
    """

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.address = f"{HOST}:{self.port}"
        self.connections = 0
        self.closed = 0
        self.accepted_at = self.closed_at = 0.0
        self._data = bytearray()
        self._cond = threading.Condition()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._cond:
                self.connections += 1
                self.accepted_at = self.accepted_at or time.monotonic()
                self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self.closed += 1
                    self.closed_at = time.monotonic()
                    self._cond.notify_all()
                    return
                self._data += chunk
                self._cond.notify_all()

    @property
    def data(self) -> bytes:
        with self._cond:
            return bytes(self._data)

    def wait_for(self, predicate: Callable[[bytes], bool], timeout: float = 5.0) -> bytes:
        """Wait until ``predicate(data)``; return the data; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(bytes(self._data)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"listener {self.address} got only {bytes(self._data)[-500:]!r}")
                self._cond.wait(min(left, 0.05))
            return bytes(self._data)

    def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Wait until at least one connection came and every one was closed by its peer;
        return the data; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.closed < self.connections or self.connections == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the sender never closed its connection")
                self._cond.wait(min(left, 0.05))
            return bytes(self._data)

    def close(self) -> None:
        self.sock.close()
        with self._cond:
            for conn in self._conns:
                conn.close()
