"""Watermarks of window operators: minimum over live inputs, idle inputs, the clock when all
are idle, end of input, count-window timeouts, and watermarks flowing through a real worker.

The ops are driven directly with batches and explicit monotonic clock readings, so time-based
behaviour is tested without sleeping; the worker tests run real sources on a real event loop.
"""
from __future__ import annotations

import asyncio
import time

import pytest

import wallaroo
import wallaroo.testing
from wallaroo._core.chain import WATERMARK_END_OF_INPUT, Batch
from wallaroo._core.windows import CountWindowOp, RangeWindowOp, SessionWindowOp
from wallaroo.runtime.errors import ErrorPolicy
from wallaroo.runtime.worker import RunOptions, Worker

from support.aggregations import CollectWindow, Total

SECOND = 1_000_000_000


def batch(values, times, origin, key="k", watermark=None):
    kwargs = {} if watermark is None else {"watermark": watermark}
    return Batch(list(values), key=key, event_times=list(times), origin=origin, **kwargs)


def tumbling(inputs, idle_ns=SECOND, size=10, delay=0, policy="drop"):
    return RangeWindowOp("w", CollectWindow(), True, ErrorPolicy("fail"), inputs, idle_ns, size, size,
                         delay, policy)


class TestTwoInputs:
    def test_window_waits_for_the_slower_input(self):
        op = tumbling([0, 1])
        assert op.process(batch([1, 2], [1, 25], origin=0)).values == []  # input 1 still at -inf
        assert op.process(batch([3], [5], origin=1)).values == []  # min(25, 5) = 5 < 10
        out = op.process(batch([4], [12], origin=1)).values  # min(25, 12) = 12: [0, 10) fires
        assert out == [("k", (0, 10), [1, 3])]
        assert op.watermark == 12

    def test_an_idle_input_stops_holding_the_watermark_back(self):
        op = tumbling([0, 1], idle_ns=SECOND // 5)
        assert op.process(batch([1, 2], [1, 25], origin=0)).values == []  # 1 not idle yet
        time.sleep(0.3)  # input 1 has said nothing for longer than the idle timeout
        out = op.process(batch([3], [26], origin=0)).values
        assert out == [("k", (0, 10), [1])]
        assert op.watermark == 26

    def test_watermark_never_goes_back_when_an_idle_input_returns(self):
        op = tumbling([0, 1], idle_ns=SECOND // 5)
        time.sleep(0.3)
        op.process(batch([1], [30], origin=0))
        assert op.watermark == 30
        op.process(batch([2], [3], origin=1))  # input 1 is back, far behind: its data is late
        assert op.watermark == 30
        assert op.late == 1

    def test_ended_input_does_not_hold_back_the_other(self):
        op = tumbling([0, 1])
        op.process(batch([], [], origin=1, watermark=WATERMARK_END_OF_INPUT))
        out = op.process(batch([1, 2], [3, 14], origin=0)).values
        assert out == [("k", (0, 10), [1])]
        out = op.process(batch([], [], origin=0, watermark=WATERMARK_END_OF_INPUT)).values
        assert out == [("k", (10, 20), [2])]

    def test_a_batch_from_an_unknown_input_is_an_engine_error(self):
        with pytest.raises(ValueError, match="not one of its inputs"):
            tumbling([0]).process(batch([1], [1], origin=7))


class TestAllInputsIdle:
    def test_the_watermark_follows_the_clock_from_the_last_event_time(self):
        op = tumbling([0], idle_ns=SECOND, size=10 * SECOND)
        op.process(batch([1], [3 * SECOND], origin=0))
        heard = time.monotonic_ns()
        assert op.tick(heard + SECOND // 2) is None  # not idle yet: nothing changes
        # idle for 5 s: the watermark is 3 s + ~5 s = ~8 s, before the window's end (10 s); the
        # tick sends the new watermark on, with no outputs
        moved = op.tick(heard + 5 * SECOND)
        assert moved.values == [] and 7 * SECOND < moved.watermark < 9 * SECOND
        fired = op.tick(heard + 8 * SECOND)  # ~11 s: the window [0, 10 s) fires
        assert fired.values == [("k", (0, 10 * SECOND), [1])]

    def test_nothing_fires_while_no_input_has_said_anything(self):
        op = tumbling([0, 1], idle_ns=SECOND)
        assert op.tick(time.monotonic_ns() + 10 * SECOND) is None


class TestOutputsCarryAWatermark:
    def test_range_windows_send_their_frontier_downstream(self):
        op = tumbling([0], delay=2)
        out = op.process(batch([1, 2], [1, 15], origin=0))
        assert out.watermark == 13 and out.origin == "w"  # 15 minus the delay
        assert out.event_times == [9]  # the window's end minus one

    def test_window_outputs_keep_their_keys_and_groups(self):
        op = tumbling([0])
        b = Batch([1, 2, 3], keys=["a", "b", "a"], groups=[4, 5, 4], event_times=[1, 2, 15],
                  origin=0)
        out = op.process(b)
        assert out.keys == ["a", "b"] and out.groups == [4, 5]


class TestCountWindowTimeouts:
    def test_a_partial_window_is_emitted_once_its_first_message_is_old(self):
        op = CountWindowOp("c", CollectWindow(), True, ErrorPolicy("fail"), [0], SECOND, 3, SECOND)
        op.process(batch([1], [100], origin=0, key="a"))
        op.process(batch([2], [50], origin=0, key="b"))
        assert op.process(batch([3], [200], origin=0, key="a")).values == []
        assert op.tick(time.monotonic_ns()) is None
        fired = op.tick(time.monotonic_ns() + 2 * SECOND)
        assert fired.values == [("a", (100, 201), [1, 3]), ("b", (50, 51), [2])]
        assert op.keys == []

    def test_a_full_window_is_emitted_at_once(self):
        class Plain(CollectWindow):
            def output(self, key, acc):
                return list(acc)

        op = CountWindowOp("c", Plain(), False, ErrorPolicy("fail"), [0], SECOND, 2, SECOND)
        assert op.process(batch([1, 2, 3], [0, 0, 0], origin=0)).values == [[1, 2]]
        assert op.keys == ["k"]


class TestSessionState:
    def test_sessions_are_kept_per_key_until_they_fire(self):
        op = SessionWindowOp("s", CollectWindow(), True, ErrorPolicy("fail"), [0], SECOND, 5, 0, "drop")
        b = Batch([1, 2, 3], keys=["a", "b", "a"], groups=[0, 0, 0], event_times=[0, 1, 3],
                  origin=0)
        assert op.process(b).values == []
        assert sorted(op.keys) == ["a", "b"]
        out = op.process(batch([4], [7], origin=0, key="c")).values  # watermark 7: b ends at 6
        assert out == [("b", (1, 6), [2])]
        assert sorted(op.keys) == ["a", "c"]


class TestThroughAWorker:
    def test_ingest_time_windows_fire_while_the_source_is_quiet(self):
        """An ingest-time source that stops sending still moves the watermark with the clock,
        so its last window fires without more input or an end of input."""
        fired = []

        class Gate(Total):
            def output(self, key, acc):
                fired.append(acc[0])
                return acc[0]

        window = wallaroo.range_windows(wallaroo.milliseconds(200)).over(Gate)
        tcp = wallaroo.TCPSourceConfig("in", "127.0.0.1", 0, wallaroo.decoder(int))
        p = wallaroo.source("in", tcp).to(window).to_sink(
            wallaroo.StdoutSinkConfig(wallaroo.encoder(lambda v: "")))
        worker = Worker(wallaroo.build_application("quiet", p), RunOptions())

        async def go():
            started = asyncio.Event()
            run = asyncio.ensure_future(worker.run(on_started=lambda w: started.set()))
            await started.wait()
            worker.source_contexts[0].emit([b"5", b"6"])  # as if read from a socket
            deadline = time.monotonic() + 5
            while not fired and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            worker.request_stop()
            await run

        asyncio.run(go())
        assert fired == [11]


class TestStateMovesByKey:
    """Each key's open windows can leave one op and be adopted by another (after pickling):
    what the checkpoint and rescale work builds on."""

    FIRST = [("a", 1, 1), ("b", 2, 2), ("a", 5, 3), ("c", 9, 4), ("b", 20, 5)]
    REST = [("a", 30, 6), ("c", 41, 7), ("b", 47, 8), ("a", 140, 9), ("c", 300, 10)]

    @staticmethod
    def make(kind):
        common = (CollectWindow(), True, ErrorPolicy("fail"), [0], SECOND)
        if kind == "range":
            return RangeWindowOp("w", *common, 100, 25, 0, "drop")
        if kind == "session":
            return SessionWindowOp("w", *common, 60, 0, "drop")
        return CountWindowOp("w", *common, 3, 60 * SECOND)

    @staticmethod
    def feed(op, messages, end=False):
        b = Batch([m[2] for m in messages], keys=[m[0] for m in messages],
                  groups=[ord(m[0]) for m in messages], event_times=[m[1] for m in messages],
                  origin=0)
        out = op.process(b).values
        if end:
            out += op.process(Batch([], origin=0, watermark=WATERMARK_END_OF_INPUT)).values
        return out

    @pytest.mark.parametrize("kind", ["range", "session", "count"])
    def test_moving_every_key_midway_changes_nothing(self, kind):
        import pickle

        whole = self.make(kind)
        expected = self.feed(whole, self.FIRST) + self.feed(whole, self.REST, end=True)

        before, after = self.make(kind), self.make(kind)
        out = self.feed(before, self.FIRST)
        assert out == []  # nothing fired yet: every key's windows are still open
        moved = {key: before.take_state(key) for key in before.keys}
        assert before.keys == [] and set(moved) == {"a", "b", "c"}
        for key, state in pickle.loads(pickle.dumps(moved)).items():
            after.restore_state(key, state)
        out += self.feed(after, self.REST, end=True)
        assert sorted(out) == sorted(expected)
        assert len(expected) >= 3

    def test_a_key_cannot_be_restored_twice(self):
        op = self.make("range")
        self.feed(op, self.FIRST)
        state = op.take_state("a")
        op.restore_state("a", state)
        with pytest.raises(ValueError, match="already has pane"):
            op.restore_state("a", state)


class TestAggregationErrors:
    """An aggregation that raises follows the error policy, like any user function: under
    "skip" only the failing key's window is lost; under "fail" the run stops naming the stage."""

    class PickyCombine(CollectWindow):
        def combine(self, acc1, acc2):
            if "bad" in acc2:
                raise ValueError("cannot combine 'bad'")
            return acc1 + acc2

    class PickyOutput(CollectWindow):
        def output(self, key, acc, window):
            if key == "b":
                raise KeyError("no output for b")
            return super().output(key, acc, window)

    MESSAGES = [("a", 1, "x"), ("b", 2, "bad"), ("b", 3, "y"), ("a", 6, "z")]

    def run(self, aggregation, on_error):
        window = wallaroo.range_windows(10).with_slide(5).over(aggregation)
        p = (wallaroo.source("in", wallaroo.IterSourceConfig("in", []), event_time=lambda m: m[1])
             .key_by(lambda m: m[0]).to(wallaroo.computation(name="v")(lambda m: m[2]))
             .to(window).to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
        return wallaroo.testing.run(wallaroo.build_application("picky", p),
                                    {"in": self.MESSAGES}, on_error=on_error)

    @pytest.mark.parametrize("aggregation", [PickyCombine, PickyOutput])
    def test_skip_loses_only_the_failing_keys_windows(self, aggregation):
        [out] = self.run(aggregation, "skip")
        assert {key for key, _, _ in out} == {"a"}
        assert [values for _, _, values in out] == [["x"], ["x", "z"], ["z"]]

    @pytest.mark.parametrize("aggregation", [PickyCombine, PickyOutput])
    def test_fail_stops_the_run_naming_the_window(self, aggregation):
        from wallaroo.errors import StageFailed

        with pytest.raises(StageFailed, match=aggregation.__name__):
            self.run(aggregation, "fail")


def pipeline_run(first, second, messages, on_error="fail"):
    """source (event time m[1]) -> key_by m[0] -> value m[2] -> first -> second -> memory."""
    p = (wallaroo.source("in", wallaroo.IterSourceConfig("in", []), event_time=lambda m: m[1])
         .key_by(lambda m: m[0]).to(wallaroo.computation(name="v")(lambda m: m[2]))
         .to(first))
    if second is not None:
        p = p.to(second)
    p = p.to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
    return wallaroo.testing.run(wallaroo.build_application("chained", p), {"in": messages},
                                on_error=on_error)[0]


class TestChainedWindows:
    """A window after a window: the first one's outputs come in no event-time order (sessions
    of different keys, count windows), and none of them may be taken for late data."""

    def test_sessions_then_a_range_window_lose_nothing(self):
        messages = [("K", 0, 1), ("L", 20, 1), ("K", 40, 1), ("L", 20, 1), ("K", 80, 1)]
        out = pipeline_run(wallaroo.session_windows(50).over(CollectWindow),
                           wallaroo.range_windows(20).over(CollectWindow), messages)
        sessions = [item for _, _, items in out for item in items]
        assert sorted(sessions) == [("K", (0, 130), [1, 1, 1]), ("L", (20, 70), [1, 1])]

    def test_count_windows_then_a_range_window_lose_nothing(self):
        messages = [("A", 0, 1), ("B", 10, 2), ("A", 100, 3)]
        out = pipeline_run(wallaroo.count_windows(5).over(CollectWindow),
                           wallaroo.range_windows(20).over(CollectWindow), messages)
        counts = sorted(item for _, _, items in out for item in items)
        assert counts == [("A", (0, 101), [1, 3]), ("B", (10, 11), [2])]


class TestFailuresAndWindows:
    def test_a_failed_run_does_not_fire_open_windows(self):
        from wallaroo.errors import StageFailed

        def check(v):
            if v == "bad":
                raise ValueError("boom")
            return v

        source = wallaroo.IterSourceConfig("in", ["ok", "fine", "bad", "late"])
        p = (wallaroo.source("in", source, event_time=lambda v: 1)
             .to(wallaroo.computation(name="check")(check))
             .to(wallaroo.range_windows(10).over(CollectWindow))
             .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
        worker = Worker(wallaroo.build_application("fails", p), RunOptions())
        result = asyncio.run(worker.run())
        assert isinstance(result.failure, StageFailed) and result.ingested == 4
        assert worker.sink_probes[0].messages == 0  # the window holding "ok", "fine" never fired

    @pytest.mark.parametrize("window", [
        wallaroo.range_windows(10).over(CollectWindow),
        wallaroo.range_windows(10).with_slide(5).over(CollectWindow),
        wallaroo.session_windows(5).over(CollectWindow),
        wallaroo.count_windows(2).over(CollectWindow),
    ], ids=["tumbling", "sliding", "session", "count"])
    def test_a_skipped_update_leaves_no_window_behind(self, window):
        class Picky(CollectWindow):
            def update(self, data, acc):
                if data == "bad":
                    raise ValueError("bad value")
                acc.append(data)

        spec = type(window)(window.kind, window.params, Picky(), "picky")
        out = pipeline_run(spec, None, [("x", 1, "bad"), ("y", 2, "ok")], on_error="skip")
        assert [(key, values) for key, _, values in out if key == "x"] == []
        assert {key for key, _, _ in out} == {"y"}

    def test_under_fail_no_output_follows_a_failing_output(self):
        class Fussy(CollectWindow):
            def output(self, key, acc, window):
                if key == "b":
                    raise ValueError("no b")
                return super().output(key, acc, window)

        op = RangeWindowOp("w", Fussy(), True, ErrorPolicy("fail"), [0], SECOND, 10, 10, 0,
                           "drop")
        b = Batch([1, 2, 3, 4], keys=["a", "b", "c", "d"], groups=[0] * 4,
                  event_times=[1, 2, 3, 20], origin=0)
        assert [key for key, _, _ in op.process(b).values] == ["a"]


class TestWatermarkCorners:
    def test_an_ended_input_and_a_silent_one_still_move_on(self):
        op = tumbling([0, 1], idle_ns=SECOND // 10)
        op.process(batch([1], [5], origin=0))
        op.process(batch([], [], origin=0, watermark=WATERMARK_END_OF_INPUT))
        fired = op.tick(time.monotonic_ns() + SECOND)  # input 1 never said anything: idle
        assert fired is not None and fired.values == [("k", (0, 10), [1])]

    def test_windows_near_the_earliest_event_time_all_fire(self):
        from wallaroo._core.chain import EVENT_TIME_BOUND

        t = -EVENT_TIME_BOUND + 1
        op = RangeWindowOp("w", CollectWindow(), True, ErrorPolicy("fail"), [0], SECOND, 100,
                           10, 0, "drop")
        op.process(batch([1], [t], origin=0))
        out = op.process(batch([], [], origin=0, watermark=WATERMARK_END_OF_INPUT)).values
        assert len(out) == 10 and all(start <= t < end for _, (start, end), _ in out)

    def test_restored_panes_whose_windows_fired_here_are_counted_late(self):
        ahead = tumbling([0])
        ahead.process(batch([1], [50], origin=0))
        behind = tumbling([0])
        behind.process(batch([2], [3], origin=0, key="moving"))
        ahead.restore_state("moving", behind.take_state("moving"))
        assert ahead.late == 1 and ahead.keys == ["k"]

    def test_message_indexes_outside_a_batch_are_an_error(self):
        b = Batch([1, 2], key="k")
        for i in (-1, 2, 10**6):
            with pytest.raises(IndexError, match="not in this batch"):
                b.event_time_of(i)
            with pytest.raises(IndexError, match="not in this batch"):
                b.key_of(i)

    def test_an_idle_timeout_beyond_a_year_is_refused(self):
        from wallaroo.errors import WallarooParameterError

        p = wallaroo.source("in", wallaroo.IterSourceConfig("in", [1])).to_sink(
            wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
        with pytest.raises(WallarooParameterError, match="idle timeout"):
            Worker(wallaroo.build_application("a", p), RunOptions(idle_timeout=1e10))


class SumOfThird(Total):
    """Total over the third field of each message."""

    def update(self, data, acc):
        acc[0] += data[2]


class TestOneWorkerMarksEachMessage:
    """On one worker a window's input moves its watermark message by message, whatever stage
    stands between key_by and the window (several workers change that only for inputs whose
    messages cross two exchanges)."""

    @pytest.mark.parametrize("between", [False, True])
    def test_a_message_late_within_its_batch_is_late(self, between):
        p = (wallaroo.source("in", wallaroo.IterSourceConfig("in", []), event_time=lambda m: m[1])
             .key_by(lambda m: m[0]))
        if between:
            p = p.to(wallaroo.computation(name="value")(lambda m: m[2]))
        else:   # the window sums the values: the same work, in one stage less
            p = p.to(wallaroo.range_windows(10).over(SumOfThird))
        if between:
            p = p.to(wallaroo.range_windows(10).over(Total))
        p = p.to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
        app = wallaroo.build_application("late", p)
        out = wallaroo.testing.run(app, {"in": [("k", 100, 1), ("k", 1, 1)]})[0]
        assert out == [("k", 1)]   # the second message came after the watermark passed 100
