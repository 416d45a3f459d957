"""Benchmark workloads: each one built as a wallaroo app and as the plain Python loop doing the
same work, so the two can be timed side by side in the same run.

Example::

    >>> w = WORKLOADS["word_count"]
    >>> lines = w.make_input(10)
    >>> w.plain(lines) == w.engine_outputs(lines)
    True
"""
from __future__ import annotations

import random
import time
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

    def engine_outputs(self, values: list) -> list:
        """The app's outputs for ``values`` (through wallaroo.testing)."""
        return wallaroo.testing.run(self.build(), {"in": values})[0]

    def run_engine(self, values: list) -> tuple[float, list[int]]:
        """Seconds to process ``values`` through a worker, and per-batch latencies (ns).

        Latency of a batch is the time from its ingest at the source to its arrival at the sink.
        """
        import asyncio

        latencies: list[int] = []
        worker = Worker(self.build(), RunOptions(), {"in": IterSourceConfig("in", values)},
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


WORKLOADS = {
    "word_count": Workload("word_count", _lines, _word_count_app, _word_count_plain),
    "stateless_chain": Workload("stateless_chain", lambda n: list(range(n)), _stateless_app,
                                _stateless_plain),
}

#: Input sizes (values) per workload: large enough that start-up is noise.
SIZES = {"word_count": 200_000, "stateless_chain": 2_000_000}
