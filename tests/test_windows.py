"""Windows, aggregations and event time (the contract: /tmp/spec/windows.md).

Every run goes through the real engine: ``wallaroo.testing.run`` (worker, plan and Cython chains,
in-memory sinks), or ``wallaroo.runtime.worker.Worker`` directly where a test needs the run's
error counts and dead-letter file.

Expected outputs are derived from the contract, not copied from the engine: small cases by hand,
larger ones from ``model_range`` / ``model_count`` below, which follow the contract's rules
(epoch-aligned windows, per-message watermark updated after placing, firing once
``W >= end + delay``, the three late-data policies).
"""
from __future__ import annotations

import datetime
import json
import logging
import random
import zlib
from collections import Counter, defaultdict

import pytest

import wallaroo
import wallaroo.testing
from wallaroo.api.configs import IterSourceConfig
from wallaroo.errors import WallarooParameterError
from wallaroo.runtime.worker import RunOptions, Worker

from support.aggregations import Collect, CollectWindow, Total

MS = wallaroo.milliseconds(1)
SECOND = wallaroo.seconds(1)
POLICIES = ("drop", "fire-per-message", "place-in-oldest-window")


# ---------------------------------------------------------------------------------------------
# aggregations (module level: they pickle by reference)
# ---------------------------------------------------------------------------------------------

class CollectValues(Collect):
    """Collects ``data[-1]`` of ``(t, value)`` messages (the worked example)."""

    def update(self, data, acc):
        acc.append(data[-1])


class EvenTotalsOnly(Total):
    """Emits nothing (None) for a window whose total is odd."""

    def output(self, key, acc):
        return (key, acc[0]) if acc[0] % 2 == 0 else None


class TaggedCollect(CollectWindow):
    """Built with an argument: only usable as an instance in .over()."""

    def __init__(self, tag):
        self.tag = tag

    def output(self, key, acc, window):
        return (self.tag, key, tuple(window), list(acc))


class CountMessages(wallaroo.Aggregation):
    def initial_accumulator(self):
        return [0]

    def update(self, data, acc):
        acc[0] += 1

    def combine(self, acc1, acc2):
        return [acc1[0] + acc2[0]]

    def output(self, key, acc, window):
        return (key, tuple(window), acc[0])


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def mem_sink():
    """A sink config for testing.run (testing replaces every sink by an in-memory one)."""
    return wallaroo.StdoutSinkConfig(wallaroo.encoder(lambda x: f"{x}\n"))


def first(m):
    return m[0]


def second(m):
    return m[1]


def window_app(window, key=first, event_time=second, name="events"):
    kwargs = {} if event_time is None else {"event_time": event_time}
    p = (wallaroo.source(name, IterSourceConfig(name, []), **kwargs)
         .key_by(key).to(window).to_sink(mem_sink()))
    return wallaroo.build_application("windows test", p)


def run_window(window, messages, key=first, event_time=second, timeout=30):
    """The values reaching the sink of ``source -> key_by(key) -> window -> sink``."""
    app = window_app(window, key, event_time)
    [out] = wallaroo.testing.run(app, {"events": list(messages)}, timeout=timeout)
    return out


def by_key(outputs):
    """``(key, window, values)`` outputs -> {key: [(window, values), ...]} in output order."""
    grouped = defaultdict(list)
    for key, window, values in outputs:
        grouped[key].append((tuple(window), values))
    return dict(grouped)


def model_range(messages, key, event_time, range_, slide=None, delay=0, policy="drop"):
    """What the contract says a range window stage emits, per key, in order:
    {key: [((start, end), [messages...]), ...]}. One source, messages in arrival order."""
    slide = slide or range_
    watermark = None  # nothing seen yet
    open_windows: dict[tuple, list] = {}
    out = defaultdict(list)

    def fired(k):  # window k's end + delay has been reached by the watermark
        return watermark is not None and k * slide + range_ + delay <= watermark

    def fire(everything=False):
        ready = sorted((k * slide + range_, kk, k) for (kk, k) in open_windows
                       if everything or fired(k))
        for end, kk, k in ready:
            out[kk].append(((k * slide, end), open_windows.pop((kk, k))))

    for m in messages:
        kk, t = key(m), event_time(m)
        latest = t // slide
        if fired(latest):  # late: every window covering t has fired
            if policy == "fire-per-message":
                out[kk].append(((latest * slide, latest * slide + range_), [m]))
            elif policy == "place-in-oldest-window":
                oldest = (watermark - range_ - delay) // slide + 1
                assert not fired(oldest) and fired(oldest - 1)
                open_windows.setdefault((kk, oldest), []).append(m)
            continue
        earliest = (t - range_) // slide + 1
        for k in range(earliest, latest + 1):
            assert k * slide <= t < k * slide + range_
            if not fired(k):
                open_windows.setdefault((kk, k), []).append(m)
        watermark = t if watermark is None else max(watermark, t)
        fire()
    fire(everything=True)
    return dict(out)


def model_count(messages, key, n):
    """{key: [messages in chunks of n]}: arrival order, the last chunk possibly partial."""
    per_key = defaultdict(list)
    for m in messages:
        per_key[key(m)].append(m)
    return {k: [ms[i:i + n] for i in range(0, len(ms), n)] for k, ms in per_key.items()}


# ---------------------------------------------------------------------------------------------
# 1. the worked late-data example of the contract
# ---------------------------------------------------------------------------------------------

WORKED = [(1_000 * MS, 2), (1_001 * MS, 3), (1_002 * MS, 4), (50, 1), (1_003 * MS, 5)]


@pytest.mark.parametrize("policy,expected", [
    ("drop", [[2, 3, 4, 5]]),
    ("fire-per-message", [[1], [2, 3, 4, 5]]),
    ("place-in-oldest-window", [[2, 3, 4, 1, 5]]),
])
def test_worked_late_data_example(policy, expected):
    window = (wallaroo.range_windows(wallaroo.seconds(1)).with_late_data_policy(policy)
              .over(CollectValues))
    out = run_window(window, WORKED, key=lambda m: "k", event_time=first)
    assert out == expected


def test_worked_example_default_policy_is_drop():
    window = wallaroo.range_windows(wallaroo.seconds(1)).over(CollectValues)
    assert run_window(window, WORKED, key=lambda m: "k", event_time=first) == [[2, 3, 4, 5]]


def test_worked_example_fire_per_message_window_is_the_late_messages_window():
    window = (wallaroo.range_windows(SECOND).with_late_data_policy("fire-per-message")
              .over(CollectWindow))
    out = run_window(window, WORKED, key=lambda m: "k", event_time=first)
    assert out == [("k", (0, SECOND), [(50, 1)]),
                   ("k", (SECOND, 2 * SECOND), [m for m in WORKED if m[0] >= SECOND])]


# ---------------------------------------------------------------------------------------------
# 2. tumbling, sliding and count windows over two keys
# ---------------------------------------------------------------------------------------------

VALUES = list(range(1, 101))


def parity_key(v):
    return "a" if v % 2 else "b"


def value_time(v):
    return v * MS


def _check_range_outputs(out, range_, slide):
    # bounds: aligned to the epoch, range long, one output per (key, window)
    for key, (start, end), values in out:
        assert start % slide == 0 and end - start == range_, (key, start, end)
        assert values, "an empty window emitted something"
    assert len({(k, w) for k, w, _ in out}) == len(out), "a (key, window) fired twice"
    # windows fire in order of end
    ends = [w[1] for _, w, _ in out]
    assert ends == sorted(ends)
    expected = defaultdict(list)
    for v in VALUES:
        t = value_time(v)
        for k in range((t - range_) // slide + 1, t // slide + 1):
            expected[(parity_key(v), (k * slide, k * slide + range_))].append(v)
    got = {(k, w): values for k, w, values in out}
    assert got == dict(expected)  # each value in exactly the windows covering it, in order


def test_tumbling_windows_two_keys():
    range_ = 10 * MS
    out = run_window(wallaroo.range_windows(range_).over(CollectWindow), VALUES,
                     key=parity_key, event_time=value_time)
    _check_range_outputs(out, range_, range_)
    # every value exactly once, and each key's values in order across its windows
    for key in "ab":
        flat = [v for k, _, values in out if k == key for v in values]
        assert flat == [v for v in VALUES if parity_key(v) == key]
    assert by_key(out) == model_range(VALUES, parity_key, value_time, range_)


@pytest.mark.parametrize("range_ms,slide_ms", [(12, 4), (10, 5), (9, 3), (10, 4), (7, 3)])
def test_sliding_windows_two_keys(range_ms, slide_ms):
    range_, slide = range_ms * MS, slide_ms * MS
    window = wallaroo.range_windows(range_).with_slide(slide).over(CollectWindow)
    out = run_window(window, VALUES, key=parity_key, event_time=value_time)
    _check_range_outputs(out, range_, slide)
    appearances = Counter(v for _, _, values in out for v in values)
    for v in VALUES:
        t = value_time(v)
        covering = sum(1 for k in range(-100, 200) if k * slide <= t < k * slide + range_)
        assert appearances[v] == covering
        if range_ms % slide_ms == 0:
            assert covering == range_ms // slide_ms
    expected = model_range(VALUES, parity_key, value_time, range_, slide)
    assert by_key(out) == expected


def test_sliding_window_with_slide_equal_to_range_is_tumbling():
    range_ = 10 * MS
    sliding = run_window(wallaroo.range_windows(range_).with_slide(range_).over(CollectWindow),
                         VALUES, key=parity_key, event_time=value_time)
    tumbling = run_window(wallaroo.range_windows(range_).over(CollectWindow),
                          VALUES, key=parity_key, event_time=value_time)
    assert sliding == tumbling
    _check_range_outputs(sliding, range_, range_)


@pytest.mark.parametrize("n", [1, 7, 10, 50, 60, 200])
def test_count_windows_two_keys(n):
    out = run_window(wallaroo.count_windows(n).over(CollectWindow), VALUES,
                     key=parity_key, event_time=value_time)
    expected = model_count(VALUES, parity_key, n)
    got = by_key(out)
    assert {k: [vs for _, vs in ws] for k, ws in got.items()} == expected
    # window = (min event time, max event time + 1) of its messages
    for key, ws in got.items():
        for (start, end), values in ws:
            assert (start, end) == (min(map(value_time, values)),
                                    max(map(value_time, values)) + 1)
    # full windows are emitted as their n-th message arrives: in that order
    full = [(k, vs) for k, _, vs in out if len(vs) == n]
    order = sorted(full, key=lambda kv: VALUES.index(kv[1][-1]))
    assert full == order
    assert len(out) - len(full) == sum(1 for ws in expected.values() if len(ws[-1]) < n)


def test_count_windows_of_ingest_time():
    # no event_time: counting does not care; the partial windows come out at end of input
    out = run_window(wallaroo.count_windows(3).over(Collect), VALUES[:11],
                     key=parity_key, event_time=None)
    assert sorted(out) == sorted([[1, 3, 5], [7, 9, 11], [2, 4, 6], [8, 10]])


# ---------------------------------------------------------------------------------------------
# the general rules against the contract's model: out of order data, delays, policies
# ---------------------------------------------------------------------------------------------

def _jittered_messages(seed, count=300):
    rng = random.Random(seed)
    msgs = []
    for i in range(count):
        t = max(0, i * MS + rng.randint(-12 * MS, 2 * MS))
        if rng.random() < 0.02:
            t += 30 * MS  # an occasional jump ahead
        msgs.append((rng.choice("abc"), t, i))
    return msgs


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("range_ms,slide_ms,delay_ms", [
    (10, None, 0), (10, None, 6), (12, 4, 0), (10, 4, 3), (10, 5, 0), (20, 7, 15),
])
def test_out_of_order_data_follows_the_contract(policy, range_ms, slide_ms, delay_ms):
    range_ = range_ms * MS
    slide = slide_ms * MS if slide_ms else None
    builder = wallaroo.range_windows(range_)
    if slide:
        builder = builder.with_slide(slide)
    if delay_ms:
        builder = builder.with_delay(delay_ms * MS)
    window = builder.with_late_data_policy(policy).over(CollectWindow)
    msgs = _jittered_messages(zlib.crc32(repr((policy, range_ms, slide_ms, delay_ms)).encode()))
    out = run_window(window, msgs)
    expected = model_range(msgs, first, second, range_, slide, delay_ms * MS, policy)
    # which windows fire, in which order, with which messages
    assert sorted_values(by_key(out)) == sorted_values(expected)
    if slide is None:  # and in arrival order (sliding: see test_sliding_window_arrival_order)
        assert by_key(out) == expected


def sorted_values(grouped):
    return {k: [(w, sorted(vs)) for w, vs in ws] for k, ws in grouped.items()}


def test_sliding_window_combines_its_panes_in_event_time_order():
    # a sliding window is cut into panes of gcd(range, slide) = 5 ms; its accumulator combines
    # the panes in time order (arrival order only within a pane): 3 (pane [0, 5)) before 7
    # (pane [5, 10)) although 7 arrived first. 3 is not counted in [-5, 5): that window fired
    # when 7 moved the watermark to 7 ms.
    msgs = [("k", 7 * MS, 7), ("k", 3 * MS, 3), ("k", 4 * MS, 4)]
    window = wallaroo.range_windows(10 * MS).with_slide(5 * MS).over(CollectWindow)
    out = run_window(window, msgs)
    got = [((s // MS, e // MS), [m[2] for m in vs]) for _, (s, e), vs in out]
    assert got == [((0, 10), [3, 4, 7]), ((5, 15), [7])]


def test_partly_late_message_is_counted_only_in_its_open_windows():
    # 10 ms windows every 5 ms; 3 ms arrives when [-5, 5) has fired but [0, 10) has not
    msgs = [("k", t * MS, t) for t in (1, 2, 7, 3, 16, 4)]
    expected = {
        "drop": [((-5, 5), [1, 2]), ((0, 10), [1, 2, 7, 3]), ((5, 15), [7]), ((10, 20), [16]),
                 ((15, 25), [16])],
        "fire-per-message": [((-5, 5), [1, 2]), ((0, 10), [1, 2, 7, 3]), ((5, 15), [7]),
                             ((0, 10), [4]), ((10, 20), [16]), ((15, 25), [16])],
        "place-in-oldest-window": [((-5, 5), [1, 2]), ((0, 10), [1, 2, 7, 3]), ((5, 15), [7]),
                                   ((10, 20), [16, 4]), ((15, 25), [16])],
    }
    for policy in POLICIES:
        window = (wallaroo.range_windows(10 * MS).with_slide(5 * MS)
                  .with_late_data_policy(policy).over(CollectWindow))
        out = run_window(window, msgs)
        # (the order of values within a window: test_sliding_window_combines_its_panes_in_...)
        got = [((s // MS, e // MS), sorted(m[2] for m in values)) for _, (s, e), values in out]
        assert got == [(w, sorted(vs)) for w, vs in expected[policy]], policy
        assert sorted_values(by_key(out)) == sorted_values(
            model_range(msgs, first, second, 10 * MS, 5 * MS, 0, policy))


# ---------------------------------------------------------------------------------------------
# 3. session windows
# ---------------------------------------------------------------------------------------------

GAP = 10 * MS


def test_session_windows_one_output_per_burst():
    bursts = {"a": [[0, 2, 4], [30, 35], [70]],
              "b": [[15, 20, 24], [50], [71, 75]]}
    msgs = sorted(((k, t * MS, t) for k, bs in bursts.items() for b in bs for t in b),
                  key=lambda m: m[1])
    out = run_window(wallaroo.session_windows(GAP).over(CollectWindow), msgs)
    expected = {k: [((b[0] * MS, b[-1] * MS + GAP), [(k, t * MS, t) for t in b]) for b in bs]
                for k, bs in bursts.items()}
    assert by_key(out) == expected
    ends = [w[1] for _, w, _ in out]
    assert ends == sorted(ends)


def test_session_gap_is_exclusive():
    # consecutive event times must be LESS than gap apart to be one session
    msgs = [("a", 0, 0), ("a", 9 * MS, 9), ("a", 19 * MS, 19), ("a", 30 * MS, 30)]
    out = run_window(wallaroo.session_windows(GAP).over(CollectWindow), msgs)
    assert [(w, [m[2] for m in vs]) for _, w, vs in out] == [
        ((0, 9 * MS + GAP), [0, 9]), ((19 * MS, 19 * MS + GAP), [19]),
        ((30 * MS, 30 * MS + GAP), [30])]


def test_session_bridging_message_merges_two_sessions():
    delay = 100 * MS  # keeps the first session open until the bridge arrives
    msgs = [("a", 0, 0), ("a", 3 * MS, 3), ("a", 20 * MS, 20), ("a", 22 * MS, 22),
            ("b", 12 * MS, 12),  # another key: bridges nothing of "a"
            ("a", 12 * MS, 12)]  # 9 ms after 3 and 8 ms before 20: one session
    window = wallaroo.session_windows(GAP).with_delay(delay).over(CollectWindow)
    out = run_window(window, msgs)
    got = {k: [(w, sorted(m[2] for m in vs)) for w, vs in ws] for k, ws in by_key(out).items()}
    assert got == {"a": [((0, 22 * MS + GAP), [0, 3, 12, 20, 22])],
                   "b": [((12 * MS, 12 * MS + GAP), [12])]}


def test_session_without_a_bridge_stays_two_sessions_with_delay():
    msgs = [("a", 0, 0), ("a", 3 * MS, 3), ("a", 20 * MS, 20), ("a", 22 * MS, 22)]
    window = wallaroo.session_windows(GAP).with_delay(100 * MS).over(CollectWindow)
    out = run_window(window, msgs)
    assert [(w, [m[2] for m in vs]) for _, w, vs in out] == [
        ((0, 3 * MS + GAP), [0, 3]), ((20 * MS, 22 * MS + GAP), [20, 22])]


def test_session_late_message_is_dropped():
    # at 5 ms the watermark is 50 ms: no open session of "a" within gap, and 5 + 10 <= 50
    msgs = [("a", 0, 0), ("a", 50 * MS, 50), ("a", 5 * MS, 5), ("a", 52 * MS, 52)]
    out = run_window(wallaroo.session_windows(GAP).over(CollectWindow), msgs)
    assert [(w, [m[2] for m in vs]) for _, w, vs in out] == [
        ((0, GAP), [0]), ((50 * MS, 52 * MS + GAP), [50, 52])]


def test_session_late_message_placed_in_the_oldest_open_session():
    msgs = [("a", 0, 0), ("a", 50 * MS, 50), ("a", 5 * MS, 5), ("a", 52 * MS, 52)]
    window = (wallaroo.session_windows(GAP).with_late_data_policy("place-in-oldest-window")
              .over(CollectWindow))
    out = run_window(window, msgs)
    assert [sorted(m[2] for m in vs) for _, _, vs in out] == [[0], [5, 50, 52]]


# ---------------------------------------------------------------------------------------------
# 4. with_delay
# ---------------------------------------------------------------------------------------------

DELAY_MSGS = [("k", t * MS, t) for t in (1, 2, 12, 3, 20, 4, 13)]


def test_out_of_order_by_less_than_the_delay_is_not_late():
    # [0, 10) fires once W >= 10 + 5: 3 (W = 12) is in time; 4 (W = 20) is late, dropped
    window = wallaroo.range_windows(10 * MS).with_delay(5 * MS).over(CollectWindow)
    out = run_window(window, DELAY_MSGS)
    got = [((s // MS, e // MS), [m[2] for m in vs]) for _, (s, e), vs in out]
    assert got == [((0, 10), [1, 2, 3]), ((10, 20), [12, 13]), ((20, 30), [20])]
    assert by_key(out) == model_range(DELAY_MSGS, first, second, 10 * MS, None, 5 * MS)


def test_without_delay_the_same_message_is_late():
    window = wallaroo.range_windows(10 * MS).over(CollectWindow)
    out = run_window(window, DELAY_MSGS)
    got = [((s // MS, e // MS), [m[2] for m in vs]) for _, (s, e), vs in out]
    # 3 arrives at W = 12 >= 10: dropped; 13 arrives at W = 20 >= 20: dropped too
    assert got == [((0, 10), [1, 2]), ((10, 20), [12]), ((20, 30), [20])]


def test_window_fires_after_the_message_that_moves_the_watermark_past_end_plus_delay():
    # the firing point is observable with fire-per-message: a late output comes out at once,
    # between the windows that fired before it and those that fire after it
    msgs = [("k", t * MS, t) for t in (1, 16, 2, 14, 30, 3)]
    window = (wallaroo.range_windows(10 * MS).with_delay(5 * MS)
              .with_late_data_policy("fire-per-message").over(CollectWindow))
    out = run_window(window, msgs)
    got = [((s // MS, e // MS), [m[2] for m in vs]) for _, (s, e), vs in out]
    # 16 fires [0, 10) (16 >= 15): 2 is late (fired alone); 14 is in [10, 20) (not yet fired);
    # 30 fires [10, 20) (30 >= 25); 3 is late
    assert got == [((0, 10), [1]), ((0, 10), [2]), ((10, 20), [16, 14]), ((0, 10), [3]),
                   ((30, 40), [30])]


# ---------------------------------------------------------------------------------------------
# 5. empty windows, None outputs, keys after the window
# ---------------------------------------------------------------------------------------------

def test_empty_windows_emit_nothing():
    msgs = [("a", 5 * MS, 5), ("b", 15 * MS, 15), ("a", 35 * MS, 35), ("b", 95 * MS, 95)]
    out = run_window(wallaroo.range_windows(10 * MS).over(CollectWindow), msgs)
    got = {(k, w[0] // MS, w[1] // MS): [m[2] for m in vs] for k, w, vs in out}
    assert got == {("a", 0, 10): [5], ("b", 10, 20): [15], ("a", 30, 40): [35],
                   ("b", 90, 100): [95]}
    assert len(out) == 4


def test_sliding_empty_windows_emit_nothing():
    msgs = [("a", 1 * MS, 1), ("a", 100 * MS, 100)]
    window = wallaroo.range_windows(10 * MS).with_slide(5 * MS).over(CollectWindow)
    out = run_window(window, msgs)
    assert [(w[0] // MS, w[1] // MS) for _, w, _ in out] == [(-5, 5), (0, 10), (95, 105),
                                                              (100, 110)]


def test_output_returning_none_emits_nothing():
    window = wallaroo.range_windows(10 * MS).over(EvenTotalsOnly)
    out = run_window(window, VALUES, key=parity_key, event_time=value_time)
    totals = defaultdict(int)
    for v in VALUES:
        totals[(parity_key(v), value_time(v) // (10 * MS))] += v
    expected = [(k, total) for (k, _), total in totals.items() if total % 2 == 0]
    assert sorted(out) == sorted(expected)
    assert None not in out
    assert len(expected) < len(totals)  # the test data has odd totals too


def test_count_window_output_returning_none_emits_nothing():
    out = run_window(wallaroo.count_windows(3).over(EvenTotalsOnly), VALUES[:20],
                     key=parity_key, event_time=value_time)
    chunks = model_count(VALUES[:20], parity_key, 3)
    expected = [(k, sum(c)) for k, cs in chunks.items() for c in cs if sum(c) % 2 == 0]
    assert sorted(out) == sorted(expected) and None not in out


def test_outputs_keep_their_key():
    made = []

    class Seen:
        def __init__(self):
            made.append(self)
            self.keys = []

    @wallaroo.state_computation(name="count per key", state=Seen)
    def count_per_key(output, state):
        key, total = output
        state.keys.append(key)
        return (key, total, len(state.keys), len(set(state.keys)))

    @wallaroo.computation(name="tag")
    def tag(x):
        return ("tagged",) + x

    p = (wallaroo.source("events", IterSourceConfig("events", []), event_time=value_time)
         .key_by(parity_key).to(wallaroo.range_windows(10 * MS).over(Total))
         .to(count_per_key).to(tag).to_sink(mem_sink()))
    [out] = wallaroo.testing.run(wallaroo.build_application("keys", p), {"events": VALUES})
    assert len(made) == 2  # one state per key: the window's outputs are keyed a and b
    windows_of = Counter(k for k, _ in {(parity_key(v), value_time(v) // (10 * MS))
                                        for v in VALUES})
    for key in "ab":
        mine = [x for x in out if x[1] == key]
        assert [x[3] for x in mine] == list(range(1, windows_of[key] + 1))
        assert all(x[0] == "tagged" and x[4] == 1 for x in mine)  # one key per state
        assert sum(x[2] for x in mine) == sum(v for v in VALUES if parity_key(v) == key)


def test_int_keys_are_seen_as_decimal_str():
    window = wallaroo.count_windows(2).over(CollectWindow)
    out = run_window(window, [3, 5, 7, 4, 9, 6], key=lambda v: v % 2 + 6, event_time=value_time)
    assert sorted(k for k, _, _ in out) == ["6", "7", "7"]
    assert {k: [vs for _, vs in ws] for k, ws in by_key(out).items()} == {
        "7": [[3, 5], [7, 9]], "6": [[4, 6]]}


def test_output_event_time_is_window_end_minus_one():
    # a second window stage places each output of the first at end - 1
    p = (wallaroo.source("events", IterSourceConfig("events", []), event_time=value_time)
         .key_by(parity_key).to(wallaroo.range_windows(10 * MS).over(Total))
         .to(wallaroo.range_windows(30 * MS).over(CountMessages)).to_sink(mem_sink()))
    [out] = wallaroo.testing.run(wallaroo.build_application("chained", p),
                                 {"events": list(range(0, 70))})
    # first stage: per key, windows [0, 10), ..., [60, 70): at 9, 19, ..., 69 ms
    # second stage: [0, 30) gets 3 per key, [30, 60) 3, [60, 90) 1
    expected = {(k, (s * MS, (s + 30) * MS), n) for k in "ab" for s, n in ((0, 3), (30, 3),
                                                                            (60, 1))}
    assert sorted(out) == sorted(expected)


def test_over_accepts_an_instance():
    window = wallaroo.range_windows(10 * MS).over(TaggedCollect("t1"))
    out = run_window(window, VALUES[:25], key=parity_key, event_time=value_time)
    assert {x[0] for x in out} == {"t1"}
    as_class = run_window(wallaroo.range_windows(10 * MS).over(CollectWindow), VALUES[:25],
                          key=parity_key, event_time=value_time)
    assert [x[1:] for x in out] == as_class


# ---------------------------------------------------------------------------------------------
# 6. event time: datetimes, and bad event times
# ---------------------------------------------------------------------------------------------

EPOCH = datetime.datetime(1970, 1, 1)
BASE = datetime.datetime(2024, 3, 1, 12, 0, 0)
BASE_NS = (BASE - EPOCH) // datetime.timedelta(microseconds=1) * 1_000


def dt_naive(v):
    return BASE + datetime.timedelta(milliseconds=37 * v)


def dt_utc(v):
    return dt_naive(v).replace(tzinfo=datetime.timezone.utc)


def dt_india(v):  # the same instant, in another zone
    return dt_utc(v).astimezone(datetime.timezone(datetime.timedelta(hours=5, minutes=30)))


def ns_of(v):
    return BASE_NS + 37 * v * MS


@pytest.mark.parametrize("event_time", [dt_naive, dt_utc, dt_india], ids=["naive", "utc", "+0530"])
def test_datetime_event_time_is_like_the_equivalent_ns(event_time):
    assert dt_india(3) == dt_utc(3) and dt_india(3).utcoffset() != datetime.timedelta(0)
    values = list(range(60)) + [5, 1, 80, 2]  # a few out of order: one late
    window = wallaroo.range_windows(SECOND).with_slide(SECOND // 2).over(CollectWindow)
    got = run_window(window, values, key=parity_key, event_time=event_time)
    as_ns = run_window(window, values, key=parity_key, event_time=ns_of)
    assert got == as_ns
    assert by_key(got) == model_range(values, parity_key, ns_of, SECOND, SECOND // 2)
    assert all(w[0] % (SECOND // 2) == 0 and w[0] >= BASE_NS - SECOND for _, w, _ in got)


BAD_VALUES = {6: "raises", 7: "float", 13: "none", 18: "raises", 21: "str", 24: "raises",
              28: "float"}


def bad_event_time(v):
    kind = BAD_VALUES.get(v)
    if kind == "raises":
        raise ValueError(f"no time for {v}")
    if kind == "float":
        return float(value_time(v))
    if kind == "none":
        return None
    if kind == "str":
        return str(value_time(v))
    return value_time(v)


def _run_worker(app, inputs, tmp_path, on_error="fail"):
    dead = tmp_path / "dead.jsonl"
    sources = {name: IterSourceConfig(name, values) for name, values in inputs.items()}
    sinks = {i: wallaroo.testing._MemorySinkConfig() for i in range(len(app.graph.sinks))}
    worker = Worker(app, RunOptions(on_error=on_error, dead_letter=str(dead)), sources, sinks)
    result = wallaroo.testing._run_to_end(worker, 30)
    records = [json.loads(line) for line in dead.read_text().splitlines()] if dead.exists() else []
    return result, [s.values for s in worker.sinks], records


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.parametrize("window_kind", ["range", "count"])
def test_bad_event_time_is_bad_input(tmp_path, window_kind):
    values = list(range(1, 31))
    good = [v for v in values if v not in BAD_VALUES]
    window = (wallaroo.range_windows(10 * MS).over(CollectWindow) if window_kind == "range"
              else wallaroo.count_windows(4).over(CollectWindow))
    app = window_app(window, key=parity_key, event_time=bad_event_time)
    handler = _Records()
    logger = logging.getLogger("wallaroo")
    logger.addHandler(handler)
    try:
        result, [out], records = _run_worker(app, {"events": values}, tmp_path)
    finally:
        logger.removeHandler(handler)
    # the run does not stop (bad input does not follow on_error="fail")
    assert result.failure is None and result.exit_code == 0
    # the other messages are windowed as if the bad ones were not there
    if window_kind == "range":
        assert by_key(out) == model_range(good, parity_key, value_time, 10 * MS)
    else:
        assert {k: [vs for _, vs in ws] for k, ws in by_key(out).items()} == model_count(
            good, parity_key, 4)
    # counted, dead-lettered (in arrival order, with the input), logged not once per message
    assert sum(result.error_counts.values()) == len(BAD_VALUES)
    assert [r["input"] for r in records] == [repr(v) for v in values if v in BAD_VALUES]
    for r in records:
        if BAD_VALUES[int(r["input"])] == "raises":
            assert r["error"].startswith("ValueError") and "no time for" in r["error"]
    assert 1 <= len(handler.records) < len(BAD_VALUES)


def test_bad_event_time_with_testing_run_goes_on():
    window = wallaroo.range_windows(10 * MS).over(CollectWindow)
    out = run_window(window, list(range(1, 31)), key=parity_key, event_time=bad_event_time)
    good = [v for v in range(1, 31) if v not in BAD_VALUES]
    assert by_key(out) == model_range(good, parity_key, value_time, 10 * MS)


# ---------------------------------------------------------------------------------------------
# 7. build-time errors
# ---------------------------------------------------------------------------------------------

R = 10 * MS


def _policy(builder):
    return builder.with_late_data_policy("sometimes")


BUILD_ERRORS = [
    ("count_windows(0)", lambda: wallaroo.count_windows(0), "count"),
    ("count_windows(-1)", lambda: wallaroo.count_windows(-1), "count"),
    ("count_windows(1.5)", lambda: wallaroo.count_windows(1.5), "count"),
    ("count_windows('3')", lambda: wallaroo.count_windows("3"), "count"),
    ("count_windows(True)", lambda: wallaroo.count_windows(True), "count"),
    ("range_windows(0)", lambda: wallaroo.range_windows(0), "range"),
    ("range_windows(-10)", lambda: wallaroo.range_windows(-10), "range"),
    ("range_windows(1.5)", lambda: wallaroo.range_windows(1.5), "range"),
    ("range_windows('10')", lambda: wallaroo.range_windows("10"), "range"),
    ("session_windows(0)", lambda: wallaroo.session_windows(0), ("session", "gap")),
    ("with_slide(0)", lambda: wallaroo.range_windows(R).with_slide(0), "slide"),
    ("with_slide(-1)", lambda: wallaroo.range_windows(R).with_slide(-1), "slide"),
    ("with_slide(r+1)", lambda: wallaroo.range_windows(R).with_slide(R + 1), "slide"),
    ("with_slide twice", lambda: wallaroo.range_windows(R).with_slide(R // 2).with_slide(R // 2),
     "slide"),
    ("with_delay(-1)", lambda: wallaroo.range_windows(R).with_delay(-1), "delay"),
    ("with_delay(1.5)", lambda: wallaroo.range_windows(R).with_delay(1.5), "delay"),
    ("session with_delay(-1)", lambda: wallaroo.session_windows(R).with_delay(-1), "delay"),
    ("with_timeout(0)", lambda: wallaroo.count_windows(3).with_timeout(0), "timeout"),
]


@pytest.mark.parametrize("call,words", [(c, w) for c, _, w in BUILD_ERRORS],
                         ids=[c for c, _, _ in BUILD_ERRORS])
def test_builder_rejects_bad_parameters(call, words):
    make = {c: m for c, m, _ in BUILD_ERRORS}[call]
    with pytest.raises(WallarooParameterError) as info:
        make()
    words = (words,) if isinstance(words, str) else words
    assert any(w in str(info.value).lower() for w in words), str(info.value)


def test_with_slide_error_comes_from_that_call():
    with pytest.raises(WallarooParameterError):
        wallaroo.range_windows(R).with_slide(R + 1)
    wallaroo.range_windows(R).with_slide(R)  # equal to the range is fine
    once = wallaroo.range_windows(R).with_slide(R // 2)  # fine
    with pytest.raises(WallarooParameterError, match="slide"):
        once.with_slide(R // 5)


@pytest.mark.parametrize("make", [
    lambda: wallaroo.range_windows(R),
    lambda: wallaroo.range_windows(R).with_slide(R // 2),
    lambda: wallaroo.session_windows(R),
], ids=["range", "sliding", "session"])
def test_unknown_late_data_policy_lists_the_valid_ones(make):
    builder = make()
    with pytest.raises(WallarooParameterError) as info:
        builder.with_late_data_policy("sometimes")
    message = str(info.value)
    assert all(p in message for p in POLICIES), message
    assert "sometimes" in message


def test_valid_parameters_build():
    for policy in POLICIES:
        wallaroo.range_windows(R).with_slide(R).with_delay(0).with_late_data_policy(policy) \
            .over(Collect)
        wallaroo.session_windows(R).with_delay(R).with_late_data_policy(policy).over(Collect)
    wallaroo.count_windows(1).with_timeout(SECOND).over(Collect())
    wallaroo.range_windows(1).over(Collect)


class NoInitial:
    def update(self, data, acc): pass
    def combine(self, a, b): return a
    def output(self, key, acc): return acc


class NoUpdate:
    def initial_accumulator(self): return []
    def combine(self, a, b): return a
    def output(self, key, acc): return acc


class NoCombine:
    def initial_accumulator(self): return []
    def update(self, data, acc): pass
    def output(self, key, acc): return acc


class NoOutput:
    def initial_accumulator(self): return []
    def update(self, data, acc): pass
    def combine(self, a, b): return a


class OutputOneParam(Collect):
    def output(self, key):
        return key


class OutputFourParams(Collect):
    def output(self, key, acc, window, extra):
        return key


WINDOW_STARTS = {
    "count": lambda: wallaroo.count_windows(3),
    "range": lambda: wallaroo.range_windows(R),
    "sliding": lambda: wallaroo.range_windows(R).with_slide(R // 2),
    "session": lambda: wallaroo.session_windows(R),
}


@pytest.mark.parametrize("start", list(WINDOW_STARTS))
@pytest.mark.parametrize("cls,missing", [
    (NoInitial, "initial_accumulator"), (NoUpdate, "update"), (NoCombine, "combine"),
    (NoOutput, "output"), (OutputOneParam, "output"), (OutputFourParams, "output"),
])
@pytest.mark.parametrize("as_instance", [False, True], ids=["class", "instance"])
def test_over_names_the_class_and_the_missing_method(start, cls, missing, as_instance):
    builder = WINDOW_STARTS[start]()
    with pytest.raises(WallarooParameterError) as info:
        builder.over(cls() if as_instance else cls)
    message = str(info.value)
    assert cls.__name__ in message and missing in message, message


def _some_function(key, acc):
    return acc


@pytest.mark.parametrize("start", list(WINDOW_STARTS))
@pytest.mark.parametrize("thing", [42, _some_function, None, "Collect"],
                         ids=["int", "function", "None", "str"])
def test_over_rejects_what_is_not_an_aggregation(start, thing):
    with pytest.raises(WallarooParameterError):
        WINDOW_STARTS[start]().over(thing)


# ---------------------------------------------------------------------------------------------
# 8. ingest time
# ---------------------------------------------------------------------------------------------

def test_ingest_time_windows_all_fire_at_end_of_input():
    import time
    before = time.time_ns()
    window = wallaroo.range_windows(SECOND).over(CollectWindow)
    out = run_window(window, VALUES, key=parity_key, event_time=None)
    after = time.time_ns()
    for key in "ab":
        mine = [x for x in out if x[0] == key]
        flat = [v for _, _, vs in mine for v in vs]
        assert flat == [v for v in VALUES if parity_key(v) == key]  # all, once, in order
        assert sum(flat) == sum(v for v in VALUES if parity_key(v) == key)
    for _, (start, end), _ in out:
        assert start % SECOND == 0 and end - start == SECOND
        assert start <= after and end > before  # the ingest time is the wall clock of the run


def test_ingest_time_sum_preserved():
    window = wallaroo.range_windows(wallaroo.minutes(10)).with_slide(wallaroo.minutes(5)) \
        .over(Total)
    out = run_window(window, VALUES, key=parity_key, event_time=None)
    per_key = defaultdict(int)
    for k, total in out:
        per_key[k] += total
    # every value is in range / slide = 2 windows
    assert dict(per_key) == {k: 2 * sum(v for v in VALUES if parity_key(v) == k) for k in "ab"}


# ---------------------------------------------------------------------------------------------
# 9. two event-time sources merged into one window stage
# ---------------------------------------------------------------------------------------------

def run_merged(first, second_source, aggregation):
    """Two event-time sources (name, messages), merged in that order, into 10 ms windows."""
    (name1, msgs1), (name2, msgs2) = first, second_source
    p1 = wallaroo.source(name1, IterSourceConfig(name1, []), event_time=second)
    p2 = wallaroo.source(name2, IterSourceConfig(name2, []), event_time=second)
    p = (p1.merge(p2).key_by(lambda m: "k")
         .to(wallaroo.range_windows(10 * MS).over(aggregation)).to_sink(mem_sink()))
    [out] = wallaroo.testing.run(wallaroo.build_application("merged", p),
                                 {name1: msgs1, name2: msgs2}, timeout=30)
    return out


def test_merged_sources_watermark_is_the_minimum():
    # "fast" runs far ahead; "slow" has data in the early windows. Each source is in order, so
    # none of its messages is behind the stage watermark (the minimum): all land in their
    # windows, whatever the interleaving.
    fast = [("fast", t * MS) for t in [2, 5, 14] + list(range(1_000, 3_000, 7))]
    slow = [("slow", t * MS) for t in (1, 3, 4, 8, 9, 12, 15, 19, 21)]
    out = run_merged(("fast", fast), ("slow", slow), CollectWindow)
    windows = [w for _, w, _ in out]
    assert len(windows) == len(set(windows)), "a window fired more than once"
    assert windows == sorted(windows, key=lambda w: w[1])
    expected = defaultdict(list)
    for m in fast + slow:
        expected[(m[1] // (10 * MS) * 10 * MS, m[1] // (10 * MS) * 10 * MS + 10 * MS)].append(m)
    got = {w: vs for _, w, vs in out}
    assert {w: sorted(vs) for w, vs in got.items()} == {w: sorted(vs) for w, vs in
                                                         expected.items()}
    for vs in got.values():  # each source's messages in its own order
        for name in ("fast", "slow"):
            mine = [m for m in vs if m[0] == name]
            assert mine == sorted(mine, key=second)


def test_merged_sources_slow_source_listed_first():
    slow = [("slow", t * MS) for t in (1, 3, 11, 13)]
    fast = [("fast", t * MS) for t in [2] + list(range(500, 2_500, 3))]
    out = run_merged(("slow", slow), ("fast", fast), CountMessages)
    counts = {w: n for _, w, n in out}
    assert counts[(0, 10 * MS)] == 3 and counts[(10 * MS, 20 * MS)] == 2
    assert sum(counts.values()) == len(slow) + len(fast)
