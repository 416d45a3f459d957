"""The client side of a connector source, on asyncio: an at-least-once source connector.

``AtLeastOnceSourceConnector`` connects to a worker's ``SourceConnectorConfig`` address, opens
streams (NOTIFY) and sends MESSAGEs within the credits the worker grants. It keeps every
message until the worker acknowledges it (an ACK's point of reference), and when the
connection is lost or the worker asks for a RESTART it reconnects with backoff, NOTIFYs its
streams again and resends, in order, every kept message after the point the worker's
NOTIFY_ACK names. The worker drops what it has already seen, so nothing is lost or doubled.

Example::

    >>> stream_id_for("lines") == stream_id_for("lines") != stream_id_for("words")
    True
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict, deque

from wallaroo.connectors.connector_wire import (
    NOTHING, Ack, ConnectorError, Eos, Error, FrameDecoder, Hello, Message, Notify,
    NotifyAck, Ok, ProtocolError, Restart, encode)

log = logging.getLogger("wallaroo.source_client")


def stream_id_for(name: str) -> int:
    """The stream id of a stream name: the first 64 bits of SHA-256(name), as in the original.

    Example::

        >>> hex(stream_id_for("abc"))
        '0xba7816bf8f01cfea'
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


class _Pulse:
    """Wakes every waiter when something changed (credits, acks, the connection)."""

    def __init__(self):
        self._future: asyncio.Future | None = None

    def fire(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self) -> None:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._future)


class _Stream:
    """What the connector knows of one stream."""

    def __init__(self, stream_id: int, name: str):
        self.id = stream_id
        self.name = name
        self.wanted = False            # open as far as the user is concerned (not ended)
        self.open = False              # NOTIFY_ACKed on the current connection
        self.kept: OrderedDict[int, bytes] = OrderedDict()   # unacknowledged frames
        self.unsent: deque = deque()   # ids of kept frames not written on this connection
        self.acked = -1                # highest id the worker acknowledged
        self.last_id = -1              # highest id sent by the user

    def forget_through(self, point: int) -> None:
        self.acked = max(self.acked, point)
        kept = self.kept
        while kept:
            first = next(iter(kept))
            if first > point:
                break
            del kept[first]


class AtLeastOnceSourceConnector:
    """A connector-protocol client that never loses a message (see the module doc).

    ``delay`` is a pause in seconds after each ``send`` (a simple throttle). ``window`` caps
    the messages queued and not yet written before ``send`` waits.

    Example::

        >>> c = AtLeastOnceSourceConnector("v0.0.1", "cookie", "app", "me", "127.0.0.1", 7100)
        >>> c.connected, c.credits
        (False, 0)
    """

    RETRY_MIN = 0.05
    RETRY_MAX = 1.0

    def __init__(self, version, cookie, program_name, instance_name, host, port, delay=0,
                 window: int = 1000):
        self.version = version
        self.cookie = cookie
        self.program_name = program_name
        self.instance_name = instance_name
        self.host, self.port = host, int(port)
        self.delay = delay
        self.window = window
        self.credits = 0
        self.connected = False
        #: RESTARTs received and connections made.
        self.restarts = 0
        self.connections = 0
        self._streams: dict[int, _Stream] = {}
        self._waiting: dict[int, asyncio.Future] = {}
        self._pulse = _Pulse()
        self._writer: asyncio.StreamWriter | None = None
        self._supervisor: asyncio.Task | None = None
        self._pump: asyncio.Task | None = None
        self._closed = False

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and shake hands, retrying with backoff until the worker answers; a worker
        that refuses (ERROR: wrong cookie or version) raises ConnectorError."""
        link = await self._dial()
        self._attach(*link)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise(link))

    async def _dial(self) -> tuple:
        delay = self.RETRY_MIN
        while True:
            if self._closed:
                raise ConnectorError("the connector is closed")
            writer = None
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(encode(Hello(self.version, self.cookie, self.program_name,
                                          self.instance_name)))
                decoder = FrameDecoder()
                replies: list = []
                while not replies:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("closed by the worker during the handshake")
                    replies = decoder.feed(data)
                reply = replies.pop(0)
                if isinstance(reply, Error):
                    writer.close()
                    raise ConnectorError(f"the worker at {self.host}:{self.port} refused the "
                                         f"connection: {reply.message}")
                if not isinstance(reply, Ok):
                    raise ProtocolError(f"expected OK after HELLO, got {type(reply).__name__}")
                return reader, writer, decoder, reply.credits, replies
            except (OSError, ProtocolError) as exc:
                if writer is not None:
                    writer.close()
                log.info("cannot connect to %s:%d (%s); retrying in %.2f s", self.host,
                         self.port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.RETRY_MAX)

    def _attach(self, reader, writer, decoder, credits: int, early: list) -> None:
        self._writer = writer
        self.credits = credits
        self.connected = True
        self.connections += 1
        log.info("connected to %s:%d with %d credits", self.host, self.port, credits)
        for msg in early:
            self._on_message(msg)
        self._pump = asyncio.get_running_loop().create_task(self._write_loop(writer))
        self._pulse.fire()

    def _detach(self) -> None:
        self.connected = False
        self.credits = 0
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        for stream in self._streams.values():
            stream.open = False
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectorError("the connection was lost"))
        self._pulse.fire()

    async def _supervise(self, link: tuple) -> None:
        while True:
            reader, decoder = link[0], link[2]
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    for msg in decoder.feed(data):
                        self._on_message(msg)
            except (OSError, ProtocolError) as exc:
                log.warning("connection to %s:%d broke: %s", self.host, self.port, exc)
            self._detach()
            if self._closed:
                return
            log.warning("connection to %s:%d lost; reconnecting", self.host, self.port)
            try:
                link = await self._dial()
            except ConnectorError as exc:
                log.error("%s", exc)
                return
            self._attach(*link)
            for stream in list(self._streams.values()):
                if stream.wanted:
                    asyncio.get_running_loop().create_task(self._reopen(stream))

    async def _reopen(self, stream: _Stream) -> None:
        delay = self.RETRY_MIN
        while stream.wanted and not self._closed:
            try:
                ack = await self._notify_once(stream, stream.acked if stream.acked >= 0
                                              else NOTHING)
            except ConnectorError:
                return  # lost again: the next connection reopens it
            if ack.ok:
                return
            log.warning("stream %d (%s) is open elsewhere; retrying", stream.id, stream.name)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.RETRY_MAX)

    def _on_message(self, msg) -> None:
        kind = type(msg)
        if kind is Ack:
            self.credits += msg.credits
            for sid, point in msg.acks:
                stream = self._streams.get(sid)
                if stream is not None and point != NOTHING:
                    stream.forget_through(point)
        elif kind is NotifyAck:
            stream = self._streams.get(msg.stream_id)
            if stream is not None and msg.ok:
                self._opened(stream, msg.point_of_ref)
            future = self._waiting.pop(msg.stream_id, None)
            if future is not None and not future.done():
                future.set_result(msg)
        elif kind is Restart:
            self.restarts += 1
            log.warning("the worker asked for a restart%s",
                        f" at {msg.address}" if msg.address else "")
            if msg.address:
                host, _, port = msg.address.rpartition(":")
                self.host, self.port = host or self.host, int(port)
            if self._writer is not None:
                self._writer.close()
        elif kind is Error:
            log.error("the worker gave up on the connection: %s", msg.message)
            if self._writer is not None:
                self._writer.close()
        else:
            log.warning("ignoring an unexpected %s from the worker", kind.__name__.upper())
        self._pulse.fire()

    def _opened(self, stream: _Stream, point: int) -> None:
        stream.open = True
        if point != NOTHING:
            if point < stream.acked:
                log.warning("stream %d: the worker resumes after %d, but messages up to %d "
                            "were acknowledged and are gone", stream.id, point, stream.acked)
            stream.forget_through(point)
        stream.unsent = deque(stream.kept)

    async def _write_loop(self, writer) -> None:
        while True:
            wrote = False
            for stream in list(self._streams.values()):
                while stream.open and stream.unsent and self.credits > 0:
                    frame = stream.kept.get(stream.unsent.popleft())
                    if frame is not None:
                        writer.write(frame)
                        self.credits -= 1
                        wrote = True
            if wrote:
                self._pulse.fire()
                try:
                    await writer.drain()
                except (OSError, RuntimeError):
                    return
            else:
                await self._pulse.wait()

    async def _take_credit(self) -> None:
        while not (self.connected and self.credits > 0):
            if self._closed:
                raise ConnectorError("the connector is closed")
            await self._pulse.wait()
        self.credits -= 1

    async def _notify_once(self, stream: _Stream, point: int) -> NotifyAck:
        await self._take_credit()
        future = asyncio.get_running_loop().create_future()
        self._waiting[stream.id] = future
        self._writer.write(encode(Notify(stream.id, stream.name, point)))
        return await future

    # -- the user's side ---------------------------------------------------------------------

    async def notify(self, stream_id: int, name: str, por: int = NOTHING) -> NotifyAck:
        """Open a stream; the NOTIFY_ACK says whether it is open here (``ok``) and from which
        point of reference to go on (``NOTHING``: from the start)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(stream_id, name)
        stream.name = name
        while True:
            try:
                ack = await self._notify_once(stream, por)
                break
            except ConnectorError:
                if self._closed:
                    raise
        stream.wanted = ack.ok
        if not ack.ok and not stream.kept:
            del self._streams[stream_id]
        return ack

    async def send(self, stream_id: int, message_id: int, payload: bytes,
                   event_time_ms: int = 0, key: bytes | None = None) -> None:
        """Queue a message (kept until acknowledged); waits while ``window`` messages are
        queued and not yet written (no credit, or no connection)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.wanted:
            raise ConnectorError(f"stream {stream_id} is not open (NOTIFY it first)")
        if message_id <= stream.last_id:
            raise ValueError(f"stream {stream_id}: message id {message_id} does not rise "
                             f"above {stream.last_id}")
        stream.kept[message_id] = encode(Message(stream_id, message_id, event_time_ms, key,
                                                 payload))
        stream.last_id = message_id
        stream.unsent.append(message_id)
        self._pulse.fire()
        while len(stream.unsent) >= self.window and not self._closed:
            await self._pulse.wait()
        if self.delay:
            await asyncio.sleep(self.delay)

    def pending(self, stream_id: int) -> int:
        """Messages of the stream kept because they are not acknowledged yet."""
        stream = self._streams.get(stream_id)
        return len(stream.kept) if stream is not None else 0

    def acked(self, stream_id: int) -> int:
        """The highest message id the worker acknowledged for the stream (-1: none)."""
        stream = self._streams.get(stream_id)
        return stream.acked if stream is not None else -1

    async def wait_acked(self, stream_id: int, message_id: int) -> None:
        """Wait until the worker acknowledged the stream up to ``message_id``."""
        while self.acked(stream_id) < message_id:
            if self._closed:
                raise ConnectorError("the connector is closed")
            await self._pulse.wait()

    async def end_of_stream(self, stream_id: int) -> None:
        """Once every queued message of the stream is written, send EOS and forget it."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        while not (self.connected and stream.open and not stream.unsent):
            if self._closed:
                raise ConnectorError("the connector is closed")
            await self._pulse.wait()
        self._writer.write(encode(Eos(stream_id)))
        await self._writer.drain()
        stream.wanted = stream.open = False
        del self._streams[stream_id]

    def close(self) -> None:
        """Drop the connection and stop reconnecting."""
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        self._detach()
