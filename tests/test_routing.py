"""Tests of wallaroo._core.routing: routing tables and routing a batch by key group.

Every expectation comes from a plain-Python reference written here: for each message, the
table's owner of its key group, then append.
"""
from __future__ import annotations

import doctest
import pickle
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wallaroo._core.routing as routing
from wallaroo._core.chain import WATERMARK_NONE, Batch
from wallaroo._core.routing import RoutingTable, route

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------
# the plain-Python reference


def reference(batch: Batch, owners: list[int], destinations: int) -> list[list[int]]:
    """Per destination, the indices of the messages it gets, in order."""
    per: list[list[int]] = [[] for _ in range(destinations)]
    for i, g in enumerate(batch.groups):
        per[owners[g]].append(i)
    return per


def check_routed(batch: Batch, table: RoutingTable, result: list) -> None:
    """``result`` is what the reference says ``route(batch, table)`` must be."""
    owners, n = table.as_list(), len(batch.values)
    assert isinstance(result, list) and len(result) == table.destinations
    per = reference(batch, owners, table.destinations)
    marked = batch.watermark != WATERMARK_NONE
    for d, indices in enumerate(per):
        got = result[d]
        if not indices:
            if marked:  # no message, but the watermark still reaches the destination
                assert isinstance(got, Batch) and got.values == [] and got.keys is None
                assert got.watermark == batch.watermark and got.origin is batch.origin
            else:
                assert got is None
            continue
        if len(indices) == n:
            assert got is batch
            continue
        assert isinstance(got, Batch) and got is not batch
        assert got.values == [batch.values[i] for i in indices]
        assert all(got.values[j] is batch.values[i] for j, i in enumerate(indices))
        assert got.keys == [batch.keys[i] for i in indices]
        assert got.groups == [batch.groups[i] for i in indices]
        if batch.event_times is None:
            assert got.event_times is None
        else:
            assert got.event_times == [batch.event_times[i] for i in indices]
        assert (got.key, got.group, got.ingest_ns, got.watermark) == (
            batch.key, batch.group, batch.ingest_ns, batch.watermark)
        assert got.origin is batch.origin


# ------------------------------------------------------------------------------------------
# strategies


@st.composite
def tables(draw, max_groups=64, max_destinations=8):
    destinations = draw(st.integers(1, max_destinations), label="destinations")
    groups = draw(st.integers(1, max_groups), label="groups")
    owners = draw(st.lists(st.integers(0, destinations - 1), min_size=groups,
                           max_size=groups), label="owners")
    return RoutingTable(owners, destinations)


watermarks = st.one_of(st.just(WATERMARK_NONE), st.integers(-2**62, 2**62))


@st.composite
def keyed_batches(draw, table: RoutingTable, max_size=80):
    """A batch with per-message keys and groups; its values are 0..n-1 (each message tells
    where it came from), with or without event times."""
    n = draw(st.integers(0, max_size), label="messages")
    groups = draw(st.lists(st.integers(0, len(table) - 1), min_size=n, max_size=n),
                  label="groups")
    timed = draw(st.booleans(), label="timed")
    return Batch(list(range(n)), [f"k{g}-{i}" for i, g in enumerate(groups)], "unused", groups,
                 draw(st.integers(0, len(table) - 1)), draw(st.integers(0, 2**62)),
                 [draw(st.integers(-2**62, 2**62)) for _ in range(n)] if timed else None,
                 draw(st.sampled_from(["src", ("window", 3), None])), draw(watermarks))


# ------------------------------------------------------------------------------------------
# the docstring examples (pytest's --doctest-modules does not see compiled modules)


def test_module_examples_hold():
    result = doctest.testmod(routing)
    assert result.attempted > 0
    assert result.failed == 0


# ------------------------------------------------------------------------------------------
# route


@SETTINGS
@given(data=st.data())
def test_route_matches_the_reference(data):
    table = data.draw(tables(), label="table")
    batch = data.draw(keyed_batches(table), label="batch")
    result = route(batch, table)
    if batch.values:
        check_routed(batch, table, result)
    else:
        assert result == [batch if batch.watermark != WATERMARK_NONE else None] * len(result)


@SETTINGS
@given(data=st.data())
def test_every_message_is_routed_exactly_once_in_order(data):
    table = data.draw(tables(), label="table")
    batch = data.draw(keyed_batches(table, max_size=200), label="batch")
    got = [b.values for b in route(batch, table) if b is not None]
    for values in got:
        assert values == sorted(values)                 # order kept within each destination
    assert sorted(v for values in got for v in values) == batch.values   # each once


@SETTINGS
@given(data=st.data())
def test_single_key_batch_goes_whole_to_its_owner(data):
    table = data.draw(tables(), label="table")
    group = data.draw(st.integers(0, len(table) - 1), label="group")
    batch = Batch(data.draw(st.lists(st.integers(), min_size=1, max_size=10)), None, "k", None,
                  group, 7, data.draw(st.none() | st.just([1] * 10)), "src",
                  data.draw(watermarks, label="watermark"))
    if batch.event_times is not None:
        batch.event_times = batch.event_times[:len(batch.values)]
    result = route(batch, table)
    owner = table.owner(group)
    assert result[owner] is batch
    for d, got in enumerate(result):
        if d == owner:
            continue
        if batch.watermark == WATERMARK_NONE:
            assert got is None
        else:
            assert got.values == [] and got.watermark == batch.watermark
            assert (got.key, got.group, got.origin) == ("k", group, "src")


@pytest.mark.parametrize("keys,groups", [(None, None), ([], [])], ids=["one-key", "keyed"])
@pytest.mark.parametrize("destinations", [1, 3, 70])
def test_watermark_only_batch_goes_to_every_destination(keys, groups, destinations):
    mark = Batch([], keys, "k", groups, 0, 5, None, "src", 1234)
    result = route(mark, RoutingTable.even(64, destinations))
    assert len(result) == destinations
    assert all(b is mark for b in result)


@pytest.mark.parametrize("keys,groups", [(None, None), ([], [])], ids=["one-key", "keyed"])
def test_empty_batch_without_watermark_goes_nowhere(keys, groups):
    assert route(Batch([], keys, "k", groups), RoutingTable.even(8, 3)) == [None] * 3


def test_keyed_batch_all_for_one_destination_goes_whole():
    table = RoutingTable([0, 1, 1, 0])
    batch = Batch(["a", "b", "c"], ["x", "y", "z"], None, [1, 2, 2], watermark=9)
    result = route(batch, table)
    assert result[1] is batch
    assert result[0].values == [] and result[0].watermark == 9


def test_a_data_batch_with_a_watermark_gives_idle_destinations_the_watermark():
    table = RoutingTable([0, 1, 2], destinations=4)       # destination 3 owns no group
    batch = Batch([1, 2], ["a", "b"], None, [0, 2], ingest_ns=3, origin="src", watermark=50)
    result = route(batch, table)
    assert [b.values for b in result] == [[1], [], [2], []]
    assert all(b.watermark == 50 and b.origin == "src" for b in result)
    assert result[1] is result[3]                          # one shared empty batch
    check_routed(batch, table, result)


@pytest.mark.parametrize("n,destinations", [(1024, 2), (1025, 3), (5000, 4), (300, 65),
                                            (3000, 200)])
@pytest.mark.parametrize("timed", [False, True])
def test_large_batches_and_many_destinations(n, destinations, timed):
    """Past the stack scratch buffers (1,024 messages, 64 destinations)."""
    import random
    rng = random.Random(n * destinations)
    table = RoutingTable.even(2048, destinations)
    groups = [rng.randrange(2048) for _ in range(n)]
    batch = Batch([object() for _ in range(n)], [str(g) for g in groups], None, groups,
                  event_times=[rng.randrange(10**9) for _ in range(n)] if timed else None,
                  watermark=rng.choice([WATERMARK_NONE, 77]))
    check_routed(batch, table, route(batch, table))


def test_route_keeps_reference_counts_right():
    values = [object() for _ in range(100)]
    keys = [f"key-{i}" for i in range(100)]
    groups = [i % 16 for i in range(100)]
    batch = Batch(values, keys, None, groups, event_times=[10**12 + i for i in range(100)])
    table = RoutingTable.even(16, 4)
    before = [sys.getrefcount(v) for v in values]
    result = route(batch, table)
    assert [sys.getrefcount(v) for v in values] == [c + 1 for c in before]
    del result
    assert [sys.getrefcount(v) for v in values] == before


def test_route_rejects_bad_batches():
    table = RoutingTable.even(8, 2)
    with pytest.raises(ValueError, match="message 1 has key group 8"):
        route(Batch([1, 2], ["a", "b"], None, [0, 8]), table)
    with pytest.raises(ValueError, match="message 0 has key group -1"):
        route(Batch([1], ["a"], None, [-1]), table)
    with pytest.raises(ValueError, match="message 0 has key group 1000000000000000000000"):
        route(Batch([1], ["a"], None, [10**21]), table)
    with pytest.raises(TypeError, match="message 1 has key group '3'"):
        route(Batch([1, 2], ["a", "b"], None, [0, "3"]), table)
    with pytest.raises(ValueError, match="2 values but 1 keys, 2 groups"):
        route(Batch([1, 2], ["a"], None, [0, 1]), table)
    with pytest.raises(ValueError, match="2 values but 2 keys, 2 groups and 3 event times"):
        route(Batch([1, 2], ["a", "b"], None, [0, 1], event_times=[1, 2, 3]), table)
    with pytest.raises(ValueError, match="keys and groups, or neither"):
        route(Batch([1], ["a"], None, None), table)
    with pytest.raises(ValueError, match="key group 9 is outside 0..7"):
        route(Batch([1], None, "k", None, 9), table)
    with pytest.raises(TypeError):
        route(None, table)
    with pytest.raises(TypeError):
        route(Batch([1], key="k"), None)


# ------------------------------------------------------------------------------------------
# RoutingTable


@SETTINGS
@given(owners=st.lists(st.integers(0, 20), min_size=1, max_size=100))
def test_table_keeps_its_owners(owners):
    table = RoutingTable(owners)
    assert len(table) == table.groups == len(owners)
    assert table.destinations == max(owners) + 1
    assert table.as_list() == owners
    assert [table.owner(g) for g in range(len(owners))] == owners
    for d in range(table.destinations):
        assert table.groups_of(d) == [g for g, o in enumerate(owners) if o == d]
    assert pickle.loads(pickle.dumps(table)) == table
    assert RoutingTable(tuple(owners), table.destinations + 3).destinations == \
        table.destinations + 3


def test_table_validation_names_the_bad_group():
    with pytest.raises(ValueError, match="at least one key group"):
        RoutingTable([])
    with pytest.raises(ValueError, match="key group 2 has destination -1, outside 0 or more"):
        RoutingTable([0, 1, -1])
    with pytest.raises(ValueError, match=r"key group 1 has destination 3, outside 0\.\.2"):
        RoutingTable([0, 3, 1], destinations=3)
    with pytest.raises(ValueError, match="key group 0 has destination 100000000000000000000"):
        RoutingTable([10**20])
    with pytest.raises(TypeError, match="key group 1 has destination 1.0"):
        RoutingTable([0, 1.0])
    with pytest.raises(TypeError, match="key group 0 has destination '0'"):
        RoutingTable(["0"])
    with pytest.raises(ValueError, match="destinations must be positive, not 0"):
        RoutingTable([0], destinations=0)
    table = RoutingTable([0, 1, 0])
    with pytest.raises(ValueError, match=r"key group 3 is outside 0\.\.2"):
        table.owner(3)
    with pytest.raises(ValueError, match="key group -1"):
        table.owner(-1)
    with pytest.raises(ValueError, match=r"destination 2 is outside 0\.\.1"):
        table.groups_of(2)


def test_even_rejects_nonpositive_sizes():
    with pytest.raises(ValueError, match="key groups must be positive, not 0"):
        RoutingTable.even(0, 2)
    with pytest.raises(ValueError, match="destinations must be positive, not -1"):
        RoutingTable.even(8, -1)


@SETTINGS
@given(groups=st.integers(1, 3000), destinations=st.integers(1, 300))
def test_even_is_contiguous_and_within_one_group(groups, destinations):
    table = RoutingTable.even(groups, destinations)
    owners = table.as_list()
    assert (len(table), table.destinations) == (groups, destinations)
    assert owners == sorted(owners) and owners[0] == 0          # contiguous runs, in order
    sizes = [owners.count(d) for d in range(destinations)]
    assert sum(sizes) == groups
    assert max(sizes) - min(sizes) <= 1                          # as even as possible
    assert sizes == sorted(sizes, reverse=True)                  # the longer runs first
    for d in range(destinations):
        run = table.groups_of(d)
        assert run == list(range(run[0], run[0] + len(run))) if run else sizes[d] == 0


def test_even_default_sizes():
    assert RoutingTable.even(2048, 4).groups_of(1) == list(range(512, 1024))
    assert [len(RoutingTable.even(2048, 3).groups_of(d)) for d in range(3)] == [683, 683, 682]
    assert RoutingTable.even(3, 5).as_list() == [0, 1, 2]


@SETTINGS
@given(data=st.data())
def test_moved_lists_the_groups_that_change_owner(data):
    old = data.draw(tables(), label="old")
    destinations = data.draw(st.integers(1, 10), label="new destinations")
    new = RoutingTable(data.draw(st.lists(st.integers(0, destinations - 1), min_size=len(old),
                                          max_size=len(old)), label="new owners"), destinations)
    a, b = old.as_list(), new.as_list()
    assert old.moved(new) == [g for g in range(len(a)) if a[g] != b[g]]
    assert new.moved(old) == old.moved(new)
    assert old.moved(old) == []
    assert (old == new) == (a == b and old.destinations == new.destinations)


def test_moved_needs_the_same_number_of_groups():
    with pytest.raises(ValueError, match="differ in key groups"):
        RoutingTable.even(8, 2).moved(RoutingTable.even(16, 2))
    with pytest.raises(TypeError):
        RoutingTable.even(8, 2).moved(None)
    # 0..1023 -> 0 and 1024..2047 -> 1 become four runs of 512: only 0..511 stay put
    assert RoutingTable.even(2048, 2).moved(RoutingTable.even(2048, 4)) == list(range(512, 2048))
