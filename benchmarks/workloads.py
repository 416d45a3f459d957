"""Benchmark workloads: each one built as a wallaroo app and as the plain Python loop doing the
same work with the same user functions, so the two can be timed side by side in the same run.

A workload has one or more sources. Its input is generated as *wire payloads* (the bytes one
frame carries, u32 big-endian length first on the wire) and decoded once with the workload's own
decoders into the values the in-process modes feed. So every mode sees the same data:

- in-process (``Worker`` on iterables, ``wallaroo.testing.run``): the decoded values;
- files (``wallaroo-run`` with ``FileSourceConfig``/``FileSinkConfig``) and TCP: the frames, cut
  and decoded by the engine, outputs encoded by the workload's encoder.

The plain loop is a generator over chunks of values that yields each chunk's outputs (a chunk is
1,024 values in-process, or what one 256 KiB read of frames decodes to); its state lives across
chunks, as the engine's does across batches. ``plain_wire`` wraps it with a frame cutter written
in Python, the workload's decoders and encoder, for the files and TCP twins.

Example::

    >>> w = WORKLOADS["word_count"]
    >>> inputs = w.inputs(50)
    >>> w.check(w.engine_outputs(inputs), w.plain_outputs(inputs), inputs)
    >>> w = WORKLOADS["market_spread"]       # two merged sources: any interleaving is valid
    >>> payloads = w.make_payloads(2_000)
    >>> inputs = w.decode_payloads(payloads)
    >>> w.check(w.engine_outputs(inputs), w.plain_outputs(inputs), inputs)
    >>> ref = w.plain_wire_bytes(w.wire(payloads))   # the files/TCP twin: encoded output
    >>> w.check_bytes(ref, ref, inputs)
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import importlib.util
import os
import random
import string
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import wallaroo
import wallaroo.testing
from wallaroo.api.configs import IterSourceConfig, SinkConfig
from wallaroo.runtime.worker import RunOptions, Worker

#: Values per chunk of the in-process plain loop: the iterable source's batch size.
CHUNK = 1024
#: Bytes per read of the files/TCP plain loop: the engine's file and socket read size.
READ_SIZE = 256 * 1024
HEADER = struct.Struct(">I")
_I64 = struct.Struct(">q")


class WorkloadMismatch(AssertionError):
    """The engine's outputs differ from the plain loop's: the benchmark computed the wrong thing."""


class _DiscardSinkConfig(SinkConfig):
    """An in-memory sink (values, no encoding) whose pushes the runner drops."""

    kind = "memory"

    def describe(self) -> str:
        return "discard"


def frame(payload: bytes) -> bytes:
    """``payload`` with its u32 big-endian length in front (the wire format of every source)."""
    return HEADER.pack(len(payload)) + payload


class PyFrames:
    """The plain loop's frame cutter: u32 big-endian length, then the payload; pure Python.

    Example::

        >>> f = PyFrames()
        >>> f.feed(frame(b"ab") + frame(b"c")[:3]), f.feed(frame(b"c")[3:])
        ([b'ab'], [b'c'])
    """

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._rest + data if self._rest else data
        out = []
        append = out.append
        unpack_from = HEADER.unpack_from
        pos, end = 0, len(buf)
        while end - pos >= 4:
            start = pos + 4
            stop = start + unpack_from(buf, pos)[0]
            if stop > end:
                break
            append(buf[start:stop])
            pos = stop
        self._rest = buf[pos:]
        return out


def _chunks(values: list, size: int = CHUNK) -> Iterator[list]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _round_robin(streams: list[Iterator]) -> Iterator:
    """One item from each stream in turn until all are exhausted (how two sources interleave)."""
    live = list(streams)
    while live:
        for stream in list(live):
            try:
                yield next(stream)
            except StopIteration:
                live.remove(stream)


def split_messages(data: bytes, framing: str) -> list[bytes]:
    """Cut sink output into messages: text lines (``"lines"``) or length-prefixed frames."""
    if framing == "lines":
        return data.split(b"\n")[:-1] if data else []
    return PyFrames().feed(data)


@dataclass
class Workload:
    """A named piece of work: input maker, the app, its plain-Python twin, and the checks."""

    name: str
    #: Input wire payloads for ``n`` values, per source name (fixed seed: always the same).
    make_payloads: Callable[[int], dict[str, list[bytes]]]
    #: Builds the app from one source config per source name and the sink config.
    build_app: Callable[[dict, SinkConfig], wallaroo.Application]
    #: The plain loop: generator over chunks of values, yields each chunk's outputs.
    plain: Callable[..., Iterator[list]]
    #: Decoder per source name, and the sink's encoder (the user's decorated objects).
    decoders: dict
    encoder: object
    #: What an item is (throughput counts items), and how to count them in the input.
    unit: str = "msgs"
    count_items: Callable[[dict], int] | None = None
    #: Whether the engine and the plain loop emit in the same order; if not, outputs are compared
    #: as multisets (e.g. windows firing several keys at once).
    ordered: bool = True
    #: The sink output's framing, to cut it into messages: "lines" or "frames".
    out_framing: str = "lines"
    #: Turns an output value into something comparable (default: the value itself).
    canon: Callable = None
    #: Canonical outputs from the sink's bytes (default: the messages themselves), for checks
    #: that need values (market spread).
    parse_output: Callable[[bytes], list] | None = None
    #: Custom check (engine canon outputs, plain canon outputs, inputs) for workloads whose
    #: outputs depend on how sources interleave; raises WorkloadMismatch.
    validate: Callable[[list, list, dict], None] | None = None
    #: Values the sanity check of the in-process mode pushes through both.
    check_size: int = 1000
    #: Default input size (values) at scale 1.
    size: int = 100_000
    #: Encoded outputs at the end of the plain output that the engine only emits when its input
    #: ends (a TCP run gets them at SIGTERM): how many trailing messages.
    tail_messages: int = 0
    #: For latency runs: the 8 bytes at the start of every payload are the send timestamp (ns),
    #: and every output line ends in " <timestamp>".
    stamped: bool = False
    #: Keyed workloads: inputs with exactly ``k`` distinct keys, each seen once (state per key).
    keyed_inputs: Callable[[int], dict[str, list]] | None = None
    description: str = ""

    # -- inputs ----------------------------------------------------------------------------------

    @property
    def sources(self) -> list[str]:
        return list(self.decoders)

    def inputs(self, n: int) -> dict[str, list]:
        """Decoded input values per source, for ``n`` values (what the in-process modes feed)."""
        return self.decode_payloads(self.make_payloads(n))

    def decode_payloads(self, payloads: dict[str, list[bytes]]) -> dict[str, list]:
        out = {}
        for name, items in payloads.items():
            decode = self.decoders[name].decode
            out[name] = [v for v in map(decode, items) if v is not None]
        return out

    def wire(self, payloads: dict[str, list[bytes]]) -> dict[str, bytes]:
        """The framed bytes per source, from ``make_payloads``'s payloads."""
        return {name: b"".join(map(frame, items)) for name, items in payloads.items()}

    def items(self, inputs: dict[str, list]) -> int:
        """How many items (``unit``) the input holds."""
        if self.count_items is not None:
            return self.count_items(inputs)
        return sum(len(v) for v in inputs.values())

    # -- the app ---------------------------------------------------------------------------------

    def build_in_process(self) -> wallaroo.Application:
        """The app with placeholder iterable sources (the worker replaces them by the input)."""
        sources = {name: IterSourceConfig(name, []) for name in self.sources}
        return self.build_app(sources, wallaroo.StdoutSinkConfig(self.encoder))

    def worker(self, inputs: dict[str, list]) -> Worker:
        """A worker running the app over ``inputs``, with a sink that drops what it gets (its
        probe still counts the messages and records their latency)."""
        worker = Worker(self.build_in_process(), RunOptions(),
                        {name: IterSourceConfig(name, values) for name, values in inputs.items()},
                        {0: _DiscardSinkConfig()})
        worker.sinks[0].push = _drop
        return worker

    def run_engine(self, inputs: dict[str, list]) -> tuple[float, object, int]:
        """Seconds to push ``inputs`` through a worker (outputs dropped), the sink probe's
        ingest-to-sink latency histogram, and how many outputs reached the sink."""
        worker = self.worker(inputs)
        started = time.perf_counter()
        result = asyncio.run(worker.run())
        elapsed = time.perf_counter() - started
        if result.failure is not None:
            raise result.failure
        probe = worker.sink_probes[0]
        return elapsed, probe.latency, probe.messages

    def engine_outputs(self, inputs: dict[str, list]) -> list:
        """The app's outputs for ``inputs`` through ``wallaroo.testing.run`` (values)."""
        return wallaroo.testing.run(self.build_in_process(), inputs, timeout=600)[0]

    # -- the plain loop --------------------------------------------------------------------------

    def value_chunks(self, inputs: dict[str, list]) -> Iterator[list]:
        """The input as the plain loop sees it in-process: chunks of CHUNK values, sources taken
        in turn (as the engine's iterable sources take turns)."""
        return _round_robin([_chunks(inputs[name]) for name in self.sources if name in inputs])

    def run_plain(self, inputs: dict[str, list]) -> tuple[float, int]:
        """Seconds for the plain loop over ``inputs``, each chunk's outputs dropped, and how
        many outputs it made."""
        outputs = 0
        started = time.perf_counter()
        for out in self.plain(self.value_chunks(inputs)):
            outputs += len(out)
        return time.perf_counter() - started, outputs

    def plain_outputs(self, inputs: dict[str, list]) -> list:
        """Every output of the plain loop over ``inputs``, in one list."""
        out: list = []
        for chunk in self.plain(self.value_chunks(inputs)):
            out.extend(chunk)
        return out

    def plain_wire(self, byte_chunks: Iterable[tuple[str, bytes]], write: Callable[[bytes], object]
                   ) -> None:
        """The files/TCP plain twin: cut frames (in Python), decode, run the plain loop, encode
        and ``write`` the encoded bytes of each chunk (one write per input read)."""
        cutters = {name: PyFrames() for name in self.sources}
        decode = {name: d.decode for name, d in self.decoders.items()}

        def values():
            for name, data in byte_chunks:
                dec = decode[name]
                yield [v for v in map(dec, cutters[name].feed(data)) if v is not None]

        encode = self.encoder.encode
        for outs in self.plain(values()):
            parts = []
            append = parts.append
            for value in outs:
                encoded = encode(value)
                if encoded is None:
                    continue
                append(encoded.encode() if type(encoded) is str else encoded)
            if parts:
                write(b"".join(parts))

    def wire_chunks(self, wire: dict[str, bytes]) -> Iterator[tuple[str, bytes]]:
        """The framed input in READ_SIZE reads, sources in turn (as the engine reads them)."""
        def reads(name):
            data = wire[name]
            for i in range(0, len(data), READ_SIZE):
                yield name, data[i:i + READ_SIZE]
        return _round_robin([reads(name) for name in self.sources])

    def file_chunks(self, paths: dict[str, str]) -> Iterator[tuple[str, bytes]]:
        """The framed input files in READ_SIZE reads, files in turn."""
        def reads(name):
            with open(paths[name], "rb") as f:
                while chunk := f.read(READ_SIZE):
                    yield name, chunk
        return _round_robin([reads(name) for name in self.sources])

    def plain_wire_bytes(self, wire: dict[str, bytes]) -> bytes:
        """All the encoded output of the plain twin over ``wire`` (the reference for checks)."""
        out = bytearray()
        self.plain_wire(self.wire_chunks(wire), out.extend)
        return bytes(out)

    # -- checks ----------------------------------------------------------------------------------

    def check(self, engine: list, plain: list, inputs: dict[str, list]) -> None:
        """Raise WorkloadMismatch unless the engine's output values match the plain loop's."""
        if self.canon is not None:
            engine = [self.canon(v) for v in engine]
            plain = [self.canon(v) for v in plain]
        self._compare(engine, plain, inputs)

    def check_bytes(self, engine: bytes, plain: bytes, inputs: dict[str, list]) -> None:
        """Raise WorkloadMismatch unless the engine's encoded output matches the plain loop's."""
        if self.validate is None and self.ordered:
            if engine != plain:
                e, p = split_messages(engine, self.out_framing), split_messages(plain, self.out_framing)
                raise WorkloadMismatch(self._first_difference(e, p))
            return
        parse = self.parse_output or (lambda data: split_messages(data, self.out_framing))
        self._compare(parse(engine), parse(plain), inputs)

    def _compare(self, engine: list, plain: list, inputs: dict[str, list]) -> None:
        if self.validate is not None:
            self.validate(engine, plain, inputs)
        elif self.ordered:
            if engine != plain:
                raise WorkloadMismatch(self._first_difference(engine, plain))
        else:
            e, p = Counter(map(repr, engine)), Counter(map(repr, plain))
            if e != p:
                raise WorkloadMismatch(
                    f"{self.name}: outputs differ as multisets: {len(engine):,} engine vs "
                    f"{len(plain):,} plain outputs; only in the engine's: "
                    f"{list((e - p).elements())[:3]}, only in the plain loop's: "
                    f"{list((p - e).elements())[:3]}")

    def _first_difference(self, engine: list, plain: list) -> str:
        for i, (e, p) in enumerate(zip(engine, plain)):
            if e != p:
                return (f"{self.name}: output {i:,} differs: engine {e!r}, plain loop {p!r} "
                        f"({len(engine):,} engine vs {len(plain):,} plain outputs)")
        return (f"{self.name}: the engine emitted {len(engine):,} outputs, the plain loop "
                f"{len(plain):,} (the first {min(len(engine), len(plain)):,} agree)")


def _drop(batch) -> None:
    pass


def _payloads_of(values: dict, pack: Callable) -> dict[str, list[bytes]]:
    return {name: [pack(v) for v in vs] for name, vs in values.items()}


# --- word count: split lines, key by word, count per word ----------------------------------------

#: 10,000 distinct lowercase words of 2 to 9 letters (fixed seed).
def _vocabulary(size: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))))
    return sorted(words)


VOCABULARY = _vocabulary(10_000)


def _lines(n: int, seed: int = 42) -> list[str]:
    """``n`` lines of 8 to 12 words (10 on average), drawn uniformly from VOCABULARY."""
    rng = random.Random(seed)
    choices, randint = rng.choices, rng.randint
    return [" ".join(choices(VOCABULARY, k=randint(8, 12))) for _ in range(n)]


class WordTotal:
    def __init__(self):
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_line(payload):
    return payload.decode()


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


def _word_count_app(sources, sink):
    p = (wallaroo.source("in", sources["in"])
         .to(split).key_by(word_key).to(count_word)
         .to_sink(sink))
    return wallaroo.build_application("word count", p)


def _word_count_plain(chunks, totals=None):
    """The same user functions, called from a plain loop with a dict of states."""
    totals = {} if totals is None else totals
    split_f, key_f, count_f = split.compute_multi, word_key.extract_key, count_word.compute
    for lines in chunks:
        out = []
        append = out.append
        for line in lines:
            for word in split_f(line):
                key = key_f(word)
                total = totals.get(key)
                if total is None:
                    total = totals[key] = WordTotal()
                append(count_f(word, total))
        yield out


def _word_count_keyed(k: int) -> dict[str, list]:
    words = [f"x{i}" for i in range(k)]
    return {"in": [" ".join(words[i:i + 10]) for i in range(0, k, 10)]}


# --- keyed running sum: 100,000 keys, integer values ---------------------------------------------

SUM_KEYS = [f"k{i}" for i in range(100_000)]


def _sum_values(n: int, seed: int = 3) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    keys, randrange = SUM_KEYS, rng.randrange
    return [(keys[randrange(len(keys))], randrange(1000)) for _ in range(n)]


class RunningSum:
    def __init__(self):
        self.total = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_keyed(payload):
    """Payload: i64 value (big-endian), then the key in ASCII."""
    return (payload[8:].decode(), int.from_bytes(payload[:8], "big", signed=True))


@wallaroo.key_extractor
def first_key(value):
    return value[0]


@wallaroo.state_computation(name="running sum", state=RunningSum)
def add_value(value, state):
    state.total += value[1]
    return (value[0], state.total)


@wallaroo.encoder
def encode_sum(pair):
    return f"{pair[0]} {pair[1]}\n"


def _keyed_payload(v) -> bytes:
    return _I64.pack(v[1]) + v[0].encode()


def _keyed_sum_app(sources, sink):
    p = (wallaroo.source("in", sources["in"])
         .key_by(first_key).to(add_value)
         .to_sink(sink))
    return wallaroo.build_application("keyed sum", p)


def _keyed_sum_plain(chunks, states=None):
    """The same user functions, called from a plain loop with a dict of states."""
    states = {} if states is None else states
    key_f, add_f = first_key.extract_key, add_value.compute
    for values in chunks:
        out = []
        append = out.append
        for value in values:
            key = key_f(value)
            state = states.get(key)
            if state is None:
                state = states[key] = RunningSum()
            append(add_f(value, state))
        yield out


# --- stateless chain: two maps and a filter over ints --------------------------------------------

@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_int(payload):
    return int.from_bytes(payload, "big", signed=True)


@wallaroo.computation(name="double")
def double(x):
    return x * 2


@wallaroo.computation(name="inc")
def inc(x):
    return x + 1


@wallaroo.computation(name="keep thirds")
def keep_thirds(x):
    return x if x % 3 == 0 else None


@wallaroo.encoder
def encode_int(x):
    return f"{x}\n"


def _stateless_app(sources, sink):
    p = (wallaroo.source("in", sources["in"])
         .to(double).to(inc).to(keep_thirds)
         .to_sink(sink))
    return wallaroo.build_application("stateless chain", p)


def _stateless_plain(chunks):
    """The same user functions, called from a plain loop."""
    double_f, inc_f, keep_f = double.compute, inc.compute, keep_thirds.compute
    for values in chunks:
        out = []
        append = out.append
        for x in values:
            y = keep_f(inc_f(double_f(x)))
            if y is not None:
                append(y)
        yield out


# --- market spread: two merged framed sources, key by symbol, state per symbol -------------------

def _load_example(name: str):
    """A module of examples/market_spread/ (the app, or its input generator), loaded by path."""
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "market_spread", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ms = _load_example("market_spread")
gen_market = _load_example("gen_market")
#: Symbols of the market spread input: 1,000 of 4 letters or fewer (fixed seed).
MARKET_SYMBOLS = sorted({"".join(random.Random(i).choices(string.ascii_uppercase,
                                                          k=1 + i % 4)) for i in range(1400)})[:1000]
#: The sentinel symbol the TCP runner uses to learn that both streams were processed.
SENTINEL_SYMBOL = "~END"
_START_MS = 1_500_000_000_000


def _symbol_prices(symbols, seed=11):
    rng = random.Random(seed)
    return {s: rng.choice([rng.uniform(0.3, 0.99), rng.uniform(5, 400)]) for s in symbols}


MARKET_PRICES = _symbol_prices(MARKET_SYMBOLS)


def market_payload(symbol: str, transact_time: int, bid: float, offer: float) -> bytes:
    return ms.MARKET_DATA.pack(ms.MARKET_DATA_TYPE, symbol.encode("ascii").ljust(4),
                               transact_time, bid, offer)


def order_payload(order_id, account, symbol, side, quantity, price, transact_time) -> bytes:
    return ms.ORDER.pack(ms.ORDER_TYPE, order_id, account.encode("ascii"),
                         symbol.encode("ascii").ljust(4), side, quantity, price, transact_time)


def _market_payloads(n: int, seed: int = 17, symbols=None) -> dict[str, list[bytes]]:
    """``n`` messages: n/2 quotes (one per symbol first, then random ones, about half too wide)
    on "Market Data", n/2 orders on "Orders"."""
    rng = random.Random(seed)
    symbols = symbols or MARKET_SYMBOLS
    prices = MARKET_PRICES if symbols is MARKET_SYMBOLS else _symbol_prices(symbols)
    quotes, orders = [], []
    for i in range(n // 2):
        symbol = symbols[i] if i < len(symbols) else symbols[rng.randrange(len(symbols))]
        bid, offer = gen_market.quote(rng, prices[symbol])
        quotes.append(market_payload(symbol, _START_MS + i, bid, offer))
    for i in range(n - n // 2):
        symbol = symbols[rng.randrange(len(symbols))]
        base = prices[symbol]
        orders.append(order_payload(i + 1, f"AC{rng.randrange(10_000):04d}", symbol,
                                    rng.choice((1, 2)), float(rng.randint(1, 100) * 10),
                                    round(base * rng.uniform(0.97, 1.03), 4 if base < 1 else 2),
                                    _START_MS + n + i))
    return {"Market Data": quotes, "Orders": orders}


def _market_app(sources, sink):
    p = (wallaroo.source("Market Data", sources["Market Data"])
         .merge(wallaroo.source("Orders", sources["Orders"]))
         .key_by(ms.extract_symbol).to(ms.check_order)
         .to_sink(sink))
    return wallaroo.build_application("market spread", p)


def _market_plain(chunks, states=None):
    """The example's user functions, called from a plain loop with a dict of states."""
    states = {} if states is None else states
    key_f, check_f, SymbolData = ms.extract_symbol.extract_key, ms.check_order.compute, ms.SymbolData
    for messages in chunks:
        out = []
        append = out.append
        for message in messages:
            key = key_f(message)
            state = states.get(key)
            if state is None:
                state = states[key] = SymbolData()
            result = check_f(message, state)
            if result is not None:
                append(result)
        yield out


_RESULT = struct.Struct(">I" + ms.ORDER_RESULT.format.lstrip(">"))


def _market_canon(result) -> tuple:
    o = result.order
    return (o.side, o.order_id, o.account, o.symbol, o.quantity, o.price, result.bid,
            result.offer, o.transact_time)


def _market_parse(data: bytes) -> list[tuple]:
    """Order results from the sink's framed bytes, as the tuples ``_market_canon`` makes."""
    out = []
    for payload in PyFrames().feed(data):
        side, oid, account, symbol, qty, price, bid, offer, t = ms.ORDER_RESULT.unpack(payload)
        out.append((side, oid, account.decode(), symbol.decode().rstrip(), qty, price, bid, offer, t))
    return out


def _market_validate(engine: list[tuple], plain: list[tuple], inputs: dict[str, list]) -> None:
    """Check the engine's order results against *some* interleaving of the two sources.

    Quotes and orders arrive on two sources, so which quote an order is checked against depends
    on how the engine interleaved them; per source and symbol the order is kept. For every
    symbol, walk its orders in order: each must be rejected (with the bid/offer of the last
    quote before it, or (0, 0) before any) or accepted, as some quote at or after the one the
    previous order saw decides. The earliest matching quote is taken (greedy is exact for
    monotone matching). Any output without such a quote, or for no order, fails.
    """
    del plain  # any interleaving is valid: the plain loop's is just one of them
    by_id: dict[int, tuple] = {}
    for out in engine:
        if out[3] == SENTINEL_SYMBOL:
            continue
        if out[1] in by_id:
            raise WorkloadMismatch(f"market_spread: order {out[1]} was rejected twice")
        by_id[out[1]] = out
    quotes: dict[str, list] = {}
    for q in inputs["Market Data"]:
        state = ms.SymbolData()
        state.update(q.bid, q.offer)
        quotes.setdefault(q.symbol, []).append(
            (q.bid, q.offer) if state.should_reject_trades else None)
    seen: dict[str, int] = {}
    for order in inputs["Orders"]:
        if order.symbol == SENTINEL_SYMBOL:
            continue
        result = by_id.pop(order.order_id, None)
        if result is not None:
            expected = (order.side, order.order_id, order.account, order.symbol, order.quantity,
                        order.price)
            if result[:6] != expected or result[8] != order.transact_time:
                raise WorkloadMismatch(f"market_spread: result {result} does not carry its "
                                       f"order {order!r}")
            outcome = result[6:8]
        else:
            outcome = None   # accepted
        at = seen.get(order.symbol, -1)
        options = quotes.get(order.symbol, [])
        if at == -1 and outcome == (0.0, 0.0):
            continue  # rejected before any quote of its symbol: still no quote seen
        i = max(at, 0)
        while i < len(options) and options[i] != outcome:
            i += 1
        if i == len(options):
            raise WorkloadMismatch(
                f"market_spread: order {order.order_id} ({order.symbol}) "
                f"{'accepted' if outcome is None else f'rejected at bid/offer {outcome}'}, which "
                f"no quote of its symbol at or after quote #{at} explains")
        seen[order.symbol] = i
    if by_id:
        raise WorkloadMismatch(f"market_spread: {len(by_id)} results for orders never sent, "
                               f"e.g. {next(iter(by_id.values()))}")


def _market_keyed(k: int) -> dict[str, list]:
    symbols = [f"{chr(65 + i // 26 ** 3 % 26)}{chr(65 + i // 26 ** 2 % 26)}"
               f"{chr(65 + i // 26 % 26)}{chr(65 + i % 26)}" for i in range(k)]
    return WORKLOADS["market_spread"].decode_payloads(
        {"Market Data": [market_payload(s, _START_MS, 10.0, 10.01) for s in symbols],
         "Orders": []})


# --- windowed sum: tumbling 100 ms event-time windows, sum per key, 1,000 keys -------------------

WINDOW_KEYS = [f"k{i}" for i in range(1000)]
WINDOW_RANGE = wallaroo.milliseconds(100)
#: Allowed lateness: larger than the input's disorder, so no message is late.
WINDOW_DELAY = wallaroo.milliseconds(5)
#: Event time advances by this much per message (20 windows per 200,000 messages)...
WINDOW_STEP = wallaroo.microseconds(10)
#: ...and each message is up to this much older than its position says (slight disorder).
WINDOW_JITTER = wallaroo.milliseconds(1)
#: A realistic epoch (ns): 2023-11-14 22:13:20 UTC; a multiple of the window range.
WINDOW_EPOCH = 1_700_000_000 * 1_000_000_000
#: The last message: far ahead in event time, so every window of the data fires when it
#: arrives (a TCP run needs no end of input for them); its own window fires at the end.
WINDOW_SENTINEL_KEY = "~end"


def _windowed_input(n: int) -> list[tuple[str, int, int]]:
    """``n`` tuples (key, event_time_ns, value): event times rise by a step, slightly disordered;
    then the sentinel, 10 windows later."""
    rng = random.Random(7)
    out = [(rng.choice(WINDOW_KEYS),
            WINDOW_EPOCH + i * WINDOW_STEP - rng.randrange(WINDOW_JITTER),
            rng.randrange(100))
           for i in range(n)]
    out.append((WINDOW_SENTINEL_KEY, WINDOW_EPOCH + n * WINDOW_STEP + 10 * WINDOW_RANGE, 0))
    return out


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_event(payload):
    """Payload: i64 event time, i64 value, then the key in ASCII."""
    return (payload[16:].decode(), int.from_bytes(payload[:8], "big", signed=True),
            int.from_bytes(payload[8:16], "big", signed=True))


def _event_payload(v) -> bytes:
    return _I64.pack(v[1]) + _I64.pack(v[2]) + v[0].encode()


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


def _windowed_app(sources, sink):
    p = (wallaroo.source("w", sources["w"], event_time=event_time)
         .key_by(window_key)
         .to(wallaroo.range_windows(WINDOW_RANGE).with_delay(WINDOW_DELAY).over(Sum))
         .to_sink(sink))
    return wallaroo.build_application("windowed sum", p)


def _windowed_plain(chunks):
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
    for values in chunks:
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
        yield out
    out = []
    while starts:
        for k, a in windows.pop(heapq.heappop(starts)).items():
            result = output(k, a)
            if result is not None:
                out.append(result)
    yield out


# --- stamped variants for latency runs: the payload's first 8 bytes are the send time (ns) -------

@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_stamped_line(payload):
    return (int.from_bytes(payload[:8], "big"), payload[8:].decode())


@wallaroo.computation_multi(name="split stamped")
def split_stamped(stamped):
    sent, line = stamped
    return [(word, sent) for word in line.split()]


@wallaroo.key_extractor
def stamped_word(pair):
    return pair[0]


@wallaroo.state_computation(name="count stamped word", state=WordTotal)
def count_stamped(pair, total):
    total.count += 1
    return (pair[0], total.count, pair[1])


@wallaroo.encoder
def encode_stamped(out):
    return f"{out[0]} {out[1]} {out[2]}\n"


def _stamped_word_count_app(sources, sink):
    p = (wallaroo.source("in", sources["in"])
         .to(split_stamped).key_by(stamped_word).to(count_stamped)
         .to_sink(sink))
    return wallaroo.build_application("word count (stamped)", p)


def _stamped_word_count_plain(chunks):
    totals: dict = {}
    split_f, key_f, count_f = (split_stamped.compute_multi, stamped_word.extract_key,
                               count_stamped.compute)
    for values in chunks:
        out = []
        for value in values:
            for pair in split_f(value):
                key = key_f(pair)
                total = totals.get(key)
                if total is None:
                    total = totals[key] = WordTotal()
                out.append(count_f(pair, total))
        yield out


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_stamped_keyed(payload):
    """Payload: u64 send time, i64 value, then the key in ASCII."""
    return (payload[16:].decode(), int.from_bytes(payload[8:16], "big", signed=True),
            int.from_bytes(payload[:8], "big"))


@wallaroo.state_computation(name="running sum stamped", state=RunningSum)
def add_stamped(value, state):
    state.total += value[1]
    return (value[0], state.total, value[2])


def _stamped_keyed_app(sources, sink):
    p = (wallaroo.source("in", sources["in"])
         .key_by(first_key).to(add_stamped)
         .to_sink(sink))
    return wallaroo.build_application("keyed sum (stamped)", p)


def _stamped_keyed_plain(chunks):
    states: dict = {}
    key_f, add_f = first_key.extract_key, add_stamped.compute
    for values in chunks:
        out = []
        for value in values:
            key = key_f(value)
            state = states.get(key)
            if state is None:
                state = states[key] = RunningSum()
            out.append(add_f(value, state))
        yield out


_STAMP_ZERO = bytes(8)


def _word_count_items(inputs) -> int:
    return sum(line.count(" ") + 1 for line in inputs["in"])


WORKLOADS: dict[str, Workload] = {
    "word_count": Workload(
        "word_count", lambda n: {"in": [line.encode() for line in _lines(n)]},
        _word_count_app, _word_count_plain, {"in": decode_line}, encode_pair,
        unit="words", count_items=_word_count_items, size=200_000,
        keyed_inputs=_word_count_keyed,
        description="lines of 8-12 words (10 on average) from a 10,000-word vocabulary; split, "
                    "key_by word, count per word, emit (word, count) per word"),
    "keyed_sum": Workload(
        "keyed_sum", lambda n: {"in": [_keyed_payload(v) for v in _sum_values(n)]},
        _keyed_sum_app, _keyed_sum_plain, {"in": decode_keyed}, encode_sum,
        size=1_000_000, keyed_inputs=lambda k: {"in": [(key, 1) for key in
                                                       (f"s{i}" for i in range(k))]},
        description="(key, int) pairs over 100,000 keys; key_by key, running sum per key, "
                    "emit (key, sum) per message"),
    "stateless_chain": Workload(
        "stateless_chain", lambda n: {"in": [_I64.pack(i) for i in range(n)]},
        _stateless_app, _stateless_plain, {"in": decode_int}, encode_int, size=2_000_000,
        description="ints; map x*2, map +1, filter multiples of 3"),
    "market_spread": Workload(
        "market_spread", _market_payloads, _market_app, _market_plain,
        {"Market Data": ms.decode_market_data, "Orders": ms.decode_order},
        ms.encode_order_result, ordered=False, out_framing="frames", canon=_market_canon,
        parse_output=_market_parse, validate=_market_validate, size=600_000,
        check_size=20_000, keyed_inputs=_market_keyed,
        description="examples/market_spread: quotes and orders on two merged framed sources, "
                    "key_by symbol (1,000 symbols), state per symbol, rejected orders out as "
                    "framed binary"),
    "windowed_sum": Workload(
        "windowed_sum", lambda n: {"w": [_event_payload(v) for v in _windowed_input(n)]},
        _windowed_app, _windowed_plain, {"w": decode_event}, encode_pair, ordered=False,
        check_size=50_000, size=300_000, tail_messages=1,
        description="(key, event time, int) over 1,000 keys; tumbling 100 ms event-time "
                    "windows with 5 ms delay, sum per key and window"),
}

#: Latency runs: variants whose payloads carry the send timestamp through to the output.
STAMPED: dict[str, Workload] = {
    "word_count": Workload(
        "word_count_stamped",
        lambda n: {"in": [_STAMP_ZERO + line.encode() for line in _lines(n)]},
        _stamped_word_count_app, _stamped_word_count_plain, {"in": decode_stamped_line},
        encode_stamped, unit="words",
        count_items=lambda inputs: sum(v[1].count(" ") + 1 for v in inputs["in"]),
        size=200_000, stamped=True),
    "keyed_sum": Workload(
        "keyed_sum_stamped",
        lambda n: {"in": [_STAMP_ZERO + _keyed_payload(v) for v in _sum_values(n)]},
        _stamped_keyed_app, _stamped_keyed_plain, {"in": decode_stamped_keyed}, encode_stamped,
        size=1_000_000, stamped=True),
}


def find(name: str) -> Workload:
    """A workload by name: ``word_count`` or a stamped variant ``word_count_stamped``."""
    if name in WORKLOADS:
        return WORKLOADS[name]
    for w in STAMPED.values():
        if w.name == name:
            return w
    raise KeyError(f"no workload {name!r}; choose from {', '.join(WORKLOADS)}")


def application_setup(args):
    """The app for ``wallaroo-run --app benchmarks.workloads:application_setup``.

    ``--bench-workload NAME`` picks the workload. With ``--bench-file SOURCE=PATH`` (one per
    source) and ``--bench-output PATH`` the sources read framed files and the sink appends to a
    file; otherwise the sources are TCP (addresses from ``--in``) and the sink is TCP (``--out``).
    """
    parser = argparse.ArgumentParser(prog="benchmarks.workloads", add_help=False)
    parser.add_argument("--bench-workload", required=True)
    parser.add_argument("--bench-file", action="append", default=[])
    parser.add_argument("--bench-output")
    opts, _ = parser.parse_known_args(args)
    work = find(opts.bench_workload)
    if opts.bench_file:
        paths = dict(item.split("=", 1) for item in opts.bench_file)
        sources = {name: wallaroo.FileSourceConfig(name, paths[name], work.decoders[name])
                   for name in work.sources}
        sink = wallaroo.FileSinkConfig(opts.bench_output, work.encoder)
    else:
        sources = {name: wallaroo.TCPSourceConfig(name, "127.0.0.1", 0, work.decoders[name])
                   for name in work.sources}
        host, port = "127.0.0.1", 7002   # replaced by the engine from --out
        if "--out" in args:
            host, port = wallaroo.tcp_parse_output_addrs(args)[0]
        sink = wallaroo.TCPSinkConfig(host, port, work.encoder)
    return work.build_app(sources, sink)
