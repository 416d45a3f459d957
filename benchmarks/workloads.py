"""Benchmark workloads: each one built as a wallaroo app and as the plain Python loop doing the
same work, so the two can be timed side by side in the same run.

Example::

    >>> w = WORKLOADS["word_count"]
    >>> lines = w.make_input(10)
    >>> w.plain(lines) == w.engine_outputs(lines)
    True
    >>> w = WORKLOADS["windowed_sum"]          # outputs compared as multisets
    >>> events = w.make_input(30_000)
    >>> w.same_outputs(w.engine_outputs(events), w.plain(events))
    True
"""
from __future__ import annotations

import heapq
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import wallaroo
import wallaroo.testing
from wallaroo.runtime.worker import RunOptions, Worker
from wallaroo.api.configs import IterSourceConfig, SinkConfig


class _LatencySinkConfig(SinkConfig):
    kind = "memory"


@dataclass
class Workload:
    """A named piece of work: input maker, the app, and its plain-Python twin."""

    name: str
    make_input: Callable[[int], list]
    build: Callable[[], wallaroo.Application]
    plain: Callable[[list], list]
    #: The app's source name (the runner replaces that source by the input values).
    source: str = "in"
    #: Whether the engine and the plain loop emit in the same order; if not, only the multisets
    #: of outputs must agree (windows firing together may emit their keys in any order).
    ordered: bool = True
    #: How many input values the runner's sanity check pushes through both.
    check_size: int = 1000

    def engine_outputs(self, values: list) -> list:
        """The app's outputs for ``values`` (through wallaroo.testing)."""
        return wallaroo.testing.run(self.build(), {self.source: values}, timeout=120)[0]

    def same_outputs(self, engine: list, plain: list) -> bool:
        """True when the engine's outputs match the plain loop's (as multisets if not ordered)."""
        if self.ordered:
            return engine == plain
        return Counter(map(repr, engine)) == Counter(map(repr, plain))

    def run_engine(self, values: list) -> tuple[float, list[int]]:
        """Seconds to process ``values`` through a worker, and per-batch latencies (ns).

        Latency of a batch is the time from its ingest at the source to its arrival at the sink.
        """
        import asyncio

        latencies: list[int] = []
        worker = Worker(self.build(), RunOptions(),
                        {self.source: IterSourceConfig(self.source, values)},
                        {0: _LatencySinkConfig()})
        sink = worker.sinks[0]

        def push(batch, _latencies=latencies):
            _latencies.append(time.time_ns() - batch.ingest_ns)

        sink.push = push
        started = time.perf_counter()
        asyncio.run(worker.run())
        return time.perf_counter() - started, latencies

    def run_plain(self, values: list) -> float:
        """Seconds for the plain Python loop over ``values``."""
        started = time.perf_counter()
        self.plain(values)
        return time.perf_counter() - started


# --- word count: split lines, key by word, count per word --------------------------------------

WORDS = [f"w{i}" for i in range(5000)]


def _lines(n: int) -> list[str]:
    rng = random.Random(42)
    return [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(n)]


class WordTotal:
    def __init__(self):
        self.count = 0


@wallaroo.computation_multi(name="split")
def split(line):
    return line.split()


@wallaroo.key_extractor
def word_key(word):
    return word


@wallaroo.state_computation(name="count word", state=WordTotal)
def count_word(word, total):
    total.count += 1
    return (word, total.count)


@wallaroo.encoder
def encode_pair(pair):
    return f"{pair[0]} => {pair[1]}\n"


def _word_count_app():
    p = (wallaroo.source("in", IterSourceConfig("in", []))
         .to(split).key_by(word_key).to(count_word)
         .to_sink(wallaroo.StdoutSinkConfig(encode_pair)))
    return wallaroo.build_application("word count", p)


def _word_count_plain(lines: list[str]) -> list:
    """The same user functions, called from a plain loop with a dict of states."""
    totals: dict[str, WordTotal] = {}
    out = []
    for line in lines:
        for word in split.compute_multi(line):
            key = word_key.extract_key(word)
            total = totals.get(key)
            if total is None:
                total = totals[key] = WordTotal()
            out.append(count_word.compute(word, total))
    return out


# --- stateless chain: three maps and a filter over ints ----------------------------------------

@wallaroo.computation(name="double")
def double(x):
    return x * 2


@wallaroo.computation(name="inc")
def inc(x):
    return x + 1


@wallaroo.computation(name="keep thirds")
def keep_thirds(x):
    return x if x % 3 == 0 else None


def _stateless_app():
    p = (wallaroo.source("in", IterSourceConfig("in", []))
         .to(double).to(inc).to(keep_thirds)
         .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
    return wallaroo.build_application("stateless chain", p)


def _stateless_plain(values: list[int]) -> list[int]:
    """The same user functions, called from a plain loop."""
    out = []
    for x in values:
        y = keep_thirds.compute(inc.compute(double.compute(x)))
        if y is not None:
            out.append(y)
    return out


# --- windowed sum: tumbling 100 ms event-time windows, sum per key, 1,000 keys ------------------

WINDOW_KEYS = [f"k{i}" for i in range(1000)]
WINDOW_RANGE = wallaroo.milliseconds(100)
#: Allowed lateness: larger than the input's disorder, so no message is late.
WINDOW_DELAY = wallaroo.milliseconds(5)
#: Event time advances by this much per message (20 windows for 200,000 messages)...
WINDOW_STEP = wallaroo.microseconds(10)
#: ...and each message is up to this much older than its position says (slight disorder).
WINDOW_JITTER = wallaroo.milliseconds(1)
#: A realistic epoch (ns): 2023-11-14 22:13:20 UTC; a multiple of the window range.
WINDOW_EPOCH = 1_700_000_000 * 1_000_000_000


def _windowed_input(n: int) -> list[tuple[str, int, int]]:
    """``n`` tuples (key, event_time_ns, value): event times rise by a step, slightly disordered."""
    rng = random.Random(7)
    return [(rng.choice(WINDOW_KEYS),
             WINDOW_EPOCH + i * WINDOW_STEP - rng.randrange(WINDOW_JITTER),
             rng.randrange(100))
            for i in range(n)]


class Sum(wallaroo.Aggregation):
    """Sum of the messages' values: (key, total) per key and window."""

    def initial_accumulator(self):
        return [0]

    def update(self, data, acc):
        acc[0] += data[2]

    def combine(self, acc1, acc2):
        return [acc1[0] + acc2[0]]

    def output(self, key, acc):
        return (key, acc[0])


def event_time(value):
    return value[1]


@wallaroo.key_extractor
def window_key(value):
    return value[0]


def _windowed_app():
    p = (wallaroo.source("w", IterSourceConfig("w", []), event_time=event_time)
         .key_by(window_key)
         .to(wallaroo.range_windows(WINDOW_RANGE).with_delay(WINDOW_DELAY).over(Sum))
         .to_sink(wallaroo.StdoutSinkConfig(encode_pair)))
    return wallaroo.build_application("windowed sum", p)


def _windowed_plain(values: list) -> list:
    """The same user functions, called from a plain loop: tumbling windows as the contract says.

    Per-(window start, key) accumulators; the watermark is the highest event time seen; a window
    fires (every key's output, windows in order of end) once the watermark reaches its end plus
    the delay; a message whose window has already fired is late and dropped; at the end of the
    input every open window fires.
    """
    agg = Sum()
    extract_key, update, output = window_key.extract_key, agg.update, agg.output
    size, delay = WINDOW_RANGE, WINDOW_DELAY
    windows: dict[int, dict] = {}   # window start -> {key: accumulator}
    starts: list[int] = []          # heap of the open windows' starts
    watermark = None
    out = []
    for value in values:
        t = event_time(value)
        key = extract_key(value)
        start = t - t % size
        if watermark is not None and start + size + delay <= watermark:
            continue  # late: its window fired already (policy "drop")
        accs = windows.get(start)
        if accs is None:
            accs = windows[start] = {}
            heapq.heappush(starts, start)
        acc = accs.get(key)
        if acc is None:
            acc = accs[key] = agg.initial_accumulator()
        update(value, acc)
        if watermark is None or t > watermark:
            watermark = t
            while starts and starts[0] + size + delay <= watermark:
                for k, a in windows.pop(heapq.heappop(starts)).items():
                    result = output(k, a)
                    if result is not None:
                        out.append(result)
    while starts:
        for k, a in windows.pop(heapq.heappop(starts)).items():
            result = output(k, a)
            if result is not None:
                out.append(result)
    return out


WORKLOADS = {
    "word_count": Workload("word_count", _lines, _word_count_app, _word_count_plain),
    "stateless_chain": Workload("stateless_chain", lambda n: list(range(n)), _stateless_app,
                                _stateless_plain),
    "windowed_sum": Workload("windowed_sum", _windowed_input, _windowed_app, _windowed_plain,
                             source="w", ordered=False, check_size=50_000),
}

#: Input sizes (values) per workload: large enough that start-up is noise.
SIZES = {"word_count": 200_000, "stateless_chain": 2_000_000, "windowed_sum": 200_000}
