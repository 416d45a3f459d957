"""TCP sources (the worker listens, frames are cut in Cython) and sinks (the worker connects).

Example::

    >>> TCPSink.RECONNECT_DELAY
    0.25
"""
from __future__ import annotations

import asyncio
import logging

from wallaroo._core.frames import FrameError, FrameReader
from wallaroo.connectors.base import Sink, Source

log = logging.getLogger("wallaroo")


class TCPSource(Source):
    """Listens on the config's host:port; every connection's frames become natural batches.

    A frame longer than ``max_size`` closes that connection with a logged reason; other
    connections go on. A connection that ends inside a frame is logged and counted.

    Example::

        >>> TCPSource.__mro__[1].__name__
        'Source'
    """

    #: With several workers each one accepts connections (local workers share the address).
    spread = "every"

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_FrameProtocol] = set()
        self.address = (config.host, config.port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _FrameProtocol(self), self.config.host, self.config.port,
                reuse_address=True, reuse_port=getattr(self.ctx, "reuse_port", False) or None)
        except OSError as exc:
            raise OSError(f"source {self.ctx.name!r} cannot listen on "
                          f"{self.config.host}:{self.config.port}: {exc.strerror or exc}; "
                          f"pick a free port (0 picks one)") from None
        self.address = self._server.sockets[0].getsockname()[:2]
        self.ctx.flow.subscribe(self._pause, self._resume)

    def describe(self) -> str:
        host, port = self.address
        return f"tcp://{host}:{port}"

    def _pause(self) -> None:
        for conn in self._connections:
            conn.transport.pause_reading()

    def _resume(self) -> None:
        for conn in self._connections:
            conn.transport.resume_reading()

    def reader(self) -> FrameReader:
        """A frame reader for one connection, set up from the source's decoder."""
        dec = self.config.decoder
        header = dec.header_length() if callable(getattr(dec, "header_length", None)) else 4
        return FrameReader(header, getattr(dec, "length_fmt", None), dec.payload_length,
                           self.config.max_size)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()


class _FrameProtocol(asyncio.Protocol):
    """One accepted connection of a TCPSource."""

    def __init__(self, source: TCPSource):
        self.source = source
        self.ctx = source.ctx
        self.reader = source.reader()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.source._connections.add(self)
        if self.ctx.flow.paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self.reader.feed(data)
        except FrameError as exc:
            if exc.frames:
                self.ctx.emit(exc.frames)
            log.warning("source %r: closing connection from %s: %s (raise max_size in "
                        "TCPSourceConfig if such frames are expected)", self.ctx.name, self.peer, exc)
            self.ctx.bad_input("frame", exc.header, exc)
            self.transport.close()
            return
        if payloads and not self.ctx.emit(payloads):
            self.transport.pause_reading()

    def connection_lost(self, exc) -> None:
        self.source._connections.discard(self)
        rest = self.reader.take_pending()
        if rest:
            log.warning("source %r: connection from %s ended inside a frame; %d bytes of an "
                        "unfinished frame were dropped", self.ctx.name, self.peer, len(rest))
            self.ctx.bad_input("truncated_frame", rest, EOFError(
                f"{len(rest)} bytes of an unfinished frame at disconnect"))


class TCPSink(Sink):
    """Connects to host:port, reconnecting every 250 ms, and writes encoded bytes.

    While it cannot write (no connection, or the peer reads slower than we produce) its buffer
    grows to ``HIGH_WATER`` bytes, then it closes the back-pressure gate so sources stop reading.

    Example::

        >>> TCPSink.HIGH_WATER > TCPSink.LOW_WATER
        True
    """

    RECONNECT_DELAY = 0.25
    HIGH_WATER = 4 * 1024 * 1024
    LOW_WATER = 1024 * 1024

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._pending = bytearray()
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._blocking = False

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_connected())

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        warned = False
        while not self._closing:
            try:
                transport, protocol = await loop.create_connection(
                    lambda: _SinkProtocol(self), self.config.host, self.config.port)
            except OSError as exc:
                if not warned:
                    log.warning("sink %s: cannot connect (%s); retrying every %d ms",
                                self.describe(), exc.strerror or exc, self.RECONNECT_DELAY * 1000)
                    warned = True
                await asyncio.sleep(self.RECONNECT_DELAY)
                continue
            if warned:
                log.warning("sink %s: connected", self.describe())
            warned = False
            await protocol.lost
            if not self._closing:
                log.warning("sink %s: connection lost; reconnecting", self.describe())

    def _on_connected(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        transport.set_write_buffer_limits(high=self.HIGH_WATER, low=self.LOW_WATER)
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            self._write(data)
        if transport.get_write_buffer_size() <= self.HIGH_WATER:
            self._unblock()  # otherwise resume_writing opens the gate once the peer has read

    def _on_lost(self) -> None:
        self._transport = None

    def push(self, batch) -> None:
        self._write(b"".join(batch.values))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
            return
        self._pending += data
        if len(self._pending) > self.HIGH_WATER:
            self._block()

    def _block(self) -> None:
        if not self._blocking:
            self._blocking = True
            self.ctx.flow.block(self)

    def _unblock(self) -> None:
        if self._blocking:
            self._blocking = False
            self.ctx.flow.unblock(self)

    def _drained(self) -> bool:
        return not self._pending and (self._transport is None
                                      or self._transport.get_write_buffer_size() == 0)

    async def flush(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._drained() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self._drained():
            return True
        left = len(self._pending) + (self._transport.get_write_buffer_size()
                                     if self._transport is not None else 0)
        log.error("sink %s: %d bytes could not be delivered within %.0f s (is the receiver "
                  "running and reading?)", self.describe(), left, timeout)
        return False

    async def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


class _SinkProtocol(asyncio.Protocol):
    """The connection of a TCPSink; reading is ignored, write pressure closes the gate."""

    def __init__(self, sink: TCPSink):
        self.sink = sink
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.sink._on_connected(transport)

    def pause_writing(self) -> None:
        self.sink._block()

    def resume_writing(self) -> None:
        self.sink._unblock()

    def connection_lost(self, exc) -> None:
        self.sink._on_lost()
        if not self.lost.done():
            self.lost.set_result(exc)
