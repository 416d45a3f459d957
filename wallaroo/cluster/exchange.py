"""Exchanges: batches on their way to the worker that owns their key groups, and the links that
carry them (shared-memory rings between local workers, TCP between hosts).

An :class:`Exchange` stands where the plan has an exchange edge. It splits each batch by key
group (``route``, in Cython): the part this worker owns goes straight on to the next chain; each
other part is serialized (``encode_batch``) into a *record* and sent over the link to its
owner, which decodes it and pushes it into the same chain of its own (the exchange's number
names the chain). Watermarks reach every worker.

Credit-based flow control: a link takes every record it is given (nothing is ever dropped), but
once its peer has not taken what was sent (the ring is full, or the socket's buffer is over its
high-water mark) it closes this worker's source gate (``flow``) until the peer catches up. A
worker whose *sinks* cannot keep up also stops taking records from its links (``intake``), so
a slow sink pushes back on every worker, all the way to the sources.

Example::

    >>> from wallaroo._core.chain import WATERMARK_NONE, Batch
    >>> class Keep:
    ...     def __init__(self): self.got = []
    ...     def push(self, batch): self.got.extend(batch.values)
    ...     def send(self, record): self.got.append(decode_record(record)[1].values)
    >>> local, link = Keep(), Keep()
    >>> ex = Exchange(7, Direct(local), RoutingTable([0, 1]), 0, [None, link], counters=Counters())
    >>> ex.push(Batch(["a", "b"], keys=["a", "b"], groups=[0, 1]))
    >>> local.got, link.got
    (['a'], [['b']])
    >>> decode_record(encode_record(7, Batch([1])))[0]
    7
    >>> words = ["a", "b"]
    >>> decode_record(encode_record(0, Batch(words, keys=words, groups=[1, 2])))[1].keys
    ['a', 'b']
"""
from __future__ import annotations

import asyncio
import logging
import struct

from wallaroo._core.chain import WATERMARK_NONE, Batch
from wallaroo._core.frames import FrameError, FrameReader
from wallaroo._core.routing import RoutingTable, route, same_objects
from wallaroo._core.serde import decode_batch, encode_batch

log = logging.getLogger("wallaroo")

_RECORD_HEAD = struct.Struct(">IB")    # the exchange's number and flags, then the batch
_KEYS_ARE_VALUES = 1                   # flag: the batch's keys are its values (sent once)
_FRAGMENT_MORE = b"\x01"               # a ring record that is part of a longer one
_FRAGMENT_LAST = b"\x00"


class Counters:
    """Records this worker sent to and took from other workers: the coordinator ends a run
    once every worker's input is done and the totals match twice in a row.

    Example::

        >>> c = Counters(); c.sent += 2; c.received += 2; c.snapshot()
        {'sent': 2, 'received': 2}
    """

    def __init__(self):
        self.sent = 0
        self.received = 0
        #: Messages in those records (for metrics; the probe compares records).
        self.messages_sent = 0
        self.messages_received = 0

    def snapshot(self) -> dict:
        """Both totals, as this worker answers the coordinator's probe."""
        return {"sent": self.sent, "received": self.received}


def encode_record(exchange_id: int, batch: Batch, serialize=None) -> bytes:
    """A record: the exchange's number and the batch's bytes (see wallaroo._core.serde).
    Keys that are the values themselves (a word keyed by itself) are not written twice.

    Example::

        >>> words = ["to", "be"]
        >>> record = encode_record(3, Batch(words, keys=words, groups=[5, 9]))
        >>> exchange_id, batch = decode_record(record)
        >>> exchange_id, batch.values, batch.keys is batch.values
        (3, ['to', 'be'], True)
    """
    if batch.keys is not None and same_objects(batch.keys, batch.values):
        batch = Batch(batch.values, None, batch.key, batch.groups, batch.group, batch.ingest_ns,
                      batch.event_times, batch.origin, batch.watermark)
        return _RECORD_HEAD.pack(exchange_id, _KEYS_ARE_VALUES) + encode_batch(batch, serialize)
    return _RECORD_HEAD.pack(exchange_id, 0) + encode_batch(batch, serialize)


def decode_record(record, deserialize=None) -> tuple[int, Batch]:
    """(exchange number, batch) of a record; ValueError if it is not one.

    Example::

        >>> decode_record(encode_record(2, Batch([1, 2])))[1].values
        [1, 2]
        >>> decode_record(b"\\x00\\x01")
        Traceback (most recent call last):
        ...
        ValueError: a record of 2 bytes is too short
    """
    if len(record) < _RECORD_HEAD.size:
        raise ValueError(f"a record of {len(record)} bytes is too short")
    view = memoryview(record)
    exchange_id, flags = _RECORD_HEAD.unpack_from(view)
    batch = decode_batch(view[_RECORD_HEAD.size:], deserialize)
    if flags & _KEYS_ARE_VALUES:
        batch.keys = batch.values
    return exchange_id, batch


class WatermarkAligner:
    """Stands after an exchange, before the chain it leads to, on the way to a window: it
    takes each batch with the worker it came from, and lets a watermark through only as far as
    every worker that forwards that origin has gone.

    A source instance's watermark reaches a window through each worker once an earlier exchange
    has spread its messages over all of them; the worker that forwarded it first must not
    make the window fire before the others' messages of the same origin arrive. ``senders_of
    (origin)`` names the workers that forward an origin here (one, when no exchange lies
    between that origin and this one).

    Example::

        >>> class Keep:
        ...     sees_watermarks = True
        ...     def __init__(self): self.marks = []
        ...     def push(self, batch): self.marks.append(batch.watermark)
        >>> keep = Keep()
        >>> aligner = WatermarkAligner(keep, lambda origin: (0, 1))
        >>> aligner.push_from(0, Batch([], origin=7, watermark=50))    # worker 1: not heard yet
        >>> aligner.push_from(1, Batch([], origin=7, watermark=30))
        >>> aligner.push_from(1, Batch([], origin=7, watermark=80))
        >>> keep.marks
        [30, 50]
    """

    def __init__(self, target, senders_of):
        self.target = target
        self.senders_of = senders_of
        self.sees_watermarks = True
        self._marks: dict[object, dict[int, int]] = {}

    def push_from(self, sender: int, batch: Batch) -> None:
        """Pass ``batch``, which came from worker ``sender``, on to the target, its watermark
        lowered to the lowest that every sender of its origin has reached; a batch that holds
        no message is dropped while some sender has sent no watermark of that origin yet."""
        mark = batch.watermark
        if mark != WATERMARK_NONE and batch.origin is not None:
            senders = self.senders_of(batch.origin)
            if len(senders) > 1:
                seen = self._marks.setdefault(batch.origin, {})
                if mark > seen.get(sender, WATERMARK_NONE):
                    seen[sender] = mark
                aligned = min(seen.get(s, WATERMARK_NONE) for s in senders)
                if aligned != mark:
                    if not batch.values and aligned == WATERMARK_NONE:
                        return
                    batch = Batch(batch.values, batch.keys, batch.key, batch.groups, batch.group,
                                  batch.ingest_ns, batch.event_times, batch.origin, aligned)
        self.target.push(batch)


class Direct:
    """Stands after an exchange that needs no aligning: passes batches straight on.

    Example::

        >>> class Show:
        ...     def push(self, batch): print(batch.values)
        >>> Direct(Show()).push_from(1, Batch(["from worker 1"]))
        ['from worker 1']
    """

    def __init__(self, target):
        self.target = target
        self.sees_watermarks = bool(getattr(target, "sees_watermarks", False))

    def push_from(self, sender: int, batch: Batch) -> None:
        """Pass ``batch`` on to the target, whichever worker ``sender`` it came from."""
        self.target.push(batch)


class Exchange:
    """Routes batches by key group: this worker's part to ``local`` (a WatermarkAligner or a
    Direct in front of a chain: ``push_from(worker, batch)``), every other worker's part over
    ``links[index]`` (``send(record)``). Parts that hold no message go only where watermarks
    matter.

    Remote parts are sent before the local part runs, so the other workers work meanwhile.

    Example (worker 1 of 2; key groups 0 and 2 are its own, group 1 is worker 0's)::

        >>> class Keep:
        ...     def __init__(self): self.got = []
        ...     def push(self, batch): self.got.extend(batch.values)
        ...     def send(self, record): self.got.extend(decode_record(record)[1].values)
        >>> here, to_worker_0 = Keep(), Keep()
        >>> ex = Exchange(1, Direct(here), RoutingTable([1, 0, 1]), 1, [to_worker_0, None],
        ...               Counters())
        >>> ex.push(Batch(["x", "y", "z"], keys=["x", "y", "z"], groups=[0, 1, 2]))
        >>> here.got, to_worker_0.got, ex.counters.sent
        (['x', 'z'], ['y'], 1)
    """

    def __init__(self, exchange_id: int, local, table: RoutingTable, me: int, links: list,
                 counters: Counters, serialize=None):
        self.exchange_id = exchange_id
        self.local = local
        self.table = table
        self.me = me
        self.links = links
        self.counters = counters
        self.serialize = serialize
        #: Watermark-only batches matter when the chain after this exchange uses them.
        self.sees_watermarks = bool(getattr(local, "sees_watermarks", False))

    def push(self, batch: Batch) -> None:
        """Split ``batch`` by the worker that owns each message's key group: send every other
        worker's part as a record over its link (counted in ``counters.sent``), then run this
        worker's own part."""
        parts = route(batch, self.table)
        wanted = self.sees_watermarks
        for index, part in enumerate(parts):
            if part is not None and index != self.me and (wanted or part.values):
                self.links[index].send(encode_record(self.exchange_id, part, self.serialize))
                self.counters.sent += 1
                self.counters.messages_sent += len(part.values)
        mine = parts[self.me]
        if mine is not None and (mine.values or wanted):
            self.local.push_from(self.me, mine)


class RingLink:
    """The link to a worker on this machine: records go into a shared-memory ring
    (wallaroo.runtime.rings); a record longer than the ring's largest goes in fragments.

    ``flow`` is the source gate it closes while the ring has no room (its credit is spent).

    Example (a ring whose records hold 3 bytes, and that is full)::

        >>> from types import SimpleNamespace
        >>> from wallaroo.runtime.flow import FlowControl
        >>> class FullRing:
        ...     ring = SimpleNamespace(max_record=4)
        ...     def send(self, payload): print(bytes(payload)); return False
        >>> flow = FlowControl()
        >>> link = RingLink(FullRing(), flow, "worker-1")
        >>> link.send(b"hello")
        b'\\x01hel'
        b'\\x00lo'
        >>> flow.paused
        True
        >>> link.writer.on_drained(); flow.paused      # the peer has taken what was sent
        False
    """

    def __init__(self, writer, flow, peer: str):
        self.writer = writer
        self.flow = flow
        self.peer = peer
        self.limit = writer.ring.max_record - 1
        writer.on_drained = self._drained

    def send(self, record: bytes) -> None:
        """Put ``record`` into the ring (in fragments if it is longer than the ring's largest
        record); if the ring has no room for all of it, the rest waits in order and the
        source gate stays closed until the ring drains."""
        view = memoryview(record)
        accepted = True
        while len(view) > self.limit:
            accepted &= self.writer.send(_FRAGMENT_MORE + view[:self.limit])
            view = view[self.limit:]
        accepted &= self.writer.send(_FRAGMENT_LAST + view)
        if not accepted:
            self.flow.block(self)

    def _drained(self) -> None:
        self.flow.unblock(self)

    def close(self) -> None:
        """Stop writing into the ring (records still waiting for room are dropped)."""
        self.writer.close()


class RingIntake:
    """Takes records from a local worker's ring (joining fragments) and hands each to
    ``deliver(record)``; stops taking them while the ``intake`` gate is closed.

    ``reader_factory(on_record)`` makes the ring's RingReader (wallaroo.runtime.rings).

    Example (both ends of one ring on one loop)::

        >>> import asyncio, os
        >>> from wallaroo.runtime.flow import FlowControl
        >>> from wallaroo.runtime.rings import Ring, RingReader, RingWriter, make_ring_pair
        >>> async def through_a_ring():
        ...     ring, data_fd, space_fd = make_ring_pair(4096)
        ...     got = []
        ...     intake = RingIntake(lambda on_record: RingReader(ring, data_fd, space_fd,
        ...                                                      on_record),
        ...                         got.append, FlowControl())
        ...     writer = RingWriter(Ring.attach(os.dup(ring.fd)), data_fd, space_fd)
        ...     link = RingLink(writer, FlowControl(), "worker-1")
        ...     intake.start()
        ...     link.send(b"x" * 10_000)           # longer than a ring record: in fragments
        ...     while not got:
        ...         await asyncio.sleep(0)
        ...     intake.close(); link.close()
        ...     os.close(data_fd); os.close(space_fd); ring.close(); writer.ring.close()
        ...     return [len(record) for record in got]
        >>> asyncio.run(through_a_ring())
        [10000]
    """

    def __init__(self, reader_factory, deliver, intake):
        self._parts: list[bytes] = []
        self.deliver = deliver
        self.reader = reader_factory(self._on_ring_record)
        intake.subscribe(self.reader.pause, self.reader.resume)

    def start(self) -> None:
        """Start taking records from the ring."""
        self.reader.start()

    def _on_ring_record(self, data: bytes) -> None:
        if data[:1] == _FRAGMENT_MORE:
            self._parts.append(data[1:])
            return
        if self._parts:
            self._parts.append(data[1:])
            record, self._parts = b"".join(self._parts), []
        else:
            record = data[1:]
        self.deliver(record)

    def close(self) -> None:
        """Stop taking records from the ring."""
        self.reader.close()


class TcpLink(asyncio.Protocol):
    """The link to a worker on another host: length-framed records over one TCP connection,
    both ways. Over ``HIGH_WATER`` bytes unsent closes the source gate until the peer reads;
    a closed ``intake`` gate stops reading, so TCP pushes back on the peer.

    ``on_lost(peer)`` (an attribute) is called when the connection ends, unless ``close()``
    was called first.

    Example (with a stand-in for the socket's transport)::

        >>> from wallaroo.runtime.flow import FlowControl
        >>> class Transport:
        ...     def set_write_buffer_limits(self, high, low): pass
        ...     def pause_reading(self): print("pause reading")
        ...     def resume_reading(self): print("resume reading")
        ...     def write(self, data): print(data)
        ...     def close(self): pass
        >>> flow, intake = FlowControl(), FlowControl()
        >>> link = TcpLink(flow, intake, print, "w1")
        >>> link.connection_made(Transport())
        >>> link.send(b"hi")
        b'\\x00\\x00\\x00\\x02hi'
        >>> link.data_received(b"\\x00\\x00\\x00\\x03abc")    # a record from w1
        b'abc'
        >>> intake.block("sink")                           # a slow sink: stop reading
        pause reading
        >>> link.pause_writing(); flow.paused              # w1 does not read: stop sources
        True
    """

    HIGH_WATER = 8 * 1024 * 1024
    LOW_WATER = 2 * 1024 * 1024

    def __init__(self, flow, intake, deliver, peer: str):
        self.flow = flow
        self.intake = intake
        self.deliver = deliver
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(4, ">I")
        self.closing = False
        self.on_lost = lambda peer: None

    def connection_made(self, transport) -> None:
        """Take ``transport`` over: set its buffer limits and let the intake gate pause and
        resume its reading (paused at once if the gate is closed)."""
        self.transport = transport
        transport.set_write_buffer_limits(high=self.HIGH_WATER, low=self.LOW_WATER)
        self.intake.subscribe(transport.pause_reading, transport.resume_reading)
        if self.intake.paused:
            transport.pause_reading()

    def send(self, record: bytes) -> None:
        """Write ``record`` behind its u32 big-endian length; never refused (see
        ``pause_writing``)."""
        self.transport.write(struct.pack(">I", len(record)) + record)

    def pause_writing(self) -> None:
        """The socket's buffer is over ``HIGH_WATER``: close the source gate."""
        self.flow.block(self)

    def resume_writing(self) -> None:
        """The socket's buffer is under ``LOW_WATER`` again: release the source gate."""
        self.flow.unblock(self)

    def data_received(self, data: bytes) -> None:
        """Hand each complete record in ``data`` (and what came before it) to ``deliver``; a
        bad frame closes the connection."""
        try:
            records = self.reader.feed(data)
        except FrameError as exc:
            log.error("link to %s: bad frame (%s); closing it", self.peer, exc)
            self.transport.close()
            return
        for record in records:
            self.deliver(record)

    def connection_lost(self, exc) -> None:
        """Release the source gate, and call ``on_lost(peer)`` unless ``close()`` was
        called."""
        self.flow.unblock(self)
        if not self.closing:
            self.on_lost(self.peer)

    def close(self) -> None:
        """Close the connection on purpose (``on_lost`` is not called)."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()
