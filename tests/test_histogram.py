"""Latency histogram maths (wallaroo._core.histogram): bin edges, percentiles, merging.

Expectations come from a plain-Python reference: the exact sorted list of recorded values.
"""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wallaroo._core.histogram import BINS, Histogram

values = st.lists(st.integers(0, 2**40), min_size=1, max_size=300)


def exact_percentile(sorted_values, q):
    """The value at rank ceil(q * n) (1-based) of the sorted values."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class TestBins:
    def test_edges_are_powers_of_two(self):
        assert Histogram.bin_range(0) == (0, 1)
        for b in range(1, BINS):
            low, high = Histogram.bin_range(b)
            assert (low, high) == (2 ** (b - 1), 2**b)
            assert Histogram.bin_of(low) == b and Histogram.bin_of(high - 1) == b

    def test_every_value_lands_in_the_bin_whose_range_holds_it(self):
        for v in [0, 1, 2, 3, 4, 1023, 1024, 10**6, 2**62, 2**63 - 1]:
            low, high = Histogram.bin_range(Histogram.bin_of(v))
            assert low <= v < high

    def test_a_bin_that_does_not_exist_is_an_error(self):
        with pytest.raises(ValueError, match="bins are 0..63"):
            Histogram.bin_range(64)

    def test_negative_values_count_as_zero(self):
        h = Histogram()
        h.record(-5)
        assert h.bins()[0] == 1 and h.min == 0 and h.max == 0


class TestPercentiles:
    @settings(max_examples=200, deadline=None)
    @given(values, st.sampled_from([0.0, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0]))
    def test_estimate_lies_in_the_bin_of_the_exact_value(self, vs, q):
        h = Histogram()
        for v in vs:
            h.record(v)
        exact = exact_percentile(sorted(vs), q)
        estimate = h.percentile(q)
        low, high = Histogram.bin_range(Histogram.bin_of(exact))
        assert low <= estimate <= high and min(vs) <= estimate <= max(vs)

    def test_percentiles_grow_with_the_share(self):
        h = Histogram()
        for v in range(1, 10_001):
            h.record(v * 37)
        shares = [0.1, 0.5, 0.9, 0.99, 0.999, 1.0]
        estimates = [h.percentile(q) for q in shares]
        assert estimates == sorted(estimates) and estimates[-1] == 370_000

    def test_empty_histogram_reports_zero(self):
        assert Histogram().percentile(0.99) == 0 and Histogram().mean() == 0.0

    def test_share_outside_zero_to_one_is_an_error(self):
        with pytest.raises(ValueError, match="between 0 and 1"):
            Histogram().percentile(99)

    def test_summary_holds_the_usual_percentiles(self):
        h = Histogram()
        h.record_many(1_000, 999)
        h.record(1_000_000)
        s = h.summary()
        assert s["count"] == 1000 and s["min"] == 1_000 and s["max"] == 1_000_000
        assert 512 <= s["p50"] <= 1_024 and s["p99.99"] > 500_000


class TestMerge:
    @settings(max_examples=100, deadline=None)
    @given(values, values)
    def test_merging_equals_recording_everything_in_one(self, a, b):
        ha, hb, both = Histogram(), Histogram(), Histogram()
        for v in a:
            ha.record(v)
            both.record(v)
        for v in b:
            hb.record(v)
            both.record(v)
        ha.merge(hb)
        assert ha.to_dict() == both.to_dict()
        assert ha.total == sum(a) + sum(b) and ha.mean() == pytest.approx((sum(a) + sum(b)) / (len(a) + len(b)))

    def test_merging_into_an_empty_histogram_takes_the_others_min(self):
        h, other = Histogram(), Histogram()
        other.record(50)
        h.merge(other)
        assert (h.min, h.max, h.count) == (50, 50, 1)

    def test_record_many_equals_recording_n_times(self):
        a, b = Histogram(), Histogram()
        a.record_many(777, 5)
        for _ in range(5):
            b.record(777)
        assert a.to_dict() == b.to_dict()
        a.record_many(1, 0)  # nothing
        assert a.count == 5


class TestPlainData:
    def test_round_trip(self):
        h = Histogram()
        for v in (0, 5, 5_000, 5_000_000):
            h.record(v)
        assert Histogram.from_dict(h.to_dict()).to_dict() == h.to_dict()

    def test_inconsistent_data_is_refused(self):
        data = Histogram().to_dict()
        data["count"] = 3
        with pytest.raises(ValueError, match="do not add up"):
            Histogram.from_dict(data)
        with pytest.raises(ValueError, match="bad bin"):
            Histogram.from_dict({"count": 1, "sum": 1, "min": 1, "max": 1, "bins": {"99": 1}})

    def test_reset_forgets(self):
        h = Histogram()
        h.record(9)
        h.reset()
        assert h.count == 0 and h.bins() == [0] * BINS
