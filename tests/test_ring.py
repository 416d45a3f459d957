"""Tests of the shared-memory ring (wallaroo._core.ring) and its asyncio glue
(wallaroo.runtime.rings).

The ring's expectations come from a plain-Python model of its layout (8-byte aligned records
behind a 4-byte length, a wrap gap when a record does not fit before the end); the
cross-process tests run a real child process on the other side of the ring.
"""
from __future__ import annotations

import array
import asyncio
import doctest
import os
import random
import socket
import struct
import subprocess
import sys

import pytest

import wallaroo._core.ring as ring_module
from wallaroo._core.ring import HEADER_SIZE, Ring
from wallaroo.runtime.rings import RingReader, RingWriter, make_ring_pair


def test_ring_module_examples_hold():
    result = doctest.testmod(ring_module)
    assert result.attempted > 0
    assert result.failed == 0


# ------------------------------------------------------------------------------------------
# helpers


class Model:
    """What the ring should hold: head and tail counters, and the records in it with the bytes
    each takes (length prefix, payload, padding, and the wrap gap before it if any)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.head = self.tail = 0
        self.records: list[tuple[bytes, int]] = []

    def write(self, payload: bytes) -> bool:
        size = (4 + len(payload) + 7) // 8 * 8
        to_end = self.capacity - self.head % self.capacity
        need = size if size <= to_end else to_end + size
        if self.head - self.tail + need > self.capacity:
            return False
        self.head += need
        self.records.append((payload, need))
        return True

    def read(self) -> bytes | None:
        if not self.records:
            return None
        payload, need = self.records.pop(0)
        self.tail += need
        return payload

    @property
    def used(self) -> int:
        return self.head - self.tail


@pytest.fixture
def pair():
    """A ring with its eventfds, all closed in teardown."""
    made = []

    def make(capacity=4096):
        made.append(make_ring_pair(capacity))
        return made[-1]

    yield make
    for ring, data_fd, space_fd in made:
        ring.close()
        os.close(data_fd)
        os.close(space_fd)


def run(coro, timeout=15.0):
    """Run ``coro`` on a fresh loop, failing (not hanging) if it takes over ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(condition, timeout=5.0):
    """Let the loop run until ``condition()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def turns(n=5):
    """Let the loop run a few iterations (delivering whatever is due)."""
    for _ in range(n):
        await asyncio.sleep(0)


# ------------------------------------------------------------------------------------------
# Ring: creation and attachment


def test_capacity_rounds_up_to_a_power_of_two_from_4096():
    for requested, expected in [(1, 4096), (4096, 4096), (4097, 8192), (100_000, 131072)]:
        with Ring.create(requested) as ring:
            assert ring.capacity == expected
            assert ring.max_record == expected // 2 - 4
            assert (ring.used, ring.free) == (0, expected)
            assert os.fstat(ring.fd).st_size == HEADER_SIZE + expected


def test_capacity_limits():
    with Ring.create(2 ** 30) as ring:          # the memory is only reserved
        assert ring.capacity == 2 ** 30
    for bad in (2 ** 30 + 1, 2 ** 40):
        with pytest.raises(ValueError, match="at most 1 GiB"):
            Ring.create(bad)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="must be positive"):
            Ring.create(bad)
    with pytest.raises(TypeError):
        Ring.create(4096.0)
    with pytest.raises(TypeError, match="Ring.create"):
        Ring()


def test_attach_on_a_duplicate_fd_shares_the_ring():
    ring = Ring.create(4096)
    other = Ring.attach(os.dup(ring.fd))
    assert other.fd != ring.fd and other.capacity == ring.capacity
    assert ring.write(b"one") and ring.write(b"two")
    assert other.used == ring.used == 16
    assert other.read() == b"one"
    assert ring.used == 8
    other.producer_waiting = True
    assert ring.producer_waiting and not ring.consumer_waiting
    ring.consumer_waiting = True
    assert other.consumer_waiting
    other.close()                               # the first mapping is unaffected
    assert ring.read_many(5) == [b"two"]
    ring.close()


@pytest.mark.parametrize("kind", ["pipe", "socket", "empty file", "small file", "zeros",
                                  "huge file", "directory"])
def test_attach_refuses_what_is_not_a_ring(kind, tmp_path):
    opened = []
    if kind == "pipe":
        r, w = os.pipe()
        opened += [r, w]
        fd, message = r, "not a memfd or regular file"
    elif kind == "socket":
        a, b = socket.socketpair()
        opened += [a.detach(), b.detach()]
        fd, message = opened[0], "not a memfd or regular file"
    elif kind == "directory":
        fd, message = os.open(tmp_path, os.O_RDONLY), "not a memfd or regular file"
        opened.append(fd)
    else:
        fd = os.memfd_create("not-a-ring")
        opened.append(fd)
        size, message = {
            "empty file": (0, "holds 0 bytes, fewer than the smallest ring"),
            "small file": (HEADER_SIZE + 100, "fewer than the smallest ring"),
            "zeros": (HEADER_SIZE + 4096, "magic number"),
            "huge file": (HEADER_SIZE + 2 ** 31, "more than the largest ring"),
        }[kind]
        os.ftruncate(fd, size)
    try:
        with pytest.raises(ValueError, match=f"fd {fd} is not a ring: .*{message}"):
            Ring.attach(fd)
        os.fstat(fd)                            # still open: a failed attach leaves it
    finally:
        for each in opened:
            os.close(each)


def test_attach_checks_the_header():
    with Ring.create(8192) as ring:
        dup = os.dup(ring.fd)
        try:
            os.pwrite(dup, struct.pack("<Q", 4096), 16)         # capacity: not the size
            with pytest.raises(ValueError, match="capacity of 4096 bytes"):
                Ring.attach(dup)
            os.pwrite(dup, struct.pack("<Q", 8192), 16)
            os.pwrite(dup, struct.pack("<I", 99), 8)            # layout version
            with pytest.raises(ValueError, match="another layout .version 99"):
                Ring.attach(dup)
            os.pwrite(dup, struct.pack("<I", 1), 8)
            Ring.attach(dup).close()                            # repaired: attaches
        finally:
            try:
                os.close(dup)
            except OSError:
                pass                                            # closed by the Ring


def test_attach_on_a_closed_fd_is_an_os_error():
    fd = os.memfd_create("gone")
    os.close(fd)
    with pytest.raises(OSError):
        Ring.attach(fd)


def test_close_is_idempotent_and_closes_the_fd():
    ring = Ring.create(4096)
    fd = ring.fd
    ring.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    ring.close()
    assert ring.closed and ring.fd == -1 and ring.capacity == 4096
    assert repr(ring) == "<Ring (closed)>"
    for op in (lambda: ring.write(b"x"), ring.read, lambda: ring.read_many(1),
               lambda: ring.used, lambda: ring.consumer_waiting,
               lambda: setattr(ring, "producer_waiting", True)):
        with pytest.raises(ValueError, match="closed"):
            op()


# ------------------------------------------------------------------------------------------
# Ring: records


def test_wrap_around_keeps_every_record_through_a_small_ring():
    """Several million bytes of odd-sized records through a 4096-byte ring, in bursts of
    writes until full and reads of random counts; the ring agrees with the model on every
    write's outcome and on the bytes used, and every record comes out intact, in order."""
    rng = random.Random(7)
    ring = Ring.create(4096)
    model = Model(4096)
    passed = refused = wraps = 0
    seq = 0
    while passed < 6_000_000:
        for _ in range(rng.randrange(1, 40)):
            size = rng.choice([rng.randrange(0, 40), rng.randrange(0, ring.max_record + 1)])
            payload = (seq.to_bytes(4, "little") + rng.randbytes(max(size - 4, 0)))[:size]
            pos_before = model.head % 4096
            expected = model.write(payload)
            assert ring.write(payload) is expected
            if not expected:
                refused += 1
                break
            wraps += model.head % 4096 < pos_before
            seq += 1
            assert ring.used == model.used
        for _ in range(rng.randrange(0, 30)):
            got = ring.read() if rng.random() < 0.5 else (ring.read_many(1) or [None])[0]
            assert got == model.read()
            if got is not None:
                passed += len(got)
            assert ring.used == model.used
    assert ring.read_many(10_000) == [payload for payload, _ in model.records]
    assert ring.used == 0 and ring.read() is None
    assert seq > 10_000 and refused > 1000 and wraps > 1000
    ring.close()


def test_a_full_ring_refuses_and_writes_nothing():
    ring = Ring.create(4096)
    record = bytes(range(250)) * 4                  # 1000 bytes: 1008 in the ring
    assert [ring.write(record) for _ in range(4)] == [True] * 4
    assert ring.used == 4032
    assert ring.write(b"x" * 60)                    # 64 bytes: exactly full
    assert ring.used == 4096 and ring.free == 0
    assert not ring.write(b"")
    assert not ring.write(record)
    assert ring.used == 4096
    assert ring.read() == record
    assert not ring.write(record + bytes(5))        # 1008 free, 1016 needed
    assert ring.write(record)
    assert ring.read_many(10) == [record] * 3 + [b"x" * 60, record]
    assert ring.read() is None
    ring.close()


def test_a_record_that_must_wrap_needs_the_gap_too():
    ring = Ring.create(4096)
    assert ring.write(bytes(1000)) and ring.write(bytes(1000)) and ring.write(bytes(1500))
    assert ring.read_many(2) == [bytes(1000)] * 2       # head at 3520: 576 bytes to the end
    assert ring.free == 2592
    assert not ring.write(bytes(2044))      # 2048 bytes, but 576 (gap) + 2048 do not fit
    assert ring.used == 1504
    assert ring.read() == bytes(1500)
    assert ring.write(bytes(2044))
    assert ring.used == 576 + 2048          # the gap counts until the record is read
    assert ring.read() == bytes(2044) and ring.used == 0
    ring.close()


def test_max_record():
    ring = Ring.create(4096)
    assert ring.write(bytes(ring.max_record))
    assert ring.read() == bytes(2044)
    with pytest.raises(ValueError, match="a record of 2045 bytes exceeds this ring's "
                                         r"max_record of 2044 bytes \(capacity 4096\)"):
        ring.write(bytes(2045))
    with pytest.raises(ValueError, match="max_record"):
        ring.write(bytearray(10_000))
    assert ring.used == 0
    for offset in range(0, 4096, 8):               # wherever the ring stands, an empty ring
        assert ring.write(bytes(offset % 2045))    # takes a max_record
        ring.read()
        assert ring.write(bytes(ring.max_record))
        assert ring.read() == bytes(2044)
    ring.close()


def test_bytes_like_inputs():
    ring = Ring.create(4096)
    buffer = bytearray(b"0123456789")
    inputs = [b"bytes", bytearray(b"bytearray"), memoryview(b"memoryview"),
              memoryview(buffer)[2:5], memoryview(buffer)[::3],     # the last not contiguous
              array.array("i", [1, -2]), memoryview(array.array("H", [7, 8])).cast("B"), b""]
    for each in inputs:
        assert ring.write(each)
    assert ring.read_many(20) == [b"bytes", b"bytearray", b"memoryview", b"234", b"0369",
                                  struct.pack("=ii", 1, -2), struct.pack("=HH", 7, 8), b""]
    for bad in ("text", 5, None, [1, 2]):
        with pytest.raises(TypeError):
            ring.write(bad)
    assert ring.used == 0
    ring.close()


def test_read_many_counts():
    ring = Ring.create(4096)
    assert ring.read_many(0) == [] and ring.read_many(3) == []
    for i in range(5):
        ring.write(b"%d" % i)
    assert ring.read_many(0) == []
    assert ring.read_many(2) == [b"0", b"1"]
    assert ring.read_many(100) == [b"2", b"3", b"4"]
    with pytest.raises(ValueError, match="0 or more"):
        ring.read_many(-1)
    ring.close()


def test_a_corrupted_length_is_an_error_not_a_crash():
    ring = Ring.create(4096)
    ring.write(b"abcd")
    os.pwrite(ring.fd, struct.pack("<I", 3000), HEADER_SIZE)      # the record's length
    with pytest.raises(RuntimeError, match="corrupted"):
        ring.read()
    ring.close()


# ------------------------------------------------------------------------------------------
# RingReader and RingWriter on one loop


def test_reader_delivers_a_budget_per_callback(pair):
    ring, data_fd, space_fd = pair()

    async def main():
        loop = asyncio.get_running_loop()
        got, marks = [], []
        for i in range(10):
            ring.write(b"%d" % i)
        reader = RingReader(ring, data_fd, space_fd, got.append, budget=3)
        reader.start()
        assert len(got) == 3
        loop.call_soon(lambda: marks.append(len(got)))   # another callback gets a turn
        await until(lambda: len(got) == 10)
        assert 3 < marks[0] < 10
        assert got == [b"%d" % i for i in range(10)]
        assert ring.consumer_waiting                     # asleep, waiting for data
        ring.write(b"late")
        os.eventfd_write(data_fd, 1)                     # what the writer does
        await until(lambda: len(got) == 11)
        reader.close()

    run(main())
    with pytest.raises(ValueError, match="at least 1"):
        RingReader(ring, data_fd, space_fd, print, budget=0)


class Racing:
    """A ring seen through a proxy that lets the other side act in the race window: right
    after this side raises its waiting flag, ``race()`` runs, as the other process might at
    that moment, having checked the flag just before it was raised (so it does not signal)."""

    def __init__(self, ring, race):
        self._ring, self._race = ring, race

    def __getattr__(self, name):
        return getattr(self._ring, name)

    def _raise_flag(self, name, value):
        setattr(self._ring, name, value)
        if value and self._race is not None:
            race, self._race = self._race, None
            race()

    consumer_waiting = property(lambda self: self._ring.consumer_waiting,
                                lambda self, v: self._raise_flag("consumer_waiting", v))
    producer_waiting = property(lambda self: self._ring.producer_waiting,
                                lambda self, v: self._raise_flag("producer_waiting", v))


def test_reader_looks_again_after_raising_its_flag(pair):
    """A record written just as the reader goes to sleep, unsignalled, is still delivered."""
    ring, data_fd, space_fd = pair()
    producer = Ring.attach(os.dup(ring.fd))

    async def main():
        got = []
        reader = RingReader(Racing(ring, lambda: producer.write(b"raced")), data_fd, space_fd,
                            got.append)
        reader.start()
        await turns()
        assert got == [b"raced"] and ring.consumer_waiting
        reader.close()

    run(main())
    producer.close()


def test_writer_looks_again_after_raising_its_flag(pair):
    """Room freed just as the writer blocks, unsignalled, is still used: the send succeeds."""
    ring, data_fd, space_fd = pair()
    consumer = Ring.attach(os.dup(ring.fd))

    async def main():
        drained = []
        writer = RingWriter(Racing(ring, lambda: consumer.read_many(100)), data_fd, space_fd)
        writer.on_drained = lambda: drained.append(True)
        results = [writer.send(bytes(1000)) for _ in range(5)]
        assert results == [True] * 5                # the 5th found room on looking again
        assert not writer.blocked and not ring.producer_waiting and not drained
        assert consumer.read_many(100) == [bytes(1000)]
        writer.close()

    run(main())
    consumer.close()


def test_pause_and_resume(pair):
    ring, data_fd, space_fd = pair()

    async def main():
        got = []
        reader = RingReader(ring, data_fd, space_fd, got.append)
        writer = RingWriter(ring, data_fd, space_fd)
        reader.start()
        for i in range(10):
            assert writer.send(b"a%d" % i)
        await until(lambda: len(got) == 10)
        reader.pause()
        assert reader.paused and not ring.consumer_waiting
        for i in range(10):
            assert writer.send(b"b%d" % i)
        await asyncio.sleep(0.05)
        assert len(got) == 10 and ring.used > 0             # records stay in the ring
        reader.pause()                                      # again: nothing changes
        reader.resume()
        assert len(got) == 10                               # delivered from a callback
        await until(lambda: len(got) == 20)
        assert got == [b"a%d" % i for i in range(10)] + [b"b%d" % i for i in range(10)]
        reader.close()
        writer.close()

    run(main())


def test_pause_from_on_record_holds_the_rest_of_the_batch(pair):
    ring, data_fd, space_fd = pair()

    async def main():
        got = []

        def on_record(record):
            got.append(record)
            if record == b"3":
                reader.pause()

        reader = RingReader(ring, data_fd, space_fd, on_record)
        for i in range(8):
            ring.write(b"%d" % i)
        reader.start()
        await turns()
        assert got == [b"0", b"1", b"2", b"3"]          # the rest were read, but held
        assert ring.used == 0
        ring.write(b"8")
        reader.resume()
        await until(lambda: len(got) == 9)
        assert got == [b"%d" % i for i in range(9)]
        reader.close()

    run(main())


def test_on_record_errors_go_to_on_error_and_delivery_goes_on(pair):
    ring, data_fd, space_fd = pair()

    async def main():
        got, errors = [], []

        def on_record(record):
            if record in (b"2", b"5"):
                raise KeyError(record)
            got.append(record)

        reader = RingReader(ring, data_fd, space_fd, on_record)
        reader.on_error = errors.append
        for i in range(8):
            ring.write(b"%d" % i)
        reader.start()
        assert [e.args for e in errors] == [(b"2",), (b"5",)]
        assert got == [b"0", b"1", b"3", b"4", b"6", b"7"]
        reader.close()

    run(main())


def test_by_default_on_record_errors_reach_the_loop(pair):
    ring, data_fd, space_fd = pair()

    async def main():
        loop = asyncio.get_running_loop()
        handled, got = [], []
        loop.set_exception_handler(lambda loop, context: handled.append(context["exception"]))

        def on_record(record):
            if record == b"1":
                raise ZeroDivisionError("bad record")
            got.append(record)

        reader = RingReader(ring, data_fd, space_fd, on_record)
        reader.start()
        for i in range(4):
            ring.write(b"%d" % i)
        os.eventfd_write(data_fd, 1)
        await until(lambda: len(got) == 3)
        assert got == [b"0", b"2", b"3"]
        assert [str(e) for e in handled] == ["bad record"]
        reader.close()

    run(main())
    ring2, data_fd2, space_fd2 = pair()
    ring2.write(b"x")
    loop = asyncio.new_event_loop()
    reader = RingReader(ring2, data_fd2, space_fd2, lambda r: 1 / 0, loop=loop)
    with pytest.raises(ZeroDivisionError):
        reader.start()                          # the first drain runs in start()
    reader.close()
    loop.close()


def test_writer_keeps_order_when_the_producer_ignores_the_credit(pair):
    ring, data_fd, space_fd = pair()

    async def main():
        got, drained = [], []
        reader = RingReader(ring, data_fd, space_fd, got.append, budget=16)
        writer = RingWriter(ring, data_fd, space_fd)
        writer.on_drained = lambda: drained.append(len(got))
        expected = [(b"%05d" % i) * (i % 50) for i in range(3000)]
        results = [writer.send(each) for each in expected]
        assert results.index(False) > 0 and not any(results[results.index(False):])
        assert writer.blocked and len(writer.pending) == results.count(False)
        assert writer.pending_bytes == sum(map(len, expected[results.index(False):]))
        reader.start()
        await until(lambda: len(got) == 3000)
        assert got == expected
        assert not writer.blocked and writer.pending_bytes == 0 and len(drained) == 1
        assert not ring.producer_waiting
        await writer.drain()                    # nothing pending: at once
        reader.close()
        writer.close()

    run(main())


def test_writer_copies_what_it_keeps_and_refuses_oversized(pair):
    ring, data_fd, space_fd = pair()

    async def main():
        writer = RingWriter(ring, data_fd, space_fd)
        while writer.send(bytes(500)):
            pass
        buffer = bytearray(b"original")
        assert not writer.send(buffer)
        buffer[:] = b"modified"
        with pytest.raises(ValueError, match="max_record"):
            writer.send(bytes(3000))
        assert len(writer.pending) == 2 and writer.pending_bytes == 508
        got = []
        reader = RingReader(ring, data_fd, space_fd, got.append)
        reader.start()
        await asyncio.wait_for(writer.drain(), 5)
        await until(lambda: got and got[-1] == b"original")
        reader.close()
        writer.close()
        with pytest.raises(ValueError, match="closed"):
            writer.send(b"x")

    run(main())


def test_writer_close_fails_drain_waiters(pair):
    ring, data_fd, space_fd = pair()

    async def main():
        writer = RingWriter(ring, data_fd, space_fd)
        while writer.send(bytes(500)):
            pass
        waiting = asyncio.ensure_future(writer.drain())
        await turns()
        writer.close()
        writer.close()
        with pytest.raises(ValueError, match="closed before draining"):
            await waiting
        assert not ring.producer_waiting

    run(main())


# ------------------------------------------------------------------------------------------
# across processes

RECORD_SOURCE = '''
def record(i):
    """Record i: its number, then a body of a size and content that depend on i."""
    size = (i * 7919) % 1531
    return i.to_bytes(4, "little") + (i.to_bytes(4, "big") * (size // 4 + 1))[:size]
'''
namespace: dict = {}
exec(RECORD_SOURCE, namespace)
record = namespace["record"]

PRODUCER = RECORD_SOURCE + '''
import asyncio, sys
from wallaroo._core.ring import Ring
from wallaroo.runtime.rings import RingWriter

async def main(fd, data_fd, space_fd, n):
    writer = RingWriter(Ring.attach(fd), data_fd, space_fd)
    refused = 0
    for i in range(n):
        if not writer.send(record(i)):
            refused += 1
            await writer.drain()
    writer.send(b"")            # the end
    await writer.drain()
    print(refused)

asyncio.run(main(*map(int, sys.argv[1:])))
'''

SLOW_CONSUMER = RECORD_SOURCE + '''
import asyncio, sys, time
from wallaroo._core.ring import Ring
from wallaroo.runtime.rings import RingReader

async def main(fd, data_fd, space_fd):
    done = asyncio.get_running_loop().create_future()
    seen = {"next": 0, "bad": None}

    def on_record(r):
        if not r:
            done.set_result(None)
            return
        i = seen["next"]
        if r != record(i) and seen["bad"] is None:
            seen["bad"] = i
        seen["next"] = i + 1
        if i % 100 == 0:
            time.sleep(0.002)       # a slow consumer
    reader = RingReader(Ring.attach(fd), data_fd, space_fd, on_record)
    reader.start()
    await done
    print(seen["next"], seen["bad"])

asyncio.run(main(*map(int, sys.argv[1:])))
'''


def start_child(source: str, fds: tuple[int, int, int], *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", source, *map(str, fds), *map(str, args)],
                            pass_fds=fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(child: subprocess.Popen) -> str:
    try:
        out, err = child.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
    assert child.returncode == 0, err
    return out


def test_a_child_process_writes_records_that_arrive_all_in_order(pair):
    ring, data_fd, space_fd = pair(16384)
    n = 200_000
    child = start_child(PRODUCER, (ring.fd, data_fd, space_fd), n)

    async def main():
        done = asyncio.get_running_loop().create_future()
        got = []

        def on_record(r):
            if r:
                got.append(r)
            elif not done.done():
                done.set_result(None)

        reader = RingReader(ring, data_fd, space_fd, on_record)
        reader.start()
        try:
            await done
        finally:
            reader.close()
        return got

    try:
        got = run(main(), timeout=20)
    finally:
        out = finish(child)
    assert len(got) == n
    for i, r in enumerate(got):
        if r != record(i):
            seq = int.from_bytes(r[:4], "little")
            pytest.fail(f"record {i} is wrong (it holds number {seq}, {len(r)} bytes)")
    assert ring.used == 0
    assert int(out) >= 0


def test_a_slow_child_consumer_pushes_back_on_the_writer(pair):
    ring, data_fd, space_fd = pair(8192)
    n = 20_000
    child = start_child(SLOW_CONSUMER, (ring.fd, data_fd, space_fd))

    async def main():
        writer = RingWriter(ring, data_fd, space_fd)
        refused = most_pending = 0
        for i in range(n):
            if not writer.send(record(i)):
                refused += 1
                most_pending = max(most_pending, len(writer.pending))
                assert ring.producer_waiting
                await writer.drain()
                assert not writer.blocked and not ring.producer_waiting
        writer.send(b"")
        await writer.drain()
        writer.close()
        return refused, most_pending

    try:
        refused, most_pending = run(main(), timeout=20)
    finally:
        out = finish(child)
    assert refused > 100                # the credit ran out, again and again
    assert most_pending == 1            # respecting it, the writer keeps one payload at most
    assert out.split() == [str(n), "None"]      # all arrived, in order, intact
