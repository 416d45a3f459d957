"""Unit tests of the metrics: histogram extras, latency sampling in the ops, back-pressure
accounting, the hub (with synthetic reports and a fake clock), Prometheus text, a worker's
report, ``wallaroo top``'s table and the HTTP server (a real socket on 127.0.0.1).

Pure and fast: no child processes; the server runs on an event loop in a thread of this
process; reports are shaped like ``WorkerMeter.report()`` (wallaroo/runtime/metering.py).
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import threading
import time
import weakref

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import wallaroo
from wallaroo._core.chain import (
    DEFAULT_LATENCY_SAMPLING, Batch, ConstantKeyOp, EncodeOp, FlatMapOp, KeyByOp, MapOp, StateOp,
    latency_sampling, set_latency_sampling,
)
from wallaroo._core.histogram import Histogram
from wallaroo.metrics.hub import HISTORY_SECONDS, RECENT_SECONDS, MetricsHub
from wallaroo.metrics.prometheus import LAST_BUCKET, exposition
from wallaroo.metrics.server import PROMETHEUS_TYPE, MetricsServer
from wallaroo.runtime.flow import FlowControl
from wallaroo.runtime.metering import REPORT_INTERVAL, WorkerMeter
from wallaroo.runtime.worker import RunOptions, Worker
from wallaroo.tools.top import base_url, render

from support.aggregations import Total

values_ns = st.integers(0, 2**45)


def histogram_of(values) -> Histogram:
    h = Histogram()
    for v in values:
        h.record(v)
    return h


def copy_of(h: Histogram) -> Histogram:
    return Histogram.from_dict(h.to_dict())


# =============================================================================================
# Histogram extras: shares, difference, p95, merging

class TestShares:
    def test_empty_histogram_has_no_shares(self):
        assert Histogram().shares() == []

    @settings(max_examples=200, deadline=None)
    @given(st.lists(values_ns, min_size=1, max_size=200))
    def test_contiguous_bins_from_lowest_to_highest_summing_to_one(self, values):
        h = histogram_of(values)
        shares = h.shares()
        low_bin, high_bin = Histogram.bin_of(min(values)), Histogram.bin_of(max(values))
        edges = [edge for edge, _ in shares]
        # contiguous: one entry per bin from the lowest non-empty bin to the highest
        assert edges == [Histogram.bin_range(b)[1] for b in range(low_bin, high_bin + 1)]
        # edges are powers of two (bin 0's upper edge is 1 = 2**0)
        assert all(edge & (edge - 1) == 0 for edge in edges), edges
        # the first and last bins hold values; empty bins between them are listed with 0
        assert shares[0][1] > 0 and shares[-1][1] > 0
        assert math.isclose(sum(share for _, share in shares), 1.0, rel_tol=1e-9)
        bins = h.bins()
        for (edge, share), b in zip(shares, range(low_bin, high_bin + 1)):
            assert math.isclose(share, bins[b] / len(values)), (edge, share)

    def test_gap_between_bins_is_listed_with_zero_share(self):
        h = Histogram()
        h.record_many(3, 3)        # bin 2: [2, 4)
        h.record(10)               # bin 4: [8, 16)
        assert h.shares() == [(4, 0.75), (8, 0.0), (16, 0.25)]

    def test_zero_values_have_upper_edge_one(self):
        h = Histogram()
        h.record(0)
        h.record(1)
        assert h.shares() == [(1, 0.5), (2, 0.5)]


class TestDifference:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(values_ns, max_size=100), st.lists(values_ns, max_size=100))
    def test_difference_is_what_was_added_since_the_older_copy(self, before, after):
        old = histogram_of(before)
        new = copy_of(old)
        for v in after:
            new.record(v)
        diff = new.difference(old)
        added = histogram_of(after)
        assert diff.bins() == added.bins()
        assert diff.count == len(after)
        assert diff.total == sum(after)
        # the inputs are untouched
        assert old.to_dict() == histogram_of(before).to_dict()
        assert new.count == len(before) + len(after)

    def test_difference_with_itself_is_empty(self):
        h = histogram_of([5, 500, 50_000])
        diff = h.difference(copy_of(h))
        assert diff.count == 0 and diff.total == 0 and diff.min == 0 and diff.max == 0
        assert diff.shares() == [] and sum(diff.bins()) == 0

    def test_difference_min_max_stay_within_this_histogram(self):
        old = histogram_of([10])
        new = copy_of(old)
        new.record(1_000)
        diff = new.difference(old)
        assert diff.count == 1 and diff.bins()[Histogram.bin_of(1_000)] == 1
        assert diff.min <= 1_000 <= diff.max

    def test_difference_min_max_are_kept_within_the_bins_that_hold_the_difference(self):
        old = histogram_of([3, 5_000_000])       # an old spike: 5 ms
        new = copy_of(old)
        new.record(1_000)
        new.record(1_500)
        diff = new.difference(old)
        # the run's min (3) and max (5 ms) lie outside what was added: the bins' edges stand
        assert (diff.min, diff.max) == (512, 2_047)
        assert diff.percentile(1.0) <= 2_047

    def test_a_histogram_with_more_values_is_not_an_older_copy(self):
        small, big = histogram_of([1]), histogram_of([1, 2])
        with pytest.raises(ValueError, match="holds more values"):
            small.difference(big)

    def test_a_histogram_with_other_bins_is_not_an_older_copy(self):
        a = histogram_of([1, 1, 1])          # bin 1
        b = histogram_of([1_000])            # bin 10
        with pytest.raises(ValueError, match="not an older copy: bin 10"):
            a.difference(b)


class TestSummaryAndMerge:
    def test_summary_has_p95(self):
        h = histogram_of(range(1, 1001))
        summary = h.summary()
        assert set(summary) == {"count", "min", "max", "mean", "p50", "p95", "p99", "p99.9",
                                "p99.99"}
        assert summary["p95"] == h.percentile(0.95)
        # the exact p95 is 950: the estimate is within its bin [512, 1024)
        assert 512 <= summary["p95"] <= 1000
        assert summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["p99.9"] \
            <= summary["p99.99"] <= summary["max"]

    def test_p95_lies_in_the_bin_of_the_exact_p95(self):
        values = [100] * 94 + [100_000] * 6      # the 95th value of 100 is 100_000
        h = histogram_of(values)
        low, high = Histogram.bin_range(Histogram.bin_of(100_000))
        assert low <= h.summary()["p95"] <= 100_000 < high

    def test_summary_of_nothing_is_zeros(self):
        assert Histogram().summary() == {"count": 0, "min": 0, "max": 0, "mean": 0.0, "p50": 0,
                                         "p95": 0, "p99": 0, "p99.9": 0, "p99.99": 0}

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.lists(values_ns, max_size=60), min_size=1, max_size=6))
    def test_merging_worker_histograms_equals_one_histogram_of_all_values(self, per_worker):
        merged = Histogram()
        for values in per_worker:
            merged.merge(histogram_of(values))
        everything = histogram_of([v for values in per_worker for v in values])
        assert merged.to_dict() == everything.to_dict()
        assert merged.summary() == everything.summary()
        assert merged.shares() == everything.shares()


# =============================================================================================
# Latency sampling in the ops

@pytest.fixture
def sampling():
    """``sampling(n)`` sets the latency sampling; the default is restored in teardown."""
    yield set_latency_sampling
    set_latency_sampling(DEFAULT_LATENCY_SAMPLING)


def keyed(values):
    return Batch(list(values), keys=[str(v % 5) for v in values], groups=[0] * len(values))


class Tally:
    def __init__(self):
        self.n = 0


def count_state(value, tally):
    tally.n += 1
    return value


OP_MAKERS = {
    "map": lambda: MapOp("inc", lambda x: x + 1, None),
    "flat_map": lambda: FlatMapOp("twice", lambda x: [x, x], None),
    "key_by": lambda: KeyByOp("mod", lambda x: x % 7, None, 16),
    "state": lambda: StateOp("tally", count_state, None, Tally, False),
    "encode": lambda: EncodeOp("enc", lambda x: f"{x}\n", None),
}


class TestSampling:
    def test_default_is_restored_by_the_fixture(self, sampling):
        assert latency_sampling() == DEFAULT_LATENCY_SAMPLING

    @pytest.mark.parametrize("kind", sorted(OP_MAKERS))
    def test_every_message_is_timed_with_sampling_1(self, sampling, kind):
        sampling(1)
        op = OP_MAKERS[kind]()
        op.process(keyed(range(100)))
        assert op.processed == 100
        assert op.latency.count == op.processed == 100, kind
        assert op.latency.min >= 0 and op.latency.max >= op.latency.min

    @pytest.mark.parametrize("kind", sorted(OP_MAKERS))
    @pytest.mark.parametrize("n", [1, 31, 32, 33, 64, 65, 100, 1000])
    def test_one_in_32_is_timed_starting_with_the_first(self, sampling, kind, n):
        sampling(32)
        op = OP_MAKERS[kind]()
        op.process(keyed(range(n)))
        assert op.processed == n
        assert op.latency.count == math.ceil(n / 32), (kind, n)

    @pytest.mark.parametrize("kind", sorted(OP_MAKERS))
    def test_sampling_carries_over_batches(self, sampling, kind):
        sampling(10)
        op = OP_MAKERS[kind]()
        for start in range(0, 95, 7):     # batches of 7 (the last is shorter)
            op.process(keyed(range(start, min(start + 7, 95))))
        assert op.processed == 95
        assert op.latency.count == math.ceil(95 / 10)

    @pytest.mark.parametrize("kind", sorted(OP_MAKERS))
    def test_nothing_is_timed_with_sampling_0(self, sampling, kind):
        sampling(0)
        op = OP_MAKERS[kind]()
        op.process(keyed(range(500)))
        assert op.processed == 500
        assert op.latency.count == 0

    def test_ops_made_before_a_change_keep_counting_down(self, sampling):
        sampling(1)
        op = MapOp("inc", lambda x: x + 1, None)
        sampling(0)
        op.process(Batch([1, 2, 3]))
        assert op.latency.count == 1   # its first message (countdown was 0), then none

    def test_a_stage_without_user_function_counts_but_does_not_time(self, sampling):
        sampling(1)
        op = ConstantKeyOp("collect", None, "all", 16)
        op.process(Batch([1, 2, 3]))
        assert op.processed == 3 and op.latency.count == 0

    def test_timed_latency_reflects_the_work(self, sampling):
        sampling(1)
        op = MapOp("slow", lambda x: time.sleep(0.002) or x, None)
        op.process(Batch([1, 2, 3]))
        assert op.latency.count == 3
        assert op.latency.min >= 2_000_000, op.latency.to_dict()

    @staticmethod
    def _window_op(tmp_path, windows, n, event_time=None):
        """Run ``n`` values through ``windows`` (over Total) keyed three ways; the window op."""
        p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", range(n)), event_time=event_time)
             .key_by(lambda v: str(v % 3))
             .to(windows.over(Total))
             .to_sink(wallaroo.FileSinkConfig(str(tmp_path / "out.txt"),
                                              wallaroo.encoder(lambda v: f"{v}\n"))))
        worker = Worker(wallaroo.build_application("windows", p), RunOptions())
        asyncio.run(asyncio.wait_for(worker.run(), 10))
        (window,) = [op for _, _, kind, _, op in worker.measured_ops if kind == "window"]
        assert window.processed == n
        return window

    def test_a_window_op_records_samples(self, sampling, tmp_path):
        sampling(1)
        window = self._window_op(tmp_path, wallaroo.range_windows(wallaroo.milliseconds(10)),
                                 200, event_time=lambda v: v * 1_000_000)
        assert window.latency.count == 200, window.latency.to_dict()

    def test_a_window_op_is_sampled_one_in_n(self, sampling, tmp_path):
        sampling(16)
        window = self._window_op(tmp_path, wallaroo.count_windows(10), 100)
        assert window.latency.count == math.ceil(100 / 16)


# =============================================================================================
# FlowControl.held_seconds

class TestHeldSeconds:
    def test_nobody_held_it(self):
        assert FlowControl().held_seconds() == {}

    def test_a_hold_is_measured(self):
        gate = FlowControl()
        gate.block("sink")
        time.sleep(0.05)
        gate.unblock("sink")
        held = gate.held_seconds()
        assert list(held) == ["sink"]
        assert 0.05 <= held["sink"] < 0.15, held
        time.sleep(0.03)   # an ended hold does not grow
        assert gate.held_seconds()["sink"] == held["sink"]

    def test_an_ongoing_hold_is_included(self):
        gate = FlowControl()
        gate.block("sink")
        time.sleep(0.05)
        first = gate.held_seconds()["sink"]
        assert 0.05 <= first < 0.15
        time.sleep(0.03)
        second = gate.held_seconds()["sink"]
        assert second >= first + 0.03, (first, second)
        assert gate.paused

    def test_holds_add_up(self):
        gate = FlowControl()
        for _ in range(3):
            gate.block("sink")
            time.sleep(0.02)
            gate.unblock("sink")
            time.sleep(0.02)
        assert 0.06 <= gate.held_seconds()["sink"] < 0.11

    def test_blocking_again_does_not_restart_the_hold(self):
        gate = FlowControl()
        gate.block("sink")
        time.sleep(0.04)
        gate.block("sink")
        time.sleep(0.02)
        gate.unblock("sink")
        assert gate.held_seconds()["sink"] >= 0.06

    def test_unblock_by_someone_not_holding_is_ignored(self):
        gate = FlowControl()
        gate.unblock("nobody")
        assert gate.held_seconds() == {}

    def test_several_holders_are_counted_apart(self):
        gate = FlowControl()
        a, b = object(), "worker link"
        gate.block(a)
        time.sleep(0.04)
        gate.block(b)          # overlapping holds: each counts its own
        time.sleep(0.04)
        gate.unblock(a)
        time.sleep(0.04)
        gate.unblock(b)
        held = gate.held_seconds()
        assert set(held) == {a, b}
        assert 0.08 <= held[a] < 0.16, held
        assert 0.08 <= held[b] < 0.16, held
        assert not gate.paused


# =============================================================================================
# MetricsHub with synthetic reports

def _inc_app():
    p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", [1]))
         .to(wallaroo.computation(name="inc")(lambda x: x + 1))
         .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
    return wallaroo.build_application("inc", p)


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def latency(values) -> dict:
    return histogram_of(values).to_dict()


def report(worker="worker-0", pid=1, t=1000.0, n=0, lat=None, sink_n=None, sink_lat=None,
           backpressure=None, cpu=10.0, rss=1 << 20, m_in=None, m_out=None):
    """A report shaped like WorkerMeter.report() for the ``_inc_app``: source n0, map n1,
    sink n2 with its encoder n2.encoder."""
    sink_n = n if sink_n is None else sink_n
    return {"worker": worker, "pid": pid, "time": t,
            "stages": {"n0": {"node": "n0", "kind": "source", "name": "n", "messages": n,
                              "latency_ns": None},
                       "n1": {"node": "n1", "kind": "map", "name": "inc", "messages": n,
                              "latency_ns": lat},
                       "n2.encoder": {"node": "n2", "kind": "encoder",
                                      "name": "sink 0 (stdout): encoder 'str'", "messages": n,
                                      "latency_ns": None}},
            "sinks": {"n2": {"name": "sink 0 (stdout)", "messages": sink_n,
                             "latency_ns": sink_lat}},
            "messages_in": n if m_in is None else m_in,
            "messages_out": sink_n if m_out is None else m_out,
            "latency_ns": None, "backpressure": backpressure or {},
            "cpu_percent": cpu, "rss_bytes": rss}


def stage(metrics, stage_id):
    (found,) = [s for s in metrics["stages"] if s["id"] == stage_id]
    return found


def pipeline(metrics, sink_id="n2"):
    (found,) = [p for p in metrics["pipelines"] if p["id"] == sink_id]
    return found


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def hub(clock):
    return MetricsHub(_inc_app(), workers=2, clock=clock)


class TestHubFigures:
    def test_before_any_report(self, hub):
        m = hub.metrics()
        assert m["app"] == "inc" and m["workers"] == [] and m["checkpoints"] is None
        assert m["workers_expected"] == 2 and m["interval_s"] == REPORT_INTERVAL
        assert [s["id"] for s in m["stages"]] == ["n0", "n1"]
        for s in m["stages"] + m["pipelines"]:
            assert s["messages"] == 0 and s["rate"] == 0 and s["bins"] == []
            assert s["latency_ns"]["count"] == 0 and s["latency_ns"]["p99"] == 0

    def test_sub_stages_appear_in_graph_order(self, hub):
        hub.update(report())
        ids = [s["id"] for s in hub.metrics()["stages"]]
        assert ids == ["n0", "n1", "n2.encoder"]
        assert stage(hub.metrics(), "n2.encoder")["pipeline"] == "n"

    def test_rates_from_two_reports(self, hub, clock):
        hub.update(report(t=1000.0, n=100))
        m = hub.metrics()
        assert stage(m, "n1")["rate"] == 0.0, "one report gives no rate"
        clock.now = 1002.0
        hub.update(report(t=1002.0, n=700))
        m = hub.metrics()
        assert stage(m, "n1")["rate"] == pytest.approx(300.0)
        assert stage(m, "n1")["workers"]["worker-0"]["rate"] == pytest.approx(300.0)
        assert pipeline(m)["rate"] == pytest.approx(300.0)
        (w,) = m["workers"]
        assert w["rate_in"] == pytest.approx(300.0) and w["rate_out"] == pytest.approx(300.0)
        assert stage(m, "n1")["messages"] == 700

    def test_rate_goes_to_zero_when_a_worker_stops_reporting(self, hub, clock):
        hub.update(report(t=1000.0, n=100))
        clock.now = 1001.0
        hub.update(report(t=1001.0, n=200))
        assert stage(hub.metrics(), "n1")["rate"] == pytest.approx(100.0)
        clock.now = 1010.0
        m = hub.metrics()
        assert stage(m, "n1")["rate"] == 0.0
        assert m["workers"][0]["report_age_s"] == pytest.approx(9.0)

    def test_totals_over_two_workers(self, hub, clock):
        hub.update(report("worker-0", pid=1, t=1000.0, n=100, m_in=100, m_out=60))
        hub.update(report("worker-1", pid=2, t=1000.0, n=40, m_in=60, m_out=100))
        clock.now = 1001.0
        hub.update(report("worker-0", pid=1, t=1001.0, n=300))
        hub.update(report("worker-1", pid=2, t=1001.0, n=50))
        m = hub.metrics()
        s = stage(m, "n1")
        assert s["messages"] == 350
        assert s["workers"]["worker-0"]["messages"] == 300
        assert s["workers"]["worker-1"]["messages"] == 50
        assert s["rate"] == pytest.approx(200.0 + 10.0)
        assert pipeline(m)["messages"] == 350
        assert [w["name"] for w in m["workers"]] == ["worker-0", "worker-1"]
        assert hub.graph()["workers"] == ["worker-0", "worker-1"]

    def test_worker_restart_keeps_totals_monotone(self, hub, clock):
        hub.update(report(pid=1, t=1000.0, n=100, lat=latency([1000] * 4)))
        clock.now = 1001.0
        hub.update(report(pid=1, t=1001.0, n=500, lat=latency([1000] * 10)))
        totals = [stage(hub.metrics(), "n1")["messages"]]
        # the worker is started again: a new pid, counting from zero
        clock.now = 1002.0
        hub.update(report(pid=2, t=1002.0, n=30, lat=latency([2000] * 2)))
        m = hub.metrics()
        totals.append(stage(m, "n1")["messages"])
        assert stage(m, "n1")["rate"] >= 0
        assert m["workers"][0]["pid"] == 2
        clock.now = 1003.0
        hub.update(report(pid=2, t=1003.0, n=80, lat=latency([2000] * 3)))
        m = hub.metrics()
        totals.append(stage(m, "n1")["messages"])
        assert totals == [500, 530, 580]
        assert stage(m, "n1")["rate"] == pytest.approx(50.0)
        assert pipeline(m)["messages"] == 580
        assert m["workers"][0]["messages_in"] == 580
        # the cumulative histograms (Prometheus) keep the first run's samples too
        (series,) = [s for s in hub.series() if s[0] == "stage" and s[1] == "n1"]
        assert series[3] == 580 and series[4].count == 13

    def test_restart_seen_by_a_count_going_down(self, hub, clock):
        hub.update(report(pid=7, t=1000.0, n=100))
        clock.now = 1001.0
        hub.update(report(pid=7, t=1001.0, n=20))
        assert stage(hub.metrics(), "n1")["messages"] == 120

    def test_recent_latency_drops_old_samples(self, hub, clock):
        """Latency percentiles are of the last RECENT_SECONDS: samples from before are
        dropped once newer reports have come."""
        fast, slow = 1_000, 5_000_000
        values: list[int] = []
        for second in range(0, 101):
            clock.now = 1000.0 + second
            values.append(fast if second <= 30 else slow)   # one sample per second
            hub.update(report(t=clock.now, n=second + 1, lat=latency(values)))
        s = stage(hub.metrics(), "n1")
        recent = s["latency_ns"]
        # reports at 1040..1100 are in the window: the samples added after 1040's report
        # (one second more or less, depending on where the window's edge falls)
        assert RECENT_SECONDS - 1 <= recent["count"] <= RECENT_SECONDS + 1, recent
        # (min and max are the cumulative histogram's: Histogram.difference cannot take them
        # apart; the percentiles come from the recent bins only)
        slow_low = Histogram.bin_range(Histogram.bin_of(slow))[0]
        assert slow_low <= recent["p50"] <= recent["p99"] <= slow, recent
        assert recent["mean"] == slow
        assert all(b["le_ns"] > fast for b in s["bins"]), s["bins"]
        assert math.isclose(sum(b["share"] for b in s["bins"]), 1.0)
        # the cumulative series keeps everything
        (series,) = [x for x in hub.series() if x[0] == "stage" and x[1] == "n1"]
        assert series[4].count == 101

    def test_recent_latency_keeps_samples_younger_than_the_window(self, hub, clock):
        """Samples recorded before the first report, a second ago, are inside the last
        RECENT_SECONDS and must still count."""
        hub.update(report(t=1000.0, n=5, lat=latency([1_000] * 5)))
        assert stage(hub.metrics(), "n1")["latency_ns"]["count"] == 5
        clock.now = 1001.0
        hub.update(report(t=1001.0, n=5, lat=latency([1_000] * 5)))   # nothing new
        count = stage(hub.metrics(), "n1")["latency_ns"]["count"]
        assert count == 5, (
            f"ENGINE BUG (wallaroo/metrics/hub.py WorkerFigures.recent_latency): the 5 samples "
            f"of the worker's first report, 1 s old, vanished from the recent latency "
            f"(count {count}) once a second report came: the window's oldest entry is the "
            f"first cumulative report, and recent = latest.difference(oldest) subtracts "
            f"everything recorded before it, though it is within RECENT_SECONDS")

    def test_backpressure_share_of_the_interval(self, hub, clock):
        held = {"n2": {"name": "sink 0 (stdout)", "seconds": 1.0},
                "worker:worker-1": {"name": "worker:worker-1", "seconds": 0.0}}
        hub.update(report(t=1000.0, backpressure=held))
        assert hub.metrics()["workers"][0]["backpressure"] == []
        clock.now = 1002.0
        held = {"n2": {"name": "sink 0 (stdout)", "seconds": 1.8},
                "worker:worker-1": {"name": "worker:worker-1", "seconds": 0.5},
                "checkpoint": {"name": "checkpoint", "seconds": 0.1}}
        hub.update(report(t=1002.0, backpressure=held))
        shares = {b["by"]: b for b in hub.metrics()["workers"][0]["backpressure"]}
        assert set(shares) == {"n2", "worker:worker-1", "checkpoint"}
        assert shares["n2"]["share"] == pytest.approx(0.4)
        assert shares["n2"]["name"] == "sink 0 (stdout)"
        assert shares["worker:worker-1"]["share"] == pytest.approx(0.25)
        assert shares["checkpoint"]["share"] == pytest.approx(0.05)
        # nothing held in the next interval: no entry
        clock.now = 1003.0
        hub.update(report(t=1003.0, backpressure=held))
        assert hub.metrics()["workers"][0]["backpressure"] == []

    def test_backpressure_after_a_worker_restart(self, hub, clock):
        """A restarted worker (new pid) that nobody holds back shows no back-pressure: what
        held its previous process is not carried over."""
        hub.update(report(pid=1, t=1000.0, backpressure={"n2": {"name": "s", "seconds": 0.0}}))
        clock.now = 1001.0
        hub.update(report(pid=1, t=1001.0, backpressure={"n2": {"name": "s", "seconds": 0.5}}))
        assert [b["share"] for b in hub.metrics()["workers"][0]["backpressure"]] == [0.5]
        clock.now = 1002.0
        hub.update(report(pid=2, t=1002.0, backpressure={}))   # restarted; not held
        clock.now = 1003.0
        hub.update(report(pid=2, t=1003.0, backpressure={}))
        shown = hub.metrics()["workers"][0]["backpressure"]
        assert shown == [], (
            f"ENGINE BUG (wallaroo/metrics/hub.py WorkerFigures.take/backpressure): after the "
            f"worker restarted (new pid) and nothing held it for two reports, the hub still "
            f"shows {shown}: the old process's last interval, kept in WorkerFigures.held for "
            f"a holder the new process does not report, is shown forever (clear `held` on a "
            f"restart)")

    def test_backpressure_share_is_at_most_one(self, hub, clock):
        hub.update(report(t=1000.0, backpressure={"n2": {"name": "s", "seconds": 0.0}}))
        clock.now = 1001.0
        hub.update(report(t=1001.0, backpressure={"n2": {"name": "s", "seconds": 1.3}}))
        assert hub.metrics()["workers"][0]["backpressure"][0]["share"] == 1.0

    def test_history_is_capped(self, hub, clock):
        assert hub.history()["time"] == []
        for second in range(HISTORY_SECONDS + 50):
            clock.now = 1000.0 + second
            hub.update(report(t=clock.now, n=second * 10))
            hub.tick()
        h = hub.history()
        assert len(h["time"]) == int(HISTORY_SECONDS / REPORT_INTERVAL)
        assert h["time"][0] == 1050.0 and h["time"][-1] == 1000.0 + HISTORY_SECONDS + 49
        assert h["time"] == sorted(h["time"])
        for series in [*h["stages"].values(), *h["pipelines"].values(), *h["workers"].values()]:
            assert len(series) == len(h["time"])
        assert set(h["stages"]) == {"n0", "n1", "n2.encoder"} and set(h["pipelines"]) == {"n2"}
        assert h["stages"]["n1"][-1] == pytest.approx(10.0)
        assert h["workers"]["worker-0"][-1] == pytest.approx(10.0)

    def test_checkpoints(self, hub):
        assert hub.metrics()["checkpoints"] is None
        hub.enable_checkpoints()
        assert hub.metrics()["checkpoints"] == {"last_id": None, "last_duration_s": None,
                                                "last_bytes": None, "completed": 0,
                                                "restarts": 0}
        hub.checkpoint_done(1, 0.02, 100)
        hub.checkpoint_done(2, 0.048, 2300)
        hub.workers_restarted()
        assert hub.metrics()["checkpoints"] == {"last_id": 2, "last_duration_s": 0.048,
                                                "last_bytes": 2300, "completed": 2,
                                                "restarts": 1}

    def test_checkpoint_done_turns_checkpoints_on(self, clock):
        hub = MetricsHub(_inc_app(), workers=1, clock=clock)
        hub.checkpoint_done(5, 0.5, 10)
        assert hub.metrics()["checkpoints"]["last_id"] == 5
        hub = MetricsHub(_inc_app(), workers=1, clock=clock)
        hub.workers_restarted()
        assert hub.metrics()["checkpoints"]["restarts"] == 1
        assert hub.metrics()["checkpoints"]["last_id"] is None

    def test_metrics_is_json(self, hub, clock):
        hub.update(report(t=1000.0, n=3, lat=latency([10, 20])))
        clock.now = 1001.5
        m = json.loads(json.dumps(hub.metrics()))
        assert m["uptime_s"] == pytest.approx(1.5) and m["time"] == 1001.5


class _Count:
    def __init__(self):
        self.n = 0


def _counting(word, total):
    total.n += 1
    return total.n


class TestHubGraph:
    def keyed_app(self):
        count = wallaroo.state_computation(name="count", state=_Count)(_counting)
        p = (wallaroo.source("words", wallaroo.IterSourceConfig("words", ["a"]))
             .to(wallaroo.computation(name="lower")(str.lower))
             .key_by(wallaroo.key_extractor(lambda w: w))
             .to(count)
             .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
        return wallaroo.build_application("keyed", p)

    def merged_app(self):
        a = (wallaroo.source("a", wallaroo.IterSourceConfig("a", [1]))
             .to(wallaroo.computation(name="from a")(lambda x: x)))
        b = wallaroo.source("b", wallaroo.IterSourceConfig("b", [2]))
        p = (a.merge(b)
             .to(wallaroo.computation(name="both")(lambda x: x))
             .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
        return wallaroo.build_application("merged", p)

    def test_exchange_edge_is_flagged(self):
        graph = MetricsHub(self.keyed_app(), 1).graph()
        nodes = {n["id"]: n for n in graph["nodes"]}
        kinds = [n["kind"] for n in graph["nodes"]]
        assert kinds == ["source", "map", "key_by", "state", "sink"]
        assert len(nodes) == len(graph["nodes"]), "node ids are unique"
        by_name = {n["name"]: n["id"] for n in graph["nodes"]}
        edges = {(e["from"], e["to"]): e["exchange"] for e in graph["edges"]}
        (key_by,) = [n["id"] for n in graph["nodes"] if n["kind"] == "key_by"]
        exchanges = [pair for pair, exchange in edges.items() if exchange]
        assert exchanges == [(key_by, by_name["count"])], graph["edges"]
        assert len(edges) == 4
        assert all(n["pipeline"] == "words" for n in graph["nodes"])
        assert graph["app"] == "keyed" and graph["workers"] == []

    def test_merges_are_left_out(self):
        graph = MetricsHub(self.merged_app(), 1).graph()
        kinds = [n["kind"] for n in graph["nodes"]]
        assert "merge" not in kinds
        assert sorted(kinds) == ["map", "map", "sink", "source", "source"]
        ids = {n["name"]: n["id"] for n in graph["nodes"]}
        edges = {(e["from"], e["to"]) for e in graph["edges"]}
        assert edges == {(ids["a"], ids["from a"]), (ids["from a"], ids["both"]),
                         (ids["b"], ids["both"]), (ids["both"], ids["sink 0 (stdout)"])}
        assert not any(e["exchange"] for e in graph["edges"])
        for e in graph["edges"]:
            assert e["from"] in ids.values() and e["to"] in ids.values()
        assert {n["name"]: n["pipeline"] for n in graph["nodes"]}["both"] == "a+b"
        stages = [s["id"] for s in MetricsHub(self.merged_app(), 1).metrics()["stages"]]
        assert sorted(stages) == sorted(ids[name] for name in ("a", "from a", "b", "both"))

    def test_graph_is_a_copy(self):
        hub = MetricsHub(self.keyed_app(), 1)
        hub.graph()["nodes"][0]["name"] = "changed"
        assert hub.graph()["nodes"][0]["name"] == "words"


# =============================================================================================
# Prometheus exposition

def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def two_worker_hub(clock) -> MetricsHub:
    hub = MetricsHub(_inc_app(), workers=2, clock=clock)
    hub.update(report("worker-0", pid=1, t=1000.0, n=120, lat=latency([900, 1_500, 40_000]),
                      sink_lat=latency([2_000_000] * 120),
                      backpressure={"n2": {"name": "sink 0 (stdout)", "seconds": 0.25}}))
    hub.update(report("worker-1", pid=2, t=1000.0, n=30, lat=latency([3, 2**39, 2**44]),
                      sink_lat=latency([7] * 30), cpu=55.5, rss=12345678))
    hub.enable_checkpoints()
    hub.checkpoint_done(4, 0.125, 999)
    return hub


class TestPrometheus:
    def test_parses_and_counters_equal_the_hub(self, clock):
        hub = two_worker_hub(clock)
        text = exposition(hub)
        fam = families(text)
        counters = {(s.labels["worker"], s.labels["stage_id"]): s.value
                    for s in fam["wallaroo_stage_messages"].samples}
        expected = {(w, sid): messages for kind, sid, w, messages, _ in hub.series()
                    if kind == "stage"}
        assert counters == expected
        assert counters[("worker-0", "n1")] == 120 and counters[("worker-1", "n1")] == 30
        assert fam["wallaroo_stage_messages"].type == "counter"
        pipe = {s.labels["worker"]: s.value for s in fam["wallaroo_pipeline_messages"].samples}
        assert pipe == {"worker-0": 120, "worker-1": 30}
        ins = {s.labels["worker"]: s.value for s in fam["wallaroo_worker_messages_in"].samples}
        assert ins == {"worker-0": 120, "worker-1": 30}
        cpu = {s.labels["worker"]: s.value for s in fam["wallaroo_worker_cpu_percent"].samples}
        assert cpu == {"worker-0": 10.0, "worker-1": 55.5}
        rss = {s.labels["worker"]: s.value for s in fam["wallaroo_worker_rss_bytes"].samples}
        assert rss["worker-1"] == 12345678
        (held,) = fam["wallaroo_worker_backpressure_seconds"].samples
        assert held.labels == {"app": "inc", "worker": "worker-0", "by": "n2"}
        assert held.value == 0.25
        (last,) = fam["wallaroo_checkpoint_last_id"].samples
        assert last.value == 4 and last.labels == {"app": "inc"}
        (duration,) = fam["wallaroo_checkpoint_last_duration_seconds"].samples
        assert duration.value == 0.125

    def test_a_bucket_counts_the_values_at_or_below_its_bound(self, clock):
        hub = MetricsHub(_inc_app(), workers=1, clock=clock)
        hub.update(report("worker-0", n=3, lat=latency([1_023, 1_024, 1_025])))
        buckets = {float(s.labels["le"]): s.value for s in
                   families(exposition(hub))["wallaroo_stage_latency_seconds"].samples
                   if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"}
        assert buckets[1_023 / 1e9] == 1          # 1023 ns is at or below 1.023 µs
        assert buckets[2_047 / 1e9] == 3          # 1024 and 1025 ns are in the next bin

    def test_labels(self, clock):
        fam = families(exposition(two_worker_hub(clock)))
        for name in ("wallaroo_stage_messages", "wallaroo_stage_latency_seconds",
                     "wallaroo_pipeline_messages", "wallaroo_pipeline_latency_seconds"):
            assert fam[name].samples, name
            for sample in fam[name].samples:
                assert {"app", "pipeline", "worker", "stage", "stage_id"} <= set(sample.labels)
                assert sample.labels["app"] == "inc" and sample.labels["pipeline"] == "n"
        names = {s.labels["stage_id"]: s.labels["stage"]
                 for s in fam["wallaroo_stage_messages"].samples}
        assert names == {"n0": "n", "n1": "inc", "n2.encoder": "sink 0 (stdout): encoder 'str'"}
        sinks = {s.labels["stage"] for s in fam["wallaroo_pipeline_messages"].samples}
        assert sinks == {"sink 0 (stdout)"}

    def test_histograms_are_cumulative_and_monotone(self, clock):
        hub = two_worker_hub(clock)
        fam = families(exposition(hub))
        checked = 0
        for name in ("wallaroo_stage_latency_seconds", "wallaroo_pipeline_latency_seconds",
                     "wallaroo_worker_latency_seconds"):
            assert fam[name].type == "histogram"
            groups: dict = {}
            for s in fam[name].samples:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                groups.setdefault(key, {"buckets": [], "count": None, "sum": None})
                if s.name.endswith("_bucket"):
                    groups[key]["buckets"].append((s.labels["le"], s.value))
                elif s.name.endswith("_count"):
                    groups[key]["count"] = s.value
                elif s.name.endswith("_sum"):
                    groups[key]["sum"] = s.value
            for key, g in groups.items():
                les = [le for le, _ in g["buckets"]]
                counts = [v for _, v in g["buckets"]]
                assert les[-1] == "+Inf"
                bounds = [float(le) for le in les[:-1]]
                assert bounds == sorted(bounds) and len(bounds) == LAST_BUCKET + 1
                # each bound is its bin's largest value (latencies are whole nanoseconds)
                assert bounds == [(Histogram.bin_range(b)[1] - 1) / 1e9
                                  for b in range(LAST_BUCKET + 1)]
                assert counts == sorted(counts), (key, counts)
                assert counts[-1] == g["count"], key
                checked += 1
        assert checked >= 5
        stage_groups = {s.labels["worker"]: s for s in fam["wallaroo_stage_latency_seconds"].samples
                        if s.name.endswith("_count") and s.labels["stage_id"] == "n1"}
        assert stage_groups["worker-0"].value == 3 and stage_groups["worker-1"].value == 3
        # worker-1's 2**44 ns sample is beyond the last finite bucket (2**40 - 1 ns): +Inf only
        inf = [s.value for s in fam["wallaroo_stage_latency_seconds"].samples
               if s.labels.get("le") == "+Inf" and s.labels["worker"] == "worker-1"
               and s.labels["stage_id"] == "n1"]
        last = [s.value for s in fam["wallaroo_stage_latency_seconds"].samples
                if s.labels.get("le") == repr((2**LAST_BUCKET - 1) / 1e9)
                and s.labels["worker"] == "worker-1" and s.labels["stage_id"] == "n1"]
        assert inf == [3] and last == [2]
        sums = [s.value for s in fam["wallaroo_stage_latency_seconds"].samples
                if s.name.endswith("_sum") and s.labels["worker"] == "worker-0"
                and s.labels["stage_id"] == "n1"]
        assert sums == [pytest.approx((900 + 1_500 + 40_000) / 1e9)]

    def test_a_stage_without_samples_has_no_histogram(self, clock):
        hub = two_worker_hub(clock)
        fam = families(exposition(hub))
        ids = {s.labels["stage_id"] for s in fam["wallaroo_stage_latency_seconds"].samples}
        assert ids == {"n1"}   # the source and encoder had none timed in these reports

    def test_empty_hub(self, clock):
        text = exposition(MetricsHub(_inc_app(), 1, clock=clock))
        fam = families(text)
        assert fam["wallaroo_stage_messages"].samples == []
        assert fam["wallaroo_checkpoint_last_id"].samples == []
        assert text.endswith("\n")

    def test_label_values_are_escaped(self, clock):
        weird = 'we"ird \\ back\nslash "x"'
        p = (wallaroo.source(weird, wallaroo.IterSourceConfig(weird, [1]))
             .to(wallaroo.computation(name=weird + "!")(lambda x: x))
             .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
        app_name = 'app "q" \\n\n'
        hub = MetricsHub(wallaroo.build_application(app_name, p), 1, clock=clock)
        hub.update({"worker": 'w"\\\n', "pid": 1, "time": 1000.0, "messages_in": 1,
                    "messages_out": 1,
                    "stages": {"n1": {"node": "n1", "kind": "map", "name": weird + "!",
                                      "messages": 1, "latency_ns": latency([5])}},
                    "sinks": {}, "latency_ns": None,
                    "backpressure": {'by"\\\n': {"name": "x", "seconds": 1.0}},
                    "cpu_percent": 0.0, "rss_bytes": 1})
        text = exposition(hub)
        assert "\n\n" not in text.rstrip("\n") and '\\"' in text and "\\n" in text
        fam = families(text)
        (counter,) = fam["wallaroo_stage_messages"].samples
        assert counter.labels == {"app": app_name, "pipeline": weird, "worker": 'w"\\\n',
                                  "stage": weird + "!", "stage_id": "n1"}
        assert counter.value == 1
        (held,) = fam["wallaroo_worker_backpressure_seconds"].samples
        assert held.labels["by"] == 'by"\\\n'
        for sample in fam["wallaroo_stage_latency_seconds"].samples:
            assert sample.labels["stage"] == weird + "!"


# =============================================================================================
# WorkerMeter on a real worker

def run_app(tmp_path, n: int):
    enc = wallaroo.encoder(lambda v: f"{v}\n")
    count = wallaroo.state_computation(name="count", state=_Count)(_counting)
    p = (wallaroo.source("numbers", wallaroo.IterSourceConfig("numbers", range(n)))
         .to(wallaroo.computation(name="inc")(lambda x: x + 1))
         .to(wallaroo.computation_multi(name="same")(lambda x: [x]))
         .key_by(wallaroo.key_extractor(lambda x: x % 10))
         .to(count)
         .to_sinks([wallaroo.FileSinkConfig(str(tmp_path / "a.txt"), enc),
                    wallaroo.FileSinkConfig(str(tmp_path / "b.txt"), enc)]))
    worker = Worker(wallaroo.build_application("meter", p), RunOptions())
    result = asyncio.run(asyncio.wait_for(worker.run(), 10))
    assert result.failure is None
    return worker


class TestWorkerMeter:
    N = 1000

    def test_report_counts_every_stage(self, tmp_path, sampling):
        sampling(8)
        worker = run_app(tmp_path, self.N)
        meter = WorkerMeter(worker)
        r = meter.report()
        assert r["worker"] == "initializer" and r["pid"] > 0
        kinds = {sid: s["kind"] for sid, s in r["stages"].items()}
        assert sorted(kinds.values()) == sorted(["source", "map", "flat_map", "key_by", "state",
                                                 "encoder", "encoder"])
        for sid, s in r["stages"].items():
            assert s["messages"] == self.N, (sid, s)
            if s["kind"] == "source":
                assert s["latency_ns"] is None
            else:
                assert s["latency_ns"]["count"] == math.ceil(self.N / 8), (sid, s)
            assert s["node"] == sid.partition(".")[0]
        assert len(r["sinks"]) == 2
        for sid, sink in r["sinks"].items():
            assert sink["messages"] == self.N
            assert sink["latency_ns"]["count"] == self.N   # start-to-end: every message
            assert f"{sid}.encoder" in r["stages"]
            assert sink["name"].startswith("sink ")
        assert r["messages_in"] == self.N
        assert r["messages_out"] == 2 * self.N
        assert r["latency_ns"]["count"] == self.N
        assert r["rss_bytes"] > 0 and r["cpu_percent"] >= 0 and r["backpressure"] == {}
        json.dumps(r)   # JSON-ready

    def test_report_feeds_the_hub(self, tmp_path):
        worker = run_app(tmp_path, 50)
        hub = MetricsHub(worker.app, 1)
        hub.update(WorkerMeter(worker).report())
        m = hub.metrics()
        assert [s["messages"] for s in m["stages"]] == [50] * len(m["stages"])
        assert [p["messages"] for p in m["pipelines"]] == [50, 50]
        assert {s["kind"] for s in m["stages"]} == {"source", "map", "flat_map", "key_by",
                                                     "state", "encoder"}

    def test_log_line(self, tmp_path):
        worker = run_app(tmp_path, 20)
        meter = WorkerMeter(worker)
        line = meter.log_line(meter.report())
        assert re.fullmatch(r"metrics worker=initializer in=20 out=40 in_rate=0\.0 "
                            r"out_rate=0\.0 p99_ms=\d+\.\d{3} cpu=\d+% rss_mb=\d+\.\d", line), line

    def test_log_line_rates_since_the_previous_line(self, tmp_path):
        worker = run_app(tmp_path, 1)
        meter = WorkerMeter(worker)
        base = {"worker": "w", "latency_ns": latency([1_500_000] * 100), "cpu_percent": 12.4,
                "rss_bytes": 3 * 2**20}
        meter.log_line({**base, "time": 10.0, "messages_in": 0, "messages_out": 0})
        line = meter.log_line({**base, "time": 12.0, "messages_in": 100, "messages_out": 50})
        p99 = Histogram.from_dict(base["latency_ns"]).percentile(0.99) / 1e6
        assert line == (f"metrics worker=w in=100 out=50 in_rate=50.0 out_rate=25.0 "
                        f"p99_ms={p99:.3f} cpu=12% rss_mb=3.0")


# =============================================================================================
# wallaroo top

def api_metrics(**changes):
    metrics = {
        "app": "Word Counts", "uptime_s": 3725.0, "workers_expected": 2, "checkpoints": None,
        "stages": [
            {"name": "words", "kind": "source", "messages": 5000, "rate": 1000.0,
             "latency_ns": {"count": 0, "p50": 0, "p99": 0, "p99.9": 0}},
            {"name": "count", "kind": "state", "messages": 5000, "rate": 1000.0,
             "latency_ns": {"count": 40, "p50": 1_500, "p99": 25_000, "p99.9": 3_100_000}}],
        "pipelines": [{"name": "words", "sink": "sink 0 (tcp://127.0.0.1:7002)",
                       "messages": 5000, "rate": 999.0,
                       "latency_ns": {"count": 5000, "p50": 2e6, "p99": 2e9, "p99.9": 3e9}}],
        "workers": [{"name": "worker-0", "messages_in": 5000, "messages_out": 2400,
                     "rate_in": 1000.0, "latency_ns": {"p99": 10_000}, "cpu_percent": 85.0,
                     "rss_bytes": 50 * 2**20,
                     "backpressure": [{"by": "n4", "name": "sink 0", "share": 0.4}]},
                    {"name": "worker-1", "messages_in": 2600, "messages_out": 2600,
                     "rate_in": 0.0, "latency_ns": {"p99": 0}, "cpu_percent": 0.0,
                     "rss_bytes": 2**20, "backpressure": []}]}
    metrics.update(changes)
    return metrics


class TestTop:
    def test_render_names_everything(self):
        text = render(api_metrics(), "http://127.0.0.1:5001/", width=120)
        lines = text.splitlines()
        assert lines[0] == ("Word Counts at http://127.0.0.1:5001/ | up 1h02m05s | "
                            "2 of 2 workers reporting | resilience off")
        assert any(line.startswith("words") and "source" in line and "5,000" in line
                   and line.rstrip().endswith("-") for line in lines), text
        (count,) = [line for line in lines if line.startswith("count ")]
        assert count.split()[-3:] == ["1.5µs", "25.0µs", "3.1ms"], count
        assert any("words -> sink 0 (tcp://127.0.0.1:7002)" in line and "2.00s" in line
                   for line in lines), text
        (w0,) = [line for line in lines if line.startswith("worker-0")]
        assert "5,000" in w0 and "2,400" in w0 and "85%" in w0 and "50.0Mi" in w0
        assert w0.endswith("sink 0 40%")
        (w1,) = [line for line in lines if line.startswith("worker-1")]
        assert w1.endswith("-")
        assert all(len(line) <= 120 for line in lines)

    def test_render_checkpoints(self):
        text = render(api_metrics(checkpoints={"last_id": 12, "last_duration_s": 0.048}), "b/")
        assert text.splitlines()[0].endswith("| checkpoint 12 (48.0ms)")
        text = render(api_metrics(checkpoints={"last_id": None, "last_duration_s": None}), "b/")
        assert text.splitlines()[0].endswith("| no checkpoint yet")

    def test_render_before_any_worker(self):
        text = render(api_metrics(workers=[], pipelines=[]), "b/", width=80)
        assert "0 of 2 workers reporting" in text and "WORKER" not in text
        assert "PIPELINE" not in text

    def test_render_cuts_to_width_and_long_names(self):
        long = api_metrics()
        long["stages"][0]["name"] = "x" * 100
        text = render(long, "http://127.0.0.1:5001/", width=70)
        assert all(len(line) <= 70 for line in text.splitlines())
        assert "…" in text

    @pytest.mark.parametrize("address, url", [
        ("127.0.0.1:5001", "http://127.0.0.1:5001/"),
        ("localhost:80", "http://localhost:80/"),
        ("http://127.0.0.1:5001", "http://127.0.0.1:5001/"),
        ("http://127.0.0.1:5001/", "http://127.0.0.1:5001/"),
        ("https://example.org:443//", "https://example.org:443/"),
    ])
    def test_base_url(self, address, url):
        assert base_url(address) == url

    @pytest.mark.parametrize("address", ["127.0.0.1", ":5001", "127.0.0.1:", "host:port",
                                         "127.0.0.1:50a1", ""])
    def test_bad_address(self, address):
        with pytest.raises(click.BadParameter, match="give HOST:PORT"):
            base_url(address)


# =============================================================================================
# MetricsServer over a real socket

class ServerThread:
    """A MetricsServer on 127.0.0.1 port 0, on an event loop in a thread."""

    def __init__(self, hub):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = MetricsServer(hub, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        self.port = self.server.port

    def close(self):
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def server():
    hub = MetricsHub(_inc_app(), 1)
    hub.update(report(t=time.time(), n=10, lat=latency([1_000, 2_000])))
    running = ServerThread(hub)
    yield running
    running.close()


def read_response(sock: socket.socket, head_only: bool = False) -> tuple[int, dict, bytes]:
    """One HTTP response from ``sock``: status, headers (lower-case names), body. Reads through
    one buffered reader per socket, so that responses sent back to back are taken apart."""
    reader = _readers.get(sock)
    if reader is None:
        reader = _readers[sock] = sock.makefile("rb")
    status_line = reader.readline()
    assert status_line, "connection closed before a response"
    status = int(status_line.split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers["content-length"])
    body = reader.read(length)
    assert len(body) == length, "connection closed inside a body"
    return status, headers, body


_readers: "weakref.WeakKeyDictionary[socket.socket, object]" = weakref.WeakKeyDictionary()


def request(port: int, method: str, path: str, close: bool = True):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        extra = "Connection: close\r\n" if close else ""
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        return read_response(sock, head_only=method == "HEAD")


class TestServer:
    @pytest.mark.parametrize("path, kind", [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/static/index.html", "text/html; charset=utf-8"),
        ("/static/dashboard.js", "application/javascript"),
        ("/static/dashboard.css", "text/css"),
        ("/static/favicon.svg", "image/svg+xml"),
        ("/api/graph", "application/json"),
        ("/api/metrics", "application/json"),
        ("/api/history", "application/json"),
        ("/metrics", PROMETHEUS_TYPE),
    ])
    def test_content_type_of_each_route(self, server, path, kind):
        status, headers, body = request(server.port, "GET", path)
        assert status == 200, body
        assert headers["content-type"] == kind
        assert headers["cache-control"] == "no-store"
        assert int(headers["content-length"]) == len(body) > 0

    def test_json_routes_serve_the_hub(self, server):
        _, _, body = request(server.port, "GET", "/api/metrics")
        metrics = json.loads(body)
        assert metrics["app"] == "inc" and stage(metrics, "n1")["messages"] == 10
        _, _, body = request(server.port, "GET", "/api/graph?x=1")
        assert [n["kind"] for n in json.loads(body)["nodes"]] == ["source", "map", "sink"]
        _, _, body = request(server.port, "GET", "/api/history")
        assert set(json.loads(body)) == {"interval_s", "time", "stages", "pipelines", "workers"}
        _, _, body = request(server.port, "GET", "/metrics")
        counters = families(body.decode())["wallaroo_stage_messages"].samples
        assert {s.labels["stage_id"]: s.value for s in counters}["n1"] == 10

    def test_unknown_path_is_404_with_help(self, server):
        status, headers, body = request(server.port, "GET", "/api/nothing")
        assert status == 404 and headers["content-type"] == "text/plain"
        assert b"/api/nothing" in body and b"/api/metrics" in body

    @pytest.mark.parametrize("path", ["/static/../hub.py", "/static/.hidden", "/static/..",
                                      "/static/../server.py", "/static//etc/passwd",
                                      "/static/%2e%2e/hub.py", "/static/", "/../hub.py",
                                      "/static/missing.js", "/static/dashboard.js.map"])
    def test_static_traversal_is_refused(self, server, path):
        status, _, body = request(server.port, "GET", path)
        assert status == 404, body
        assert b"import" not in body and b"root:" not in body

    def test_only_visible_files_of_the_static_folder_are_served(self, server, tmp_path,
                                                                monkeypatch):
        """With files of servable types both inside and next to the static folder: only the
        visible ones inside are served."""
        static = tmp_path / "static"
        static.mkdir()
        (static / "app.js").write_text("ok()")
        (static / ".hidden.js").write_text("hidden()")
        (static / "notes.txt").write_text("no type")
        (tmp_path / "secret.js").write_text("secret()")
        (static / "sub").mkdir()
        (static / "sub" / "deep.css").write_text("deep{}")
        monkeypatch.setattr("wallaroo.metrics.server.STATIC_DIR", str(static))
        status, headers, body = request(server.port, "GET", "/static/app.js")
        assert (status, body) == (200, b"ok()")
        for path in ["/static/.hidden.js", "/static/../secret.js", "/static/../static/app.js",
                     "/static/./app.js", "/static/sub/deep.css", "/static/notes.txt",
                     "/static/%2e%2e/secret.js", "/static/..%2fsecret.js", "/secret.js",
                     "/static/" + str(tmp_path / "secret.js")]:
            status, _, body = request(server.port, "GET", path)
            assert status == 404, (path, body)
            assert b"secret()" not in body and b"hidden()" not in body

    def test_post_is_405(self, server):
        status, headers, body = request(server.port, "POST", "/api/metrics")
        assert status == 405
        assert headers["allow"] == "GET, HEAD"
        assert b"GET" in body

    def test_head(self, server):
        _, _, full = request(server.port, "GET", "/api/graph")
        status, headers, body = request(server.port, "HEAD", "/api/graph")
        assert status == 200 and body == b""
        assert int(headers["content-length"]) == len(full)
        assert headers["content-type"] == "application/json"

    def test_keep_alive(self, server):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /api/graph HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(sock)
            assert status == 200 and headers["connection"] == "keep-alive"
            assert json.loads(body)["app"] == "inc"
            sock.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_response(sock, head_only=True)
            assert status == 200 and headers["content-type"] == PROMETHEUS_TYPE
            # two requests at once, then one that closes
            sock.sendall(b"GET /nothing HTTP/1.1\r\n\r\nGET /api/metrics HTTP/1.1\r\n"
                         b"Connection: close\r\n\r\n")
            status, _, _ = read_response(sock)
            assert status == 404
            status, headers, body = read_response(sock)
            assert status == 200 and headers["connection"] == "close"
            assert json.loads(body)["app"] == "inc"
            assert _readers[sock].read(1) == b"", "the server closes after Connection: close"

    def test_http_1_0_closes(self, server):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /api/graph HTTP/1.0\r\n\r\n")
            status, headers, _ = read_response(sock)
            assert status == 200 and headers["connection"] == "close"
            assert _readers[sock].read(1) == b""

    def test_bad_request_line(self, server):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"NONSENSE\r\n\r\n")
            status, _, _ = read_response(sock)
            assert status == 400

    def test_server_still_serves_after_a_client_vanishes(self, server):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /api/gr")   # half a request, then gone
        status, _, _ = request(server.port, "GET", "/api/graph")
        assert status == 200

    def test_url(self, server):
        assert server.server.url == f"http://127.0.0.1:{server.port}/"
        assert MetricsServer(MetricsHub(_inc_app(), 1), "::1", 80).url == "http://[::1]:80/"


class TestServerLimits:
    """What keeps a client from hurting the run: timeouts, a connection limit, answers for
    requests it cannot serve, and a clean close with connections open."""

    def test_an_idle_connection_is_closed_after_the_timeout(self, server, monkeypatch):
        monkeypatch.setattr("wallaroo.metrics.server.REQUEST_TIMEOUT", 0.2)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /api/graph HTTP/1.1\r\nHost: x\r\n")   # a head never finished
            started = time.monotonic()
            assert sock.recv(100) == b""          # closed by the server
            assert time.monotonic() - started < 3

    def test_connections_over_the_limit_are_answered_503(self, server, monkeypatch):
        monkeypatch.setattr("wallaroo.metrics.server.MAX_CONNECTIONS", 2)
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
                for _ in range(2)]
        try:
            time.sleep(0.1)                        # both are being served (idle)
            status, _, body = request(server.port, "GET", "/api/graph")
            assert status == 503 and b"too many" in body
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.1)
        assert request(server.port, "GET", "/api/graph")[0] == 200

    def test_a_huge_request_head_is_answered_431(self, server):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n")
            status, _, _ = read_response(sock)
        assert status == 431

    def test_a_hub_that_fails_gives_500_and_the_server_goes_on(self, server, monkeypatch):
        monkeypatch.setitem(server.server._routes, "/api/metrics", lambda: 1 / 0)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /api/metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = read_response(sock)
            assert status == 500 and b"ZeroDivisionError" in body
            sock.sendall(b"GET /api/graph HTTP/1.1\r\nHost: x\r\n\r\n")   # same connection
            assert read_response(sock)[0] == 200

    def test_close_ends_open_connections_quietly(self, caplog):
        """A dashboard's kept-alive connection at the end of a run: close() ends its task; no
        error is logged by the loop (a cancelled handler used to print a traceback)."""
        hub = MetricsHub(_inc_app(), 1)

        async def serve_and_close():
            server = MetricsServer(hub, "127.0.0.1", 0)
            await server.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /api/graph HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            await server.close()
            # the connection is ended at once (not by the idle timeout), and no task is left
            rest = await asyncio.wait_for(reader.read(), 2)   # the body, then the end
            assert rest.endswith(b"}") and reader.at_eof()
            assert asyncio.all_tasks() == {asyncio.current_task()}
            writer.close()
            return server

        errors = []
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        try:
            server = loop.run_until_complete(serve_and_close())
            loop.run_until_complete(asyncio.sleep(0.05))
        finally:
            loop.close()
        assert errors == []
        assert not server._connections


class TestHubState:
    def test_state_round_trip_keeps_totals_history_and_checkpoints(self, clock):
        hub = MetricsHub(_inc_app(), workers=2, clock=clock)
        hub.update(report("worker-0", pid=1, t=1000.0, n=40, lat=latency([500] * 4)))
        hub.update(report("worker-1", pid=2, t=1000.0, n=2, lat=latency([9_000])))
        hub.tick()
        hub.checkpoint_done(3, 0.5, 100)
        state = json.loads(json.dumps(hub.state()))   # it goes through a file as JSON

        again = MetricsHub(_inc_app(), workers=2, clock=clock)
        again.restore(state)
        again.workers_restarted()
        metrics = again.metrics()
        assert stage(metrics, "n1")["messages"] == 42
        assert metrics["workers"] == []          # nobody has reported to this hub yet
        assert metrics["checkpoints"]["last_id"] == 3 and metrics["checkpoints"]["restarts"] == 1
        assert len(again.history()["time"]) == 1
        assert "wallaroo_worker_cpu_percent" in exposition(again)   # no worker figures: no crash

        clock.now += 1
        # the restarted workers count from zero: the totals go on from the restored ones
        again.update(report("worker-0", pid=11, t=1001.0, n=5, lat=latency([700])))
        metrics = again.metrics()
        assert stage(metrics, "n1")["messages"] == 47
        # the recent latency is what the new process timed, not the restored history
        assert stage(metrics, "n1")["workers"]["worker-0"]["latency_ns"]["count"] == 1


class TestCoordinatorReports:
    def test_a_report_the_hub_rejects_is_dropped_and_named(self, caplog):
        """A bad report (here: bins that do not add up) must not end the coordinator's
        listener; the report is named by the worker's connection, not by what it says."""
        from wallaroo.cluster.coordinator import Coordinator, MemberHandle

        hub = MetricsHub(_inc_app(), workers=1)
        coordinator = Coordinator([], key_groups=4, metrics=hub)
        member = MemberHandle("worker-0", 0, reader=None, writer=None)
        bad = report("someone-else", n=3, lat={"count": 5, "sum": 1, "min": 1, "max": 1,
                                               "bins": {"1": 1}})
        with caplog.at_level("WARNING", logger="wallaroo"):
            coordinator._take_report(member, bad)
        assert "dropped a report of worker worker-0" in caplog.text
        coordinator._take_report(member, report("someone-else", n=3))
        assert list(hub.figures) == ["worker-0"]
