"""Tests of the Cython hot path (wallaroo._core) and of the physical plan.

Every expectation is derived from the inputs through a plain-Python reference written here
(struct framing, str.split, a dict of per-key states, FNV-1a + murmur3 finalizer, ...).
"""
from __future__ import annotations

import doctest
import importlib
import json
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wallaroo
from wallaroo import graph as g
from wallaroo._core.chain import (
    Batch, Chain, ConstantKeyOp, DecodeOp, EncodeOp, FlatMapOp, KeyByOp, MapOp, StateOp,
)
from wallaroo._core.frames import FrameReader, FrameTooLarge, LineReader, frame_all
from wallaroo._core.hashing import key_group, normalize_key, stable_hash
from wallaroo.runtime.errors import ErrorPolicy
from wallaroo.plan import ChainSpec, PhysicalPlan

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------
# the examples in the compiled modules' docstrings (pytest's --doctest-modules sees only .py)


@pytest.mark.parametrize("module", ["frames", "hashing", "chain", "windows", "histogram", "routing", "serde", "ring"])
def test_core_module_examples_hold(module):
    result = doctest.testmod(importlib.import_module(f"wallaroo._core.{module}"))
    assert result.attempted > 0
    assert result.failed == 0


# ------------------------------------------------------------------------------------------
# helpers


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed: empty chunks)."""
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


cuts_for = st.lists(st.integers(min_value=0, max_value=10_000), max_size=20)


# ------------------------------------------------------------------------------------------
# FrameReader

# (struct format, header length, largest payload the format can announce here)
FORMATS = [
    (">I", 4, 400), ("!I", 4, 400), (">H", 2, 400), ("!H", 2, 400), ("<I", 4, 400),
    ("<H", 2, 400), (">Q", 8, 400), ("<Q", 8, 400), ("B", 1, 255), (">L", 4, 400),
]


@pytest.mark.parametrize("fmt,header,biggest", FORMATS, ids=[f[0] for f in FORMATS])
@SETTINGS
@given(data=st.data())
def test_frame_reader_any_chunking_gives_the_payloads(fmt, header, biggest, data):
    payloads = data.draw(st.lists(st.binary(max_size=biggest), max_size=25), label="payloads")
    stream = b"".join(struct.pack(fmt, len(p)) + p for p in payloads)
    chunks = chunked(stream, data.draw(cuts_for, label="cuts"))
    reader = FrameReader(header, fmt)
    got: list[bytes] = []
    fed = 0
    for chunk in chunks:
        got.extend(reader.feed(chunk))
        fed += len(chunk)
        consumed = sum(header + len(p) for p in got)
        # pending is exactly the bytes of the unfinished frame
        assert reader.pending == fed - consumed
        assert reader.frames == len(got)
    assert got == payloads
    assert reader.pending == 0
    assert reader.frames == len(payloads)


@pytest.mark.parametrize("fmt", [">I", "<H", "B", ">Q"])
def test_frame_reader_accepts_bytearray_and_memoryview(fmt):
    payloads = [b"alpha", b"", b"\x00\xff" * 3]
    stream = b"".join(struct.pack(fmt, len(p)) + p for p in payloads)
    header = struct.calcsize(fmt)
    reader = FrameReader(header, fmt)
    half = len(stream) // 2
    got = reader.feed(bytearray(stream[:half])) + reader.feed(memoryview(stream[half:]))
    assert got == payloads


def _ascii_length(header: bytes) -> int:
    return int(header.decode("ascii"))


@SETTINGS
@given(payloads=st.lists(st.binary(max_size=300), max_size=20), cuts=cuts_for)
def test_frame_reader_nonstandard_header_through_payload_length(payloads, cuts):
    # a 6-byte ASCII decimal header: no struct format, so only payload_length can read it
    stream = b"".join(b"%06d" % len(p) + p for p in payloads)
    seen_headers: list[bytes] = []

    def payload_length(h: bytes) -> int:
        seen_headers.append(h)
        return _ascii_length(h)

    reader = FrameReader(6, None, payload_length)
    got = []
    for chunk in chunked(stream, cuts):
        got.extend(reader.feed(chunk))
    assert got == payloads
    assert reader.pending == 0
    # the callback is handed exactly the header bytes of every frame
    assert set(seen_headers) == {b"%06d" % len(p) for p in payloads}


@pytest.mark.parametrize("fmt,header", [("=I", 4), ("<i", 4), (">h", 2), ("@H", 2)])
@SETTINGS
@given(payloads=st.lists(st.binary(max_size=200), max_size=15), cuts=cuts_for)
def test_frame_reader_other_struct_formats_via_decoder(fmt, header, payloads, cuts):
    """Formats the C path does not read go through the decoder's payload_length."""
    dec = wallaroo.decoder(header_length=header, length_fmt=fmt)(lambda b: b)
    stream = b"".join(struct.pack(fmt, len(p)) + p for p in payloads)
    reader = FrameReader(dec.header_length(), dec.length_fmt, dec.payload_length)
    got = []
    for chunk in chunked(stream, cuts):
        got.extend(reader.feed(chunk))
    assert got == payloads
    assert reader.pending == 0


def test_frame_reader_needs_a_callback_for_unknown_formats():
    with pytest.raises(ValueError):
        FrameReader(3, None)
    with pytest.raises(ValueError):
        FrameReader(0, ">I")


@SETTINGS
@given(max_size=st.integers(min_value=1, max_value=1000), extra=st.integers(min_value=1, max_value=10**6))
def test_frame_too_large_carries_length_and_max(max_size, extra):
    length = max_size + extra
    reader = FrameReader(4, ">I", max_size=max_size)
    # rejected as soon as the header is known, before the payload arrives
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(struct.pack(">I", length))
    assert info.value.length == length
    assert info.value.max_size == max_size
    assert isinstance(info.value, ValueError)
    assert str(length) in str(info.value)


def test_frame_exactly_max_size_is_accepted():
    reader = FrameReader(2, ">H", max_size=10)
    assert reader.feed(struct.pack(">H", 10) + b"0123456789") == [b"0123456789"]
    with pytest.raises(FrameTooLarge):
        reader.feed(struct.pack(">H", 11))


def test_frame_too_large_for_8_byte_headers_with_top_bit_set():
    # Regression test for a fixed bug (the old behaviour): a >Q header announcing >= 2**63 bytes is cast to a negative Py_ssize_t, which
    # skips the max_size check and ends in SystemError ("Negative size passed to
    # PyBytes_FromStringAndSize" or "returned NULL without setting an exception") instead of
    # FrameTooLarge (bad input, counted and skipped).
    for announced in (2**63 + 5, 2**64 - 1):
        reader = FrameReader(8, ">Q", max_size=100)
        with pytest.raises(FrameTooLarge) as info:
            reader.feed(struct.pack(">Q", announced) + b"abc")
        assert info.value.length == announced


@SETTINGS
@given(payloads=st.lists(st.binary(max_size=50), min_size=1, max_size=10),
       partial=st.integers(min_value=0, max_value=60))
def test_pending_counts_the_unfinished_frame(payloads, partial):
    stream = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    last = struct.pack(">I", 60) + bytes(range(60))
    partial = min(partial, len(last) - 1)
    reader = FrameReader(4, ">I")
    assert reader.feed(stream + last[:partial]) == payloads
    assert reader.pending == partial
    assert reader.frames == len(payloads)
    assert reader.feed(last[partial:]) == [bytes(range(60))]
    assert reader.pending == 0
    assert reader.frames == len(payloads) + 1


# ------------------------------------------------------------------------------------------
# LineReader

line_text = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
                    max_size=40)


def _reference_lines(text: str) -> list[str]:
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    return [p[:-1] if p.endswith("\r") else p for p in parts]


@SETTINGS
@given(lines=st.lists(line_text, max_size=30), crlf=st.lists(st.booleans(), max_size=30),
       terminated=st.booleans(), cuts=cuts_for)
def test_line_reader_any_byte_chunking(lines, crlf, terminated, cuts):
    endings = ["\r\n" if (crlf[i] if i < len(crlf) else False) else "\n" for i in range(len(lines))]
    text = "".join(l + e for l, e in zip(lines, endings))
    if not terminated and lines:
        text = text[: -len(endings[-1])]  # last line without a newline
    data = text.encode("utf-8")
    reader = LineReader()
    got: list[str] = []
    fed = 0
    for chunk in chunked(data, cuts):  # may split multibyte characters
        got.extend(reader.feed(chunk))
        fed += len(chunk)
        assert reader.pending == fed - (data[:fed].rfind(b"\n") + 1)
    got.extend(reader.finish())
    expected = _reference_lines(text)
    assert got == expected
    assert reader.pending == 0
    assert reader.lines == len(expected)
    assert reader.finish() == []


def test_line_reader_crlf_and_unterminated_last_line():
    reader = LineReader()
    assert reader.feed(b"one\r") == []
    assert reader.feed(b"\ntwo\r\nthr") == ["one", "two"]
    assert reader.feed("é".encode()[:1]) == []  # half of a two-byte character
    assert reader.feed("é".encode()[1:] + b"\n") == ["thré"]
    assert reader.feed(b"tail") == []
    assert reader.finish() == ["tail"]


def test_line_reader_keeps_empty_lines():
    reader = LineReader()
    assert reader.feed(b"\n\na\n\n") == ["", "", "a", ""]
    assert reader.finish() == []


# ------------------------------------------------------------------------------------------
# hashing

MASK = (1 << 64) - 1


def reference_hash(data: bytes) -> int:
    """64-bit FNV-1a finished with the murmur3 fmix64 step (the module's documented hash)."""
    h = 14695981039346656037
    for byte in data:
        h ^= byte
        h = (h * 1099511628211) & MASK
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK
    h ^= h >> 33
    return h


keys = st.one_of(st.text(max_size=30), st.binary(max_size=30),
                 st.integers(min_value=-(10**30), max_value=10**30))


def _as_bytes(key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    return str(key).encode("ascii")


@SETTINGS
@given(key=keys, groups=st.integers(min_value=1, max_value=1 << 20))
def test_key_group_matches_reference_and_is_in_range(key, groups):
    h = reference_hash(_as_bytes(key))
    assert stable_hash(key) == h
    assert key_group(key, groups) == h % groups
    assert 0 <= key_group(key, groups) < groups


@SETTINGS
@given(key=st.text(max_size=40), groups=st.integers(min_value=1, max_value=4096))
def test_str_and_its_utf8_bytes_share_a_group(key, groups):
    assert key_group(key, groups) == key_group(key.encode("utf-8"), groups)
    assert key_group(key, groups) == key_group(bytearray(key.encode("utf-8")), groups)


@SETTINGS
@given(n=st.integers(min_value=-(10**40), max_value=10**40))
def test_int_keys_normalize_to_decimal_str(n):
    assert normalize_key(n) == str(n)
    assert type(normalize_key(n)) is str
    assert key_group(n, 2048) == key_group(str(n), 2048)


def test_normalize_keeps_str_and_bytes():
    assert normalize_key("k") == "k" and type(normalize_key("k")) is str
    assert normalize_key(b"k") == b"k" and type(normalize_key(b"k")) is bytes
    assert normalize_key(bytearray(b"k")) == b"k"
    assert normalize_key(memoryview(b"k")) == b"k"


@pytest.mark.parametrize("bad,type_name", [(1.5, "float"), (None, "NoneType"), ((1, 2), "tuple"),
                                           (True, "bool"), ([1], "list")])
def test_invalid_key_types_raise_type_error_naming_the_type(bad, type_name):
    for fn in (normalize_key, stable_hash, lambda k: key_group(k, 2048)):
        with pytest.raises(TypeError) as info:
            fn(bad)
        assert type_name in str(info.value)


def test_key_group_stable_across_processes():
    sample = [f"user-{i}" for i in range(200)] + [f"ключ{i}" for i in range(50)]
    sample_bytes = [os.urandom(8).hex().encode() for _ in range(50)]
    sample_ints = list(range(-20, 30)) + [2**70]
    script = (
        "import json, sys\n"
        "from wallaroo._core.hashing import key_group, stable_hash\n"
        "d = json.load(sys.stdin)\n"
        "ks = d['s'] + [bytes.fromhex(b) for b in d['b']] + d['i']\n"
        "print(json.dumps([[key_group(k, 2048), key_group(k, 7), stable_hash(k)] for k in ks]))\n"
    )
    payload = json.dumps({"s": sample, "b": [b.hex() for b in sample_bytes], "i": sample_ints})
    all_keys = sample + sample_bytes + sample_ints
    mine = [[key_group(k, 2048), key_group(k, 7), stable_hash(k)] for k in all_keys]
    for seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", script], input=payload, capture_output=True,
                             text=True, env=env, timeout=30, check=True)
        assert json.loads(out.stdout) == mine
    # and Python's own salted hash() really differs between those seeds (the test is meaningful)
    probe = "import sys; print(hash('user-1'))"
    salted = {subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED=s), check=True).stdout
              for s in ("1", "4242")}
    assert len(salted) == 2


def test_key_group_distribution_is_roughly_uniform():
    groups = 2048
    n = 100_000
    for make in (lambda i: f"key-{i}", lambda i: i, lambda i: f"{i:08x}".encode()):
        counts = [0] * groups
        for i in range(n):
            counts[key_group(make(i), groups)] += 1
        expected = n / groups
        chi2 = sum((c - expected) ** 2 / expected for c in counts)
        # chi-square with 2047 degrees of freedom: mean 2047, sd ~64; 12 sd is never a flake
        assert chi2 < groups - 1 + 12 * (2 * (groups - 1)) ** 0.5
        assert min(counts) > expected / 4
        assert max(counts) < expected * 3


def test_key_group_with_zero_groups_raises_instead_of_crashing():
    # Regression test for a fixed bug (the old behaviour): key_group(k, 0) divides by zero in C (cdivision) and kills the whole process
    # with SIGFPE; RunOptions(key_groups=0) given to a Worker does the same. Negative group
    # counts return negative groups.
    script = (
        "from wallaroo._core.hashing import key_group\n"
        "for n in (0, -1, -5):\n"
        "    try:\n"
        "        g = key_group('a', n)\n"
        "    except (ValueError, ZeroDivisionError, OverflowError):\n"
        "        continue\n"
        "    assert False, f'key_group(a, {n}) returned {g}'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, (out.returncode, out.stderr[-500:])
    assert out.stdout.strip() == "ok"


# ------------------------------------------------------------------------------------------
# chain ops


class Errors:
    """Records the calls the ops make; ``go_on`` answers user_error (bool or fn(value))."""

    def __init__(self, go_on=True):
        self.go_on = go_on
        self.user = []
        self.bad = []

    def user_error(self, stage, value, exc) -> bool:
        self.user.append((stage, value, type(exc)))
        return self.go_on(value) if callable(self.go_on) else self.go_on

    def bad_input(self, stage, kind, value, exc) -> None:
        self.bad.append((stage, kind, value, type(exc)))


class Boom(Exception):
    pass


def _map_fn(x):
    if x % 7 == 0:
        raise Boom(x)
    if x % 3 == 0:
        return None
    return x * 2


int_lists = st.lists(st.integers(min_value=-1000, max_value=1000), max_size=60)


def _keyed(values):
    keys = [f"k{v % 5}" for v in values]
    return Batch(list(values), keys=keys, groups=[key_group(k, 64) for k in keys])


@SETTINGS
@given(values=int_lists, keyed=st.booleans())
def test_map_op_skip_matches_reference(values, keyed):
    errors = Errors(True)
    batch = _keyed(values) if keyed else Batch(list(values), key="src", group=3, ingest_ns=77)
    out = MapOp("m", _map_fn, errors).process(batch)
    expected = [(i, x * 2) for i, x in enumerate(values) if x % 7 and x % 3]
    assert out.values == [v for _, v in expected]
    assert errors.user == [("m", x, Boom) for x in values if x % 7 == 0]
    if keyed:
        assert out.keys == [batch.keys[i] for i, _ in expected]
        assert out.groups == [batch.groups[i] for i, _ in expected]
    else:
        assert out.keys is None and out.key == "src" and out.group == 3 and out.ingest_ns == 77
    assert batch.values == values  # input batch untouched


@SETTINGS
@given(values=int_lists)
def test_map_op_stop_keeps_what_came_before(values):
    errors = Errors(False)
    calls = []

    def fn(x):
        calls.append(x)
        return _map_fn(x)

    out = MapOp("m", fn, errors).process(Batch(list(values)))
    first_bad = next((i for i, x in enumerate(values) if x % 7 == 0), len(values))
    before = values[:first_bad]
    assert out.values == [x * 2 for x in before if x % 3]
    assert calls == values[: first_bad + 1]  # nothing after the failure is computed
    assert errors.user == ([("m", values[first_bad], Boom)] if first_bad < len(values) else [])


@SETTINGS
@given(values=int_lists)
def test_map_op_error_answer_per_message(values):
    """user_error returning True resumes at the next message; False ends the batch there."""
    stop_at = lambda v: v % 2 == 0  # noqa: E731 - go on after odd failures, stop at even ones
    errors = Errors(lambda v: not stop_at(v))
    out = MapOp("m", _map_fn, errors).process(Batch(list(values)))
    expected, reported = [], []
    for x in values:
        if x % 7 == 0:
            reported.append(x)
            if stop_at(x):
                break
            continue
        if x % 3:
            expected.append(x * 2)
    assert out.values == expected
    assert [v for _, v, _ in errors.user] == reported


def _flat_fn(x):
    if x % 11 == 0:
        return x  # not a list: an error of the stage
    if x % 7 == 0:
        raise Boom(x)
    if x % 5 == 0:
        return None
    if x % 2:
        return (x, None, -x)
    return [x, None, x + 1, None]


def _flat_ref(values, go_on):
    out, keys, errs = [], [], []
    for x in values:
        if x % 11 == 0:
            errs.append((x, TypeError))
        elif x % 7 == 0:
            errs.append((x, Boom))
        elif x % 5 == 0:
            continue
        else:
            items = [i for i in _flat_fn(x) if i is not None]
            out += items
            keys += [f"k{x % 5}"] * len(items)
            continue
        if not go_on:
            break
    return out, keys, errs


@SETTINGS
@given(values=int_lists, go_on=st.booleans())
def test_flat_map_op_matches_reference(values, go_on):
    errors = Errors(go_on)
    batch = _keyed(values)
    out = FlatMapOp("fm", _flat_fn, errors).process(batch)
    expected, exp_keys, errs = _flat_ref(values, go_on)
    assert out.values == expected
    assert [(v, t) for _, v, t in errors.user] == errs
    # keys and groups stay parallel to the values: each output keeps its input's key
    assert out.keys == exp_keys
    assert out.groups == [key_group(k, 64) for k in exp_keys]


def test_flat_map_op_rejects_non_lists():
    for bad in (5, "ab", {1, 2}, iter([1])):
        errors = Errors(True)
        out = FlatMapOp("fm", lambda x, bad=bad: bad if x == 2 else [x], errors).process(Batch([1, 2, 3]))
        assert out.values == [1, 3]
        assert errors.user == [("fm", 2, TypeError)]


@SETTINGS
@given(values=st.lists(st.text(max_size=6), max_size=40))
def test_key_by_op_keys_and_groups_parallel(values):
    errors = Errors()

    def extract(v):
        if v == "":
            raise Boom("empty")
        if v.startswith("#"):
            return 1.5  # not a key type: bad input
        if v[0].isdigit():
            return len(v)  # int keys are normalized to str
        return v[0]

    out = KeyByOp("kb", extract, errors, 128).process(Batch(list(values), key="src"))
    good = [v for v in values if v and not v.startswith("#")]
    assert out.values == good
    assert out.keys == [str(len(v)) if v[0].isdigit() else v[0] for v in good]
    assert out.groups == [reference_hash(k.encode()) % 128 for k in out.keys]
    assert [(s, kind, v) for s, kind, v, _ in errors.bad] == [
        ("kb", "key_extractor", v) for v in values if not v or v.startswith("#")]
    assert errors.user == []


def test_constant_key_op_sets_one_key():
    out = ConstantKeyOp("collect", None, "all", 64).process(_keyed([1, 2, 3]))
    assert out.values == [1, 2, 3]
    assert out.keys is None and out.groups is None
    assert out.key == "all" and out.group == key_group("all", 64)


def test_decode_op_bad_input_skipped():
    errors = Errors()
    out = DecodeOp("dec", lambda b: None if b == b"" else b.decode("ascii"), errors).process(
        Batch([b"a", b"\xff", b"", b"b"]))
    assert out.values == ["a", "b"]
    assert [(s, k, v, t) for s, k, v, t in errors.bad] == [("dec", "decoder", b"\xff", UnicodeDecodeError)]


class Tally:
    made = 0

    def __init__(self):
        type(self).made += 1
        self.seen = []


def _state_fn(v, st):
    if v % 13 == 0:
        raise Boom(v)
    st.seen.append(v)
    if v % 4 == 0:
        return None
    return (v, len(st.seen), sum(st.seen))


@SETTINGS
@given(batches=st.lists(int_lists, max_size=5), go_on=st.booleans())
def test_state_op_per_key_state_matches_reference(batches, go_on):
    Tally.made = 0
    errors = Errors(go_on)
    op = StateOp("st", _state_fn, errors, Tally, False)
    ref_states: dict[str, list] = {}
    for values in batches:
        batch = _keyed(values)
        out = op.process(batch)
        expected, exp_keys = [], []
        for x, k in zip(values, batch.keys):
            if x % 13 == 0:
                if not go_on:
                    break
                continue
            # state is made lazily: a key whose first message fails gets a state anyway
            seen = ref_states.setdefault(k, [])
            seen.append(x)
            if x % 4:
                expected.append((x, len(seen), sum(seen)))
                exp_keys.append(k)
        assert out.values == expected
        assert out.keys == exp_keys
    assert {k: s.seen for k, s in op.states.items() if s.seen} == {k: v for k, v in ref_states.items() if v}
    # one state object per key, made lazily (only for keys that were reached)
    assert Tally.made == len(op.states)
    assert set(op.states) >= {k for k, v in ref_states.items() if v}


@SETTINGS
@given(values=int_lists)
def test_state_op_multi_and_constant_key(values):
    errors = Errors(True)

    def multi(v, st):
        st.append(v)
        return None if v % 3 == 0 else [v, None, len(st)]

    op = StateOp("sm", multi, errors, list, True)
    half = len(values) // 2
    out1 = op.process(Batch(values[:half], key="only", group=5))
    out2 = op.process(Batch(values[half:], key="only", group=5))
    expected, n = [], 0
    for v in values:
        n += 1
        if v % 3:
            expected += [v, n]
    assert out1.values + out2.values == expected
    assert out1.keys is None and out2.key == "only" and out2.group == 5
    assert op.states == ({"only": list(values)} if values else {})


def test_state_op_multi_rejects_non_list():
    errors = Errors(True)
    op = StateOp("sm", lambda v, st: v if v == 2 else [v], errors, list, True)
    assert op.process(Batch([1, 2, 3], key="k")).values == [1, 3]
    assert errors.user == [("sm", 2, TypeError)]


class StrSub(str):
    pass


def _enc(v):
    kind = v % 6
    if kind == 0:
        return f"s{v}é\n"
    if kind == 1:
        return f"b{v}".encode()
    if kind == 2:
        return None
    if kind == 3:
        return v  # int: an encoder error
    if kind == 4:
        return bytearray(b"ba%d" % v)
    return StrSub(f"sub{v}")


@SETTINGS
@given(values=st.lists(st.integers(min_value=0, max_value=10_000), max_size=60), go_on=st.booleans())
def test_encode_op_matches_reference(values, go_on):
    errors = Errors(go_on)
    out = EncodeOp("enc", _enc, errors).process(Batch(list(values)))
    expected = []
    for v in values:
        r = _enc(v)
        if isinstance(r, int):
            if not go_on:
                break
            continue
        if r is None:
            continue
        expected.append(r.encode("utf-8") if isinstance(r, str) else bytes(r))
    assert out.values == expected
    assert all(type(b) is bytes for b in out.values)
    failing = [v for v in values if v % 6 == 3]
    assert [(s, v, t) for s, v, t in errors.user] == (
        [("enc", v, TypeError) for v in failing] if go_on else [("enc", v, TypeError) for v in failing[:1]])


class Collect:
    def __init__(self):
        self.batches = []

    def push(self, batch):
        self.batches.append(batch)

    @property
    def values(self):
        return [v for b in self.batches for v in b.values]


@SETTINGS
@given(batches=st.lists(int_lists, max_size=6))
def test_chain_fan_out_outputs_get_identical_values(batches):
    errors = Errors(True)
    a, b, c = Collect(), Collect(), Collect()
    downstream = Chain([MapOp("neg", lambda x: -x, errors)], [c])
    chain = Chain([MapOp("m", _map_fn, errors),
                   FlatMapOp("dup", lambda x: [x, x + 1], errors)], [a, b])
    chain.add_output(downstream)
    expected = []
    for values in batches:
        chain.push(Batch(list(values), key="s"))
        for x in values:
            if x % 7 and x % 3:
                expected += [2 * x, 2 * x + 1]
    assert a.values == expected
    assert b.values == expected
    assert c.values == [-x for x in expected]
    assert all(len(bt) > 0 for bt in a.batches)


def test_chain_stage_error_stops_only_that_batch():
    errors = Errors(False)
    out = Collect()
    chain = Chain([MapOp("m", _map_fn, errors)], [out])
    chain.push(Batch([1, 2, 7, 4]))  # 7 fails: 1, 2 flow on, 4 is dropped
    chain.push(Batch([5]))
    assert out.values == [2, 4, 10]
    assert errors.user == [("m", 7, Boom)]


# ------------------------------------------------------------------------------------------
# PhysicalPlan

_enc_line = wallaroo.encoder(lambda x: f"{x}\n")


def _sink():
    return wallaroo.StdoutSinkConfig(_enc_line)


def _src(name="s"):
    return wallaroo.source(name, wallaroo.IterSourceConfig(name, []))


def _map(name):
    return wallaroo.computation(name=name)(lambda x: x)


def _flat(name):
    return wallaroo.computation_multi(name=name)(lambda x: [x])


def _state(name):
    return wallaroo.state_computation(name=name, state=list)(lambda x, s: x)


def _state_multi(name):
    return wallaroo.state_computation_multi(name=name, state=list)(lambda x, s: [x])


def _names(plan):
    return [[n.name for n in c.nodes] for c in plan.chains]


def _check_invariants(plan: PhysicalPlan):
    graph = plan.graph
    chain_of = {n: c for c in plan.chains for n in c.nodes}
    stages = [n for n in graph.nodes if n.kind not in (g.SOURCE, g.SINK, g.MERGE)]
    assert sorted(map(id, chain_of)) == sorted(map(id, stages))  # every stage in one chain
    incoming: dict[int, list] = {}
    for edges in [*plan.source_edges.values(), *(c.edges for c in plan.chains)]:
        for e in edges:
            incoming.setdefault(id(e.target), []).append(e)
    for chain in plan.chains:
        for prev, node in zip(chain.nodes, chain.nodes[1:]):
            # fused only along a one-input, one-child link without an exchange
            assert node.inputs == (prev,)
            assert graph.children[prev] == [node]
            assert node.kind not in g.STATEFUL
        head = chain.nodes[0]
        edges_in = incoming.get(id(chain), [])
        assert edges_in, f"nothing feeds chain {chain.name}"
        # an exchange edge leads to a stage that needs its key's owner (stateful, or right
        # after key_by/collect), and only when no exchange since the last key_by routed it
        assert all(e.exchange == _needs_exchange(head) for e in edges_in)
    for node in stages:
        if node.kind in g.STATEFUL or (node.kind not in (g.KEY_BY, g.COLLECT) and
                                       any(i.kind in (g.KEY_BY, g.COLLECT) for i in node.inputs)):
            assert chain_of[node].nodes[0] is node
    assert [e.id for e in plan.exchanges] == list(range(len(plan.exchanges)))
    for sink in graph.sinks:
        assert [e.exchange for e in incoming[id(sink)]] == [False] * len(incoming[id(sink)])


def _needs_exchange(node) -> bool:
    """Reference rule, walking up from ``node``: it needs its key's owner, and going up its
    inputs no stage that was routed is met before a key_by, collect or source."""
    def needs_owner(n):
        if n.kind in (g.KEY_BY, g.COLLECT):  # sets new keys, so it can run anywhere
            return False
        return n.kind in g.STATEFUL or any(i.kind in (g.KEY_BY, g.COLLECT) or
                                           (i.kind == g.MERGE and _pending(i)) for i in n.inputs)

    def on_owner(n):  # is what n outputs on its owner already?
        if n.kind in (g.SOURCE, g.KEY_BY, g.COLLECT):
            return False
        if n.kind == g.MERGE:
            return all(on_owner(i) for i in n.inputs)
        return needs_owner(n) or all(on_owner(i) for i in n.inputs)

    return needs_owner(node) and not all(on_owner(i) for i in node.inputs)


def _pending(node) -> bool:
    if node.kind in (g.KEY_BY, g.COLLECT):
        return True
    return node.kind == g.MERGE and any(_pending(i) for i in node.inputs)


def test_plan_linear_fusion_and_exchange():
    p = (_src().to(_map("a")).to(_flat("b")).key_by(lambda x: str(x)).to(_map("c"))
         .to(_state("count")).to(_map("d")).to(_state_multi("again")).to_sink(_sink()))
    plan = PhysicalPlan(wallaroo.build_application("lin", p).graph)
    # the stateless "c" after key_by runs on the key's owner; the state stages after it are on
    # their owner already, so only the first edge after key_by routes
    assert _names(plan) == [["a", "b", "<lambda>"], ["c"], ["count", "d"], ["again"]]
    src = plan.graph.sources[0]
    assert [(e.target, e.exchange) for e in plan.source_edges[src]] == [(plan.chains[0], False)]
    assert [(e.target, e.exchange) for e in plan.chains[0].edges] == [(plan.chains[1], True)]
    assert [(e.target, e.exchange) for e in plan.chains[1].edges] == [(plan.chains[2], False)]
    assert [(e.target, e.exchange) for e in plan.chains[2].edges] == [(plan.chains[3], False)]
    assert [(e.target.kind, e.exchange) for e in plan.chains[3].edges] == [(g.SINK, False)]
    _check_invariants(plan)
    assert "exchange [c]" in plan.describe() and "-> [count -> d]" in plan.describe()


def test_plan_state_right_after_source_is_an_exchange():
    p = _src().to(_state("st")).to_sink(_sink())
    plan = PhysicalPlan(wallaroo.build_application("s", p).graph)
    (edge,) = plan.source_edges[plan.graph.sources[0]]
    assert edge.exchange and edge.target is plan.chains[0]
    _check_invariants(plan)


stage_kinds = st.lists(st.sampled_from(["map", "flat", "state", "state_multi", "key_by", "collect"]),
                       min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(kinds=stage_kinds)
def test_plan_linear_pipelines_property(kinds):
    p = _src()
    for i, kind in enumerate(kinds):
        name = f"{kind}{i}"
        if kind == "map":
            p = p.to(_map(name))
        elif kind == "flat":
            p = p.to(_flat(name))
        elif kind == "state":
            p = p.to(_state(name))
        elif kind == "state_multi":
            p = p.to(_state_multi(name))
        elif kind == "key_by":
            p = p.key_by(wallaroo.key_extractor(name=name)(lambda x: "k"))
        else:
            p = p.collect()
    plan = PhysicalPlan(wallaroo.build_application("prop", p.to_sink(_sink())).graph)
    # reference: a new chain starts at the first stage, before every state stage and after
    # every key_by or collect
    expected = []
    after_key = False
    for i, kind in enumerate(kinds):
        name = "collect" if kind == "collect" else f"{kind}{i}"
        if not expected or kind.startswith("state") or (after_key and kind not in ("key_by", "collect")):
            expected.append([])
        expected[-1].append(name)
        after_key = kind in ("key_by", "collect")
    assert _names(plan) == expected
    _check_invariants(plan)


def test_plan_fan_out_breaks_chains():
    base = _src().to(_map("a")).to(_map("b"))
    left = base.to(_map("l1")).to(_map("l2")).to_sink(_sink())
    right = base.to(_state("r1")).to(_map("r2")).to_sink(_sink())
    plan = PhysicalPlan(wallaroo.build_application("fan", left.merge(right)).graph)
    assert _names(plan) == [["a", "b"], ["l1", "l2"], ["r1", "r2"]]
    targets = [(e.target.name, e.exchange) for e in plan.chains[0].edges]
    assert sorted(targets) == [("l1 -> l2", False), ("r1 -> r2", True)]
    _check_invariants(plan)


def test_plan_fan_out_to_several_sinks_keeps_the_chain():
    p = _src().to(_map("a")).to(_map("b")).to_sinks([_sink(), _sink()])
    plan = PhysicalPlan(wallaroo.build_application("two", p).graph)
    assert _names(plan) == [["a", "b"]]
    assert [e.target for e in plan.chains[0].edges] == plan.sinks
    _check_invariants(plan)


def test_plan_merge_breaks_chains():
    a = _src("a").to(_map("ma"))
    b = _src("b").to(_map("mb")).to(_map("mb2"))
    p = a.merge(b).to(_map("after")).to(_map("after2")).key_by(lambda x: "k").to(_state("st")).to_sink(_sink())
    plan = PhysicalPlan(wallaroo.build_application("merge", p).graph)
    names = _names(plan)
    assert ["after", "after2", "<lambda>"] in names
    assert ["ma"] in names and ["mb", "mb2"] in names and ["st"] in names
    after = next(c for c in plan.chains if c.nodes[0].name == "after")
    for first in ("ma", "mb"):
        chain = next(c for c in plan.chains if c.nodes[0].name == first)
        assert [(e.target, e.exchange) for e in chain.edges] == [(after, False)]
    _check_invariants(plan)


def test_plan_merge_straight_into_state_is_an_exchange():
    p = _src("a").merge(_src("b")).to(_state("st")).to_sink(_sink())
    plan = PhysicalPlan(wallaroo.build_application("m", p).graph)
    for src in plan.graph.sources:
        assert [(e.target.nodes[0].name, e.exchange) for e in plan.source_edges[src]] == [("st", True)]
    _check_invariants(plan)


def test_plan_sinks_in_creation_order():
    s1, s2, s3 = _sink(), _sink(), _sink()
    # the pipeline built last holds the sinks created first
    late = _src("b").to(_map("y"))
    early_closed = _src("a").to(_map("x")).to_sinks([s1, s2])
    late_closed = late.to_sink(s3)
    plan = PhysicalPlan(wallaroo.build_application("order", late_closed.merge(early_closed)).graph)
    assert [n.spec for n in plan.sinks] == [s1, s2, s3]
    seqs = [n.seq for n in plan.sinks]
    assert seqs == sorted(seqs)
    _check_invariants(plan)


def test_plan_chain_spec_name():
    assert ChainSpec().name == ""
    p = _src().to(_map("a")).to(_map("b")).to_sink(_sink())
    plan = PhysicalPlan(wallaroo.build_application("n", p).graph)
    assert plan.chains[0].name == "a -> b"


# ------------------------------------------------------------------------------------------
# frame_all: many frames built into one buffer


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=50),
       st.sampled_from([(1, "B"), (2, ">H"), (2, "<H"), (4, ">I"), (4, "!I"), (4, "<I"),
                        (8, ">Q"), (8, "<Q")]))
def test_frame_all_equals_struct_framing_and_reads_back(payloads, header):
    size, fmt = header
    payloads = [p[:255] for p in payloads] if size == 1 else payloads
    expected = b"".join(struct.pack(fmt, len(p)) + p for p in payloads)
    framed = frame_all(payloads, size, fmt)
    assert framed == expected
    assert FrameReader(size, fmt).feed(framed) == payloads


def test_frame_all_refuses_what_it_cannot_frame():
    with pytest.raises(TypeError, match="frames bytes, not str"):
        frame_all(["text"])
    with pytest.raises(ValueError, match="does not fit a 1-byte header"):
        frame_all([b"x" * 256], 1, "B")
    with pytest.raises(ValueError, match="not one"):
        frame_all([b"x"], 4, ">i")


# ------------------------------------------------------------------------------------------
# the linked chain: failures that are the stage's, and chains built wrongly


def test_an_encoder_returning_text_that_is_not_unicode_is_the_encoders_error():
    errors = ErrorPolicy("skip")
    out = EncodeOp("enc", lambda v: "\ud800" if v == 2 else str(v), errors).process(
        Batch([1, 2, 3]))
    assert out.values == [b"1", b"3"] and errors.counts == {("enc", "error"): 1}


def test_a_key_that_is_not_valid_unicode_is_bad_input():
    errors = ErrorPolicy("fail")  # bad input never stops the run
    out = KeyByOp("key", lambda v: "\udcff" if v == 2 else str(v), errors, 16).process(
        Batch([1, 2, 3]))
    assert out.keys == ["1", "3"] and errors.counts == {("key", "key_extractor"): 1}


def test_an_op_runs_in_one_chain_only_and_a_batch_op_comes_first():
    from support.aggregations import Total
    from wallaroo._core.windows import CountWindowOp

    shared = MapOp("inc", lambda x: x + 1, None)
    assert shared.process(Batch([1])).values == [2]
    with pytest.raises(ValueError, match="'inc' is already part of a chain"):
        Chain([shared])
    window = CountWindowOp("w", Total(), False, None, [0], 10**9, 2, 10**9)
    with pytest.raises(ValueError, match="'w' must come first"):
        Chain([MapOp("id", lambda x: x, None), window])


def test_a_stop_batch_raised_by_user_code_is_the_stages_failure():
    from wallaroo._core.chain import StopBatch

    def stops(value):
        raise StopBatch()

    errors = ErrorPolicy("skip")
    assert MapOp("m", stops, errors).process(Batch([1, 2])).values == []
    assert errors.counts == {("m", "error"): 2}
