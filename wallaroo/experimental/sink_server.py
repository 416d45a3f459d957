"""A two-phase-commit sink server for ``SinkConnectorConfig``: the output file only ever holds
bytes of committed transactions, in commit order, even if the server is killed and restarted.

Each engine connection says HELLO and NOTIFYs its stream; its MESSAGEs gather in that
connection's open buffer. PHASE1 takes the bytes of the given ranges out of the buffer, logs
them and the vote durably (``TxnLog``), then votes to commit; PHASE2 appends a committed
transaction's bytes to the output file (fsynced) and logs the commit, or discards an aborted
one. LIST_UNCOMMITTED answers the transactions phase-1'd and not yet decided, from the log.

Run it as ``python -m wallaroo.experimental.sink_server --host H --port P --cookie C --out FILE
--log-dir DIR``; it prints ``listening on H:P`` once bound.

Example::

    >>> import asyncio, tempfile, os
    >>> async def demo(tmp):
    ...     server = SinkServer("127.0.0.1", 0, "c", os.path.join(tmp, "out"), tmp)
    ...     await server.start()
    ...     port = server.address[1] > 0
    ...     await server.close()
    ...     return port
    >>> asyncio.run(demo(tempfile.mkdtemp()))
    True
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import struct
import sys
import zlib

from wallaroo.connectors.files import fsync_dir
from wallaroo.connectors.connector_wire import (
    NOTHING, VERSION, Eos, Error, FrameDecoder, Hello, ListUncommitted, Message, Notify,
    NotifyAck, Ok, Phase1, Phase2, ProtocolError, Reply, ReplyUncommitted, WorkersLeft, encode)

log = logging.getLogger("wallaroo.sink_server")

_RECORD = struct.Struct(">II")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_RANGE = struct.Struct(">QQQ")


def _short(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U16.pack(len(raw)) + raw


class _Fields:
    """Reads a log record's fields (a short one raises ValueError)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("record too short")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def short(self) -> str:
        return self.take(_U16.unpack(self.take(2))[0]).decode("utf-8")

    def u64(self) -> int:
        return _U64.unpack(self.take(8))[0]


class TxnLog:
    """The durable state of a sink server: phase-1'd transactions (data and vote), decisions,
    and the committed output file.

    The log (``LOG_DIR/<out file name>.txnlog``) is a list of records ``u32 length | u32
    crc32 | body``: ``B`` (the output file's size when the log began), ``P`` (a phase-1'd
    transaction: id, stream name, ranges, data), ``C`` (committed: id, output size after it)
    and ``A`` (aborted: id). Every append is fsynced. On open, a torn or corrupt tail is cut
    off, and output bytes past the last logged commit (a commit cut short) are truncated, so
    that transaction is in doubt again and a second commit writes it once.

    Example::

        >>> import tempfile, os
        >>> tmp = tempfile.mkdtemp(); out = os.path.join(tmp, "out")
        >>> txns = TxnLog(out, tmp)
        >>> txns.prepare("w:c1", "w", [(1, 0, 3)], b"abc"); txns.in_doubt()
        ['w:c1']
        >>> txns.close(); TxnLog(out, tmp).commit("w:c1"), open(out, "rb").read()
        ('committed', b'abc')
    """

    def __init__(self, out_path: str, log_dir: str):
        os.makedirs(log_dir, exist_ok=True)
        self.out_path = out_path
        self.path = os.path.join(log_dir, os.path.basename(out_path) + ".txnlog")
        #: txn id -> (stream name, ranges, data), in prepare order.
        self.prepared: dict[str, tuple[str, list, bytes]] = {}
        self.committed: set[str] = set()
        #: stream name -> end offset of its last committed range.
        self.committed_end: dict[str, int] = {}
        self.out_end: int | None = None
        new_log = not os.path.exists(self.path)
        self._replay()
        self._log = open(self.path, "ab")
        new_out = not os.path.exists(out_path)
        self._out = open(out_path, "ab")
        if new_log or new_out:
            fsync_dir(os.path.dirname(os.path.abspath(self.path)))
            fsync_dir(os.path.dirname(os.path.abspath(out_path)))
        size = os.fstat(self._out.fileno()).st_size
        if self.out_end is None:
            self.out_end = size
            self._append(b"B" + _U64.pack(size))
        elif size > self.out_end:
            log.warning("%s: dropping %d bytes past the last logged commit (a commit cut short; "
                        "its transaction is in doubt again)", out_path, size - self.out_end)
            self._out.truncate(self.out_end)
            os.fsync(self._out.fileno())
        elif size < self.out_end:
            log.warning("%s is %d bytes shorter than the log says; was it truncated?",
                        out_path, self.out_end - size)
            self.out_end = size

    def _replay(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return
        pos = 0
        while pos + _RECORD.size <= len(data):
            length, crc = _RECORD.unpack_from(data, pos)
            end = pos + _RECORD.size + length
            body = data[pos + _RECORD.size:end]
            if end > len(data) or zlib.crc32(body) != crc:
                break
            try:
                self._apply(body)
            except (ValueError, UnicodeDecodeError, struct.error):
                break
            pos = end
        if pos < len(data):
            log.warning("%s: ignoring a torn or corrupt record at byte %d (%d bytes cut off)",
                        self.path, pos, len(data) - pos)
            with open(self.path, "r+b") as handle:
                handle.truncate(pos)
                os.fsync(handle.fileno())

    def _apply(self, body: bytes) -> None:
        kind, f = body[:1], _Fields(body[1:])
        if kind == b"B":
            self.out_end = f.u64()
        elif kind == b"P":
            txn, stream = f.short(), f.short()
            ranges = [_RANGE.unpack(f.take(24)) for _ in range(_U32.unpack(f.take(4))[0])]
            self.prepared.pop(txn, None)
            self.prepared[txn] = (stream, ranges, body[1 + f.pos:])
        elif kind == b"C":
            txn = f.short()
            self.out_end = f.u64()
            self._committed(txn)
        elif kind == b"A":
            self.prepared.pop(f.short(), None)
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def _committed(self, txn: str) -> None:
        stream, ranges, _ = self.prepared.pop(txn, ("", [], b""))
        self.committed.add(txn)
        if ranges:
            self.committed_end[stream] = max(to for _, _, to in ranges)

    def _append(self, body: bytes) -> None:
        self._log.write(_RECORD.pack(len(body), zlib.crc32(body)) + body)
        self._log.flush()
        os.fsync(self._log.fileno())

    def in_doubt(self) -> list:
        """Transactions phase-1'd and neither committed nor aborted, in prepare order."""
        return list(self.prepared)

    def prepare(self, txn: str, stream: str, ranges: list, data: bytes) -> None:
        """Log a transaction's data and the yes-vote durably."""
        self._append(b"P" + _short(txn) + _short(stream) + _U32.pack(len(ranges))
                     + b"".join(_RANGE.pack(*r) for r in ranges) + data)
        self.prepared.pop(txn, None)
        self.prepared[txn] = (stream, list(ranges), data)

    def commit(self, txn: str) -> str:
        """Append the transaction's bytes to the output (once): 'committed', 'already' or
        'unknown'."""
        if txn in self.committed:
            return "already"
        if txn not in self.prepared:
            return "unknown"
        data = self.prepared[txn][2]
        self._out.write(data)
        self._out.flush()
        os.fsync(self._out.fileno())
        self.out_end += len(data)
        self._append(b"C" + _short(txn) + _U64.pack(self.out_end))
        self._committed(txn)
        return "committed"

    def abort(self, txn: str) -> bool:
        """Forget a phase-1'd transaction; False if it was not in doubt."""
        if txn not in self.prepared:
            return False
        self._append(b"A" + _short(txn))
        del self.prepared[txn]
        return True

    def close(self) -> None:
        """Close the log and output files."""
        self._log.close()
        self._out.close()


class SinkServer:
    """Accepts engine connections and runs their two-phase commits (see the module doc).

    Example::

        >>> SinkServer("127.0.0.1", 0, "c", "out", "logs").address
        ('127.0.0.1', 0)
    """

    def __init__(self, host: str, port: int, cookie: str, out_path: str, log_dir: str):
        self.host, self.cookie = host, cookie
        self.out_path, self.log_dir = out_path, log_dir
        self.address = (host, int(port))
        self.txns: TxnLog | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set = set()

    async def start(self) -> None:
        """Open (and repair) the log and output file, then listen."""
        self.txns = TxnLog(self.out_path, self.log_dir)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _EngineConnection(self), self.address[0], self.address[1],
            reuse_address=True)
        self.address = self._server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        """Stop listening, drop the connections (their open buffers are lost), close files."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self.txns is not None:
            self.txns.close()


class _EngineConnection(asyncio.Protocol):
    """One engine worker's connection: its streams and open (not yet prepared) bytes."""

    def __init__(self, server: SinkServer):
        self.server = server
        self.txns = server.txns
        self.decoder = FrameDecoder()
        self.transport = None
        self.instance = "?"
        self.greeted = False
        self.streams: dict[int, str] = {}
        #: stream id -> [offset of the first byte held, the bytes]
        self.open: dict[int, list] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server._connections.add(self)

    def connection_lost(self, exc) -> None:
        self.server._connections.discard(self)

    def send(self, msg) -> None:
        self.transport.write(encode(msg))

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as exc:
            messages, error = exc.decoded, exc
        else:
            error = None
        try:
            for msg in messages:
                self._handle(msg)
        except ProtocolError as exc:
            error = exc
        if error is not None:
            log.warning("closing the connection of %r: %s", self.instance, error)
            self.send(Error(str(error)))
            self.transport.close()

    def _handle(self, msg) -> None:
        kind = type(msg)
        if kind is Message:
            self._take(msg)
        elif not self.greeted:
            if kind is not Hello:
                raise ProtocolError(f"expected HELLO first, got {kind.__name__.upper()}")
            if msg.version != VERSION:
                raise ProtocolError(f"protocol version {msg.version!r} is not supported "
                                    f"(this server speaks {VERSION!r})")
            if msg.cookie != self.server.cookie:
                raise ProtocolError(f"wrong cookie from {msg.instance_name!r}")
            self.greeted, self.instance = True, msg.instance_name
            log.info("%s/%s connected", msg.program_name, msg.instance_name)
            self.send(Ok(0))
        elif kind is Notify:
            self.streams[msg.stream_id] = msg.stream_name
            point = self.txns.committed_end.get(msg.stream_name, NOTHING)
            self.send(NotifyAck(True, msg.stream_id, point))
        elif kind is ListUncommitted:
            self.send(ReplyUncommitted(msg.rtag, self.txns.in_doubt()))
        elif kind is Phase1:
            self.send(Reply(msg.txn_id, self._prepare(msg)))
        elif kind is Phase2:
            self._decide(msg)
        elif kind is Eos:
            self.streams.pop(msg.stream_id, None)
            self.open.pop(msg.stream_id, None)
        elif kind is WorkersLeft:
            log.info("%r says these workers left: %s", self.instance, ", ".join(msg.workers))
        else:
            raise ProtocolError(f"unexpected {kind.__name__.upper()} from an engine")

    def _take(self, msg: Message) -> None:
        if msg.stream_id not in self.streams:
            raise ProtocolError(f"MESSAGE for stream {msg.stream_id}, which was not NOTIFYed")
        start = msg.message_id - len(msg.payload)
        held = self.open.get(msg.stream_id)
        if held is None or held[0] + len(held[1]) != start:  # first bytes, or a rewind
            self.open[msg.stream_id] = [start, bytearray(msg.payload)]
        else:
            held[1] += msg.payload

    def _prepare(self, msg: Phase1) -> bool:
        txn = msg.txn_id
        if txn in self.txns.committed:
            log.warning("voting no on %s: it is already committed", txn)
            return False
        for sid, frm, to in msg.ranges:
            held = self.open.get(sid, [frm, b""]) if sid in self.streams else None
            if held is None or to < frm or (to > frm and (
                    held[0] != frm or held[0] + len(held[1]) < to)):
                have = (f"bytes {held[0]}-{held[0] + len(held[1])}" if held is not None
                        else "no such stream")
                log.warning("voting no on %s: range %d-%d of stream %d is not what arrived "
                            "(%s)", txn, frm, to, sid, have)
                return False
        parts = []
        for sid, frm, to in msg.ranges:
            if to > frm:
                held = self.open[sid]
                parts.append(bytes(held[1][:to - frm]))
                del held[1][:to - frm]
                held[0] = to
        stream = self.streams.get(msg.ranges[0][0], self.instance) if msg.ranges else self.instance
        self.txns.prepare(txn, stream, msg.ranges, b"".join(parts))
        return True

    def _decide(self, msg: Phase2) -> None:
        if msg.commit:
            outcome = self.txns.commit(msg.txn_id)
            if outcome == "unknown":
                log.warning("asked to commit %s, which was never phase-1'd here", msg.txn_id)
        else:
            self.txns.abort(msg.txn_id)


async def _serve(args) -> None:
    server = SinkServer(args.host, args.port, args.cookie, args.out, args.log_dir)
    await server.start()
    host, port = server.address
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv=None) -> int:
    """Run a sink server until SIGINT/SIGTERM.

    Example::

        >>> main(["--help"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        SystemExit: 0
    """
    parser = argparse.ArgumentParser(prog="python -m wallaroo.experimental.sink_server",
                                     description="A two-phase-commit connector sink server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--cookie", required=True)
    parser.add_argument("--out", required=True, help="the committed output file")
    parser.add_argument("--log-dir", required=True, help="where the transaction log lives")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="sink_server: %(message)s")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
