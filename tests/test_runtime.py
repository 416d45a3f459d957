"""Tests of the one-worker runtime: Worker, sources and sinks, back-pressure, reconnects,
SIGTERM, the progress line and wallaroo.testing's timeout.

Real sockets on 127.0.0.1 only; every thread and process started here is stopped in teardown.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wallaroo
import wallaroo.testing
from support.net import HOST, free_port
from support.processes import APPS, SOURCE_RE, STARTUP_RE, WALLAROO_RUN, app_env
from wallaroo.errors import StageFailed
from wallaroo.runtime.worker import RunOptions, Worker

line_enc = wallaroo.encoder(lambda x: f"{x}\n")


def run_worker(app, **options):
    worker = Worker(app, RunOptions(**options))
    return worker, asyncio.run(asyncio.wait_for(worker.run(), 10))


def frames(payloads, fmt=">I") -> bytes:
    return b"".join(struct.pack(fmt, len(p)) + p for p in payloads)


# ------------------------------------------------------------------------------------------
# helpers for real sockets and threads


class ThreadedWorker:
    """A Worker on its own event loop in a thread; ``stop()`` asks it to end and joins."""

    def __init__(self, app, options: RunOptions, source_configs=None, sink_configs=None):
        self.worker = Worker(app, options, source_configs, sink_configs)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.result = None
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._main, name="test-worker", daemon=True)

    def _main(self):
        async def main():
            self.loop = asyncio.get_running_loop()
            return await self.worker.run(on_started=lambda w: self.started.set())

        try:
            self.result = asyncio.run(main())
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.started.set()

    def start(self, timeout=5.0):
        self.thread.start()
        assert self.started.wait(timeout), "worker did not start"
        assert self.error is None, self.error
        return self

    def stop(self, timeout=10.0):
        if self.thread.is_alive() and self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.worker.request_stop)
            except RuntimeError:
                pass  # loop already closed
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        return self.result

    def source_address(self, index=0):
        return tuple(self.worker.sources[index].address)


@pytest.fixture
def workers():
    started: list[ThreadedWorker] = []

    def make(*args, **kwargs) -> ThreadedWorker:
        tw = ThreadedWorker(*args, **kwargs)
        started.append(tw)
        return tw

    yield make
    for tw in started:
        if tw.thread.is_alive():
            tw.stop()


@pytest.fixture
def closing():
    """Sockets (and anything with close()) to close at teardown."""
    things = []
    yield things.append
    for t in things:
        try:
            t.close()
        except OSError:
            pass


def listening_socket(closing) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, 0))
    s.listen(8)
    s.settimeout(5)
    closing(s)
    return s


def recv_until(conn: socket.socket, predicate, timeout=5.0) -> bytes:
    """Read from conn until predicate(data) or EOF; fails on timeout."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while not predicate(bytes(data)):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out with {len(data)} bytes: {bytes(data[-200:])!r}"
        conn.settimeout(left)
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def recv_all(conn: socket.socket, timeout=10.0) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no EOF in time"
        conn.settimeout(left)
        chunk = conn.recv(1 << 16)
        if not chunk:
            return bytes(data)
        data += chunk


def wait_for(predicate, timeout=5.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# ------------------------------------------------------------------------------------------
# Worker on bounded sources with a FileSink


words = st.lists(st.text("abcde", min_size=1, max_size=3), max_size=6)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(words.map(" ".join), max_size=40))
def test_word_count_iter_source_exact_output(tmp_path, lines):
    out = tmp_path / f"wc-{os.urandom(6).hex()}.txt"
    split = wallaroo.computation_multi(name="split")(lambda s: s.split())

    class Count:
        def __init__(self):
            self.n = 0

    @wallaroo.state_computation(name="count", state=Count)
    def count(word, state):
        state.n += 1
        return (word, state.n)

    p = (wallaroo.source("text", wallaroo.IterSourceConfig("text", lines))
         .to(split).key_by(lambda w: w).to(count)
         .to_sink(wallaroo.FileSinkConfig(out, wallaroo.encoder(lambda t: f"{t[0]} {t[1]}\n"))))
    worker, result = run_worker(wallaroo.build_application("wc", p))
    # reference: a running count per word, in input order (one worker keeps the order)
    seen: Counter = Counter()
    expected = []
    for line in lines:
        for w in line.split():
            seen[w] += 1
            expected.append(f"{w} {seen[w]}\n")
    assert result.exit_code == 0 and result.failure is None
    assert result.ingested == len(lines)
    assert out.read_text() == "".join(expected)
    count_op = worker.chains[next(s for s in worker.chains if s.nodes[0].name == "count")].ops[0]
    assert {k: s.n for k, s in count_op.states.items()} == dict(seen)


def test_bounded_run_ends_by_itself(tmp_path):
    out = tmp_path / "out.txt"
    values = list(range(5000))  # several natural batches
    sq = wallaroo.computation(name="sq")(lambda x: None if x % 10 == 3 else x * x)
    p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", values)).to(sq)
         .to_sink(wallaroo.FileSinkConfig(out, line_enc)))
    t0 = time.monotonic()
    _, result = run_worker(wallaroo.build_application("sq", p))
    assert time.monotonic() - t0 < 5
    assert result.exit_code == 0
    assert result.ingested == len(values)
    assert out.read_text() == "".join(f"{x * x}\n" for x in values if x % 10 != 3)


def test_empty_iterable_ends_immediately(tmp_path):
    out = tmp_path / "out.txt"
    p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", []))
         .to_sink(wallaroo.FileSinkConfig(out, line_enc)))
    t0 = time.monotonic()
    _, result = run_worker(wallaroo.build_application("empty", p))
    assert time.monotonic() - t0 < 1.0
    assert result.exit_code == 0 and result.ingested == 0
    assert out.read_bytes() == b""


def test_two_bounded_sources_end_when_both_are_done(tmp_path):
    out = tmp_path / "out.txt"
    a = wallaroo.source("a", wallaroo.IterSourceConfig("a", range(0, 3000)))
    b = wallaroo.source("b", wallaroo.IterSourceConfig("b", range(10_000, 10_005)))
    p = a.merge(b).to_sink(wallaroo.FileSinkConfig(out, line_enc))
    _, result = run_worker(wallaroo.build_application("two", p))
    assert result.exit_code == 0
    got = [int(x) for x in out.read_text().split()]
    assert sorted(got) == list(range(3000)) + list(range(10_000, 10_005))
    # each source's own order is kept
    assert [x for x in got if x < 10_000] == list(range(3000))


def _run_gen(out, gen, name, **options):
    """Run GenSourceConfig "g" over ``gen`` into the file ``out``, a value a line; returns
    (worker, result)."""
    p = (wallaroo.source("g", wallaroo.GenSourceConfig("g", gen))
         .to_sink(wallaroo.FileSinkConfig(out, line_enc)))
    return run_worker(wallaroo.build_application(name, p), **options)


class Countdown:
    def __init__(self, start):
        self.start = start
        self.applied = []

    def initial_value(self):
        return self.start

    def apply(self, n):
        self.applied.append(n)
        return n - 1 if n > 1 else None


@pytest.mark.parametrize("start", [1, 7, 3000])
def test_gen_source_ends_when_apply_returns_none(tmp_path, start):
    out = tmp_path / "out.txt"
    gen = Countdown(start)
    _, result = _run_gen(out, gen, "gen")
    assert result.exit_code == 0
    assert result.ingested == start
    assert out.read_text() == "".join(f"{n}\n" for n in range(start, 0, -1))
    assert gen.applied == list(range(start, 0, -1))


class FailingGen:
    def __init__(self, fail_at):
        self.fail_at = fail_at

    def initial_value(self):
        return 1

    def apply(self, n):
        if n == self.fail_at:
            raise ValueError(f"no value after {n}")
        return n + 1


def test_gen_source_error_fails_the_run_under_fail_policy(tmp_path):
    out = tmp_path / "out.txt"
    _, result = _run_gen(out, FailingGen(5), "genfail")
    assert result.exit_code == 1
    assert isinstance(result.failure, StageFailed)
    assert "g" in result.failure.stage and result.failure.value == 5
    assert isinstance(result.failure.__cause__, ValueError)


def test_gen_source_error_keeps_the_values_made_before_it(tmp_path):
    # Regression test for a fixed bug (the old behaviour): with on_error="fail", the values the generator produced before apply() raised
    # (1..5 here, still in the source's unflushed batch) are dropped: ErrorPolicy.user_error
    # calls request_stop() before _ProducerSource._produce emits its last partial batch, and
    # ctx.emit refuses batches once the worker is stopping. A failing computation keeps
    # "what came before it" (see wallaroo._core.chain); a failing generator loses it.
    out = tmp_path / "out.txt"
    _, result = _run_gen(out, FailingGen(5), "genfail")
    assert result.exit_code == 1
    assert out.read_text() == "1\n2\n3\n4\n5\n"


def test_gen_source_error_is_skipped_under_skip_policy(tmp_path):
    out = tmp_path / "out.txt"
    _, result = _run_gen(out, FailingGen(2500), "genskip", on_error="skip")
    assert result.exit_code == 0 and result.failure is None
    assert result.error_counts == {("g generator", "error"): 1}
    assert out.read_text() == "".join(f"{n}\n" for n in range(1, 2501))


def test_computation_error_policy_fail_and_skip(tmp_path):
    def build(out):
        inv = wallaroo.computation(name="inv")(lambda x: 100 // x)
        return wallaroo.build_application("inv", wallaroo.source(
            "n", wallaroo.IterSourceConfig("n", [5, 4, 0, 2, 1])).to(inv).to_sink(
            wallaroo.FileSinkConfig(out, line_enc)))

    _, result = run_worker(build(tmp_path / "fail.txt"))
    assert result.exit_code == 1
    assert isinstance(result.failure, StageFailed) and result.failure.stage == "inv"
    assert result.failure.value == 0
    assert (tmp_path / "fail.txt").read_text() == "20\n25\n"  # what came before flows on

    dead = tmp_path / "dead.jsonl"
    _, result = run_worker(build(tmp_path / "skip.txt"), on_error="dead-letter", dead_letter=str(dead))
    assert result.exit_code == 0
    assert (tmp_path / "skip.txt").read_text() == "20\n25\n50\n100\n"
    assert result.error_counts == {("inv", "error"): 1}
    assert '"stage": "inv"' in dead.read_text() and "ZeroDivisionError" in dead.read_text()


# ------------------------------------------------------------------------------------------
# FileSource and FileSink


def _file_app(src_path, out_path, decoder=None, stage=None):
    p = wallaroo.source("f", wallaroo.FileSourceConfig("f", src_path, decoder))
    if stage is not None:
        p = p.to(stage)
    return wallaroo.build_application("file", p.to_sink(wallaroo.FileSinkConfig(out_path, wallaroo.encoder(
        lambda v: repr(v) + "\n"))))


def test_file_source_text_lines(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes("first\r\nsecond\n\nthird é\nlast without newline".encode())
    out = tmp_path / "out.txt"
    _, result = run_worker(_file_app(src, out))
    assert result.exit_code == 0
    got = [eval(line) for line in out.read_text().splitlines()]  # noqa: S307 - our own reprs
    assert got == ["first", "second", "", "third é", "last without newline"]
    assert result.ingested == 5


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lines=st.lists(st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                              max_size=20), max_size=50), terminated=st.booleans())
def test_file_source_lines_property(tmp_path, lines, terminated):
    src = tmp_path / f"in-{os.urandom(6).hex()}.txt"
    text = "\n".join(lines) + ("\n" if terminated and lines else "")
    src.write_bytes(text.encode())
    result = wallaroo.testing.run(_file_app(src, tmp_path / "unused"), {})
    expected = text.split("\n")
    if expected[-1] == "":
        expected.pop()
    assert result == [expected]


def test_file_source_big_file_crosses_read_chunks(tmp_path):
    # more than one 256 KiB read, with multibyte characters split across reads
    src = tmp_path / "big.txt"
    lines = [f"ligne-{i}-é€𝄞" * (1 + i % 3) for i in range(40_000)]
    src.write_bytes(("\n".join(lines)).encode())
    assert src.stat().st_size > 3 * 256 * 1024
    out = tmp_path / "out.txt"
    enc = wallaroo.encoder(lambda s: s + "\n")
    p = (wallaroo.source("f", wallaroo.FileSourceConfig("f", src))
         .to_sink(wallaroo.FileSinkConfig(out, enc)))
    _, result = run_worker(wallaroo.build_application("big", p))
    assert result.exit_code == 0 and result.ingested == len(lines)
    assert out.read_text().split("\n")[:-1] == lines


def test_file_source_framed_payloads(tmp_path):
    payloads = [b"alpha", b"", b"\x00\x01\x02", "é".encode() * 100, b"z" * 70_000]
    src = tmp_path / "frames.bin"
    src.write_bytes(frames(payloads))
    raw = wallaroo.decoder(header_length=4, length_fmt=">I")(lambda b: b)
    result = wallaroo.testing.run(_file_app(src, tmp_path / "unused", raw), {})
    assert result == [payloads]


def test_file_source_framed_with_two_byte_headers(tmp_path):
    payloads = [b"%d" % i * (i % 7) for i in range(3000)]
    src = tmp_path / "frames.bin"
    src.write_bytes(frames(payloads, "<H"))
    raw = wallaroo.decoder(header_length=2, length_fmt="<H")(lambda b: b)
    result = wallaroo.testing.run(_file_app(src, tmp_path / "unused", raw), {})
    assert result == [payloads]


def test_file_source_framed_values_go_through_the_decoder(tmp_path):
    # Regression test for a fixed bug (the old behaviour): FileSource uses the decoder only to cut frames; decode() is never called (the
    # worker adds a DecodeOp only for TCP sources, DECODED_SOURCES = ("tcp",)), so the app gets
    # raw payload bytes instead of decoded values.
    payloads = [b"a", b"bc", b"def"]
    src = tmp_path / "frames.bin"
    src.write_bytes(frames(payloads))
    upper = wallaroo.decoder(header_length=4, length_fmt=">I")(lambda b: b.decode().upper())
    result = wallaroo.testing.run(_file_app(src, tmp_path / "unused", upper), {})
    assert result == [["A", "BC", "DEF"]]


def test_file_source_truncated_last_frame_is_bad_input(tmp_path):
    payloads = [b"one", b"two", b"three"]
    src = tmp_path / "frames.bin"
    src.write_bytes(frames(payloads) + struct.pack(">I", 10) + b"part")
    out = tmp_path / "out.txt"
    raw = wallaroo.decoder(header_length=4, length_fmt=">I")(lambda b: b)
    worker, result = run_worker(_file_app(src, out, raw))
    assert result.exit_code == 0
    assert [eval(line) for line in out.read_text().splitlines()] == payloads  # noqa: S307
    assert worker.errors.counts == {("f", "truncated_frame"): 1}
    assert result.error_counts == {("f", "truncated_frame"): 1}


def test_file_source_invalid_utf8_is_bad_input_not_a_crash(tmp_path):
    # Regression test for a fixed bug (the old behaviour): a text file with a line that is not UTF-8 makes LineReader raise
    # UnicodeDecodeError inside FileSource._produce; the run stops as an "internal error"
    # (exit 1) and the valid lines of the same 256 KiB read are lost. DESIGN.md: bad input is
    # counted and skipped, never takes the engine down.
    src = tmp_path / "in.txt"
    src.write_bytes(b"ok\n\xff\xfe bad\nfine\n")
    out = tmp_path / "out.txt"
    worker, result = run_worker(_file_app(src, out))
    assert result.failure is None, result.failure
    got = [eval(line) for line in out.read_text().splitlines()]  # noqa: S307
    assert got[0] == "ok" and got[-1] == "fine"
    # the bad line is either counted as bad input or delivered with replacement characters
    assert (len(got) == 2 and sum(result.error_counts.values()) == 1) or len(got) == 3


def test_file_source_missing_file_is_a_startup_error(tmp_path):
    from wallaroo.runtime.worker import StartupError

    app = _file_app(tmp_path / "nope.txt", tmp_path / "out.txt")
    with pytest.raises(StartupError) as info:
        asyncio.run(Worker(app).run())
    assert "nope.txt" in str(info.value)


def test_file_sink_appends_flushes_and_fsyncs_at_close(tmp_path, monkeypatch):
    out = tmp_path / "out.bin"
    out.write_bytes(b"kept\n")
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append((fd, os.fstat(fd).st_size))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    values = [f"v{i}é".encode() if i % 2 else f"s{i}" for i in range(3000)]
    enc = wallaroo.encoder(lambda v: v)
    p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", values))
         .to_sink(wallaroo.FileSinkConfig(out, enc)))
    worker, result = run_worker(wallaroo.build_application("sink", p))
    expected = b"kept\n" + b"".join(v if isinstance(v, bytes) else v.encode() for v in values)
    assert result.exit_code == 0
    assert out.read_bytes() == expected
    # fsynced with everything written, and closed afterwards
    assert [size for _, size in synced] == [len(expected)]
    assert worker.sinks[0]._file is None


# ------------------------------------------------------------------------------------------
# back-pressure, end to end


VALUE_SIZE = 10 * 1024
BOUND = 64 * 1024 * 1024


class Forever:
    value = "x" * VALUE_SIZE

    def initial_value(self):
        return self.value

    def apply(self, previous):
        return self.value


def test_back_pressure_from_a_tcp_sink_that_does_not_read(workers, closing):
    # Regression test for a fixed bug (the old behaviour): TCPSink._on_connected writes the
    # data buffered before the connection (more than HIGH_WATER: the first natural batch alone
    # is 10 MiB) and then calls _unblock() unconditionally. The transport is over its high
    # water mark, asyncio has already called pause_writing (a no-op: the sink was blocking),
    # so the gate opens and stays open: the producer runs unthrottled into the transport's
    # buffer (gigabytes within seconds). Fix: only unblock when the transport buffer is below
    # the high-water mark; resume_writing() unblocks later.
    lst = listening_socket(closing)
    conns: list[socket.socket] = []
    accepted = threading.Event()

    def accept():
        try:
            c, _ = lst.accept()
        except OSError:
            return
        closing(c)
        conns.append(c)
        accepted.set()

    threading.Thread(target=accept, daemon=True).start()
    sink = wallaroo.TCPSinkConfig(HOST, lst.getsockname()[1], wallaroo.encoder(lambda v: v))
    p = wallaroo.source("big", wallaroo.GenSourceConfig("big", Forever())).to_sink(sink)
    tw = workers(wallaroo.build_application("bp", p), RunOptions(flush_timeout=0.5)).start()
    w = tw.worker
    assert accepted.wait(5)

    def too_much():
        return w.ingested * VALUE_SIZE > BOUND

    # phase 1: nobody reads; ingestion must stop growing, with bounded memory
    deadline = time.monotonic() + 3.5
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        assert not too_much(), f"ingested {w.ingested * VALUE_SIZE / 2**20:.0f} MiB unthrottled"
        now = w.ingested
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 1.0:
            break
        time.sleep(0.02)
    assert not too_much(), f"ingested {w.ingested * VALUE_SIZE / 2**20:.0f} MiB unthrottled"
    assert time.monotonic() - since > 1.0, "ingestion never stopped growing"
    stalled = w.ingested
    assert stalled > 0 and w.flow.paused

    # phase 2: read; ingestion must resume
    received = [0]
    stop_reading = threading.Event()

    def drain(conn):
        conn.settimeout(0.2)
        while not stop_reading.is_set():
            try:
                chunk = conn.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            received[0] += len(chunk)

    reader = threading.Thread(target=drain, args=(conns[0],), daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: w.ingested > stalled + 2000, timeout=3.0), (stalled, w.ingested)
        assert received[0] > stalled * VALUE_SIZE // 2
    finally:
        tw.stop()
        stop_reading.set()
        reader.join(5)


# ------------------------------------------------------------------------------------------
# TCP sink reconnects


def test_tcp_sink_waits_for_a_listener_that_starts_late(workers, closing):
    port = free_port()  # nothing listens on port now
    values = [f"line {i} " + "y" * (i % 50) for i in range(3000)]
    enc = wallaroo.encoder(lambda s: s + "\n")
    p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", values))
         .to_sink(wallaroo.TCPSinkConfig(HOST, port, enc)))
    tw = workers(wallaroo.build_application("late", p), RunOptions(flush_timeout=8)).start()
    # everything is ingested and waits in the sink while nobody listens
    assert wait_for(lambda: tw.worker.ingested == len(values), timeout=3)
    time.sleep(0.5)
    assert tw.thread.is_alive()
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((HOST, port))
    lst.listen(1)
    lst.settimeout(5)
    closing(lst)
    conn, _ = lst.accept()
    closing(conn)
    data = recv_all(conn)
    tw.thread.join(5)
    assert not tw.thread.is_alive()
    assert tw.result.exit_code == 0 and not tw.result.undelivered
    assert data == "".join(v + "\n" for v in values).encode()


def test_tcp_sink_reconnects_after_the_connection_dies(workers, closing):
    lst = listening_socket(closing)
    dec = wallaroo.decoder(header_length=4, length_fmt=">I")(lambda b: b.decode())
    enc = wallaroo.encoder(lambda s: f"<{s}>\n")
    p = (wallaroo.source("in", wallaroo.TCPSourceConfig("in", HOST, 0, dec))
         .to_sink(wallaroo.TCPSinkConfig(HOST, lst.getsockname()[1], enc)))
    tw = workers(wallaroo.build_application("re", p), RunOptions(flush_timeout=2)).start()
    conn1, _ = lst.accept()
    closing(conn1)
    client = socket.create_connection(tw.source_address(), timeout=5)
    closing(client)

    first = [f"m{i}" for i in range(200)]
    client.sendall(frames([m.encode() for m in first]))
    want1 = "".join(f"<{m}>\n" for m in first).encode()
    assert recv_until(conn1, lambda d: len(d) >= len(want1)) == want1

    conn1.close()  # the receiver dies
    conn2, _ = lst.accept()  # the sink comes back by itself
    closing(conn2)
    second = [f"n{i}" for i in range(300)]
    client.sendall(frames([m.encode() for m in second]))
    want2 = "".join(f"<{m}>\n" for m in second).encode()
    assert recv_until(conn2, lambda d: len(d) >= len(want2)) == want2
    result = tw.stop()
    assert result.failure is None


def _start_capped_tcp_to_file(workers, out):
    """A started worker: TCP source "in" (u32 frames, max_size=100) -> file ``out``."""
    dec = wallaroo.decoder(header_length=4, length_fmt=">I")(lambda b: b.decode())
    p = (wallaroo.source("in", wallaroo.TCPSourceConfig("in", HOST, 0, dec, max_size=100))
         .to_sink(wallaroo.FileSinkConfig(out, wallaroo.encoder(lambda s: s + "\n"))))
    return workers(wallaroo.build_application("big", p), RunOptions()).start()


def test_tcp_source_oversized_frame_keeps_the_good_frames_before_it(workers, closing, tmp_path):
    # Regression test for a fixed bug (the old behaviour): FrameReader.feed raises FrameTooLarge for a read that also
    # completed valid frames, and those frames are discarded with the exception (they are
    # counted in FrameReader.frames but never returned), so _FrameProtocol.data_received never
    # emits them: valid input sent in the same TCP read as an oversized frame is lost.
    out = tmp_path / "out.txt"
    tw = _start_capped_tcp_to_file(workers, out)
    client = socket.create_connection(tw.source_address(), timeout=5)
    closing(client)
    good = [b"g1", b"g2", b"g3"]
    client.sendall(frames(good) + struct.pack(">I", 5000) + b"z" * 50)
    assert wait_for(lambda: tw.worker.errors.counts.get(("in", "frame")) == 1)
    # the source closed that connection
    client.settimeout(5)
    assert client.recv(10) == b""
    time.sleep(0.1)
    tw.stop()
    assert out.read_text() == "g1\ng2\ng3\n"


def test_tcp_source_oversized_frame_is_counted_once_and_other_connections_go_on(
        workers, closing, tmp_path):
    # Regression test for a fixed bug (the old behaviour, an extra ('in', 'truncated_frame') count):
    # after FrameTooLarge the connection is closed, but the rejected header stays in the frame
    # reader's buffer, so connection_lost also reports a truncated frame: one bad frame is
    # counted (and dead-lettered) twice.
    out = tmp_path / "out.txt"
    tw = _start_capped_tcp_to_file(workers, out)
    good = socket.create_connection(tw.source_address(), timeout=5)
    closing(good)
    bad = socket.create_connection(tw.source_address(), timeout=5)
    closing(bad)
    good.sendall(frames([b"before"]))
    assert wait_for(lambda: out.exists() and out.read_text() == "before\n")
    bad.sendall(struct.pack(">I", 101) + b"q" * 10)
    bad.settimeout(5)
    assert bad.recv(10) == b""  # closed by the source
    good.sendall(frames([b"x" * 100, b"after"]))  # exactly max_size is fine
    assert wait_for(lambda: out.read_text() == "before\n" + "x" * 100 + "\nafter\n")
    time.sleep(0.1)
    tw.stop()
    assert tw.worker.errors.counts == {("in", "frame"): 1}


# ------------------------------------------------------------------------------------------
# wallaroo-run: SIGTERM flush and the progress line


def _kernel_send_buffer_max() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


def test_sigterm_flushes_every_processed_output(tmp_path, processes, closing):
    lst = socket.socket()
    # a small receive buffer (inherited by the accepted socket): output that the kernel cannot
    # hold waits in the worker's sink and must be flushed after SIGTERM
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    lst.bind((HOST, 0))
    lst.listen(1)
    lst.settimeout(5)
    closing(lst)
    out_port = lst.getsockname()[1]
    count_file = tmp_path / "count"
    pad = 3000
    proc = processes(
        [WALLAROO_RUN, "--app", "rt_sigterm_app", "--in", "in@127.0.0.1:0",
         "--out", f"127.0.0.1:{out_port}"],
        cwd=APPS, env=app_env(RT_COUNT_FILE=str(count_file), RT_PAD=str(pad)), timeout=15)
    start = proc.wait_stderr(STARTUP_RE)
    assert start["app"] == "rt sigterm" and int(start["pid"]) == proc.pid
    src = SOURCE_RE.search(start["rest"])
    assert src and src["name"] == "in" and src["host"] == HOST
    assert f"sink tcp://127.0.0.1:{out_port}" in start["rest"]

    conn, _ = lst.accept()  # the sink connects; we do not read yet
    closing(conn)
    client = socket.create_connection((HOST, int(src["port"])), timeout=5)
    closing(client)
    # output well beyond what socket buffers hold: the rest waits in the sink
    n = (_kernel_send_buffer_max() + 8 * 1024 * 1024) // pad
    client.sendall(frames([f"m{i}".encode() for i in range(n)]))
    time.sleep(0.7)
    proc.signal(signal.SIGTERM)
    data = recv_all(conn, timeout=15)
    assert proc.wait(15) == 0, proc.describe()
    processed = int(count_file.read_text())
    assert processed > 0
    # more output reached us than the kernel could have held at SIGTERM: the sink's own buffer
    # was flushed after the signal
    assert len(data) > _kernel_send_buffer_max() + 1024 * 1024
    lines = data.decode().split("\n")
    assert lines[-1] == ""  # only whole lines
    assert lines[:-1] == [f"m{i}:{'x' * pad}" for i in range(processed)]


PROGRESS_RUN_TIMEOUT = 60.0  # seconds for a progress run (about 2 s of work) to end


def _progress_run(tmp_path, processes, extra=(), stderr_tty=False):
    """Run rt_progress_app over a 100,000-line file, stderr on a pipe or a terminal, to its
    end (exit 0), and check its output file; return all it printed on stderr."""
    src = tmp_path / "in.txt"
    n = 100_000
    src.write_text("".join(f"{i:08d}-" + "p" * 50 + "\n" for i in range(n)))
    out = tmp_path / "out.txt"
    argv = [WALLAROO_RUN, "--app", "rt_progress_app", "--input", str(src), "--output", str(out),
            "--spin-us", "20", *extra]
    t0 = time.monotonic()
    proc = processes(argv, cwd=APPS, env=app_env(), stderr_tty=stderr_tty)
    assert proc.wait(PROGRESS_RUN_TIMEOUT) == 0, proc.describe()
    assert time.monotonic() - t0 > 1.5, "the run was too short to show progress"
    got = out.read_text().split("\n")
    assert len(got) == n + 1
    assert got[0] == "00000000-" + "P" * 50 and got[n - 1] == f"{n - 1:08d}-" + "P" * 50
    text = proc.stderr
    assert 'wallaroo: running "rt progress"' in text
    return text, n


def test_progress_line_on_a_terminal(tmp_path, processes):
    text, n = _progress_run(tmp_path, processes, stderr_tty=True)
    shown = re.findall(r"([\d,]+) items\s+[\d,]+/s\s+(\d+)% of input", text)
    assert shown, text[-500:]
    for items, share in shown:
        assert 0 < int(items.replace(",", "")) <= n
        assert 0 <= int(share) <= 100


@pytest.mark.parametrize("mode", ["pipe", "no-progress-flag"])
def test_no_progress_line_when_not_wanted(tmp_path, processes, mode):
    if mode == "pipe":
        text, _ = _progress_run(tmp_path, processes)
    else:  # a terminal, but --no-progress
        text, _ = _progress_run(tmp_path, processes, extra=("--no-progress",), stderr_tty=True)
    assert "% of input" not in text and " items " not in text


# ------------------------------------------------------------------------------------------
# wallaroo.testing


def test_testing_run_times_out_on_an_endless_generator():
    class Endless:
        def initial_value(self):
            return 0

        def apply(self, n):
            return n + 1

    p = (wallaroo.source("g", wallaroo.GenSourceConfig("g", Endless()))
         .to_sink(wallaroo.StdoutSinkConfig(line_enc)))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        wallaroo.testing.run(wallaroo.build_application("endless", p), {}, timeout=0.5)
    assert time.monotonic() - t0 < 2.5


def test_testing_run_results_match_a_reference():
    @wallaroo.computation_multi(name="split")
    def split(s):
        return s.split()

    class Total:
        def __init__(self):
            self.n = 0

    @wallaroo.state_computation(name="len", state=Total)
    def total(word, state):
        state.n += len(word)
        return state.n

    lines = ["a bb ccc", "", "dd e"]
    p = (wallaroo.source("t", wallaroo.IterSourceConfig("t", [])).to(split).collect().to(total)
         .to_sinks([wallaroo.StdoutSinkConfig(line_enc), wallaroo.StdoutSinkConfig(line_enc)]))
    got = wallaroo.testing.run(wallaroo.build_application("tot", p), {"t": lines})
    running, expected = 0, []
    for w in " ".join(lines).split():
        running += len(w)
        expected.append(running)
    assert got == [expected, expected]
