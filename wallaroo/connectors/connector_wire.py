"""Frames of the connector protocol, for the engine and the client library alike.

TCP, big-endian. A frame is ``u32 length | u8 type | body`` (the length counts the type byte
and the body); a string is ``u16 length | bytes`` (UTF-8).

=====  ==============  =================================================================
type   message         body
=====  ==============  =================================================================
0      HELLO           version, cookie, program name, instance name (strings)
1      OK              u32 credits
2      ERROR           message (string)
3      NOTIFY          u64 stream id, stream name (string), u64 point of reference
4      NOTIFY_ACK      u8 ok, u64 stream id, u64 point of reference
5      MESSAGE         u64 stream id, u64 message id, i64 event time ms,
                       key (u16 length | bytes; empty = none), payload (rest of the frame)
6      ACK             u32 credits, u32 n, n x (u64 stream id, u64 point of reference)
7      RESTART         optional new address (string); an empty body means none
8      EOS             u64 stream id
=====  ==============  =================================================================

A point of reference of ``2**64 - 1`` (``NOTHING``) means "nothing yet".

The two-phase commit of a sink connector travels inside **stream 0**, as in the original:
each is a MESSAGE (stream 0, message id 0, event time 0, no key) whose payload is
``u8 type | body``. Stream 0 is reserved for it; ``FrameDecoder`` turns such MESSAGEs into the
objects below.

=====  ==================  ============================================================
type   message             payload body
=====  ==================  ============================================================
201    LIST_UNCOMMITTED    u64 request tag
202    REPLY_UNCOMMITTED   u64 request tag, u32 n, n x txn id (string)
203    PHASE1              txn id (string), u32 n, n x (u64 stream id, u64 from, u64 to)
204    REPLY               txn id (string), u8 commit vote
205    PHASE2              txn id (string), u8 commit
206    WORKERS_LEFT        u64 request tag, u32 n, n x worker name (string)
=====  ==================  ============================================================

Example::

    >>> decoder = FrameDecoder()
    >>> decoder.feed(encode(Notify(7, "lines", NOTHING)) + encode(Eos(7))[:3])
    [Notify(stream_id=7, stream_name='lines', point_of_ref=18446744073709551615)]
    >>> decoder.feed(encode(Eos(7))[3:])
    [Eos(stream_id=7)]
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

#: The protocol version this engine speaks.
VERSION = "v0.0.1"
#: The point of reference that means "nothing processed yet".
NOTHING = 2 ** 64 - 1
#: Largest frame accepted (type byte and body).
MAX_FRAME = 64 * 1024 * 1024

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">IB")
_MSG_HEAD = struct.Struct(">QQqH")
_ACK_ENTRY = struct.Struct(">QQ")
_RANGE = struct.Struct(">QQQ")


class ConnectorError(Exception):
    """A connector could not do its work (refused, lost, voted against a commit).

    Example::

        >>> str(ConnectorError("sink voted to abort"))
        'sink voted to abort'
    """


class ProtocolError(ConnectorError):
    """A frame broke the protocol; the message says what was wrong. ``decoded`` holds the
    messages cut from the same input before the bad frame.

    Example::

        >>> FrameDecoder().feed(b"\\x00\\x00\\x00\\x01\\x63")
        Traceback (most recent call last):
        ...
        wallaroo.connectors.connector_wire.ProtocolError: unknown frame type 99
    """

    def __init__(self, message: str, decoded: list | None = None):
        super().__init__(message)
        self.decoded = decoded or []


@dataclass
class Hello:
    """HELLO (0): the client's version, cookie, program and instance name.

    Example::

        >>> decode_frame(encode(Hello("v0.0.1", "c", "p", "i"))[4:]).cookie
        'c'
    """

    version: str
    cookie: str
    program_name: str
    instance_name: str


@dataclass
class Ok:
    """OK (1): the handshake succeeded; the client starts with ``credits``.

    Example::

        >>> decode_frame(encode(Ok(10))[4:])
        Ok(credits=10)
    """

    credits: int


@dataclass
class Error:
    """ERROR (2): the sender gives up on the connection, saying why.

    Example::

        >>> decode_frame(encode(Error("bad cookie"))[4:]).message
        'bad cookie'
    """

    message: str


@dataclass
class Notify:
    """NOTIFY (3): the client opens a stream, with the point it believes was reached.

    Example::

        >>> decode_frame(encode(Notify(1, "s", 5))[4:]).point_of_ref
        5
    """

    stream_id: int
    stream_name: str
    point_of_ref: int = NOTHING


@dataclass
class NotifyAck:
    """NOTIFY_ACK (4): whether the stream is open here, and from where to resume.

    Example::

        >>> decode_frame(encode(NotifyAck(True, 1, 9))[4:])
        NotifyAck(ok=True, stream_id=1, point_of_ref=9)
    """

    ok: bool
    stream_id: int
    point_of_ref: int


@dataclass
class Message:
    """MESSAGE (5): one payload of a stream; ``key`` None means no key.

    Example::

        >>> decode_frame(encode(Message(3, 1, 0, None, b"hi"))[4:])
        Message(stream_id=3, message_id=1, event_time_ms=0, key=None, payload=b'hi')
    """

    stream_id: int
    message_id: int
    event_time_ms: int
    key: bytes | None
    payload: bytes


@dataclass
class Ack:
    """ACK (6): more credits, and for each stream the point up to which messages are safe.

    Example::

        >>> decode_frame(encode(Ack(5, [(1, 10)]))[4:])
        Ack(credits=5, acks=[(1, 10)])
    """

    credits: int
    acks: list = field(default_factory=list)


@dataclass
class Restart:
    """RESTART (7): reconnect (to ``address`` "host:port" when given).

    Example::

        >>> decode_frame(encode(Restart())[4:]), decode_frame(encode(Restart("h:1"))[4:])
        (Restart(address=None), Restart(address='h:1'))
    """

    address: str | None = None


@dataclass
class Eos:
    """EOS (8): the client ends a stream (it may NOTIFY it again later).

    Example::

        >>> decode_frame(encode(Eos(4))[4:])
        Eos(stream_id=4)
    """

    stream_id: int


@dataclass
class ListUncommitted:
    """LIST_UNCOMMITTED (201, in stream 0): which transactions are in doubt?

    Example::

        >>> FrameDecoder().feed(encode(ListUncommitted(3)))
        [ListUncommitted(rtag=3)]
    """

    rtag: int = 0


@dataclass
class ReplyUncommitted:
    """REPLY_UNCOMMITTED (202, in stream 0): the txn ids phase-1'd but not yet decided.

    Example::

        >>> FrameDecoder().feed(encode(ReplyUncommitted(3, ["w:c1"])))
        [ReplyUncommitted(rtag=3, txn_ids=['w:c1'])]
    """

    rtag: int
    txn_ids: list


@dataclass
class Phase1:
    """PHASE1 (203, in stream 0): prepare ``txn_id`` over ``ranges`` of (stream, from, to).

    Example::

        >>> FrameDecoder().feed(encode(Phase1("w:c1", [(1, 0, 10)])))[0].ranges
        [(1, 0, 10)]
    """

    txn_id: str
    ranges: list


@dataclass
class Reply:
    """REPLY (204, in stream 0): the vote on a PHASE1 (True = commit).

    Example::

        >>> FrameDecoder().feed(encode(Reply("w:c1", True)))
        [Reply(txn_id='w:c1', commit=True)]
    """

    txn_id: str
    commit: bool


@dataclass
class Phase2:
    """PHASE2 (205, in stream 0): commit (True) or abort (False) a prepared transaction.

    Example::

        >>> FrameDecoder().feed(encode(Phase2("w:c1", False)))
        [Phase2(txn_id='w:c1', commit=False)]
    """

    txn_id: str
    commit: bool


@dataclass
class WorkersLeft:
    """WORKERS_LEFT (206, in stream 0): these workers left the cluster.

    Example::

        >>> FrameDecoder().feed(encode(WorkersLeft(1, ["w2"])))
        [WorkersLeft(rtag=1, workers=['w2'])]
    """

    rtag: int
    workers: list


TYPES = {Hello: 0, Ok: 1, Error: 2, Notify: 3, NotifyAck: 4, Message: 5, Ack: 6, Restart: 7,
         Eos: 8}
TWO_PC_TYPES = {ListUncommitted: 201, ReplyUncommitted: 202, Phase1: 203, Reply: 204,
                Phase2: 205, WorkersLeft: 206}


def _string(value: str | bytes, what: str) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(raw) > 0xFFFF:
        raise ValueError(f"{what} is {len(raw)} bytes; the protocol allows at most 65535")
    return _U16.pack(len(raw)) + raw


def _body(msg) -> bytes:
    kind = type(msg)
    if kind is Message:
        key = msg.key or b""
        if len(key) > 0xFFFF:
            raise ValueError(f"a message key is at most 65535 bytes, not {len(key)}")
        return (_MSG_HEAD.pack(msg.stream_id, msg.message_id, msg.event_time_ms, len(key))
                + key + bytes(msg.payload))
    if kind is Hello:
        return b"".join(_string(getattr(msg, name), name) for name in
                        ("version", "cookie", "program_name", "instance_name"))
    if kind is Ok:
        return _U32.pack(msg.credits)
    if kind is Error:
        return _string(msg.message, "error message")
    if kind is Notify:
        return (_U64.pack(msg.stream_id) + _string(msg.stream_name, "stream name")
                + _U64.pack(msg.point_of_ref))
    if kind is NotifyAck:
        return _U8.pack(1 if msg.ok else 0) + _U64.pack(msg.stream_id) + _U64.pack(msg.point_of_ref)
    if kind is Ack:
        return (_U32.pack(msg.credits) + _U32.pack(len(msg.acks))
                + b"".join(_ACK_ENTRY.pack(s, p) for s, p in msg.acks))
    if kind is Restart:
        return _string(msg.address, "address") if msg.address else b""
    if kind is Eos:
        return _U64.pack(msg.stream_id)
    raise TypeError(f"cannot encode {msg!r}: not a connector protocol message")


def _two_pc_body(msg) -> bytes:
    kind = type(msg)
    if kind is ListUncommitted:
        return _U64.pack(msg.rtag)
    if kind is ReplyUncommitted:
        return (_U64.pack(msg.rtag) + _U32.pack(len(msg.txn_ids))
                + b"".join(_string(t, "txn id") for t in msg.txn_ids))
    if kind is Phase1:
        return (_string(msg.txn_id, "txn id") + _U32.pack(len(msg.ranges))
                + b"".join(_RANGE.pack(*r) for r in msg.ranges))
    if kind in (Reply, Phase2):
        return _string(msg.txn_id, "txn id") + _U8.pack(1 if msg.commit else 0)
    return (_U64.pack(msg.rtag) + _U32.pack(len(msg.workers))
            + b"".join(_string(w, "worker name") for w in msg.workers))


def encode(msg) -> bytes:
    """The frame of ``msg`` (two-phase commit messages go inside a stream-0 MESSAGE).

    Example::

        >>> encode(Eos(1)).hex()
        '00000009080000000000000001'
    """
    two_pc = TWO_PC_TYPES.get(type(msg))
    if two_pc is not None:
        msg = Message(0, 0, 0, None, _U8.pack(two_pc) + _two_pc_body(msg))
    body = _body(msg)
    return _HEAD.pack(len(body) + 1, TYPES[type(msg)]) + body


class _Reader:
    """Reads fields off one frame body; running short is a ProtocolError naming the field."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str):
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field_name: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError(f"{self.what} frame too short: no room for its {field_name} "
                                f"({len(self.data)} bytes)")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u32(self, name: str) -> int:
        return _U32.unpack(self.take(4, name))[0]

    def u64(self, name: str) -> int:
        return _U64.unpack(self.take(8, name))[0]

    def string(self, name: str) -> str:
        raw = self.take(_U16.unpack(self.take(2, name + " length"))[0], name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{self.what} frame: {name} is not UTF-8: {raw[:40]!r}") from None

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.what} frame has {len(self.data) - self.pos} bytes "
                                f"after its last field")


def _decode_two_pc(payload: bytes):
    if not payload:
        raise ProtocolError("stream 0 (two-phase commit) MESSAGE with an empty payload")
    kind = payload[0]
    names = {v: k.__name__ for k, v in TWO_PC_TYPES.items()}
    if kind not in names:
        raise ProtocolError(f"stream 0 (two-phase commit) MESSAGE of unknown type {kind}")
    r = _Reader(payload[1:], names[kind])
    if kind == 201:
        msg = ListUncommitted(r.u64("request tag"))
    elif kind == 202:
        rtag = r.u64("request tag")
        msg = ReplyUncommitted(rtag, [r.string("txn id") for _ in range(r.u32("count"))])
    elif kind == 203:
        txn = r.string("txn id")
        msg = Phase1(txn, [_RANGE.unpack(r.take(24, "range")) for _ in range(r.u32("count"))])
    elif kind in (204, 205):
        txn = r.string("txn id")
        msg = (Reply if kind == 204 else Phase2)(txn, bool(r.u8("commit flag")))
    else:
        rtag = r.u64("request tag")
        msg = WorkersLeft(rtag, [r.string("worker name") for _ in range(r.u32("count"))])
    r.done()
    return msg


def decode_frame(frame: bytes):
    """The message of one frame without its length field (``u8 type | body``).

    Example::

        >>> decode_frame(b"\\x08" + bytes(7))
        Traceback (most recent call last):
        ...
        wallaroo.connectors.connector_wire.ProtocolError: Eos frame too short: no room for its stream id (7 bytes)
    """
    kind = frame[0]
    body = frame[1:]
    if kind == 5:
        if len(body) < 26:
            raise ProtocolError(f"Message frame too short: {len(body)} bytes, the header "
                                f"alone takes 26")
        stream, mid, when, key_len = _MSG_HEAD.unpack_from(body)
        if 26 + key_len > len(body):
            raise ProtocolError(f"Message frame too short for its {key_len}-byte key")
        key = body[26:26 + key_len] if key_len else None
        payload = body[26 + key_len:]
        if stream == 0:
            return _decode_two_pc(payload)
        return Message(stream, mid, when, key, payload)
    if kind == 0:
        r = _Reader(body, "Hello")
        msg = Hello(r.string("version"), r.string("cookie"), r.string("program name"),
                    r.string("instance name"))
    elif kind == 1:
        r = _Reader(body, "Ok")
        msg = Ok(r.u32("credits"))
    elif kind == 2:
        r = _Reader(body, "Error")
        msg = Error(r.string("message"))
    elif kind == 3:
        r = _Reader(body, "Notify")
        msg = Notify(r.u64("stream id"), r.string("stream name"), r.u64("point of reference"))
    elif kind == 4:
        r = _Reader(body, "NotifyAck")
        msg = NotifyAck(bool(r.u8("ok flag")), r.u64("stream id"), r.u64("point of reference"))
    elif kind == 6:
        r = _Reader(body, "Ack")
        credits = r.u32("credits")
        msg = Ack(credits, [_ACK_ENTRY.unpack(r.take(16, "ack entry"))
                            for _ in range(r.u32("count"))])
    elif kind == 7:
        r = _Reader(body, "Restart")
        msg = Restart((r.string("address") or None) if body else None)
    elif kind == 8:
        r = _Reader(body, "Eos")
        msg = Eos(r.u64("stream id"))
    else:
        raise ProtocolError(f"unknown frame type {kind}")
    r.done()
    return msg


class FrameDecoder:
    """Cuts a byte stream into messages; ``feed`` returns those completed by the new bytes.

    A bad frame raises ``ProtocolError`` (with the messages before it in ``decoded``); the
    decoder is then unusable, as the connection should be.

    Example::

        >>> FrameDecoder(max_frame=16).feed(b"\\x00\\x01\\x00\\x00")
        Traceback (most recent call last):
        ...
        wallaroo.connectors.connector_wire.ProtocolError: frame of 65536 bytes is over the limit of 16 bytes
    """

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list:
        """Add ``data``; return the messages of every frame now complete, in order."""
        buf = self._buffer
        buf += data
        out: list = []
        pos = 0
        size = len(buf)
        try:
            while size - pos >= 4:
                (length,) = _U32.unpack_from(buf, pos)
                if length == 0:
                    raise ProtocolError("empty frame (length 0, no type byte)")
                if length > self.max_frame:
                    raise ProtocolError(f"frame of {length} bytes is over the limit of "
                                        f"{self.max_frame} bytes")
                end = pos + 4 + length
                if end > size:
                    break
                out.append(decode_frame(bytes(buf[pos + 4:end])))
                pos = end
        except ProtocolError as exc:
            exc.decoded = out
            raise
        finally:
            if pos:
                del buf[:pos]
        return out

    def pending(self) -> int:
        """Bytes of an unfinished frame held back.

        Example::

            >>> d = FrameDecoder(); d.feed(b"\\x00\\x00"); d.pending()
            []
            2
        """
        return len(self._buffer)
