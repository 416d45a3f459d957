"""The engine side of the connector protocol: a source that external clients feed, and a sink
that hands output to an external two-phase-commit server (frames in ``connector_wire``).

``ConnectorSource`` listens; each client says HELLO, NOTIFYs its streams and sends MESSAGEs
within the credits it was granted. Message ids rise per stream; a message at or below the last
id emitted for its stream is a duplicate (a resend) and is dropped. The source remembers, per
stream, the last id it emitted: that is its checkpointed ``position()``, what NOTIFY_ACK tells
a reconnecting client, and what ACKs tell clients they may forget.

``ConnectorSink`` connects, says HELLO and NOTIFYs stream 1; each value is a MESSAGE whose
id is the byte offset of the stream after it. With resilience the checkpoints drive the
two-phase commit (``prepare``, ``commit``, ``recover``); without, the sink commits what it
sent every second and when flushed.

Example::

    >>> ConnectorSource.replayable, ConnectorSink.transactional
    (True, True)
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from collections import deque

from wallaroo.connectors.base import Sink, Source
from wallaroo.connectors.connector_wire import (
    NOTHING, VERSION, Ack, ConnectorError, Eos, Error, FrameDecoder, Hello, ListUncommitted,
    Message, Notify, NotifyAck, Ok, Phase1, Phase2, ProtocolError, Reply, ReplyUncommitted,
    Restart, encode)

log = logging.getLogger("wallaroo")

#: A MESSAGE frame's fixed part: length, type, stream id, message id, event time, key length.
_MESSAGE_HEAD = struct.Struct(">IBQQqH")


class ConnectorSource(Source):
    """Listens on the config's host:port for connector-protocol clients (see module doc).

    Credits: a client starts with ``max_credits``; each NOTIFY and MESSAGE costs one. Once its
    remaining credit is at most ``refill_credits`` and the back-pressure gate is open, an ACK
    tops it up to ``max_credits``; while the gate is closed no credit is granted and reading
    stops. Without resilience each ACK also carries the stream's last id (and a short while
    after the last message of a burst one follows), so clients can forget what was taken.

    Checkpoints: ``position()``, ``restore(position)`` (before ``start``),
    ``checkpoint_complete(position)`` and ``announce_restart()``.

    Example::

        >>> src = ConnectorSource(None, None)
        >>> src.restore({7: 41}); src.position()
        {7: 41}
    """

    #: With several workers each one accepts connections (local workers share the address).
    spread = "every"
    #: After a rollback clients resend from the restored position.
    replayable = True
    #: Seconds after the last message of a burst before the points are ACKed (no resilience).
    ACK_DELAY = 0.05

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_SourceConnection] = set()
        self._last: dict[int, int] = {}
        self._owner: dict[int, _SourceConnection] = {}
        self._held = False
        self.resilient = bool(getattr(ctx, "resilient", False))
        self.address = (config.host, config.port) if config is not None else ("?", 0)
        #: Messages taken, duplicates dropped, connections closed for breaking the protocol.
        self.received = 0
        self.duplicates = 0
        self.protocol_errors = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.config.host, self.config.port
        try:
            self._server = await loop.create_server(
                lambda: _SourceConnection(self), host, port, reuse_address=True,
                reuse_port=getattr(self.ctx, "reuse_port", False) or None)
        except OSError as exc:
            raise OSError(f"source {self.ctx.name!r} cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}; pick a free port (0 picks one)") from None
        self.address = self._server.sockets[0].getsockname()[:2]
        self.ctx.flow.subscribe(self._pause, self._resume)

    def describe(self) -> str:
        host, port = self.address
        return f"connector://{host}:{port}"

    def progress(self) -> tuple[int, int | None]:
        return (self.received, None)

    def _live(self) -> list:
        return [c for c in self._connections if c.greeted and not c.closed]

    def position(self) -> dict:
        """{stream id: last message id emitted} (a copy; call it between emits).

        Example::

            >>> ConnectorSource(None, None).position()
            {}
        """
        return dict(self._last)

    def restore(self, position: dict | None) -> None:
        """Take up a checkpoint's ``position()``: NOTIFY_ACKs answer from it from now on,
        and duplicates are judged against it. Also ends the hold of ``announce_restart``.

        Example::

            >>> src = ConnectorSource(None, None); src.restore({"3": "9"}); src.position()
            {3: 9}
        """
        self._last = {int(k): int(v) for k, v in (position or {}).items()}
        self._held = False

    def checkpoint_complete(self, position: dict) -> None:
        """ACK (no credits) every live connection's streams that are in ``position``, so
        their clients forget the messages up to those ids.

        Example::

            >>> ConnectorSource(None, None).checkpoint_complete({1: 5})  # no connections
        """
        for conn in self._live():
            entries = [(s, position[s]) for s in sorted(conn.streams) if s in position]
            if entries:
                conn.send(Ack(0, entries))

    def announce_restart(self) -> None:
        """Send RESTART to every live connection and close it. Until ``restore`` is called
        new connections are refused, so a client that comes straight back cannot resume from
        a point the coming rollback undoes.

        Example::

            >>> src = ConnectorSource(None, None); src.announce_restart(); src._held
            True
        """
        self._held = True
        for conn in list(self._connections):
            if not conn.closed:
                conn.send(Restart())
                conn.close()

    def _pause(self) -> None:
        for conn in self._connections:
            conn.transport.pause_reading()

    def _resume(self) -> None:
        for conn in list(self._connections):
            if not conn.closed and not conn.stopping:
                conn.transport.resume_reading()
                conn.maybe_refill()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()


class _SourceConnection(asyncio.Protocol):
    """One client of a ConnectorSource: handshake, streams, credits."""

    def __init__(self, source: ConnectorSource):
        self.source = source
        self.ctx = source.ctx
        self.config = source.config
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.greeted = False
        self.closed = False
        self.stopping = False
        self.credits = 0
        self.streams: set[int] = set()
        self._unacked = False
        self._ack_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if self.source._held:  # a rollback is coming: the client retries later
            self.closed = True
            transport.close()
            return
        self.source._connections.add(self)
        if self.ctx.flow.paused:
            transport.pause_reading()

    def send(self, msg) -> None:
        if not self.closed:
            self.transport.write(encode(msg))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._release()
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        error = None
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            messages, error = exc.decoded, exc
        batch: list = []
        try:
            for msg in messages:
                if self._handle(msg, batch):
                    break
        except ProtocolError as exc:
            error = exc
        if batch:
            self.source.received += len(batch)
            self._unacked = True
            if not self.ctx.emit(batch):  # the run is stopping: take nothing more
                self.stopping = True
                self.transport.pause_reading()
        if error is not None:
            self._fail(str(error))
        elif not self.closed:
            self.maybe_refill()

    def _handle(self, msg, batch: list) -> bool:
        """Take one message; True when the connection ends here."""
        source = self.source
        if type(msg) is Message:
            sid = msg.stream_id
            if sid not in self.streams:
                raise ProtocolError(
                    f"MESSAGE for stream {sid}, which is not open on this connection "
                    f"(NOTIFY it first)" if self.greeted else "expected HELLO first, got MESSAGE")
            self._spend("MESSAGE")
            last = source._last.get(sid)
            if last is not None and msg.message_id <= last:
                source.duplicates += 1
                return False
            source._last[sid] = msg.message_id
            batch.append(msg.payload)
            return False
        kind = type(msg).__name__.upper()
        if not self.greeted:
            if type(msg) is not Hello:
                raise ProtocolError(f"expected HELLO first, got {kind}")
            self._greet(msg)
        elif type(msg) is Notify:
            self._spend("NOTIFY")
            self._notify(msg)
        elif type(msg) is Eos:
            if msg.stream_id in self.streams:
                self.streams.discard(msg.stream_id)
                if source._owner.get(msg.stream_id) is self:
                    del source._owner[msg.stream_id]
        elif type(msg) is Error:
            log.warning("source %r: client %s gave up: %s", self.ctx.name, self.peer, msg.message)
            self.close()
            return True
        else:
            raise ProtocolError(f"unexpected {kind} from a source client")
        return False

    def _greet(self, hello: Hello) -> None:
        if hello.version != VERSION:
            raise ProtocolError(f"protocol version {hello.version!r} is not supported (this "
                                f"worker speaks {VERSION!r})")
        if hello.cookie != self.config.cookie:
            raise ProtocolError(f"wrong cookie from {hello.program_name!r}/"
                                f"{hello.instance_name!r}: it does not match this source's")
        self.greeted = True
        self.credits = self.config.max_credits
        self.send(Ok(self.config.max_credits))

    def _notify(self, msg: Notify) -> None:
        sid = msg.stream_id
        if sid == 0:
            raise ProtocolError("stream 0 is reserved (two-phase commit); use another stream id")
        source = self.source
        point = source._last.get(sid, NOTHING)
        owner = source._owner.get(sid)
        if owner is not None and owner is not self and not owner.closed:
            log.warning("source %r: client %s NOTIFYed stream %d (%r), which is open on "
                        "another connection (%s); refused", self.ctx.name, self.peer, sid,
                        msg.stream_name, owner.peer)
            self.send(NotifyAck(False, sid, point))
            return
        source._owner[sid] = self
        self.streams.add(sid)
        self.send(NotifyAck(True, sid, point))

    def _spend(self, what: str) -> None:
        self.credits -= 1
        if self.credits < 0:
            raise ProtocolError(f"{what} sent without credit (the client spent more than "
                                f"the {self.config.max_credits} credits granted)")

    def _points(self) -> list:
        last = self.source._last
        return [(s, last[s]) for s in sorted(self.streams) if s in last]

    def maybe_refill(self) -> None:
        """Top the client's credit up when it runs low (and the gate is open)."""
        if self.closed or self.stopping or not self.greeted or self.ctx.flow.paused:
            return
        plain = not self.source.resilient
        if self.credits <= self.config.refill_credits:
            grant = self.config.max_credits - self.credits
            self.credits = self.config.max_credits
            self.send(Ack(grant, self._points() if plain else []))
            self._unacked = False
        elif plain and self._unacked and self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                self.source.ACK_DELAY, self._ack_points)

    def _ack_points(self) -> None:
        self._ack_timer = None
        if self._unacked and not self.closed:
            self._unacked = False
            self.send(Ack(0, self._points()))

    def _fail(self, reason: str) -> None:
        self.source.protocol_errors += 1
        log.warning("source %r: closing connection from %s: %s", self.ctx.name, self.peer, reason)
        self.send(Error(reason))
        self.close()

    def _release(self) -> None:
        owner = self.source._owner
        for sid in self.streams:
            if owner.get(sid) is self:
                del owner[sid]
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._release()
        self.source._connections.discard(self)


class ConnectorSink(Sink):
    """Connects to a two-phase-commit sink server and sends every value as a MESSAGE of
    stream 1 (message id = the stream's byte offset after it).

    With resilience (``ctx.resilient``) a checkpoint calls ``prepare`` (PHASE1 over the bytes
    since the last one; a no-vote or a lost connection raises), then ``commit`` (PHASE2), and
    a restore calls ``recover`` (commit the restored checkpoint's transaction if still in
    doubt, abort this worker's others). A lost connection makes the next ``prepare`` fail, so
    the cluster rolls back. Without resilience the sink commits what it sent every second and
    in ``flush``/``close``, reconnects by itself and resends what was not committed.

    Example::

        >>> sink = ConnectorSink(None, None)
        >>> sink.transactional, sink._txn_prefix
        (True, 'worker:')
    """

    transactional = True
    #: Bytes buffered for the socket before the back-pressure gate closes (and reopens).
    HIGH_WATER = 4 * 1024 * 1024
    LOW_WATER = 1024 * 1024
    #: Without resilience: uncommitted bytes kept for a resend before the gate closes.
    KEEP_LIMIT = 16 * 1024 * 1024
    CONNECT_FOR = 10.0
    RETRY_DELAY = 0.25
    REPLY_TIMEOUT = 30.0
    COMMIT_EVERY = 1.0

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.worker = getattr(ctx, "worker_name", "worker")
        self.resilient = bool(getattr(ctx, "resilient", False))
        self._txn_prefix = f"{self.worker}:"
        self._conn: _SinkConnection | None = None
        self._offset = 0          # stream offset after the last value pushed
        self._prepared_to = 0     # end of the last prepared range (resilient)
        self._committed_to = 0    # end of the last committed range (not resilient)
        self._kept: deque = deque()   # not resilient: (end offset, frames) not yet committed
        self._kept_bytes = 0
        self._inflight: list | None = None   # not resilient: [txn, to, phase2 sent]
        self._unconfirmed: dict[str, None] = {}  # txns decided commit, not yet confirmed
        self._broken: str | None = None
        self._round = asyncio.Lock()
        self._rtag = 0
        self._rounds = 0
        self._token = secrets.token_hex(3)
        self._closing = False
        self._blocking = False
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        #: Values dropped while the connection was down (resilient: the rollback resends them).
        self.dropped = 0

    # -- connection ------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def _open(self, give_up_after: float | None) -> tuple:
        """Connect, HELLO, NOTIFY stream 1: (connection, the server's point for the stream)."""
        loop = asyncio.get_running_loop()
        deadline = None if give_up_after is None else loop.time() + give_up_after
        warned = False
        while True:
            try:
                _, conn = await loop.create_connection(
                    lambda: _SinkConnection(self), self.config.host, self.config.port)
                break
            except OSError as exc:
                if deadline is not None and loop.time() >= deadline:
                    raise OSError(
                        f"sink {self.describe()}: cannot connect to {self._where} for "
                        f"{give_up_after:.0f} s ({exc.strerror or exc}); start the sink "
                        f"connector server there first (python -m "
                        f"wallaroo.experimental.sink_server)") from None
                if not warned:
                    log.warning("sink %s: cannot connect (%s); retrying every %d ms",
                                self.describe(), exc.strerror or exc, self.RETRY_DELAY * 1000)
                    warned = True
                if self._closing:
                    raise ConnectorError(f"sink {self.describe()} closed while connecting")
                await asyncio.sleep(self.RETRY_DELAY)
        program = getattr(self.ctx, "app_name", None) or "wallaroo"
        try:
            reply = await conn.request(Hello(VERSION, self.config.cookie, program, self.worker),
                                       ("hello",), self.REPLY_TIMEOUT)
            if isinstance(reply, Error):
                raise ConnectorError(f"sink {self._where} refused the handshake: {reply.message}")
            ack = await conn.request(Notify(1, self.worker, NOTHING), ("notify", 1),
                                     self.REPLY_TIMEOUT)
            if not ack.ok:
                raise ConnectorError(f"sink {self._where} refused stream 1 of {self.worker!r}")
        except BaseException:
            conn.close()
            raise
        if warned:
            log.warning("sink %s: connected", self.describe())
        return conn, ack.point_of_ref

    async def _list(self, conn) -> list:
        """LIST_UNCOMMITTED and its reply: everything sent before has reached the server."""
        self._rtag += 1
        return await conn.request(ListUncommitted(self._rtag), ("list", self._rtag),
                                  self.REPLY_TIMEOUT)

    async def start(self) -> None:
        if self.resilient:
            if self._conn is None:  # ``recover`` may have connected already
                self._attach((await self._open(self.CONNECT_FOR))[0])
            return
        conn, point = await self._open(self.CONNECT_FOR)
        self._attach(conn)
        self._offset = self._committed_to = 0 if point == NOTHING else point
        async with self._round:  # transactions an earlier run voted for and did not finish
            for txn in await self._list(conn):
                if txn.startswith(self._txn_prefix + "f"):
                    log.warning("sink %s: committing %s, left in doubt by an earlier run",
                                self.describe(), txn)
                    conn.send(Phase2(txn, True))
        self._wake = asyncio.Event()
        self._spawn(self._commit_loop())

    def _spawn(self, coro) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    def _attach(self, conn) -> None:
        self._conn = conn
        conn.transport.set_write_buffer_limits(high=self.HIGH_WATER, low=self.LOW_WATER)

    def _on_lost(self, conn, exc) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        if self._closing:
            return
        why = f"the connection to {self._where} was lost ({exc or 'closed by the server'})"
        if self.resilient:
            self._broken = why
            log.warning("sink %s: %s; the next checkpoint fails and the cluster rolls back",
                        self.describe(), why)
        else:
            log.warning("sink %s: %s; reconnecting", self.describe(), why)
            self._spawn(self._reconnect())
        self._pressure()

    async def _reconnect(self) -> None:
        try:
            conn, _ = await self._open(None)
        except ConnectorError:
            return
        async with self._round:
            try:
                in_doubt = await self._list(conn)
            except ConnectorError:
                return  # lost again: connection_lost starts another attempt
            for txn in in_doubt:
                if txn in self._unconfirmed or (self._inflight and txn == self._inflight[0]):
                    conn.send(Phase2(txn, True))
            self._unconfirmed.clear()
            if self._inflight is not None:
                txn, to, phase2_sent = self._inflight
                if phase2_sent or txn in in_doubt:
                    self._trim(to)
                self._inflight = None
            for _, frames in self._kept:
                conn.transport.write(frames)
            self._attach(conn)
            self._pressure()

    # -- output --------------------------------------------------------------------------

    def push(self, batch) -> None:
        parts = []
        offset = self._offset
        pack = _MESSAGE_HEAD.pack
        for value in batch.values:
            if isinstance(value, str):
                value = value.encode("utf-8")
            offset += len(value)
            parts.append(pack(27 + len(value), 5, 1, offset, 0, 0))
            parts.append(value)
        self._offset = offset
        frames = b"".join(parts)
        conn = self._conn
        if not self.resilient:
            self._kept.append((offset, frames))
            self._kept_bytes += len(frames)
            if self._kept_bytes > self.KEEP_LIMIT // 2 and self._wake is not None:
                self._wake.set()
        elif conn is None:
            self.dropped += len(batch.values)
        if conn is not None:
            conn.transport.write(frames)
        if not self.resilient and (conn is None or self._kept_bytes > self.KEEP_LIMIT):
            self._pressure()

    def _pressure(self) -> None:
        conn = self._conn
        full = (conn is not None and conn.write_paused) or self._kept_bytes > self.KEEP_LIMIT
        if full and not self._blocking:
            self._blocking = True
            self.ctx.flow.block(self)
        elif not full and self._blocking:
            self._blocking = False
            self.ctx.flow.unblock(self)

    def _trim(self, to: int) -> None:
        self._committed_to = max(self._committed_to, to)
        kept = self._kept
        while kept and kept[0][0] <= to:
            self._kept_bytes -= len(kept.popleft()[1])

    # -- without resilience: commit every second -------------------------------------------

    async def _commit_loop(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.COMMIT_EVERY)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._conn is None:
                continue
            try:
                await self._commit_round()
            except (ConnectorError, asyncio.TimeoutError) as exc:
                log.warning("sink %s: commit failed (%s); retrying", self.describe(), exc)

    async def _commit_round(self) -> bool:
        """PHASE1 + PHASE2 over everything sent and not committed; True once committed."""
        async with self._round:
            conn = self._conn
            if conn is None:
                return False
            frm, to = self._committed_to, self._offset
            if to == frm:
                return True
            self._rounds += 1
            txn = f"{self.worker}:f{self._token}-{self._rounds}"
            self._inflight = [txn, to, False]
            if not await conn.request(Phase1(txn, [(1, frm, to)]), ("reply", txn),
                                      self.REPLY_TIMEOUT):
                self._inflight = None
                conn.send(Phase2(txn, False))
                log.error("sink %s voted to abort %s (bytes %d-%d); reconnecting to resend "
                          "them (see the sink server's log for why)", self.describe(), txn,
                          frm, to)
                conn.close()
                return False
            conn.send(Phase2(txn, True))
            self._inflight[2] = True
            await self._list(conn)
            self._inflight = None
            self._trim(to)
            self._pressure()
            return True

    async def flush(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._flush(), timeout)
            return True
        except asyncio.TimeoutError:
            why = f"not confirmed within {timeout:.0f} s"
        except ConnectorError as exc:
            why = f"not confirmed: {exc}"
        left = self._offset - (self._prepared_to if self.resilient else self._committed_to)
        log.error("sink %s: output %s; %d bytes in doubt (is the sink server running?)",
                  self.describe(), why, left)
        return False

    async def _flush(self) -> None:
        while True:
            if self._conn is None:
                if self.resilient:
                    raise ConnectorError(self._broken or "not connected")
                await asyncio.sleep(0.02)
                continue
            if self.resilient:
                async with self._round:
                    await self._list(self._conn)
                return
            if await self._commit_round() and self._committed_to == self._offset:
                return

    async def close(self) -> None:
        if not self.resilient and self._conn is not None and self._committed_to != self._offset:
            await self.flush(5.0)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, ConnectorError):
                pass
        if self._conn is not None:
            self._conn.close()
        if self._blocking:
            self._blocking = False
            self.ctx.flow.unblock(self)

    # -- with resilience: the checkpoint's two-phase commit ----------------------------------

    async def prepare(self, checkpoint_id) -> dict:
        """PHASE1 over the bytes since the last prepare; the record to keep in the checkpoint.

        Raises ConnectorError when the sink votes no or the connection is (or was) lost.
        """
        async with self._round:
            # The token keeps ids unique across runs that share a sink server (a fresh run
            # counts checkpoints from 1 again); recovery matches the record's id exactly.
            txn = f"{self.worker}:c{checkpoint_id}.{self._token}"
            if self._broken is not None or self._conn is None:
                raise ConnectorError(f"sink {self._where}: "
                                     f"{self._broken or 'not connected'}; {txn} cannot hold "
                                     f"this worker's output since the last checkpoint")
            frm, to = self._prepared_to, self._offset
            try:
                vote = await self._conn.request(Phase1(txn, [(1, frm, to)]), ("reply", txn),
                                                self.REPLY_TIMEOUT)
            except asyncio.TimeoutError:
                raise ConnectorError(f"sink {self._where} did not answer PHASE1 of {txn} "
                                     f"within {self.REPLY_TIMEOUT:.0f} s") from None
            if not vote:
                raise ConnectorError(f"sink {self._where} voted to abort {txn} (bytes {frm}-{to}"
                                     f"); see the sink server's log for why")
            self._prepared_to = to
            return {"txn": txn, "ranges": [(1, frm, to)], "commit_also": list(self._unconfirmed)}

    async def commit(self, checkpoint_id, record: dict) -> None:
        """PHASE2 commit of the record's transaction; returns once the server has it (if the
        connection is lost first, ``recover`` commits it)."""
        txn = record["txn"]
        self._unconfirmed[txn] = None
        await self._decide(txn, True)

    async def abort(self, checkpoint_id, record: dict) -> None:
        """PHASE2 abort of the record's transaction (a checkpoint that failed elsewhere)."""
        await self._decide(record["txn"], False)

    async def _decide(self, txn: str, commit: bool) -> None:
        async with self._round:
            conn = self._conn
            if conn is None:
                log.warning("sink %s: not connected; %s stays in doubt until recovery",
                            self.describe(), txn)
                return
            conn.send(Phase2(txn, commit))
            try:
                await self._list(conn)
            except (ConnectorError, asyncio.TimeoutError) as exc:
                log.warning("sink %s: %s not confirmed (%s); recovery settles it",
                            self.describe(), txn, exc)
                return
            self._unconfirmed.pop(txn, None)

    async def recover(self, checkpoint_id, record: dict | None) -> None:
        """Settle this worker's in-doubt transactions after a restore: commit the restored
        checkpoint's (and any decided ones), abort the others; the stream goes on from the
        record's offset (0 for a fresh start)."""
        async with self._round:
            if self._conn is None:
                conn, _ = await self._open(self.CONNECT_FOR)
                self._attach(conn)
            conn = self._conn
            keep = set(self._unconfirmed)
            if record is not None:
                keep.add(record["txn"])
                keep.update(record.get("commit_also", ()))
            for txn in await self._list(conn):
                if txn.startswith(self._txn_prefix):
                    commit = txn in keep
                    log.info("sink %s: %s in-doubt %s", self.describe(),
                             "committing" if commit else "aborting", txn)
                    conn.send(Phase2(txn, commit))
            await self._list(conn)
            self._unconfirmed.clear()
            end = record["ranges"][-1][2] if record is not None and record["ranges"] else 0
            self._offset = self._prepared_to = end
            self._broken = None


class _SinkConnection(asyncio.Protocol):
    """The connection of a ConnectorSink: requests wait for their replies."""

    def __init__(self, sink: ConnectorSink):
        self.sink = sink
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[tuple, asyncio.Future] = {}
        self.write_paused = False
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, msg) -> None:
        if not self.closed:
            self.transport.write(encode(msg))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    async def request(self, msg, key: tuple, timeout: float):
        if self.closed:
            raise ConnectorError(f"the connection to {self.sink._where} is closed")
        future = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        self.send(msg)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.waiting.pop(key, None)

    def _answer(self, key: tuple, value) -> None:
        future = self.waiting.get(key)
        if future is not None and not future.done():
            future.set_result(value)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            messages = exc.decoded
            self._fail(ConnectorError(f"sink {self.sink._where} broke the protocol: {exc}"))
        for msg in messages:
            kind = type(msg)
            if kind is Reply:
                self._answer(("reply", msg.txn_id), msg.commit)
            elif kind is ReplyUncommitted:
                self._answer(("list", msg.rtag), list(msg.txn_ids))
            elif kind is NotifyAck:
                self._answer(("notify", msg.stream_id), msg)
            elif kind is Ok or (kind is Error and ("hello",) in self.waiting):
                self._answer(("hello",), msg)
            elif kind is Error:
                self._fail(ConnectorError(f"sink {self.sink._where} sent ERROR: {msg.message}"))
            elif kind is Restart:
                log.warning("sink %s: the server asked for a restart", self.sink.describe())
                self._fail(ConnectorError(f"sink {self.sink._where} asked for a restart"))

    def _fail(self, exc: ConnectorError) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)
        self.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.sink._pressure()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.sink._pressure()

    def connection_lost(self, exc) -> None:
        self.closed = True
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectorError(
                    f"the connection to {self.sink._where} was lost"
                    + (f" ({exc})" if exc else "")))
        self.sink._on_lost(self, exc)
