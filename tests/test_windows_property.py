"""Property tests for windows (range, sliding, session and count) against a brute-force reference.

Random event-time streams (a few keys, event times with disorder and late data, each value the
message's index in the stream so every value is identifiable) run through the engine with
``wallaroo.testing.run``; the outputs are compared, per key, to a reference written here that
follows the windows contract literally and naively:

* it keeps one list of values per (key, window) and updates EVERY window a message belongs to
  (no panes);
* it tracks the stage watermark message by message (one source: the highest event time seen so
  far, updated AFTER the message is placed; +infinity at the end of input);
* it decides lateness from the watermark before the message and applies the late-data policy;
* it fires windows right after the message that moved the watermark, in order of end.

The aggregation's accumulator is the list of values (``combine`` concatenates), and ``output``
takes the window bounds, so a comparison checks which values landed in which window, in which
order, and the window's (start, end). Order across keys is not part of the contract: outputs are
compared key by key.
"""
from __future__ import annotations

import collections
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import wallaroo
import wallaroo.testing

INF = float("inf")
NEG_INF = float("-inf")
POLICIES = ["drop", "fire-per-message", "place-in-oldest-window"]


def _settings(n):
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------
# Aggregations: the accumulator is the list of values (a message's value is its index)
# ---------------------------------------------------------------------------------------------

class Collect(wallaroo.Aggregation):
    """Keeps the values of a window in a list; output shows the key, values and window bounds."""

    def initial_accumulator(self):
        return []

    def update(self, data, acc):
        acc.append(data[2])

    def combine(self, acc1, acc2):
        return acc1 + acc2

    def output(self, key, acc, window):
        return (key, list(acc), window)


class Collect2(Collect):
    """Same with the 2-parameter output (no window bounds)."""

    def output(self, key, acc):
        return (key, list(acc))


class Unordered:
    """The values of a session made by merging sessions: the contract fixes the set of values
    (each exactly once) but not the order ``combine`` puts them in when sessions merge (the
    "arrival order" sentence is about range windows)."""

    def __init__(self, values):
        self.values = list(values)

    def __eq__(self, other):
        if isinstance(other, Unordered):
            other = other.values
        return isinstance(other, list) and sorted(other) == sorted(self.values)

    def __repr__(self):
        return f"Unordered({self.values!r})"


# ---------------------------------------------------------------------------------------------
# The engine side
# ---------------------------------------------------------------------------------------------

ENC = wallaroo.encoder(str)


def event_time(message):
    return message[1]


def message_key(message):
    return message[0]


def run_window(window, messages):
    """Run (key, t, value) messages through source -> key_by -> window -> sink: sink values."""
    p = (wallaroo.source("events", wallaroo.IterSourceConfig("events", []), event_time=event_time)
         .key_by(message_key).to(window).to_sink(wallaroo.StdoutSinkConfig(ENC)))
    app = wallaroo.build_application("windows property", p)
    [out] = wallaroo.testing.run(app, {"events": list(messages)}, timeout=20)
    return out


def event_time_window(builder, delay, policy, agg):
    """``builder`` with the delay and late-data policy (None: left at the default)."""
    if delay is not None:
        builder = builder.with_delay(delay)
    if policy is not None:
        builder = builder.with_late_data_policy(policy)
    return builder.over(agg)


def range_window(r, slide, delay, policy, agg):
    b = wallaroo.range_windows(r)
    return event_time_window(b if slide is None else b.with_slide(slide), delay, policy, agg)


def session_window(gap, delay, policy, agg):
    return event_time_window(wallaroo.session_windows(gap), delay, policy, agg)


def count_window(n, timeout, agg):
    b = wallaroo.count_windows(n)
    if timeout is not None:
        b = b.with_timeout(timeout)
    return b.over(agg)


# ---------------------------------------------------------------------------------------------
# The reference: the contract, literally
# ---------------------------------------------------------------------------------------------

def state_key(key):
    """Keys as state and Aggregation.output see them: an int key is its decimal str."""
    return str(key) if isinstance(key, int) else key


class Emitter:
    def __init__(self, three_param):
        self.three_param = three_param
        self.out = []

    def __call__(self, key, values, window):
        self.out.append((key, values, window) if self.three_param else (key, values))


def ref_range(messages, r, slide=None, delay=None, policy=None, three_param=True):
    """Expected outputs of range_windows(r)[.with_slide(slide)][.with_delay(delay)][policy]."""
    s = r if slide is None else slide
    d = 0 if delay is None else delay
    policy = policy or "drop"
    p = math.gcd(r, s)  # the pane: values reach a window pane by pane in event-time order
    emit = Emitter(three_param)
    acc = {}  # (key, k) -> [(pane, value)] of the key in window k = [k*s, k*s + r), not fired
    W = NEG_INF  # the stage watermark

    def bounds(k):
        return (k * s, k * s + r)

    def fired(k):
        return k * s + r + d <= W

    def fire():
        # every window with end + delay <= W, in order of end (per key; keys are independent);
        # its values by pane (a stable sort keeps arrival order within a pane)
        for key, k in sorted((key, k) for (key, k) in acc if fired(k)):
            placed = sorted(acc.pop((key, k)), key=lambda pane_value: pane_value[0])
            emit(key, [value for _, value in placed], bounds(k))

    for key, t, v in messages:
        key = state_key(key)
        covering = [k for k in range((t - r) // s, t // s + 1) if k * s <= t < k * s + r]
        latest = t // s
        assert covering and covering[-1] == latest
        late = all(fired(k) for k in covering)
        assert late == (latest * s + r + d <= W)  # the contract's two wordings agree
        if not late:
            for k in covering:
                if not fired(k):
                    acc.setdefault((key, k), []).append((t // p, v))
        elif policy == "fire-per-message":
            emit(key, [v], bounds(latest))
        elif policy == "place-in-oldest-window":
            oldest = latest
            while fired(oldest):
                oldest += 1
            acc.setdefault((key, oldest), []).append((oldest * s // p, v))
        # "drop": counted nowhere
        W = max(W, t)
        fire()
    W = INF
    fire()
    return emit.out


class Session:
    def __init__(self, first, last, values, merged=False):
        self.first, self.last, self.values, self.merged = first, last, values, merged


def ref_session(messages, gap, delay=None, policy=None, three_param=True):
    """Expected outputs of session_windows(gap)[.with_delay(delay)][policy]."""
    d = 0 if delay is None else delay
    policy = policy or "drop"
    emit = Emitter(three_param)
    sessions = collections.defaultdict(list)  # key -> open sessions
    W = NEG_INF

    def fire():
        for key, open_ in sessions.items():
            ready = sorted((x for x in open_ if x.last + gap + d <= W), key=lambda x: x.last)
            for x in ready:
                open_.remove(x)
                emit(key, Unordered(x.values) if x.merged else x.values, (x.first, x.last + gap))

    for key, t, v in messages:
        key = state_key(key)
        open_ = sessions[key]
        joins = [x for x in open_ if x.first - gap < t < x.last + gap]
        if len(joins) == 1:
            x = joins[0]
            x.first, x.last = min(x.first, t), max(x.last, t)
            x.values.append(v)
        elif joins:
            for x in joins:
                open_.remove(x)
            joins.sort(key=lambda x: x.first)
            open_.append(Session(min(t, joins[0].first), max(t, max(x.last for x in joins)),
                                 [u for x in joins for u in x.values] + [v], merged=True))
        elif t + gap + d <= W:  # late
            if policy == "fire-per-message":
                # the contract gives the window for range windows only; (t, t + gap) is the
                # session this value alone would make
                emit(key, [v], (t, t + gap))
            elif policy == "place-in-oldest-window":
                if open_:
                    min(open_, key=lambda x: x.first).values.append(v)
                else:
                    open_.append(Session(W - d, W - d, [v]))
        else:
            open_.append(Session(t, t, [v]))
        W = max(W, t)
        fire()
    W = INF
    fire()
    return emit.out


def ref_count(messages, n, three_param=True):
    """Expected outputs of count_windows(n): per key, chunks of n in order; partial ones at end."""
    emit = Emitter(three_param)
    current = {}  # key -> [(t, v)]

    def flush(key):
        items = current.pop(key)
        ts = [t for t, _ in items]
        emit(key, [v for _, v in items], (min(ts), max(ts) + 1))

    for key, t, v in messages:
        key = state_key(key)
        current.setdefault(key, []).append((t, v))
        if len(current[key]) == n:
            flush(key)
    for key in list(current):
        flush(key)
    return emit.out


def per_key(outputs):
    grouped = collections.defaultdict(list)
    for o in outputs:
        grouped[o[0]].append(o)
    return dict(grouped)


def assert_same_per_key(got, expected, messages):
    """The outputs of each key, in order, are equal (order across keys is free); a merged
    session's values compare as a multiset (see Unordered)."""
    g, e = per_key(got), per_key(expected)
    if g == e:
        return
    lines = [f"messages (key, t, value): {messages!r}"]
    for key in sorted(set(g) | set(e), key=repr):
        if g.get(key, []) != e.get(key, []):
            lines.append(f"key {key!r}:\n  expected {e.get(key, [])!r}\n"
                         f"  got      {g.get(key, [])!r}")
    raise AssertionError("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Streams: (key, event time, value) with disorder and late data; value = index in the stream
# ---------------------------------------------------------------------------------------------

KEYS = ["a", "b", "c"]
JITTER = st.one_of(st.just(0), st.integers(-4, 4), st.integers(-60, 0))


def _stream(base, steps):
    t, messages = base, []
    for i, (key, step, jitter) in enumerate(steps):
        t += step
        messages.append((key, t + jitter, i))
    return messages


def streams(keys=KEYS, base=st.integers(0, 20), max_size=40):
    """Event times drift upward (steps 0..6 ns) with jitter: none, small disorder, or far back."""
    steps = st.lists(st.tuples(st.sampled_from(keys), st.integers(0, 6), JITTER), max_size=max_size)
    return st.builds(_stream, base, steps)


delays = st.sampled_from([None, 0, 3, 10, 23])
policies = st.sampled_from([None] + POLICIES)
# (range, slide): slides that divide the range and slides that do not (range 10, slide 4)
slides = st.one_of(
    st.sampled_from([(10, 4), (10, 3), (10, 5), (10, 1), (10, 10), (10, 9), (7, 2)]),
    st.integers(1, 12).flatmap(lambda r: st.tuples(st.just(r), st.integers(1, r))),
)


# ---------------------------------------------------------------------------------------------
# The reference against hand-worked cases (no engine needed)
# ---------------------------------------------------------------------------------------------

S = wallaroo.seconds(1)
MS = wallaroo.milliseconds(1)
WORKED = [("k", S, 2), ("k", S + MS, 3), ("k", S + 2 * MS, 4), ("k", 50, 1), ("k", S + 3 * MS, 5)]
WORKED_EXPECTED = {
    "drop": [[2, 3, 4, 5]],
    "fire-per-message": [[1], [2, 3, 4, 5]],
    "place-in-oldest-window": [[2, 3, 4, 1, 5]],
}


class TestReference:
    @pytest.mark.parametrize("policy", POLICIES)
    def test_worked_example(self, policy):
        out = ref_range(WORKED, S, policy=policy, three_param=False)
        assert [values for _, values in out] == WORKED_EXPECTED[policy]

    def test_slide_that_does_not_divide_the_range(self):
        # range 10, slide 4: t=5 is in [-4, 6), [0, 10), [4, 14); t=13 in [4, 14), [8, 18), [12, 22)
        out = ref_range([("a", 5, 0), ("a", 13, 1)], 10, 4)
        assert out == [("a", [0], (-4, 6)), ("a", [0], (0, 10)), ("a", [0, 1], (4, 14)),
                       ("a", [1], (8, 18)), ("a", [1], (12, 22))]

    def test_partly_late_message_counts_only_in_open_windows(self):
        # W = 13 fires [-4, 6) and [0, 10); t=7 is in [0, 10) (fired), [4, 14) and not late
        out = ref_range([("a", 13, 0), ("a", 7, 1)], 10, 4)
        # (pane order: 7 is in pane [4, 8), before 13's pane [12, 16))
        assert ("a", [1], (0, 10)) not in out and ("a", [1, 0], (4, 14)) in out

    def test_floor_aligned_negative_times(self):
        assert ref_range([("a", -11, 0), ("a", -1, 1), ("a", -10, 2)], 10) == [
            ("a", [0], (-20, -10)), ("a", [1, 2], (-10, 0))]

    def test_sessions(self):
        msgs = [("a", 0, 0), ("a", 4, 1), ("b", 5, 2), ("a", 20, 3), ("a", 27, 4), ("a", 23, 5),
                ("a", 2, 6)]
        # gap 5, delay 10: a's {0, 4} fires at W=20 (end 9 + 10 <= 20), so does b's {5};
        # {20} and {27} merge through 23; a at 2 joins nothing and 2 + 5 + 10 <= 27: late
        assert ref_session(msgs, 5, 10) == [("a", [0, 1], (0, 9)), ("b", [2], (5, 10)),
                                            ("a", Unordered([3, 4, 5]), (20, 32))]
        assert ref_session(msgs, 5, 10, "fire-per-message")[-2] == ("a", [6], (2, 7))
        assert ref_session(msgs, 5, 10, "place-in-oldest-window")[-1] == (
            "a", Unordered([3, 4, 5, 6]), (20, 32))
        # with delay 0, {20} fires when 27 arrives and nothing merges
        assert ref_session(msgs[:5], 5)[-2:] == [("a", [3], (20, 25)), ("a", [4], (27, 32))]

    def test_session_place_in_oldest_starts_a_session_at_the_watermark(self):
        msgs = [("a", 50, 0), ("b", 1, 1)]
        assert ref_session(msgs, 5, delay=2, policy="place-in-oldest-window") == [
            ("a", [0], (50, 55)), ("b", [1], (48, 53))]

    def test_count(self):
        msgs = [("a", 5, 0), (7, 3, 1), ("a", 1, 2), ("a", 9, 3)]
        assert ref_count(msgs, 2) == [("a", [0, 2], (1, 6)), ("7", [1], (3, 4)),
                                      ("a", [3], (9, 10))]


# ---------------------------------------------------------------------------------------------
# The engine against the reference
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
def test_worked_example(policy):
    class AsList(Collect):
        def output(self, key, acc):
            return list(acc)

    window = wallaroo.range_windows(S).with_late_data_policy(policy).over(AsList)
    assert run_window(window, WORKED) == WORKED_EXPECTED[policy]


@_settings(500)
@given(messages=streams(base=st.integers(-30, 20)), r=st.sampled_from([10, 7, 3, 1]), delay=delays,
       policy=policies, three_param=st.booleans(), instance=st.booleans())
def test_tumbling_range_windows(messages, r, delay, policy, three_param, instance):
    agg = Collect if three_param else Collect2
    window = range_window(r, None, delay, policy, agg() if instance else agg)
    expected = ref_range(messages, r, None, delay, policy, three_param)
    assert_same_per_key(run_window(window, messages), expected, messages)


@_settings(400)
@example(messages=[("a", 5, 0), ("a", 3, 1)], range_slide=(10, 4), delay=None, policy=None)
@given(messages=streams(base=st.integers(-30, 20)), range_slide=slides, delay=delays,
       policy=policies)
def test_sliding_range_windows_values_in_pane_order(messages, range_slide, delay, policy):
    """The contract: a window's values come pane by pane (panes of gcd(range, slide)) in
    event-time order, in arrival order within a pane."""
    r, s = range_slide
    window = range_window(r, s, delay, policy, Collect)
    expected = ref_range(messages, r, s, delay, policy)
    assert_same_per_key(run_window(window, messages), expected, messages)


@_settings(300)
@given(messages=streams(base=st.integers(-150, -1)),
       range_slide=st.one_of(st.sampled_from([(10, None), (10, 4), (7, 3)]), slides),
       delay=delays, policy=policies)
def test_range_windows_with_negative_event_times(messages, range_slide, delay, policy):
    """Windows are floor-aligned: [-10, 0), [-8, 2), ..."""
    r, s = range_slide
    window = range_window(r, s, delay, policy, Collect)
    expected = ref_range(messages, r, s, delay, policy)
    assert_same_per_key(run_window(window, messages), expected, messages)


@_settings(500)
@given(messages=streams(base=st.integers(-20, 20)), gap=st.sampled_from([1, 3, 5, 10, 17]),
       delay=delays, policy=policies, three_param=st.booleans())
def test_session_windows(messages, gap, delay, policy, three_param):
    agg = Collect if three_param else Collect2
    window = session_window(gap, delay, policy, agg)
    expected = ref_session(messages, gap, delay, policy, three_param)
    assert_same_per_key(run_window(window, messages), expected, messages)


@_settings(300)
@given(messages=streams(keys=["a", "b", 7], base=st.integers(-20, 20)), n=st.integers(1, 5),
       timeout=st.sampled_from([None, wallaroo.seconds(600)]), three_param=st.booleans())
def test_count_windows(messages, n, timeout, three_param):
    agg = Collect if three_param else Collect2
    window = count_window(n, timeout, agg)
    expected = ref_count(messages, n, three_param)
    assert_same_per_key(run_window(window, messages), expected, messages)


class Tag(Collect):
    """Second stage: count_windows(1) emits every upstream output at once, with its key and
    window (its event time, event time + 1)."""

    def update(self, data, acc):
        acc.append(data)


def run_chained(first, messages):
    """source -> key_by -> first window -> count_windows(1).over(Tag) -> sink."""
    p = (wallaroo.source("events", wallaroo.IterSourceConfig("events", []), event_time=event_time)
         .key_by(message_key).to(first).to(wallaroo.count_windows(1).over(Tag))
         .to_sink(wallaroo.StdoutSinkConfig(ENC)))
    app = wallaroo.build_application("chained windows", p)
    [got] = wallaroo.testing.run(app, {"events": list(messages)}, timeout=20)
    return got


def first_stage(kind, delay, policy, messages):
    """The first window and its expected outputs, for ("range", r) or ("session", gap)."""
    what, size = kind
    if what == "range":
        return (range_window(size, None, delay, policy, Collect),
                ref_range(messages, size, None, delay, policy))
    return (session_window(size, delay, policy, Collect),
            ref_session(messages, size, delay, policy))


kinds = st.one_of(st.tuples(st.just("range"), st.sampled_from([10, 7, 3])),
                  st.tuples(st.just("session"), st.sampled_from([3, 5, 10])))


@_settings(200)
@given(messages=streams(base=st.integers(-20, 20)), kind=kinds, delay=delays,
       policy=st.sampled_from([None, "drop", "place-in-oldest-window"]))
def test_window_outputs_keep_their_key_and_event_time_is_end_minus_one(messages, kind, delay,
                                                                      policy):
    """The contract: outputs keep their key (a stage after the window sees the same key) and
    their event time is window end - 1. The next stage, count_windows(1), shows both: its output's key, and its
    window (min event time, max event time + 1) = (end - 1, end)."""
    first, upstream = first_stage(kind, delay, policy, messages)
    expected = [(o[0], [o], (o[2][1] - 1, o[2][1])) for o in upstream]
    assert_same_per_key(run_chained(first, messages), expected, messages)


@_settings(100)
@example(messages=[("a", 0, 0), ("a", -2, 1)], kind=("range", 10), delay=None)
@given(messages=streams(base=st.integers(-20, 20)), kind=kinds, delay=delays)
def test_fire_per_message_output_event_time_is_window_end_minus_one(messages, kind, delay):
    """The same for the outputs of late messages under fire-per-message: their window is
    (k*slide, k*slide + range) (sessions: (t, t + gap)), their event time its end - 1."""
    first, upstream = first_stage(kind, delay, "fire-per-message", messages)
    expected = [(o[0], [o], (o[2][1] - 1, o[2][1])) for o in upstream]
    assert_same_per_key(run_chained(first, messages), expected, messages)
