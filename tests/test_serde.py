"""Tests of batch serialization (wallaroo._core.serde).

Every round trip is checked by ``assert_same``: equal values of exactly the same types, nested
(a tuple stays a tuple, bytes stay bytes, 1 stays int, 1.0 stays float; floats compare by repr,
so nan and -0.0 count). Which codec a payload should use is decided by ``is_plain``, a
plain-Python statement of the module's rule.
"""
from __future__ import annotations

import dataclasses
import doctest
import enum
import json
import pickle
from collections import OrderedDict

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wallaroo._core import serde
from wallaroo._core.chain import WATERMARK_END_OF_INPUT, WATERMARK_NONE, Batch
from wallaroo._core.serde import (
    APP_SERIALIZER, MSGPACK, PICKLE, VALUES, decode_batch, decode_values, encode_batch,
    encode_values,
)

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
FIELDS = ("values", "keys", "groups", "key", "group", "ingest_ns", "event_times", "origin",
          "watermark")
INT_MIN, UINT_MAX = -2**63, 2**64 - 1


# ------------------------------------------------------------------------------------------
# reference


def assert_same(a, b, path="value"):
    """``a`` and ``b`` are equal and of the same types all the way down."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if type(a) is float:
        assert repr(a) == repr(b), f"{path}: {a!r} != {b!r}"
    elif type(a) in (list, tuple):
        assert len(a) == len(b), f"{path}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif type(a) is dict:
        assert len(a) == len(b), f"{path}: sizes {len(a)} != {len(b)}"
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):   # msgpack and pickle keep order
            assert_same(ka, kb, f"{path} key")
            assert_same(va, vb, f"{path}[{ka!r}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def is_plain(x) -> bool:
    """The module's rule: data msgpack carries exactly (ints within 64 bits, str without lone
    surrogates, lists/tuples/dicts of those, not too deep)."""
    if x is None or type(x) in (bool, float, bytes):
        return True
    if type(x) is int:
        return INT_MIN <= x <= UINT_MAX
    if type(x) is str:
        try:
            x.encode("utf-8")
            return True
        except UnicodeEncodeError:
            return False
    if type(x) in (list, tuple):
        return all(is_plain(v) for v in x)
    if type(x) is dict:
        return all(is_plain(k) and is_plain(v) for k, v in x.items())
    return False


def assert_batches_same(a: Batch, b: Batch):
    for name in FIELDS:
        assert_same(getattr(a, name), getattr(b, name), name)


def full_batch(values, **overrides) -> Batch:
    """A batch with every field set to something other than its default."""
    n = len(values)
    fields = dict(keys=[f"k{i}" for i in range(n)], groups=[i * 7 % 2048 for i in range(n)],
                  key="batch-key", group=2047, ingest_ns=-5,
                  event_times=[-2**61 + i for i in range(n)], origin="source-1",
                  watermark=WATERMARK_END_OF_INPUT)
    fields.update(overrides)
    return Batch(values, **fields)


# ------------------------------------------------------------------------------------------
# strategies

leaves = st.one_of(
    st.none(), st.booleans(),
    st.integers(INT_MIN, UINT_MAX),
    st.sampled_from([0, -1, INT_MIN, 2**63 - 1, 2**63, UINT_MAX]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), -0.0, 5e-324]),
    st.text(max_size=20), st.binary(max_size=20),
)
hashable = st.recursive(leaves, lambda inner: st.tuples(inner, inner), max_leaves=6)
plain = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(hashable, inner, max_size=5),
    ),
    max_leaves=40,
)
big_ints = st.one_of(st.integers(max_value=INT_MIN - 1), st.integers(min_value=UINT_MAX + 1))
with_big_ints = st.recursive(
    st.one_of(leaves, big_ints),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20,
)


# ------------------------------------------------------------------------------------------
# round trips of every field


@pytest.mark.parametrize("values, fmt", [
    ([("a", 1), b"raw", {"n": [1.5, None]}], MSGPACK),
    ([("a", 1), {1, 2}], PICKLE),
])
def test_every_field_round_trips(values, fmt):
    batch = full_batch(values)
    data = encode_batch(batch)
    assert data[0] == fmt
    assert_batches_same(decode_batch(data), batch)


def test_default_fields_round_trip():
    batch = Batch(["x"])
    decoded = decode_batch(encode_batch(batch))
    assert_batches_same(decoded, batch)
    assert decoded.keys is None and decoded.event_times is None
    assert decoded.watermark == WATERMARK_NONE


@pytest.mark.parametrize("watermark", [WATERMARK_NONE, WATERMARK_END_OF_INPUT, 0, -1, 2**63 - 1])
@pytest.mark.parametrize("ingest_ns", [-2**63, 0, 2**63 - 1])
def test_int64_fields_keep_their_extremes(watermark, ingest_ns):
    batch = full_batch([1], watermark=watermark, ingest_ns=ingest_ns)
    assert_batches_same(decode_batch(encode_batch(batch)), batch)


def test_empty_batch_and_empty_values():
    assert_batches_same(decode_batch(encode_batch(Batch([]))), Batch([]))
    assert decode_values(encode_values([])) == []


def test_bytes_like_input_is_accepted():
    data = encode_batch(full_batch([("t", 1)]))
    for form in (bytearray(data), memoryview(data), memoryview(b"pad" + data)[3:]):
        assert_batches_same(decode_batch(form), full_batch([("t", 1)]))


@SETTINGS
@given(st.lists(plain, max_size=8), plain, plain)
def test_plain_batches_round_trip_through_msgpack(values, key, origin):
    batch = full_batch(values, key=key, origin=origin)
    data = encode_batch(batch)
    assert data[0] == MSGPACK
    assert_batches_same(decode_batch(data), batch)


@SETTINGS
@given(st.lists(plain, max_size=8))
def test_plain_values_round_trip_through_msgpack(values):
    data = encode_values(values)
    assert data[0] == VALUES | MSGPACK
    assert_same(decode_values(data), values)


@SETTINGS
@given(st.lists(with_big_ints, max_size=6))
def test_ints_beyond_64_bits_take_pickle_and_round_trip(values):
    data = encode_values(values)
    assert data[0] == VALUES | (MSGPACK if is_plain(values) else PICKLE)
    assert_same(decode_values(data), values)


def test_tuples_inside_lists_inside_dicts():
    value = {"a": [(1, (b"x", "x")), ()], (1, ("t",)): {"in": [(None,)]}, b"k": 1.0, 2: True}
    data = encode_values([value])
    assert data[0] == VALUES | MSGPACK
    assert_same(decode_values(data), [value])


# ------------------------------------------------------------------------------------------
# the format


def test_plain_batches_use_the_msgpack_format_byte():
    """The fast path is really taken: the payload is msgpack, tuples as extension type 1."""
    batch = full_batch([("w", 1), ("x", 2)])
    data = encode_batch(batch)
    assert data[0] == MSGPACK == 0x01
    fields = msgpack.unpackb(data[1:], strict_map_key=False)
    assert len(fields) == 9 and fields[1] == ["k0", "k1"] and fields[7] == "source-1"
    assert fields[0][0] == msgpack.ExtType(1, msgpack.packb(["w", 1]))


@SETTINGS
@given(st.lists(leaves, max_size=17).map(tuple))
def test_a_tuple_is_msgpack_extension_1_holding_its_items(t):
    """Whoever writes a tuple's extension data (msgpack, or the module's own C for short tuples
    of leaves), it is the bytes msgpack gives for the list of its items."""
    data = encode_values([t])
    assert data[0] == VALUES | MSGPACK
    assert msgpack.unpackb(data[1:]) == [msgpack.ExtType(1, msgpack.packb(list(t)))]
    assert_same(decode_values(data), [t])


OTHER_FORMS = [1.5, "s" * 300, b"b" * 300, "s" * 70_000, [1, {"a": None}], {}, 2**64 - 1, -2**63]


@pytest.mark.parametrize("items, expected", [
    (OTHER_FORMS, tuple(OTHER_FORMS)),
    ([msgpack.ExtType(1, msgpack.packb(["inner"]))], (("inner",),)),
], ids=["other forms", "nested"])
def test_tuples_written_by_stock_msgpack_are_read(items, expected):
    """Extension data in forms the module does not write itself (float32, str16/32, bin16,
    containers, ...) is read by msgpack."""
    payload = msgpack.packb([msgpack.ExtType(1, msgpack.packb(items, use_single_float=True))])
    assert_same(decode_values(b"\x11" + payload), [expected])


def test_format_bytes():
    values = ["a", (1, 2)]
    assert encode_batch(Batch(values))[0] == 0x01
    assert encode_batch(Batch([{1}]))[0] == 0x02
    assert encode_batch(Batch(values), serialize=pickle.dumps)[0] == 0x05
    assert encode_batch(Batch(values, key={1}), serialize=pickle.dumps)[0] == 0x06
    assert encode_values(values)[0] == 0x11
    assert encode_values([{1}])[0] == 0x12
    assert encode_values(values, serialize=pickle.dumps)[0] == 0x15
    assert (APP_SERIALIZER, VALUES) == (0x04, 0x10)


def test_the_packer_is_left_clean_after_a_fallback():
    """A pack abandoned half-way (an int beyond 64 bits deep inside tuples) leaves the shared
    packer and the tuple packers ready for the next batch."""
    plain_values = [("a", (1, ("b",))), {"k": (2,)}]
    before = encode_values(plain_values)
    for bad in ([(1, (2, (3, 2**70)))], [{"k": [(1, -2**64)]}], ["\ud800", (1,)]):
        data = encode_values(bad)
        assert data[0] == VALUES | PICKLE
        assert_same(decode_values(data), bad)
        assert encode_values(plain_values) == before


def test_a_large_batch_round_trips_and_the_next_is_fine():
    big = [("x" * 100, i, b"y" * 100) for i in range(30_000)]     # over 4 MB of msgpack
    data = encode_values(big)
    assert data[0] == VALUES | MSGPACK and len(data) > 4 << 20
    assert_same(decode_values(data), big)
    assert_same(decode_values(encode_values([("small",)])), [("small",)])


# ------------------------------------------------------------------------------------------
# what is not plain goes to pickle


@dataclasses.dataclass
class Point:
    x: int
    y: tuple


class Color(enum.IntEnum):
    RED = 1


class Name(str):
    pass


NOT_PLAIN = [
    Point(1, ("a", b"b")),
    {1, 2, 3},
    frozenset({"a"}),
    2**70,
    -2**63 - 1,
    2**64,
    bytearray(b"ba"),
    Color.RED,
    Name("sub"),
    OrderedDict(a=1),
    "lone \ud800 surrogate",
    complex(1, 2),
    msgpack.ExtType(1, b"\x92\x01\x02"),    # would be read back as a tuple by msgpack
]


@pytest.mark.parametrize("value", NOT_PLAIN, ids=repr)
@pytest.mark.parametrize("where", ["value", "nested", "key", "origin"])
def test_not_plain_data_takes_pickle_and_round_trips(value, where):
    values = [("plain", 1)]
    batch = {"value": lambda: full_batch(values + [value]),
             "nested": lambda: full_batch(values + [{"deep": [(1, value)]}]),
             "key": lambda: full_batch(values, key=value),
             "origin": lambda: full_batch(values, origin=value)}[where]()
    data = encode_batch(batch)
    assert data[0] == PICKLE
    assert_batches_same(decode_batch(data), batch)


def nest(leaf, depth, *containers):
    for i in range(depth):
        leaf = containers[i % len(containers)](leaf)
    return leaf


@pytest.mark.parametrize("value, fmt", [
    (nest("leaf", 100, lambda x: [x], lambda x: {"k": x}), MSGPACK),
    (nest("leaf", 101, lambda x: [x], lambda x: {"k": x}), PICKLE),
    (nest("leaf", 16, lambda x: (x,)), MSGPACK),
    (nest("leaf", 17, lambda x: (x,)), PICKLE),
    (nest("leaf", 40, lambda x: [x], lambda x: (x,)), PICKLE),
    (nest("leaf", 300, lambda x: (x,), lambda x: [x]), PICKLE),
], ids=["100 containers", "101 containers", "16 tuples", "17 tuples", "20 tuples in lists",
        "300 deep"])
def test_deep_nesting_takes_pickle(value, fmt):
    data = encode_values([value])
    assert data[0] == VALUES | fmt
    assert_same(decode_values(data), [value])
    batch = full_batch([value])
    data = encode_batch(batch)
    assert data[0] == fmt
    assert_batches_same(decode_batch(data), batch)


def test_cycles_take_pickle():
    loop = []
    loop.append(loop)
    back = decode_values(encode_values([loop]))[0]
    assert back[0] is back


def test_unpicklable_data_raises_type_error():
    with pytest.raises(TypeError, match="cannot serialize"):
        encode_batch(Batch([lambda: 1]))
    with pytest.raises(TypeError, match="cannot serialize"):
        encode_values([memoryview(b"x")])


# ------------------------------------------------------------------------------------------
# the app's serialize / deserialize


def app_serialize(value) -> bytes:
    return b"J" + json.dumps(value).encode()


def app_deserialize(data: bytes):
    assert type(data) is bytes and data[:1] == b"J"
    return json.loads(data[1:])


def test_app_serializer_writes_each_value():
    calls = []

    def serialize(value):
        calls.append(value)
        return app_serialize(value)

    batch = full_batch([{"a": 1}, [1, 2], "s"])
    data = encode_batch(batch, serialize=serialize)
    assert calls == batch.values
    assert data[0] == APP_SERIALIZER | MSGPACK
    fields = msgpack.unpackb(data[1:], strict_map_key=False)     # metadata is plain msgpack
    assert fields[0] == [app_serialize(v) for v in batch.values] and fields[3] == "batch-key"
    assert_batches_same(decode_batch(data, deserialize=app_deserialize), batch)


def test_app_serializer_values_need_not_be_plain():
    batch = full_batch([Point(1, (2,)), {3}])
    data = encode_batch(batch, serialize=pickle.dumps)
    assert data[0] == APP_SERIALIZER | MSGPACK
    assert_batches_same(decode_batch(data, deserialize=pickle.loads), batch)


def test_app_serializer_with_metadata_that_is_not_plain():
    batch = full_batch(["v"], key=frozenset({"k"}))
    data = encode_batch(batch, serialize=app_serialize)
    assert data[0] == APP_SERIALIZER | PICKLE
    assert_batches_same(decode_batch(data, deserialize=app_deserialize), batch)


def test_app_serializer_for_values_lists():
    values = [{"state": [1, 2]}, None]
    data = encode_values(values, serialize=app_serialize)
    assert data[0] == VALUES | APP_SERIALIZER | MSGPACK
    assert decode_values(data, deserialize=app_deserialize) == values


def test_app_serializer_may_return_bytes_likes_but_not_str():
    data = encode_values([1], serialize=lambda v: bytearray(b"%d" % v))
    assert decode_values(data, deserialize=lambda b: int(b)) == [1]
    with pytest.raises(TypeError, match="serialize must return bytes, not str"):
        encode_batch(Batch([1]), serialize=str)


def test_app_serialized_payload_needs_deserialize():
    data = encode_batch(Batch([1]), serialize=app_serialize)
    with pytest.raises(ValueError, match="pass deserialize"):
        decode_batch(data)
    with pytest.raises(ValueError, match="pass deserialize"):
        decode_values(encode_values([1], serialize=app_serialize))


def test_deserialize_errors_pass_through():
    def deserialize(data):
        raise KeyError("app bug")

    with pytest.raises(KeyError, match="app bug"):
        decode_batch(encode_batch(Batch([1]), serialize=app_serialize), deserialize=deserialize)


def test_deserialize_is_ignored_for_payloads_written_without_serialize():
    assert decode_values(encode_values([(1,)]), deserialize=app_deserialize) == [(1,)]


# ------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("byte", [0x00, 0x03, 0x07, 0x08, 0x13, 0x20, 0x41, 0x80, 0xFF])
def test_unknown_format_bytes(byte):
    with pytest.raises(ValueError, match=f"unknown format byte 0x{byte:02x}"):
        decode_batch(bytes([byte]) + encode_batch(Batch([1]))[1:])


def test_empty_input():
    with pytest.raises(ValueError, match="empty payload"):
        decode_batch(b"")
    with pytest.raises(ValueError, match="empty payload"):
        decode_values(memoryview(b""))


def test_a_values_payload_is_not_a_batch_and_back():
    with pytest.raises(ValueError, match="a values payload"):
        decode_batch(encode_values([1]))
    with pytest.raises(ValueError, match="a batch payload"):
        decode_values(encode_batch(Batch([1])))


@pytest.mark.parametrize("values", [[("a", 1), {"b": [b"c"]}, "d" * 300, list(range(300))],
                                    [{1, 2}, ("a", 1), "d" * 300]], ids=["msgpack", "pickle"])
def test_every_truncation_is_reported(values):
    data = encode_batch(full_batch(values))
    for n in range(1, len(data)):
        with pytest.raises(ValueError, match="truncated"):
            decode_batch(data[:n])


@pytest.mark.parametrize("payload, message", [
    (b"\x01\xc1", "invalid msgpack data"),
    (b"\x01\x90\x00", "extra bytes"),
    (b"\x01\xc7\x01\x05\x00", "unknown msgpack extension type 5"),
    (b"\x01" + msgpack.packb(1), "not a list of 9 fields"),
    (b"\x01" + msgpack.packb([1] * 8), "not a list of 9 fields"),
    (b"\x01" + msgpack.packb([1, None, None, None, 0, 0, None, None, 0]), "wrong type"),
    (b"\x01" + msgpack.packb([[], None, None, None, "g", 0, None, None, 0]), "wrong type"),
    (b"\x01" + msgpack.packb([[], None, None, None, 0, 2**64 - 1, None, None, 0]), "wrong type"),
    (b"\x05" + msgpack.packb([[1], None, None, None, 0, 0, None, None, 0]), "not bytes"),
    (b"\x11" + msgpack.packb({"a": 1}), "not a list"),
    (b"\x11" + msgpack.packb([msgpack.ExtType(1, msgpack.packb({"a": 1}))]), "not an array"),
    (b"\x02not a pickle", "corrupt pickle payload"),
    (b"\x11" + msgpack.packb([msgpack.ExtType(1, b"\x92\xa3ab")]), "truncated"),
    (b"\x11" + msgpack.packb([msgpack.ExtType(1, b"\x91\x01\x02")]), "extra bytes"),
    (b"\x11" + msgpack.packb([msgpack.ExtType(1, b"\x91\xa2\xff\xfe")]), "UnicodeDecodeError"),
    (b"\x11" + msgpack.packb([msgpack.ExtType(1, b"\x91\xcd\x01")]), "truncated"),
])
def test_corrupt_payloads_are_reported(payload, message):
    decode = decode_values if payload[0] & VALUES else decode_batch
    with pytest.raises(ValueError, match=message):
        decode(payload, deserialize=app_deserialize)


def test_tuples_nested_too_deeply_are_refused_not_a_crash():
    """Each level of tuples is a nested msgpack unpack with a large C stack frame: a payload
    nesting thousands (never written by encode) must not overflow the stack."""
    data = msgpack.packb([1])
    for _ in range(5000):
        data = msgpack.packb([msgpack.ExtType(1, data)])
    with pytest.raises(ValueError, match="tuples nested too deeply"):
        decode_values(b"\x11" + data)


@SETTINGS
@given(st.lists(plain, min_size=1, max_size=5), st.data())
def test_corrupted_msgpack_bytes_give_a_batch_or_a_value_error(values, data):
    encoded = bytearray(encode_batch(full_batch(values)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(1, len(encoded) - 1))
        encoded[i] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_batch(bytes(encoded))
    except ValueError:
        return
    assert type(decoded) is Batch


# ------------------------------------------------------------------------------------------
# the examples in the module's docstrings


def test_module_examples_hold():
    result = doctest.testmod(serde)
    assert result.attempted > 0 and result.failed == 0
