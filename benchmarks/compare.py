"""Run each workload through wallaroo and through a plain-loop twin, side by side, in one run.

    python -m benchmarks.compare                          # every workload, every mode, 3 rounds
    python -m benchmarks.compare --rounds 5 word_count keyed_sum
    python -m benchmarks.compare --modes tcp --latency    # + latency at 10/50/90 % of peak
    python -m benchmarks.compare --soak 180 --modes none  # only the soak (RSS over time)
    python -m benchmarks.compare --smoke --scale 0.005    # a quick look (1 round allowed)

For every workload and mode it prints the engine's and the plain loop's throughput (items/s from
the median time of ``--rounds`` rounds, each round one engine run then one plain run), their
ratio (engine/plain: 1.00 = as fast as the plain loop), both peak RSS, and the engine's p50/p99
ingest-to-sink latency from its own histograms. Modes:

- ``inprocess``: a ``Worker`` on iterable sources (batches of 1,024 values), outputs dropped at
  the sink; the plain loop takes the same values 1,024 at a time and drops each chunk's outputs.
- ``testing``: ``wallaroo.testing.run`` (outputs collected in a list); the plain loop collects
  its outputs in a list too.
- ``files``: ``wallaroo-run`` on framed input files (``FileSourceConfig`` with the workload's
  decoder) writing a file (``FileSinkConfig`` with its encoder); throughput from the run time in
  ``--stats-file`` (interpreter start and imports excluded). The plain loop reads the same files
  256 KiB at a time, cuts frames in Python, decodes, runs, encodes and writes (flush per read,
  fsync at the end), like the engine.
- ``tcp``: ``wallaroo-run`` with TCP sources and sink on 127.0.0.1, fed flat out by a sender
  thread, drained by a receiver thread; time from the first byte sent to the last output byte
  received. The plain loop takes the same framed bytes from memory (256 KiB at a time), cuts,
  decodes, runs, encodes and writes each read's output to a TCP socket, drained the same way.

Every engine run's output is checked against the plain loop's (as multisets where the order
across keys is free; for market spread, against every valid interleaving of its two sources); a
mismatch stops the run with ``WorkloadMismatch``. Engine and plain runs each happen in a forked
child (or the ``wallaroo-run`` process), so one run's garbage never weighs on the next.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # python benchmarks/compare.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wallaroo.testing  # noqa: E402
from wallaroo._core.histogram import Histogram  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.harness import BenchmarkError, Engine, Receiver, in_child  # noqa: E402
from benchmarks.workloads import (  # noqa: E402
    SENTINEL_SYMBOL, STAMPED, WORKLOADS, Workload, WorkloadMismatch, frame, market_payload,
    order_payload, split_messages,
)

MODES = ("inprocess", "testing", "files", "tcp")
IN_PROCESS = ("inprocess", "testing")
LATENCY_LEVELS = (0.10, 0.50, 0.90)
MB = 1024 * 1024


@dataclass
class Row:
    """One workload in one mode: the timings of every round and what goes in the table."""

    workload: str
    mode: str
    items: int
    unit: str
    messages: int
    engine_s: list = field(default_factory=list)
    plain_s: list = field(default_factory=list)
    engine_rss: list = field(default_factory=list)
    plain_rss: list = field(default_factory=list)
    latency: dict | None = None   # the engine's histogram (to_dict), all rounds merged
    engine_wall_s: list = field(default_factory=list)   # subprocess modes: start to exit

    @property
    def engine_rate(self) -> float:
        return self.items / statistics.median(self.engine_s)

    @property
    def plain_rate(self) -> float:
        return self.items / statistics.median(self.plain_s)

    @property
    def ratio(self) -> float:
        return self.engine_rate / self.plain_rate

    def add_round(self, engine_s: float, plain_s: float, engine_rss: int, plain_rss: int,
                  latency: dict | None = None) -> None:
        """Record one round: both timings, both RSS figures, and the engine's histogram."""
        self.engine_s.append(engine_s)
        self.plain_s.append(plain_s)
        self.engine_rss.append(engine_rss)
        self.plain_rss.append(plain_rss)
        if latency is not None:
            self.latency = _merge(self.latency, latency)

    def percentile(self, q: float) -> float | None:
        if not self.latency or not self.latency["count"]:
            return None
        return Histogram.from_dict(self.latency).percentile(q)

    def summary(self) -> dict:
        d = asdict(self)
        d.update(engine_rate=self.engine_rate, plain_rate=self.plain_rate, ratio=self.ratio,
                 p50_ns=self.percentile(0.5), p99_ns=self.percentile(0.99),
                 p999_ns=self.percentile(0.999))
        d.pop("latency")
        return d


def _merge(total: dict | None, h: dict) -> dict:
    if total is None:
        return h
    a = Histogram.from_dict(total)
    a.merge(Histogram.from_dict(h))
    return a.to_dict()


class Case:
    """A workload's input for one runner invocation, in every form the modes need."""

    def __init__(self, work: Workload, n: int, tmp: Path):
        self.work = work
        self.n = n
        self.tmp = tmp
        self.payloads = work.make_payloads(n)
        self.inputs = work.decode_payloads(self.payloads)
        self.messages = sum(len(v) for v in self.payloads.values())
        self.items = work.items(self.inputs)
        self._wire: dict[str, bytes] | None = None
        self._ref: bytes | None = None
        self._files: dict[str, str] | None = None

    @property
    def wire(self) -> dict[str, bytes]:
        if self._wire is None:
            self._wire = self.work.wire(self.payloads)
        return self._wire

    @property
    def reference(self) -> bytes:
        """The plain twin's encoded output for the whole input: what the engine must write."""
        if self._ref is None:
            self._ref = self.work.plain_wire_bytes(self.wire)
        return self._ref

    @property
    def files(self) -> dict[str, str]:
        if self._files is None:
            self._files = {}
            for name, data in self.wire.items():
                path = self.tmp / f"{self.work.name}.{name.replace(' ', '_')}.in"
                path.write_bytes(data)
                self._files[name] = str(path)
        return self._files

    def row(self, mode: str) -> Row:
        return Row(self.work.name, mode, self.items, self.work.unit, self.messages)


# --- in-process modes ---------------------------------------------------------------------------

def _check_slice(case: Case) -> None:
    """The engine against the plain loop on the first ``check_size`` values of each source."""
    w = case.work
    part = {name: values[:w.check_size] for name, values in case.inputs.items()}
    w.check(w.engine_outputs(part), w.plain_outputs(part), part)


def run_inprocess(case: Case, rounds: int) -> Row:
    w, row = case.work, case.row("inprocess")
    _check_slice(case)
    for _ in range(rounds):
        (seconds, hist, outputs), rss = in_child(_inprocess_engine, w, case.inputs)
        (plain_seconds, plain_outputs), plain_rss = in_child(w.run_plain, case.inputs)
        if w.validate is None and outputs != plain_outputs:
            raise WorkloadMismatch(f"{w.name} (inprocess): {outputs:,} outputs reached the "
                                   f"engine's sink, the plain loop made {plain_outputs:,}")
        row.add_round(seconds, plain_seconds, rss, plain_rss, hist)
    return row


def _inprocess_engine(w: Workload, inputs: dict) -> tuple[float, dict, int]:
    seconds, hist, outputs = w.run_engine(inputs)
    return seconds, hist.to_dict(), outputs


def run_testing(case: Case, rounds: int) -> Row:
    w, row = case.work, case.row("testing")
    for _ in range(rounds):
        (seconds, rss), _ = in_child(_testing_engine, w, case.inputs)
        plain_seconds, plain_rss = in_child(_testing_plain, w, case.inputs)
        row.add_round(seconds, plain_seconds, rss, plain_rss)
    return row


def _testing_engine(w: Workload, inputs: dict) -> tuple[float, int]:
    app = w.build_in_process()
    started = time.perf_counter()
    outputs = wallaroo.testing.run(app, inputs, timeout=3600)[0]
    seconds = time.perf_counter() - started
    growth = harness.rss_growth()
    w.check(outputs, w.plain_outputs(inputs), inputs)  # every output, after the timing
    return seconds, growth


def _testing_plain(w: Workload, inputs: dict) -> float:
    started = time.perf_counter()
    outputs = w.plain_outputs(inputs)
    seconds = time.perf_counter() - started
    del outputs
    return seconds


# --- files --------------------------------------------------------------------------------------

def run_files(case: Case, rounds: int) -> Row:
    w, row = case.work, case.row("files")
    reference, paths = case.reference, case.files
    out = case.tmp / f"{w.name}.out"
    args = [arg for name, path in paths.items() for arg in ("--bench-file", f"{name}={path}")]
    for _ in range(rounds):
        out.unlink(missing_ok=True)
        engine = Engine(w.name, case.tmp, [*args, "--bench-output", str(out)])
        engine.wait(timeout=3600)
        wall = time.monotonic() - engine.started_at
        stats = engine.stats()
        _check_stats(case, stats, case.messages)
        w.check_bytes(out.read_bytes(), reference, case.inputs)
        out.unlink()
        twin = run_twin(w.name, paths, ["--output", str(out)])
        if out.read_bytes() != reference:
            raise WorkloadMismatch(f"{w.name} (files): the plain loop wrote other bytes than "
                                   f"its own reference run")
        row.engine_wall_s.append(wall)
        row.add_round(stats["elapsed_s"], twin["seconds"], engine.peak_rss, twin["peak_rss"],
                      stats["sinks"][0]["latency_ns"])
    return row


def run_twin(workload: str, paths: dict, where: list[str], timeout: float = 3600) -> dict:
    """Run ``python -m benchmarks.twin`` (the plain twin in a process of its own)."""
    cmd = [sys.executable, "-m", "benchmarks.twin", workload,
           *[arg for name, path in paths.items() for arg in ("--file", f"{name}={path}")], *where]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(harness.ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(cmd, cwd=harness.ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise BenchmarkError(f"the plain twin failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_stats(case: Case, stats: dict, sent: int) -> None:
    if stats["ingested"] != sent:
        raise WorkloadMismatch(f"{case.work.name}: the engine ingested {stats['ingested']:,} "
                               f"messages of the {sent:,} sent")
    if stats.get("errors"):
        raise WorkloadMismatch(f"{case.work.name}: the engine counted errors: {stats['errors']}")


# --- scaling: the same files run on 1, 2, ... local workers ----------------------------------------

#: Workloads whose outputs, as a multiset, do not depend on the order in which a key's messages
#: arrive: several workers each read a share of a file, so a key's messages from different
#: shares reach its owner in no fixed order (word counts are 1, 2, 3... whatever the order;
#: a running sum's intermediate values are not).
SCALING_WORKLOADS = ("word_count", "stateless_chain")


def run_scaling(case: Case, counts: list[int], rounds: int) -> list[dict]:
    """``wallaroo-run --workers N`` on the workload's files for each N in ``counts``: the
    throughput from the moment every worker is reading (startup left out) to the end, its
    ratio to the first count's, and the plain twin's throughput on the same files (one
    process). Every round checks the part files hold exactly the twin's outputs."""
    twin_s = _twin_seconds(case, rounds)
    results = []
    for count in counts:
        seconds, walls, _ = _engine_on_files(case, rounds, ["--workers", str(count)],
                                             f"{count} workers")
        results.append({"workload": case.work.name, "workers": count, "items": case.items,
                        "processing_s": seconds, "wall_s": walls,
                        "rate": case.items / statistics.median(seconds),
                        "plain_rate": case.items / statistics.median(twin_s)})
    for r in results:
        r["speedup"] = r["rate"] / results[0]["rate"]
    return results


def run_resilience(case: Case, interval_s: float, rounds: int) -> dict:
    """The workload on files with checkpoints every ``interval_s`` seconds against the same
    run without resilience: throughput of each (every round's output checked), their ratio,
    and the checkpoints' median duration and size."""
    off, _, _ = _engine_on_files(case, rounds, [], "without resilience")
    folder = case.tmp / "resilience"
    folder.mkdir(exist_ok=True)
    on, _, stats = _engine_on_files(
        case, rounds, ["--run-with-resilience", "--resilience-dir", str(folder),
                       "--time-between-checkpoints", str(int(interval_s * 1e9))],
        "with resilience")
    checkpoints = [s["checkpoints"] for s in stats]
    return {"workload": case.work.name, "items": case.items, "interval_s": interval_s,
            "off_s": off, "on_s": on,
            "off_rate": case.items / statistics.median(off),
            "on_rate": case.items / statistics.median(on),
            "ratio": statistics.median(off) / statistics.median(on),
            "checkpoints": statistics.median(c["completed"] for c in checkpoints),
            "checkpoint_s": statistics.median(c.get("median_seconds", 0) for c in checkpoints),
            "checkpoint_bytes": statistics.median(c.get("median_bytes", 0) for c in checkpoints)}


def run_metrics_cost(case: Case, rounds: int) -> dict:
    """The workload on files with metrics on (the default: latency sampling, a report every
    second, the HTTP server) against ``--no-metrics``, rounds interleaved so that both see the
    same machine: throughput of each (every round's output checked) and their ratio."""
    on, off = [], []
    for _ in range(rounds):
        off += _engine_on_files(case, 1, ["--no-metrics"], "without metrics")[0]
        on += _engine_on_files(case, 1, [], "with metrics")[0]
    return {"workload": case.work.name, "items": case.items, "off_s": off, "on_s": on,
            "off_rate": case.items / statistics.median(off),
            "on_rate": case.items / statistics.median(on),
            "ratio": statistics.median(off) / statistics.median(on)}


def format_metrics_cost(r: dict) -> str:
    return (f"{r['workload']:<16}{r['items']:>12,}{r['off_rate']:>14,.0f}{r['on_rate']:>14,.0f}"
            f"{r['ratio']:>8.2f}")


def _twin_seconds(case: Case, rounds: int) -> list[float]:
    out = case.tmp / f"{case.work.name}.twin.out"
    seconds = []
    for _ in range(rounds):
        out.unlink(missing_ok=True)
        seconds.append(run_twin(case.work.name, case.files, ["--output", str(out)])["seconds"])
    return seconds


def _engine_on_files(case: Case, rounds: int, extra: list[str], how: str):
    """Run ``wallaroo-run`` with ``extra`` flags on the workload's files ``rounds`` times;
    (processing seconds, wall seconds, stats) of each round, once its output (all part files)
    is checked to hold exactly the plain twin's outputs."""
    w = case.work
    out = case.tmp / f"{w.name}.engine.out"
    args = [arg for name, path in case.files.items() for arg in ("--bench-file", f"{name}={path}")]
    expected = Counter(split_messages(case.reference, w.out_framing))
    seconds, walls, stats_of = [], [], []
    for _ in range(rounds):
        for part in case.tmp.glob(f"{out.name}*"):
            part.unlink()
        engine = Engine(w.name, case.tmp, [*args, "--bench-output", str(out), *extra])
        engine.wait(timeout=3600)
        walls.append(time.monotonic() - engine.started_at)
        stats = engine.stats()
        _check_stats(case, stats, case.messages)
        written = b"".join(p.read_bytes() for p in sorted(case.tmp.glob(f"{out.name}*")))
        if Counter(split_messages(written, w.out_framing)) != expected:
            raise WorkloadMismatch(f"{w.name} ({how}): the output files do not hold the plain "
                                   f"loop's outputs")
        seconds.append(stats["processing_s"])
        stats_of.append(stats)
    return seconds, walls, stats_of


def format_resilience(r: dict) -> str:
    return (f"{r['workload']:<16}{r['items']:>12,}{r['off_rate']:>14,.0f}{r['on_rate']:>14,.0f}"
            f"{r['ratio']:>8.2f}{r['checkpoints']:>8.0f}{r['checkpoint_s'] * 1000:>10.1f}"
            f"{r['checkpoint_bytes'] / 1e6:>10.2f}")


def format_scaling(r: dict) -> str:
    return (f"{r['workload']:<16}{r['workers']:>8}{r['items']:>12,}{r['rate']:>14,.0f}"
            f"{r['speedup']:>9.2f}{r['plain_rate']:>14,.0f}{r['rate'] / r['plain_rate']:>8.2f}"
            f"{statistics.median(r['wall_s']):>9.2f}")


# --- TCP ----------------------------------------------------------------------------------------

def run_tcp(case: Case, rounds: int) -> Row:
    w, row = case.work, case.row("tcp")
    reference = case.reference
    for _ in range(rounds):
        seconds, stats, data, engine_rss = tcp_engine_round(case)
        w.check_bytes(data, reference, case.inputs)
        plain_seconds, plain_rss, received = _tcp_plain_round(case)
        if received != len(reference):
            raise WorkloadMismatch(f"{w.name} (tcp): the plain loop's receiver got "
                                   f"{received:,} bytes, its reference has {len(reference):,}")
        row.add_round(seconds, plain_seconds, engine_rss, plain_rss,
                      stats["sinks"][0]["latency_ns"])
    return row


def _sentinel_watch(rx: Receiver) -> None:
    """Market spread: note when the last output is a sentinel order's result, and whether it
    was checked against the sentinel quote (then both streams were fully processed)."""
    size = 4 + 55
    if rx.nbytes % size or rx.nbytes < size:
        return
    tail = rx.tail(size - 4)
    side, oid, account, symbol, qty, price, bid, offer, t = struct.unpack(">BI6s4sddddQ", tail)
    if symbol.decode().rstrip() == SENTINEL_SYMBOL:
        rx.sentinels = getattr(rx, "sentinels", 0) + 1
        if bid == 1.0:
            rx.confirmed = rx.last_read


def tcp_engine_round(case: Case, timeout: float = 600) -> tuple[float, dict, bytes, int]:
    """Feed the whole input to a ``wallaroo-run`` over TCP flat out; return the seconds from the
    first byte sent to the last output byte received, the engine's stats, its output and its
    peak RSS."""
    w = case.work
    market = w.name == "market_spread"
    rx = Receiver(keep=True, watch=_sentinel_watch if market else None).start()
    sources = ",".join(f"{name}@127.0.0.1:0" for name in w.sources)
    engine = Engine(w.name, case.tmp, ["--in", sources, "--out", f"127.0.0.1:{rx.port}"])
    socks = {}
    try:
        ports = engine.wait_started()
        socks = {name: harness.connect(ports[name]) for name in w.sources}
        if not rx.connected.wait(30):
            raise BenchmarkError(f"the engine's sink did not connect. {engine.describe()}")
        data = dict(case.wire)
        sent = case.messages
        if market:  # a wide quote for the sentinel symbol ends the market data stream
            data["Market Data"] += frame(market_payload(SENTINEL_SYMBOL, 0, 1.0, 2.0))
            sent += 1
        started = time.monotonic()
        threads = harness.send_all(socks, data)
        tail = sum(len(m) + (4 if w.out_framing == "frames" else 1) for m in
                   split_messages(case.reference, w.out_framing)[-w.tail_messages:]) \
            if w.tail_messages else 0
        if market:
            for t in threads:
                t.join()
            sent += _confirm_sentinel(rx, socks["Orders"], timeout)
            finished = rx.confirmed
        else:
            want = len(case.reference) - tail
            rx.wait_for(lambda r: r.nbytes >= want, timeout, f"{want:,} output bytes")
            finished = rx.last_read
            for t in threads:
                t.join()
        seconds = finished - started
        for sock in socks.values():
            sock.close()
        engine.stop()
        rx.wait_closed(60)
    finally:
        for sock in socks.values():
            sock.close()
        engine.kill()
        rx.close()
    stats = engine.stats()
    _check_stats(case, stats, sent)
    return seconds, stats, rx.data, engine.peak_rss


def _confirm_sentinel(rx: Receiver, orders, timeout: float) -> int:
    """Send sentinel orders until one comes back checked against the sentinel quote (the last
    quote): then every quote and every order before it was processed. Returns how many."""
    deadline = time.monotonic() + timeout
    count = 0
    rx.confirmed = None
    while rx.confirmed is None:
        if time.monotonic() > deadline:
            raise BenchmarkError("market_spread: the sentinel quote never reached the engine")
        before = getattr(rx, "sentinels", 0)
        count += 1
        orders.sendall(frame(order_payload(2_000_000_000 + count, "AC0000", SENTINEL_SYMBOL, 1,
                                           1.0, 1.0, 0)))
        rx.wait_for(lambda r: getattr(r, "sentinels", 0) > before, timeout, "a sentinel result")
        if rx.confirmed is None:
            time.sleep(0.001)
    return count


def _tcp_plain_round(case: Case) -> tuple[float, int, int]:
    """The plain twin over the in-memory frames, writing to a socket that a receiver drains;
    returns the seconds from its start to the last byte received, its peak RSS and the bytes."""
    rx = Receiver(keep=False).start()
    try:
        twin = run_twin(case.work.name, case.files, ["--tcp", str(rx.port)])
        rx.wait_closed(600)
    finally:
        rx.close()
    return rx.last_read - twin["started"], twin["peak_rss"], rx.nbytes


# --- latency and soak ---------------------------------------------------------------------------

def outside_latencies(data: bytes, read_ends: list[int], read_times: list[int]):
    """Per output line ending in `` <send time ns>``: receive time − send time (ns, numpy)."""
    import numpy as np

    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.asarray(read_ends, dtype=np.int64)
    times = np.asarray(read_times, dtype=np.int64)
    newlines = np.flatnonzero(arr == 10)
    powers = 10 ** np.arange(18, -1, -1, dtype=np.int64)
    out = []
    for i in range(0, len(newlines), 500_000):
        nl = newlines[i:i + 500_000]
        digits = arr[nl[:, None] + np.arange(-19, 0)].astype(np.int64) - 48
        if (digits < 0).any() or (digits > 9).any() or (arr[nl - 20] != 32).any():
            raise BenchmarkError("latency: an output line does not end in a 19-digit timestamp")
        sent = digits @ powers
        got = times[np.searchsorted(ends, nl, side="right")]
        out.append(got - sent)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _stamped_frames(sw: Workload, n: int) -> tuple[list[bytes], list[int]]:
    payloads = sw.make_payloads(n)["in"]
    values = sw.decode_payloads({"in": payloads})["in"]
    per_frame = [len(out) for out in sw.plain([v] for v in values)]
    return [frame(p) for p in payloads], per_frame


def peak_rate(sw: Workload, scale: float, rounds: int, tmp: Path) -> tuple[float, list[float]]:
    """Messages/s of the stamped workload over TCP, flat out (median of ``rounds``)."""
    case = Case(sw, max(1000, int(sw.size * scale)), tmp)
    rates = []
    for _ in range(rounds):
        seconds, _stats, data, _rss = tcp_engine_round(case)
        sw.check_bytes(data, case.reference, case.inputs)
        rates.append(case.messages / seconds)
    return statistics.median(rates), rates


def paced_run(sw: Workload, frames, per_frame, rate: float, seconds: float, tmp: Path,
              rx: Receiver, tag: str, interval: float = 0.001, every_second=None):
    """A fresh engine fed by a paced sender at ``rate`` messages/s for ``seconds`` (writing what
    is due every ``interval`` s; ``every_second(pid)`` is called each second meanwhile); waits
    for every output, stops the engine cleanly. Returns the sender, the engine and its stats."""
    engine = Engine(sw.name, tmp, ["--in", "in@127.0.0.1:0", "--out", f"127.0.0.1:{rx.port}"],
                    tag=tag)
    sock = None
    try:
        ports = engine.wait_started()
        sock = harness.connect(ports["in"])
        rx.connected.wait(30)
        sender = harness.PacedSender(sock, frames, rate, seconds, per_frame,
                                     interval=interval).start()
        started = time.monotonic()
        ticks = 0
        while every_second is not None and sender.thread.is_alive():
            every_second(engine.pid)
            ticks += 1
            time.sleep(max(0.0, started + ticks - time.monotonic()))
        sender.join()
        want = sender.expected_outputs
        rx.wait_for(lambda r: r.newlines >= want, 120, f"{want:,} outputs")
        sock.close()
        engine.stop()
        rx.wait_closed(60)
    finally:
        if sock is not None:
            sock.close()
        engine.kill()
        rx.close()
    stats = engine.stats()
    if stats["ingested"] != sender.sent:
        raise WorkloadMismatch(f"{tag}: sent {sender.sent:,}, the engine ingested "
                               f"{stats['ingested']:,}")
    return sender, engine, stats


def run_level(sw: Workload, frames, per_frame, rate: float, seconds: float, tmp: Path,
              interval: float = 0.001) -> dict:
    """One latency level: a fresh engine, a paced sender at ``rate`` messages/s for ``seconds``,
    writing what is due every ``interval`` seconds."""
    rx = Receiver(keep=True, stamps=True).start()
    sender, engine, stats = paced_run(sw, frames, per_frame, rate, seconds, tmp, rx, "latency",
                                      interval)
    want = sender.expected_outputs
    import numpy as np

    lat = outside_latencies(rx.data, rx.read_ends, rx.read_times)
    if len(lat) != want:
        raise WorkloadMismatch(f"latency: {len(lat):,} outputs arrived, {want:,} expected")
    hist = Histogram.from_dict(stats["sinks"][0]["latency_ns"])
    p = np.percentile(lat, [50, 99, 99.9]) if len(lat) else [0, 0, 0]
    return {"rate": rate, "sent": sender.sent, "achieved": sender.sent / seconds,
            "sender_lag_s": sender.lag, "outputs": want,
            "engine_p50": hist.percentile(0.5), "engine_p99": hist.percentile(0.99),
            "engine_p999": hist.percentile(0.999), "outside_p50": float(p[0]),
            "outside_p99": float(p[1]), "outside_p999": float(p[2]),
            "peak_rss_bytes": engine.peak_rss}


def run_latency(names: list[str], args, tmp: Path) -> list[dict]:
    results = []
    for name in names:
        sw = STAMPED[name]
        if name in args.peak:
            peak, rates = args.peak[name], []
            how = "given with --peak"
        else:
            peak, rates = peak_rate(sw, args.scale, args.rounds, tmp)
            how = f"median of {', '.join(f'{r:,.0f}' for r in rates)}"
        print(f"\n# latency: {sw.name}: peak {peak:,.0f} msgs/s over TCP ({how}); "
              f"{args.latency_seconds:g} s per level, paced every {args.latency_interval * 1e3:g}"
              f" ms; latency per output message, us")
        print(f"{'level':>6}{'msgs/s':>10}{'sent/s':>10}  {'engine p50':>10}{'p99':>9}{'p99.9':>9}"
              f"  {'outside p50':>11}{'p99':>9}{'p99.9':>9}{'RSS':>8}")
        n = int(peak * 0.9 * args.latency_seconds) + 1000
        frames, per_frame = _stamped_frames(sw, min(n, 2_000_000))
        for level in LATENCY_LEVELS:
            r = run_level(sw, frames, per_frame, peak * level, args.latency_seconds, tmp,
                          args.latency_interval)
            r.update(workload=sw.name, level=level, peak=peak, peak_rounds=rates,
                     interval=args.latency_interval)
            results.append(r)
            print(f"{level:>6.0%}{r['rate']:>10,.0f}{r['achieved']:>10,.0f}  "
                  f"{_us(r['engine_p50']):>10}{_us(r['engine_p99']):>9}{_us(r['engine_p999']):>9}"
                  f"  {_us(r['outside_p50']):>11}{_us(r['outside_p99']):>9}"
                  f"{_us(r['outside_p999']):>9}{r['peak_rss_bytes'] / MB:>6.0f}MB", flush=True)
    return results


def run_soak(name: str, seconds: float, rate: float | None, args, tmp: Path) -> dict:
    """A steady rate for ``seconds``; the engine's RSS sampled every second."""
    sw = STAMPED[name]
    if rate is None:
        peak, _ = peak_rate(sw, args.scale, 1, tmp)
        rate = peak * 0.5
    frames, per_frame = _stamped_frames(sw, max(1000, int(sw.size * args.scale)))
    samples: list[tuple[float, int]] = []
    started = time.monotonic()

    def sample(pid: int) -> None:
        samples.append((time.monotonic() - started, harness.rss_of(pid)))

    sender, _engine, stats = paced_run(sw, frames, per_frame, rate, seconds, tmp,
                                       Receiver(keep=False).start(), "soak", every_second=sample)
    hist = Histogram.from_dict(stats["sinks"][0]["latency_ns"])
    half = samples[len(samples) // 2:]
    result = {"workload": sw.name, "seconds": seconds, "rate": rate, "sent": sender.sent,
              "samples": len(samples), "first_rss": samples[0][1] if samples else 0,
              "last_rss": samples[-1][1] if samples else 0,
              "max_rss": max(s[1] for s in samples) if samples else 0,
              "slope_bytes_per_s": _slope(samples), "slope_second_half": _slope(half),
              "engine_p99": hist.percentile(0.99), "rss_samples": samples}
    print(f"\n# soak: {sw.name} at {rate:,.0f} msgs/s for {seconds:g} s ({sender.sent:,} messages"
          f"), engine RSS sampled every second ({len(samples)} samples)")
    print(f"first {result['first_rss'] / MB:.1f} MB, last {result['last_rss'] / MB:.1f} MB, max "
          f"{result['max_rss'] / MB:.1f} MB; slope {result['slope_bytes_per_s']:,.0f} B/s overall, "
          f"{result['slope_second_half']:,.0f} B/s over the second half; engine p99 "
          f"{_us(result['engine_p99'])} us")
    return result


def _slope(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time (bytes/s)."""
    if len(samples) < 2:
        return 0.0
    xs = [s[0] for s in samples]
    ys = [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


# --- state memory per key ------------------------------------------------------------------------

def state_per_key(w: Workload, k: int) -> dict:
    """Bytes of state per key, engine and plain loop: tracemalloc, runs with K and 2K keys.

    Each run sees every one of its keys exactly once. The bytes still allocated after the run
    (the worker, or the plain loop's dict of states, kept alive) are measured against before
    it; the difference between 2K and K keys, divided by K, is the cost of one more key: the
    dict entry, the state object and its attributes, and the key string where the run made it
    (word count's words come from ``split``). Python allocations only (tracemalloc); allocator
    slack and fragmentation are not counted.
    """
    result = {"workload": w.name, "k": k}
    for side, fn in (("engine", _traced_engine), ("plain", _traced_plain)):
        small, _ = in_child(fn, w, k)
        large, _ = in_child(fn, w, 2 * k)
        result[side] = (large - small) / k
    return result


def _traced_engine(w: Workload, k: int) -> int:
    inputs = w.keyed_inputs(k)
    worker = w.worker(inputs)
    gc.collect()
    tracemalloc.start()
    asyncio.run(worker.run())
    gc.collect()
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return used


def _traced_plain(w: Workload, k: int) -> int:
    inputs = w.keyed_inputs(k)
    states: dict = {}
    gc.collect()
    tracemalloc.start()
    for _ in w.plain(w.value_chunks(inputs), states):
        pass
    gc.collect()
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return used


# --- the table ----------------------------------------------------------------------------------

def _us(ns: float | None) -> str:
    return "-" if ns is None else f"{ns / 1e3:,.0f}"


HEADER = (f"{'workload':<16}{'mode':<10}{'items':>11}{'unit':>6}{'engine/s':>12}{'plain/s':>12}"
          f"{'ratio':>7}{'eng RSS':>9}{'plain RSS':>10}{'p50 us':>9}{'p99 us':>9}")


def _mb(values: list[int], mode: str) -> str:
    """Median of ``values`` in MB; in-process modes report growth during the run (``+``)."""
    sign = "+" if mode in IN_PROCESS else ""
    return f"{sign}{statistics.median(values) / MB:.0f}MB"


def format_row(row: Row) -> str:
    return (f"{row.workload:<16}{row.mode:<10}{row.items:>11,}{row.unit:>6}"
            f"{row.engine_rate:>12,.0f}{row.plain_rate:>12,.0f}{row.ratio:>7.2f}"
            f"{_mb(row.engine_rss, row.mode):>9}{_mb(row.plain_rss, row.mode):>10}"
            f"{_us(row.percentile(0.5)):>9}{_us(row.percentile(0.99)):>9}")


RUNNERS = {"inprocess": run_inprocess, "testing": run_testing, "files": run_files,
           "tcp": run_tcp}


def _commit() -> str:
    try:
        found = subprocess.run(["git", "-C", str(harness.ROOT), "log", "-1", "--format=%h %s"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    dirty = ""
    if found:
        status = subprocess.run(["git", "-C", str(harness.ROOT), "status", "--porcelain",
                                 "--untracked-files=no", "--", "wallaroo", "setup.py"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = " (+ uncommitted changes to wallaroo/)" if status else ""
    return (found[:100] + dirty) if found else f"{harness.ROOT} (not a git checkout)"


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=list(WORKLOADS),
                        help=f"some of: {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per workload and mode "
                        "(at least 3; medians are reported)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply input sizes")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, from {','.join(MODES)} (or 'none')")
    parser.add_argument("--latency", nargs="?", const="word_count,keyed_sum", default=None,
                        metavar="WORKLOADS", help="also measure latency at 10/50/90%% of the "
                        "TCP peak (default workloads: word_count,keyed_sum)")
    parser.add_argument("--latency-seconds", type=float, default=5.0,
                        help="seconds per latency level (default 5)")
    parser.add_argument("--latency-interval", type=float, default=0.00025, metavar="SECONDS",
                        help="the paced sender writes what is due this often (default 0.00025)")
    parser.add_argument("--peak", default="", metavar="NAME=RATE,...",
                        help="peak rates (msgs/s) to take instead of measuring them, e.g. "
                             "word_count=137000 (to compare latency at the same rates)")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="also run a steady rate this long, sampling the engine's RSS")
    parser.add_argument("--soak-workload", default="word_count", choices=sorted(STAMPED))
    parser.add_argument("--soak-rate", type=float, help="messages/s (default: half the peak)")
    parser.add_argument("--state-keys", type=int, default=None, metavar="K",
                        help="state bytes per key from runs with K and 2K keys (default "
                             "50,000 x scale; 0 skips)")
    parser.add_argument("--scaling", nargs="?", const="1,2", default=None, metavar="COUNTS",
                        help="also run the workloads on files with --workers for each count "
                             "(default 1,2) and report the speedup over the first")
    parser.add_argument("--scaling-workloads", default="word_count",
                        help="workloads for --scaling (default word_count)")
    parser.add_argument("--resilience", nargs="?", const=1.0, default=None, type=float,
                        metavar="SECONDS", help="also run the workloads on files with "
                        "checkpoints every SECONDS (default 1) against none")
    parser.add_argument("--resilience-workloads", default="word_count,keyed_sum",
                        help="workloads for --resilience (default word_count,keyed_sum)")
    parser.add_argument("--metrics-cost", nargs="?", const="word_count,keyed_sum", default=None,
                        metavar="NAMES", help="also run these workloads on files with metrics on "
                        "against --no-metrics (default word_count,keyed_sum)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick check that everything runs: allows --rounds 1")
    args = parser.parse_args(argv)
    unknown = [name for name in args.workloads if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    args.modes = [] if args.modes == "none" else [m.strip() for m in args.modes.split(",")]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        parser.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    if args.rounds < (1 if args.smoke else 3):
        parser.error("--rounds must be at least 3 (medians of fewer runs are noise); "
                     "--smoke allows 1")
    if args.latency:
        args.latency = [n.strip() for n in args.latency.split(",")]
        bad = [n for n in args.latency if n not in STAMPED]
        if bad:
            parser.error(f"--latency runs on {', '.join(STAMPED)}, not {', '.join(bad)}")
    try:
        args.peak = {k: float(v) for k, v in (item.split("=") for item in
                                                filter(None, args.peak.split(",")))}
    except ValueError:
        parser.error("--peak takes NAME=RATE[,NAME=RATE...], e.g. word_count=137000")
    if args.scaling:
        try:
            args.scaling = [int(n) for n in args.scaling.split(",")]
        except ValueError:
            parser.error("--scaling takes worker counts, e.g. 1,2")
        args.scaling_workloads = [n.strip() for n in args.scaling_workloads.split(",")]
        bad = [n for n in args.scaling_workloads if n not in SCALING_WORKLOADS]
        if bad:
            parser.error(f"--scaling-workloads: {', '.join(bad)} cannot be checked on several "
                         f"workers; choose from {', '.join(SCALING_WORKLOADS)}")
    if args.state_keys is None:
        args.state_keys = max(1000, int(50_000 * args.scale))
    if args.metrics_cost:
        args.metrics_cost = [n.strip() for n in args.metrics_cost.split(",")]
        unknown = [n for n in args.metrics_cost if n not in WORKLOADS]
        if unknown:
            parser.error(f"--metrics-cost: unknown {', '.join(unknown)}")
    args.resilience_workloads = [n.strip() for n in args.resilience_workloads.split(",")]
    unknown = [n for n in args.resilience_workloads if n not in WORKLOADS]
    if unknown:
        parser.error(f"--resilience-workloads: unknown {', '.join(unknown)}")
    return args


def _scaled_case(name: str, scale: float, tmp: Path) -> Case:
    """Workload ``name``'s inputs at ``scale`` times its size (at least 200 items)."""
    work = WORKLOADS[name]
    return Case(work, max(200, int(work.size * scale)), tmp)


def _section(title: str, header: str, format_row, results) -> list[dict]:
    """Print a section of the report: its title, its header, then each result (a dict, as it
    comes: every row shows as soon as it is measured); the results, for the JSON report."""
    print(f"\n# {title}")
    print(header)
    rows = []
    for r in results:
        rows.append(r)
        print(format_row(r), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict = {"commit": _commit(), "python": platform.python_version(),
                    "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
                    "rounds": args.rounds, "scale": args.scale, "rows": []}
    load = os.getloadavg()
    print(f"# {report['commit']}\n# {report['machine']}, Python {report['python']}, load "
          f"{load[0]:.2f}; medians of {args.rounds} round(s); ratio = engine/plain throughput "
          f"(1.00 = as fast as the plain loop); RSS: median peak RSS of the process (files, tcp) or "
          f"+growth during the run (in-process); p50/p99: the engine's ingest-to-sink latency "
          f"histogram, all rounds")
    with tempfile.TemporaryDirectory(prefix="wallaroo-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if args.modes:
            print(HEADER, flush=True)
        for name in args.workloads if args.modes else []:
            case = _scaled_case(name, args.scale, tmp)
            for mode in args.modes:
                row = RUNNERS[mode](case, args.rounds)
                report["rows"].append(row.summary())
                print(format_row(row), flush=True)
            del case
            gc.collect()
        if args.state_keys and args.modes:
            keyed = [n for n in args.workloads if WORKLOADS[n].keyed_inputs is not None]
            if keyed:
                print(f"\n# state per key: tracemalloc, (bytes after a run with 2K keys - with K "
                      f"keys) / K, K = {args.state_keys:,}")
                print(f"{'workload':<16}{'engine B/key':>14}{'plain B/key':>13}")
            report["state"] = []
            for name in keyed:
                r = state_per_key(WORKLOADS[name], args.state_keys)
                report["state"].append(r)
                print(f"{name:<16}{r['engine']:>14,.0f}{r['plain']:>13,.0f}", flush=True)
        if args.scaling:
            report["scaling"] = _section(
                f"scaling: wallaroo-run --workers N on files; rate from every worker reading to "
                f"the end (startup left out, wall = whole run in s); speedup over "
                f"{args.scaling[0]} worker(s); plain = the twin in one process",
                f"{'workload':<16}{'workers':>8}{'items':>12}{'items/s':>14}{'speedup':>9}"
                f"{'plain/s':>14}{'ratio':>8}{'wall':>9}", format_scaling,
                (r for name in args.scaling_workloads
                 for r in run_scaling(_scaled_case(name, args.scale, tmp), args.scaling,
                                      args.rounds)))
        if args.resilience:
            report["resilience"] = _section(
                f"resilience: wallaroo-run on files, checkpoints every {args.resilience:g} s "
                f"against none (1 worker); ratio = with / without; checkpoint: median duration "
                f"(ms, barrier to all acknowledged) and size (MB)",
                f"{'workload':<16}{'items':>12}{'off/s':>14}{'on/s':>14}{'ratio':>8}"
                f"{'ckpts':>8}{'ckpt ms':>10}{'ckpt MB':>10}", format_resilience,
                (run_resilience(_scaled_case(name, args.scale, tmp), args.resilience, args.rounds)
                 for name in args.resilience_workloads))
        if args.metrics_cost:
            report["metrics_cost"] = _section(
                "metrics: wallaroo-run on files with metrics on (the default) against "
                "--no-metrics (1 worker, rounds interleaved); ratio = on / off",
                f"{'workload':<16}{'items':>12}{'off/s':>14}{'on/s':>14}{'ratio':>8}",
                format_metrics_cost,
                (run_metrics_cost(_scaled_case(name, args.scale, tmp), args.rounds)
                 for name in args.metrics_cost))
        if args.latency:
            report["latency"] = run_latency(args.latency, args, tmp)
        if args.soak:
            report["soak"] = run_soak(args.soak_workload, args.soak, args.soak_rate, args, tmp)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
