"""Shared-memory rings on an asyncio loop: the wake-ups and the credit between a producer
process and a consumer process.

A :class:`~wallaroo._core.ring.Ring` carries records one way without system calls; this module
adds the sleeping and waking. Each direction has two eventfds: ``data`` (producer to consumer:
"records available") and ``space`` (consumer to producer: "room freed"). A side signals only
when the other has raised its waiting flag in the ring, so a busy pair makes no system calls.

- :class:`RingWriter` (producer): ``send(payload)`` returns False when the ring is full: the
  payload is kept in order and written later, and the owner should stop producing until
  ``on_drained`` (or ``await writer.drain()``). That is the credit: the ring's free room.
- :class:`RingReader` (consumer): calls ``on_record(bytes)`` for each record, a budget at a
  time so other callbacks get their turn; ``pause()`` leaves records in the ring, so the
  producer runs out of credit (back-pressure).

Across processes, the supervisor makes the three fds and hands them to the child, which
attaches::

    ring, data_fd, space_fd = make_ring_pair(1 << 20)
    child = subprocess.Popen(
        [sys.executable, "-m", "my_worker", str(ring.fd), str(data_fd), str(space_fd)],
        pass_fds=(ring.fd, data_fd, space_fd))
    reader = RingReader(ring, data_fd, space_fd, on_record)   # the child writes, we read
    reader.start()

    # in the child (my_worker), on its own loop:
    fd, data_fd, space_fd = map(int, sys.argv[1:4])
    writer = RingWriter(Ring.attach(fd), data_fd, space_fd)

Example (both sides on one loop, for brevity)::

    >>> import asyncio, os
    >>> async def main():
    ...     ring, data_fd, space_fd = make_ring_pair(4096)
    ...     got = []
    ...     reader = RingReader(ring, data_fd, space_fd, got.append)
    ...     writer = RingWriter(Ring.attach(os.dup(ring.fd)), data_fd, space_fd)
    ...     reader.start()
    ...     refused = 0
    ...     for i in range(1000):
    ...         if not writer.send(b"%04d" % i * 25):     # 100 bytes: about 39 fit
    ...             refused += 1
    ...             await writer.drain()                  # wait for credit
    ...     while len(got) < 1000:
    ...         await asyncio.sleep(0)
    ...     reader.close(); writer.close()
    ...     for fd in (data_fd, space_fd):
    ...         os.close(fd)
    ...     ring.close(); writer.ring.close()
    ...     return refused > 0, got == [b"%04d" % i * 25 for i in range(1000)]
    >>> asyncio.run(main())
    (True, True)
"""
from __future__ import annotations

import asyncio
import os
from collections import deque
from typing import Callable

from wallaroo._core.ring import Ring

__all__ = ["Ring", "RingReader", "RingWriter", "make_ring_pair"]


def make_ring_pair(capacity: int) -> tuple[Ring, int, int]:
    """One direction: a new ring of ``capacity`` bytes (see ``Ring.create``) and its two
    eventfds, ``data_fd`` and ``space_fd`` (non-blocking, close-on-exec: ``pass_fds`` hands
    them to a child). The caller owns the eventfds and closes them; ``ring.close()`` closes the
    ring's own fd.

    Example::

        >>> ring, data_fd, space_fd = make_ring_pair(10_000)
        >>> ring.capacity, len({ring.fd, data_fd, space_fd})
        (16384, 3)
        >>> ring.close(); os.close(data_fd); os.close(space_fd)
    """
    ring = Ring.create(capacity)
    try:
        data_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            space_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            os.close(data_fd)
            raise
    except BaseException:
        ring.close()
        raise
    return ring, data_fd, space_fd


def _signal(fd: int) -> None:
    """Bump an eventfd (its counter cannot overflow in practice: the reader resets it)."""
    os.eventfd_write(fd, 1)


def _clear(fd: int) -> None:
    """Reset an eventfd; a spurious wake-up finds it at zero already."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


def _nothing() -> None:
    pass


def _reraise(exc: BaseException) -> None:
    raise exc


def _loop_of(loop: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop | None:
    if loop is not None:
        return loop
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None     # resolved when first needed, which must be on a running loop


class RingWriter:
    """The producer's side of a ring: ``send`` records, with credit.

    ``send(payload)`` writes at once when nothing is pending and the ring has room, and returns
    True. Otherwise it keeps the payload (a copy) in ``pending``, behind any earlier ones, and
    returns False: no credit, stop producing. The writer then sleeps on ``space_fd``; as the
    consumer frees room it writes out what is pending, oldest first, and when nothing is left
    it calls ``on_drained()`` (an attribute: set it; the default does nothing) and wakes those
    awaiting ``drain()``. A payload is never lost or reordered, even if the owner keeps
    sending while blocked (``pending`` then grows without bound: respect the credit).

    The consumer is woken (``data_fd``) only when it said it sleeps (``consumer_waiting``).
    ``close()`` stops listening on ``space_fd``; what is still pending then is dropped (see
    ``pending_bytes``). The ring and the fds stay the caller's to close.

    Example::

        >>> import asyncio
        >>> async def main():
        ...     ring, data_fd, space_fd = make_ring_pair(4096)
        ...     writer = RingWriter(ring, data_fd, space_fd)
        ...     sent = [writer.send(bytes(1000)) for _ in range(5)]
        ...     state = (writer.blocked, writer.pending_bytes, ring.producer_waiting)
        ...     ring.read_many(4)                   # what a consumer does
        ...     os.eventfd_write(space_fd, 1)       # and how it wakes the producer
        ...     await writer.drain()
        ...     writer.close(); ring.close(); os.close(data_fd); os.close(space_fd)
        ...     return sent, state, writer.blocked
        >>> asyncio.run(main())
        ([True, True, True, True, False], (True, 1000, True), False)
    """

    def __init__(self, ring: Ring, data_fd: int, space_fd: int,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.ring = ring
        self.data_fd = data_fd
        self.space_fd = space_fd
        self._loop = _loop_of(loop)
        self.pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._listening = False
        self._closed = False
        self._waiters: list[asyncio.Future] = []
        self.on_drained: Callable[[], None] = _nothing

    @property
    def blocked(self) -> bool:
        """True while payloads wait in ``pending`` (the owner has no credit)."""
        return bool(self.pending)

    @property
    def pending_bytes(self) -> int:
        """The payload bytes waiting in ``pending``."""
        return self._pending_bytes

    def send(self, payload) -> bool:
        """Send one record (any bytes-like object); True when it is in the ring, False when it
        was kept in ``pending`` (stop producing until ``on_drained``). A payload longer than
        ``ring.max_record`` raises ValueError, and nothing is kept."""
        if self._closed:
            raise ValueError("the ring writer is closed")
        ring = self.ring
        if not self.pending:
            if ring.write(payload):
                if ring.consumer_waiting:
                    _signal(self.data_fd)
                return True
        data = payload if type(payload) is bytes else memoryview(payload).tobytes()
        if len(data) > ring.max_record:
            raise ValueError(f"a record of {len(data)} bytes exceeds this ring's max_record of "
                             f"{ring.max_record} bytes (capacity {ring.capacity})")
        self.pending.append(data)
        self._pending_bytes += len(data)
        if self._listening:
            return False
        # Blocked just now: raise the flag, then look again, as the consumer may have freed
        # room before it could see the flag (and so will not signal).
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        ring.producer_waiting = True
        self._loop.add_reader(self.space_fd, self._on_space)
        self._listening = True
        if self._write_pending():
            self._stop_listening()
            return True
        return False

    async def drain(self) -> None:
        """Return at once when nothing is pending, else once all of it is in the ring."""
        if not self.pending:
            return
        if self._closed:
            raise ValueError("the ring writer is closed")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def close(self) -> None:
        """Stop listening for room; pending payloads are dropped. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._stop_listening()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ValueError("the ring writer was closed before draining"))
        self._waiters.clear()

    def _on_space(self) -> None:
        _clear(self.space_fd)       # before writing: a signal that comes later is kept
        if self._write_pending():
            self._stop_listening()
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self.on_drained()

    def _write_pending(self) -> bool:
        """Write what pending fits, oldest first; True when nothing is left."""
        ring, pending = self.ring, self.pending
        wrote = False
        while pending:
            data = pending[0]
            if not ring.write(data):
                break
            pending.popleft()
            self._pending_bytes -= len(data)
            wrote = True
        if wrote and ring.consumer_waiting:
            _signal(self.data_fd)
        return not pending

    def _stop_listening(self) -> None:
        if self._listening:
            self._listening = False
            self._loop.remove_reader(self.space_fd)
            if not self.ring.closed:
                self.ring.producer_waiting = False


class RingReader:
    """The consumer's side of a ring: calls ``on_record(bytes)`` for each record, in order.

    ``start()`` listens on ``data_fd`` and drains what is there. Each drain delivers at most
    ``budget`` records, then, if there may be more, goes on in a later callback
    (``loop.call_soon``) so that other sockets get their turn. After taking records out it
    wakes the producer (``space_fd``) if it waits for room. When the ring is empty it raises
    ``consumer_waiting`` and looks once more before sleeping, so no wake-up is lost.

    ``pause()`` stops delivering (records stay in the ring, so the producer runs out of credit:
    back-pressure); ``resume()`` starts again, in a callback soon after. Both may be called
    from ``on_record``: a pause there takes effect before the next record.

    When ``on_record`` raises (an Exception), the record counts as consumed and
    ``on_error(exc)`` is called (an attribute: set it; the default re-raises, so the exception
    reaches the loop's exception handler, or the caller of ``start``). Either way delivery goes
    on with the next record, in a callback soon after if ``on_error`` raised.

    ``close()`` stops listening; records not delivered yet are left behind. The ring and the
    fds stay the caller's to close.

    Example::

        >>> import asyncio
        >>> async def main():
        ...     ring, data_fd, space_fd = make_ring_pair(4096)
        ...     got = []
        ...     reader = RingReader(ring, data_fd, space_fd, got.append, budget=2)
        ...     for i in range(5):
        ...         ring.write(b"%d" % i)           # what a producer does
        ...     reader.start()                      # delivers a budget's worth at once
        ...     first = list(got)
        ...     await asyncio.sleep(0.01)
        ...     reader.close(); ring.close(); os.close(data_fd); os.close(space_fd)
        ...     return first, got
        >>> asyncio.run(main())
        ([b'0', b'1'], [b'0', b'1', b'2', b'3', b'4'])
    """

    def __init__(self, ring: Ring, data_fd: int, space_fd: int,
                 on_record: Callable[[bytes], object],
                 loop: asyncio.AbstractEventLoop | None = None, budget: int = 256):
        if budget < 1:
            raise ValueError(f"the budget must be at least 1 record, not {budget}")
        self.ring = ring
        self.data_fd = data_fd
        self.space_fd = space_fd
        self.on_record = on_record
        self.on_error: Callable[[Exception], object] = _reraise
        self.budget = budget
        self._loop = _loop_of(loop)
        self._held: deque[bytes] = deque()   # taken out of the ring, not delivered yet
        self._started = False
        self._running = False
        self._closed = False
        self._soon: asyncio.Handle | None = None

    @property
    def paused(self) -> bool:
        """True when not delivering (not started yet, paused, or closed)."""
        return not self._running

    def start(self) -> None:
        """Listen on ``data_fd`` and deliver what the ring holds now (up to a budget)."""
        if self._closed:
            raise ValueError("the ring reader is closed")
        if self._started:
            raise RuntimeError("the ring reader was started already")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._started = True
        self._running = True
        self._loop.add_reader(self.data_fd, self._on_data)
        self._drain()

    def pause(self) -> None:
        """Stop delivering; records stay in the ring. Pausing again does nothing."""
        if not self._running:
            return
        self._running = False
        self._loop.remove_reader(self.data_fd)
        self._cancel_soon()
        if not self.ring.closed:
            self.ring.consumer_waiting = False  # asleep on purpose: no need to wake us

    def resume(self) -> None:
        """Deliver again (from a callback soon after). Resuming a running reader does
        nothing."""
        if self._closed:
            raise ValueError("the ring reader is closed")
        if not self._started:
            raise RuntimeError("the ring reader was not started")
        if self._running:
            return
        self._running = True
        self._loop.add_reader(self.data_fd, self._on_data)
        self._schedule()

    def close(self) -> None:
        """Stop listening for good. Closing again does nothing."""
        if self._closed:
            return
        self.pause()
        self._closed = True
        self._held.clear()

    def _cancel_soon(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None

    def _on_data(self) -> None:
        _clear(self.data_fd)
        if self._running:
            self.ring.consumer_waiting = False   # awake: no signals while we drain
            self._drain()

    def _drain(self) -> None:
        self._cancel_soon()
        ring, held = self.ring, self._held
        left = self.budget
        while self._running:
            if left == 0:
                self._schedule()            # there may be more: let others run first
                return
            if not held:
                records = ring.read_many(left)
                if not records:
                    ring.consumer_waiting = True
                    if not ring.used:
                        return              # asleep: the producer signals data_fd
                    ring.consumer_waiting = False
                    continue
                if ring.producer_waiting:
                    _signal(self.space_fd)
                held.extend(records)
            record = held.popleft()
            left -= 1
            try:
                self.on_record(record)
            except Exception as exc:
                self._schedule()            # if on_error raises, go on from a callback
                self.on_error(exc)
                self._cancel_soon()         # it did not: go on here

    def _schedule(self) -> None:
        if self._running and self._soon is None:
            self._soon = self._loop.call_soon(self._drain)
