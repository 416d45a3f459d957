"""The Python API (../shared/API.md), in-process: decorators, builder, return semantics,
``wallaroo.testing.run``, helpers, and the parts that are declared but not supported yet.

Runs go through ``wallaroo.testing.run`` (the real worker, plan and Cython chains, with
in-memory sinks that keep values before encoding).
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import os
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import wallaroo
import wallaroo.testing
from wallaroo.errors import NotSupportedYet, StageFailed, WallarooParameterError

APPS = Path(__file__).resolve().parent / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))

import wr_api_stages as stages  # noqa: E402  (module-level stages: they pickle by reference)

RNG = random.Random(20170601)


def enc_line(x):
    return f"{x}\n"


ENC = wallaroo.encoder(enc_line)


def mem_sink():
    """A sink config for testing.run (testing replaces every sink by an in-memory one)."""
    return wallaroo.StdoutSinkConfig(ENC)


def tcp_source(name):
    return wallaroo.TCPSourceConfig(name, "127.0.0.1", 0, wallaroo.decoder(bytes.decode))


def iter_source(name, values):
    return wallaroo.source(name, wallaroo.IterSourceConfig(name, list(values)))


def run(pipeline, inputs=None, **kwargs):
    app = wallaroo.build_application("test app", pipeline)
    return wallaroo.testing.run(app, inputs or {}, timeout=10, **kwargs)


def counting_stage(name, output=lambda x, n: n):
    """A state computation that counts the inputs its state has seen and returns
    ``output(input, count)``, and the list of the state objects made so far (one per key)."""
    made = []

    class Count:
        def __init__(self):
            made.append(self)
            self.n = 0

    @wallaroo.state_computation(name=name, state=Count)
    def count(x, state):
        state.n += 1
        return output(x, state.n)

    return count, made


# ---------------------------------------------------------------------------------------------
# Decorators and the methods they generate
# ---------------------------------------------------------------------------------------------

class TestDecorators:
    def test_computation_with_name(self):
        @wallaroo.computation(name="add seven")
        def add_seven(x):
            return x + 7

        x = RNG.randint(-1000, 1000)
        assert add_seven.name() == "add seven"
        assert add_seven.compute(x) == x + 7
        assert isinstance(add_seven, wallaroo.Computation)

    def test_bare_computation_takes_the_function_name(self):
        @wallaroo.computation
        def negate(x):
            return -x

        assert negate.name() == "negate"
        assert negate.compute(5) == -5

    def test_computation_with_positional_name(self):
        @wallaroo.computation("positional name")
        def halve(x):
            return x // 2

        assert halve.name() == "positional name"
        assert halve.compute(10) == 5

    def test_decorated_object_called_without_args_is_itself(self):
        # the original API let apps write .to(f()) as well as .to(f)
        assert stages.triple() is stages.triple
        assert stages.triple(4) == 12

    def test_computation_multi(self):
        @wallaroo.computation_multi(name="words")
        def words(text):
            return text.split()

        text = "the quick  brown fox"
        assert words.name() == "words"
        assert words.compute_multi(text) == text.split()
        assert isinstance(words, wallaroo.ComputationMulti)

    def test_state_computation_and_fresh_initial_state(self):
        class Box:
            def __init__(self):
                self.items = []

        @wallaroo.state_computation(name="keep", state=Box)
        def keep(data, box):
            box.items.append(data)
            return len(box.items)

        first, second = keep.initial_state(), keep.initial_state()
        assert isinstance(first, Box) and isinstance(second, Box)
        assert first is not second
        assert keep.name() == "keep"
        assert [keep.compute(v, first) for v in "abc"] == [1, 2, 3]
        assert first.items == ["a", "b", "c"]
        assert second.items == []  # the states are independent

    def test_state_computation_multi(self):
        @wallaroo.state_computation_multi(name="pairs", state=list)
        def pairs(data, seen):
            seen.append(data)
            return [data, len(seen)]

        state = pairs.initial_state()
        assert state == [] and state is not pairs.initial_state()
        assert pairs.compute_multi("x", state) == ["x", 1]
        assert pairs.compute_multi("y", state) == ["y", 2]
        assert pairs.name() == "pairs"

    def test_key_extractor(self):
        @wallaroo.key_extractor
        def first_char(word):
            return word[0]

        assert first_char.extract_key("wallaroo") == "w"
        assert first_char.name() == "first_char"

    @pytest.mark.parametrize("header_length,fmt", [(4, ">I"), (2, ">H"), (8, ">Q"), (4, "<I")])
    def test_decoder_header_and_payload_length(self, header_length, fmt):
        @wallaroo.decoder(header_length=header_length, length_fmt=fmt)
        def text(payload):
            return payload.decode("utf-8")

        n = RNG.randint(0, 2 ** (8 * header_length - 1))
        assert text.header_length() == header_length
        assert text.payload_length(struct.pack(fmt, n)) == n
        assert text.decode("héllo".encode()) == "héllo"

    def test_decoder_header_length_must_match_format(self):
        with pytest.raises(WallarooParameterError, match="header_length"):
            @wallaroo.decoder(header_length=4, length_fmt=">H")
            def text(payload):
                return payload

    def test_encoder(self):
        @wallaroo.encoder
        def csv(row):
            return ",".join(map(str, row)) + "\n"

        assert csv.encode((1, "a", 2.5)) == "1,a,2.5\n"
        assert csv.name() == "csv"


class TestArity:
    @pytest.mark.parametrize("decorate", [
        wallaroo.computation, wallaroo.computation(name="c"), wallaroo.computation_multi,
        wallaroo.key_extractor, wallaroo.encoder, wallaroo.decoder(header_length=4, length_fmt=">I"),
    ])
    def test_one_argument_stages_reject_two_arguments(self, decorate):
        def takes_two_args(a, b):
            return a

        with pytest.raises(WallarooParameterError, match="takes_two_args"):
            decorate(takes_two_args)

    def test_computation_rejects_zero_arguments(self):
        def no_args():
            return 1

        with pytest.raises(WallarooParameterError, match="no_args"):
            wallaroo.computation(name="x")(no_args)

    @pytest.mark.parametrize("decorator", [wallaroo.state_computation,
                                           wallaroo.state_computation_multi])
    def test_state_stages_reject_one_argument(self, decorator):
        def only_data(data):
            return data

        with pytest.raises(WallarooParameterError, match="only_data"):
            decorator(name="s", state=list)(only_data)

    @pytest.mark.parametrize("decorator", [wallaroo.state_computation,
                                           wallaroo.state_computation_multi])
    def test_state_stages_need_state_class(self, decorator):
        def counts(data, state):
            return data

        with pytest.raises(WallarooParameterError, match="counts") as err:
            decorator(name="s")(counts)
        assert "state" in str(err.value)

    def test_state_class_must_take_no_arguments(self):
        class NeedsArg:
            def __init__(self, size):
                self.size = size

        def sized(data, state):
            return data

        with pytest.raises(WallarooParameterError, match="sized"):
            wallaroo.state_computation(name="s", state=NeedsArg)(sized)

    def test_defaults_and_varargs_are_accepted(self):
        def flexible(data, extra=1):
            return data + extra

        def anything(*args):
            return len(args)

        assert wallaroo.computation(name="f")(flexible).compute(1) == 2
        assert wallaroo.state_computation(name="a", state=dict)(anything).compute(1, {}) == 2


class TestPickle:
    @pytest.mark.parametrize("obj,call", [
        (stages.triple, lambda o: o.compute(14)),
        (stages.explode, lambda o: o.compute_multi("abc")),
        (stages.running_total, lambda o: o.compute(5, o.initial_state())),
        (stages.total_twice, lambda o: o.compute_multi(5, o.initial_state())),
        (stages.parity, lambda o: o.extract_key(7)),
        (stages.latin1, lambda o: (o.header_length(), o.payload_length(b"\x01\x02"),
                                   o.decode(b"caf\xe9"))),
        (stages.as_line, lambda o: o.encode(3)),
    ])
    def test_module_level_objects_round_trip(self, obj, call):
        clone = pickle.loads(pickle.dumps(obj, protocol=5))
        assert type(clone) is type(obj)
        assert clone.name() == obj.name()
        assert call(clone) == call(obj)

    def test_wrapped_function_pickles_by_value(self):
        # bound to no module attribute: the object is rebuilt from its function and name
        square = wallaroo.computation(name="square it")(stages.plain_square)
        clone = pickle.loads(pickle.dumps(square))
        assert clone is not square
        assert clone.name() == "square it"
        assert clone.compute(9) == 81

    def test_state_computation_pickled_by_value_keeps_its_state_class(self):
        total = wallaroo.state_computation(name="again", state=stages.Tally)(
            stages.plain_add_to_tally)
        clone = pickle.loads(pickle.dumps(total))
        state = clone.initial_state()
        assert isinstance(state, stages.Tally)
        assert [clone.compute(v, state) for v in (1, 2, 3)] == [1, 3, 6]

    def test_unpickled_in_another_process_computes_the_same(self, tmp_path):
        objs = [stages.triple, stages.explode, stages.running_total, stages.as_line]
        blob = tmp_path / "stages.pickle"
        blob.write_bytes(pickle.dumps(objs))
        code = (
            "import pickle, sys\n"
            "t, e, r, a = pickle.loads(open(sys.argv[1], 'rb').read())\n"
            "print(repr((t.compute(14), e.compute_multi('xy'), r.compute(4, r.initial_state()),"
            " a.encode('z'), t.name())))\n"
        )
        env = dict(os.environ, PYTHONPATH=str(APPS))
        out = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=20)
        assert out.returncode == 0, out.stderr
        expected = (stages.triple.compute(14), stages.explode.compute_multi("xy"),
                    stages.running_total.compute(4, stages.Tally()), stages.as_line.encode("z"),
                    "triple")
        assert out.stdout.strip() == repr(expected)


# ---------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------

class TestBuilder:
    def test_pipelines_are_immutable_and_reusable(self):
        values = [RNG.randint(0, 100) for _ in range(20)]
        base = iter_source("n", values)
        tripled = base.to(stages.triple)
        squared = base.to(wallaroo.computation(name="sq")(stages.plain_square))
        # base itself is unchanged by the two .to calls: closing it gives the identity
        assert run(base.to_sink(mem_sink())) == [values]
        assert run(tripled.to_sink(mem_sink())) == [[v * 3 for v in values]]
        assert run(squared.to_sink(mem_sink())) == [[v * v for v in values]]
        # and a closed pipeline does not change the open one it came from
        assert not tripled.is_closed() and tripled.to_sink(mem_sink()).is_closed()

    @pytest.mark.parametrize("extend", [
        lambda p: p.to(stages.triple),
        lambda p: p.key_by(stages.parity),
        lambda p: p.collect(),
        lambda p: p.to_sink(mem_sink()),
        lambda p: p.to_sinks([mem_sink()]),
    ])
    def test_nothing_after_to_sink(self, extend):
        closed = iter_source("n", [1]).to_sink(mem_sink())
        with pytest.raises(WallarooParameterError, match=r"You can't add stages after to_sink/s"):
            extend(closed)

    def test_build_application_on_unclosed_pipeline(self):
        with pytest.raises(WallarooParameterError, match="to_sink"):
            wallaroo.build_application("open", iter_source("n", [1]).to(stages.triple))

    def test_to_plain_function_hints_to_decorate(self):
        def shout(text):
            return text.upper()

        with pytest.raises(WallarooParameterError) as err:
            iter_source("n", ["a"]).to(shout)
        message = str(err.value)
        assert "shout" in message and "decorate" in message and "@wallaroo.computation" in message

    @pytest.mark.parametrize("config", [None, "127.0.0.1:7010", 42, ENC])
    def test_source_needs_a_source_config(self, config):
        with pytest.raises(WallarooParameterError, match="source config"):
            wallaroo.source("s", config)

    def test_to_sink_needs_a_sink_config(self):
        with pytest.raises(WallarooParameterError, match="sink config"):
            iter_source("n", [1]).to_sink(ENC)

    def test_two_sources_with_the_same_name_raise_at_build(self):
        a = wallaroo.source("same", wallaroo.IterSourceConfig("same", [1]))
        b = wallaroo.source("same", wallaroo.IterSourceConfig("same", [2]))
        merged = a.merge(b).to_sink(mem_sink())  # building the pipeline is fine ...
        with pytest.raises(WallarooParameterError, match="same"):
            wallaroo.build_application("dup", merged)  # ... the application is not

    def test_one_source_used_twice_is_not_a_duplicate(self):
        src = iter_source("once", [1, 2])
        p = src.to(stages.triple).to_sink(mem_sink()).merge(src.to_sink(mem_sink()))
        assert run(p) == [[3, 6], [1, 2]]

    @pytest.mark.parametrize("open_first", [True, False])
    def test_merge_open_and_closed_raises(self, open_first):
        open_p = iter_source("a", [1])
        closed_p = iter_source("b", [2]).to_sink(mem_sink())
        with pytest.raises(WallarooParameterError, match="merge"):
            open_p.merge(closed_p) if open_first else closed_p.merge(open_p)

    def test_merge_needs_a_pipeline(self):
        with pytest.raises(WallarooParameterError):
            iter_source("a", [1]).merge([1, 2])

    def test_key_by_needs_a_function(self):
        with pytest.raises(WallarooParameterError, match="key_extractor"):
            iter_source("a", [1]).key_by("not callable")


# ---------------------------------------------------------------------------------------------
# Return semantics (through wallaroo.testing.run)
# ---------------------------------------------------------------------------------------------

class TestReturnSemantics:
    def test_computation_returning_none_drops(self):
        values = list(range(-10, 30))
        evens = wallaroo.computation(name="evens")(lambda x: x if x % 2 == 0 else None)
        assert run(iter_source("n", values).to(evens).to_sink(mem_sink())) == \
            [[v for v in values if v % 2 == 0]]

    def test_falsy_values_are_not_dropped(self):
        values = [0, "", [], False, 0.0]
        same = wallaroo.computation(name="same")(lambda x: x)
        assert run(iter_source("n", values).to(same).to_sink(mem_sink())) == [values]

    def test_state_computation_returning_none_drops(self):
        class Seen:
            def __init__(self):
                self.seen = set()

        @wallaroo.state_computation(name="first time only", state=Seen)
        def first_time(x, state):
            if x in state.seen:
                return None
            state.seen.add(x)
            return x

        values = [RNG.randint(0, 9) for _ in range(50)]
        assert run(iter_source("n", values).to(first_time).to_sink(mem_sink())) == \
            [list(dict.fromkeys(values))]

    def test_multi_lists_none_items_and_none_return(self):
        @wallaroo.computation_multi(name="spread")
        def spread(n):
            if n == 0:
                return None
            return [n if i % 2 == 0 else None for i in range(n)]

        values = [3, 0, 2, 4, 1]
        expected = [n for n in values for i in range(n) if i % 2 == 0]
        assert run(iter_source("n", values).to(spread).to_sink(mem_sink())) == [expected]

    def test_multi_tuple_is_accepted(self):
        twice = wallaroo.computation_multi(name="twice")(lambda x: (x, x))
        assert run(iter_source("n", [1, 2]).to(twice).to_sink(mem_sink())) == [[1, 1, 2, 2]]

    def test_state_computation_multi(self):
        values = [RNG.randint(1, 9) for _ in range(10)]
        expected, total = [], 0
        for v in values:
            total += v
            expected += [total, -total]
        assert run(iter_source("n", values).to(stages.total_twice).to_sink(mem_sink())) == [expected]

    def test_state_computation_multi_none_return_and_items(self):
        @wallaroo.state_computation_multi(name="every third", state=list)
        def every_third(x, seen):
            seen.append(x)
            if len(seen) % 3:
                return None
            return [None, list(seen[-3:]), None]

        values = list(range(10))
        assert run(iter_source("n", values).to(every_third).to_sink(mem_sink())) == \
            [[values[i - 3:i] for i in range(3, 10, 3)]]

    def test_to_sinks_fans_out(self):
        values = [RNG.random() for _ in range(30)]
        out = run(iter_source("n", values).to_sinks([mem_sink(), mem_sink(), mem_sink()]))
        assert out == [values, values, values]

    def test_merge_of_two_sources(self):
        left = [f"l{i}" for i in range(40)]
        right = [f"r{i}" for i in range(25)]
        p = iter_source("left", left).merge(iter_source("right", right)).to_sink(mem_sink())
        (out,) = run(p)
        assert sorted(out) == sorted(left + right)
        # each source's own order is kept
        assert [v for v in out if v.startswith("l")] == left
        assert [v for v in out if v.startswith("r")] == right

    @pytest.mark.parametrize("make_key", [str, lambda w: w.encode(), lambda w: len(w)],
                             ids=["str", "bytes", "int"])
    def test_key_types(self, make_key):
        words = [RNG.choice(["a", "bb", "ccc", "dddd"]) for _ in range(60)]

        @wallaroo.state_computation(name="count", state=collections.Counter)
        def count(word, counter):
            counter["n"] += 1
            return (word, counter["n"])

        p = (iter_source("w", words).key_by(wallaroo.key_extractor(make_key)).to(count)
             .to_sink(mem_sink()))
        (out,) = run(p)
        running = collections.Counter()
        expected = []
        for w in words:
            running[make_key(w)] += 1
            expected.append((w, running[make_key(w)]))
        assert sorted(out) == sorted(expected)

    def test_state_is_made_lazily_once_per_key(self):
        per_key, made = counting_stage("per key", lambda x, n: (x % 7, n))

        keep_small = wallaroo.computation(name="small")(lambda x: x if x % 7 < 5 else None)
        values = [RNG.randint(0, 1000) for _ in range(300)]
        p = (iter_source("n", values).to(keep_small).key_by(lambda x: str(x % 7)).to(per_key)
             .to_sink(mem_sink()))
        app = wallaroo.build_application("lazy", p)
        assert made == []  # nothing is made while building
        (out,) = wallaroo.testing.run(app, {}, timeout=10)
        keys = {v % 7 for v in values if v % 7 < 5}  # keys 5 and 6 never reach the state
        assert len(made) == len(keys)
        final = {}
        for key, n in out:
            final[key] = max(final.get(key, 0), n)
        assert final == dict(collections.Counter(v % 7 for v in values if v % 7 < 5))

    def test_without_key_by_one_state_per_source(self):
        count, made = counting_stage("count", lambda x, n: (x[0], n))

        left = [f"a{i}" for i in range(17)]
        right = [f"b{i}" for i in range(9)]
        p = iter_source("left", left).merge(iter_source("right", right)).to(count).to_sink(mem_sink())
        (out,) = run(p)
        assert len(made) == 2
        assert [n for src, n in out if src == "a"] == list(range(1, len(left) + 1))
        assert [n for src, n in out if src == "b"] == list(range(1, len(right) + 1))

    def test_collect_gives_one_state(self):
        count_all, made = counting_stage("count all")

        left, right = list(range(30)), list(range(100, 111))
        p = (iter_source("left", left).merge(iter_source("right", right))
             .key_by(lambda x: str(x)).collect().to(count_all).to_sink(mem_sink()))
        (out,) = run(p)
        assert len(made) == 1
        assert out == list(range(1, len(left) + len(right) + 1))

    def test_keys_stay_with_their_values_through_drops_and_expansions(self):
        count, made = counting_stage("count", lambda x, n: (x, n))

        drop = wallaroo.computation(name="drop")(lambda x: x if x % 3 else None)
        expand = wallaroo.computation_multi(name="expand")(lambda x: [x] * (x % 4))
        values = [RNG.randint(0, 10_000) for _ in range(300)]
        p = (iter_source("n", values).key_by(lambda x: str(x % 7)).to(drop).to(expand).to(count)
             .to_sink(mem_sink()))
        (out,) = run(p)
        running = collections.Counter()
        expected = []
        for x in values:
            if x % 3:
                for _ in range(x % 4):
                    running[x % 7] += 1
                    expected.append((x, running[x % 7]))
        assert sorted(out) == sorted(expected)
        assert len(made) == len(running)

    @pytest.mark.parametrize("route", ["key_by", "collect"])
    def test_merged_sources_share_state_when_keyed(self, route):
        count, made = counting_stage("count")

        merged = iter_source("a", ["k"] * 3).merge(iter_source("b", ["k"] * 4))
        merged = merged.key_by(lambda x: x) if route == "key_by" else merged.collect()
        (out,) = run(merged.to(count).to_sink(mem_sink()))
        assert sorted(out) == list(range(1, 8))
        assert len(made) == 1

    def test_per_key_order_is_kept(self):
        items = [(RNG.choice("abcdefgh"), i) for i in range(500)]

        @wallaroo.computation_multi(name="dup")
        def dup(item):
            return [item, (item[0], item[1] + 0.5)]

        @wallaroo.state_computation(name="seq", state=list)
        def seq(item, seen):
            seen.append(item[1])
            return item

        p = (iter_source("i", items).to(dup).key_by(lambda it: it[0]).to(seq)
             .to_sink(mem_sink()))
        (out,) = run(p)
        assert len(out) == 2 * len(items)
        for key in "abcdefgh":
            got = [n for k, n in out if k == key]
            want = [n for k, i in items if k == key for n in (i, i + 0.5)]
            assert got == want

    def test_fan_out_from_a_reused_partial_pipeline(self):
        calls = []

        @wallaroo.computation(name="shared")
        def shared(x):
            calls.append(x)
            return x + 1

        values = list(range(25))
        base = iter_source("n", values).to(shared)
        p1 = base.to(stages.triple).to_sink(mem_sink())
        p2 = base.to(wallaroo.computation(name="neg")(lambda x: -x)).to_sink(mem_sink())
        out = run(p1.merge(p2))
        assert out == [[(v + 1) * 3 for v in values], [-(v + 1) for v in values]]
        assert calls == values  # the shared stage is one node: it ran once per input

    def test_sink_order_is_the_order_sinks_were_added(self):
        values = list(range(5))
        src = iter_source("n", values)
        # built first: sink "first"; built second (but merged in front): sink "second"
        first = src.to(stages.triple).to_sink(mem_sink())
        second = src.to_sinks([mem_sink(), mem_sink()])
        third = src.to(wallaroo.computation(name="neg")(lambda x: -x)).to_sink(mem_sink())
        out = run(third.merge(second.merge(first)))
        assert out == [[v * 3 for v in values], values, values, [-v for v in values]]

    def test_sinks_get_values_before_encoding(self):
        bad_encoder = wallaroo.encoder(lambda x: 12345)  # would be an error if it were called
        out = run(iter_source("n", [{"a": 1}, (2, 3)]).to_sink(wallaroo.StdoutSinkConfig(bad_encoder)))
        assert out == [[{"a": 1}, (2, 3)]]

    def test_bounded_sources_not_in_inputs_run_as_configured(self):
        gen = wallaroo.GenSourceConfig("gen", stages.Countdown(6))
        p = wallaroo.source("gen", gen).merge(wallaroo.source("t", tcp_source("t"))).to_sink(mem_sink())
        (out,) = run(p, {"t": ["x"]})
        assert sorted(map(str, out)) == sorted(map(str, [6, 5, 4, 3, 2, 1, "x"]))

    def test_tcp_inputs_are_decoded_values(self):
        # inputs replace the source: the values are given as they are, not as frames
        p = wallaroo.source("t", tcp_source("t")).to(stages.triple).to_sink(mem_sink())
        assert run(p, {"t": ["ab", "c"]}) == [["ababab", "ccc"]]

    def test_file_source_with_decoder_decodes_frames(self, tmp_path):
        # Regression test for a fixed bug (the old behaviour): FileSourceConfig(name, path, decoder) cuts the frames but never calls
        # decoder.decode (worker.DECODED_SOURCES is only ("tcp",)), so the app gets the raw
        # payload bytes b'ab' instead of the decoded 'AB'.
        @wallaroo.decoder(header_length=4, length_fmt=">I")
        def shout(payload):
            return payload.decode("utf-8").upper()

        words = ["ab", "cde", "f"]
        path = tmp_path / "frames.bin"
        path.write_bytes(b"".join(struct.pack(">I", len(w)) + w.encode() for w in words))
        p = wallaroo.source("f", wallaroo.FileSourceConfig("f", path, shout)).to_sink(mem_sink())
        assert run(p) == [[w.upper() for w in words]]

    def test_file_source_without_decoder_gives_lines(self, tmp_path):
        lines = ["one", "twø", "", "three"]
        path = tmp_path / "lines.txt"
        path.write_bytes(("\n".join(lines) + "\n").encode())
        p = wallaroo.source("f", wallaroo.FileSourceConfig("f", path)).to_sink(mem_sink())
        assert run(p) == [lines]


# ---------------------------------------------------------------------------------------------
# wallaroo.testing.run
# ---------------------------------------------------------------------------------------------

class TestTestingRun:
    def test_unknown_input_name_lists_the_sources(self):
        p = iter_source("alpha", [1]).merge(iter_source("beta", [2])).to_sink(mem_sink())
        with pytest.raises(WallarooParameterError) as err:
            run(p, {"gamma": [1]})
        message = str(err.value)
        assert "gamma" in message and "alpha" in message and "beta" in message

    def test_tcp_source_without_inputs_asks_for_inputs(self):
        p = wallaroo.source("socket in", tcp_source("socket in")).to_sink(mem_sink())
        with pytest.raises(WallarooParameterError) as err:
            run(p, {})
        assert "socket in" in str(err.value) and "inputs" in str(err.value)

    def test_a_raising_computation_raises_stage_failed(self):
        @wallaroo.computation(name="fragile stage")
        def fragile(x):
            if x == 13:
                raise ValueError("unlucky")
            return x

        with pytest.raises(StageFailed) as err:
            run(iter_source("n", range(20)).to(fragile).to_sink(mem_sink()))
        assert err.value.stage == "fragile stage"
        assert err.value.value == 13
        assert "fragile stage" in str(err.value) and "13" in str(err.value)
        assert isinstance(err.value.__cause__, ValueError)

    def test_a_raising_state_computation_raises_stage_failed(self):
        @wallaroo.state_computation(name="fragile state", state=list)
        def fragile(x, seen):
            seen.append(x)
            if len(seen) == 3:
                raise KeyError("third")
            return x

        with pytest.raises(StageFailed, match="fragile state"):
            run(iter_source("n", "abcdef").to(fragile).to_sink(mem_sink()))

    def test_on_error_skip_goes_on(self):
        @wallaroo.computation(name="inverse")
        def inverse(x):
            return 1 / x

        values = [2, 0, 4, 0, 5]
        out = run(iter_source("n", values).to(inverse).to_sink(mem_sink()), on_error="skip")
        assert out == [[1 / v for v in values if v]]

    def test_works_inside_a_running_event_loop(self):
        values = list(range(10))

        async def notebook_cell():
            # a notebook calls it synchronously from inside its own running loop
            return run(iter_source("n", values).to(stages.triple).to_sink(mem_sink()))

        assert asyncio.run(notebook_cell()) == [[v * 3 for v in values]]

    def test_stage_failed_inside_a_running_event_loop(self):
        boom = wallaroo.computation(name="boom")(lambda x: 1 // 0)

        async def cell():
            run(iter_source("n", [1]).to(boom).to_sink(mem_sink()))

        with pytest.raises(StageFailed, match="boom"):
            asyncio.run(cell())

    def test_accepts_application_setup_and_args(self):
        def application_setup(args):
            n = int(args[args.index("--n") + 1])
            return wallaroo.build_application(
                "from setup", iter_source("n", range(n)).to(stages.triple).to_sink(mem_sink()))

        assert wallaroo.testing.run(application_setup, {}, args=["--n", "4"]) == [[0, 3, 6, 9]]

    def test_timeout(self):
        import itertools

        p = wallaroo.source("forever", wallaroo.IterSourceConfig("forever", itertools.count()))
        with pytest.raises(TimeoutError):
            wallaroo.testing.run(wallaroo.build_application("f", p.to_sink(mem_sink())), {},
                                 timeout=0.3)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

class TestHelpers:
    def test_tcp_parse_input_addrs(self):
        args = ["--foo", "1", "--in", "Split and Count@127.0.0.1:7010,other@localhost:7011",
                "-i", "third@127.0.0.1:0"]
        assert wallaroo.tcp_parse_input_addrs(args) == [
            ("Split and Count", "127.0.0.1", "7010"), ("other", "localhost", "7011"),
            ("third", "127.0.0.1", "0")]

    def test_tcp_parse_output_addrs(self):
        assert wallaroo.tcp_parse_output_addrs(["--out", "127.0.0.1:7002,127.0.0.1:7003"]) == [
            ("127.0.0.1", "7002"), ("127.0.0.1", "7003")]
        assert wallaroo.tcp_parse_output_addrs(["-o", "127.0.0.1:1"]) == [("127.0.0.1", "1")]

    @pytest.mark.parametrize("args", [
        ["--in", "no-at-sign:7010"], ["--in", "name@127.0.0.1"], ["--in", "name@127.0.0.1:port"],
        ["--in", "@127.0.0.1:1"], ["--in"], [],
    ])
    def test_bad_input_addrs(self, args):
        with pytest.raises(WallarooParameterError):
            wallaroo.tcp_parse_input_addrs(args)

    @pytest.mark.parametrize("args", [["--out", "127.0.0.1"], ["--out", ":7002"], ["-o", "h:x"], []])
    def test_bad_output_addrs(self, args):
        with pytest.raises(WallarooParameterError):
            wallaroo.tcp_parse_output_addrs(args)

    @pytest.mark.parametrize("helper,factor", [
        (wallaroo.nanoseconds, 1), (wallaroo.microseconds, 10 ** 3),
        (wallaroo.milliseconds, 10 ** 6), (wallaroo.seconds, 10 ** 9),
        (wallaroo.minutes, 60 * 10 ** 9), (wallaroo.hours, 3600 * 10 ** 9),
    ])
    def test_time_helpers_are_int_nanoseconds(self, helper, factor):
        n = RNG.randint(1, 500)
        assert helper(n) == n * factor and type(helper(n)) is int

    def test_time_helpers_take_fractions(self):
        assert wallaroo.seconds(1.5) == 1_500_000_000 and type(wallaroo.seconds(1.5)) is int
        assert wallaroo.milliseconds(0.25) == 250_000

    def test_dt_to_timestamp(self):
        dt = datetime.datetime(2017, 6, 1, 12, 30, 5, 250, tzinfo=datetime.timezone.utc)
        assert wallaroo.dt_to_timestamp(dt) == int(dt.timestamp()) * 10 ** 9 + 250_000

    @pytest.mark.parametrize("value", [
        {"a": [1, 2.5, None]}, b"\x00\xff", "tëxt", (1, (2, 3)), {1, 2}, stages.Tally,
    ])
    def test_serialize_round_trip(self, value):
        data = wallaroo.serialize(value)
        assert isinstance(data, bytes)
        assert wallaroo.deserialize(data) == value


# ---------------------------------------------------------------------------------------------
# Declared but not supported yet: Kafka
# ---------------------------------------------------------------------------------------------

def _run_worker(app):
    from wallaroo.runtime.worker import Worker

    async def go():
        return await Worker(app).run()

    return asyncio.run(go())


class TestNotSupportedYet:
    def test_kafka_parsers_exist(self):
        args = ["--kafka_source_topic", "words", "--kafka_source_brokers", "127.0.0.1:9092",
                "--kafka_sink_topic", "counts", "--kafka_sink_max_message_size", "1000"]
        src = wallaroo.CustomKafkaSourceCLIParser(args, stages.latin1)
        sink = wallaroo.CustomKafkaSinkCLIParser(args, stages.as_line)
        assert isinstance(src, wallaroo.SourceConfig) and isinstance(sink, wallaroo.SinkConfig)
        assert src.options["topic"] == "words" and src.options["brokers"] == "127.0.0.1:9092"
        assert sink.options["topic"] == "counts" and sink.options["max_message_size"] == "1000"
        assert isinstance(wallaroo.DefaultKafkaSourceCLIParser(stages.latin1), wallaroo.SourceConfig)
        assert isinstance(wallaroo.DefaultKafkaSinkCLIParser(stages.as_line), wallaroo.SinkConfig)

    def test_default_kafka_parser_reads_wallaroo_args(self, monkeypatch):
        monkeypatch.setattr(wallaroo, "_ARGS", ["wallaroo-run", "--kafka_source_topic", "t1"])
        assert wallaroo.DefaultKafkaSourceCLIParser(stages.latin1).options["topic"] == "t1"

    def test_not_supported_yet_is_a_parameter_error(self):
        assert issubclass(NotSupportedYet, WallarooParameterError)

    def test_unsupported_source_fails_at_start(self):
        source = wallaroo.DefaultKafkaSourceCLIParser(stages.latin1, name="feed")
        p = wallaroo.source("feed", source).to_sink(mem_sink())
        app = wallaroo.build_application("unsupported", p)
        with pytest.raises(NotSupportedYet, match="not supported"):
            _run_worker(app)

    def test_unsupported_sink_fails_at_start(self):
        p = iter_source("n", [1]).to_sink(wallaroo.DefaultKafkaSinkCLIParser(stages.as_line))
        with pytest.raises(NotSupportedYet, match="not supported"):
            _run_worker(wallaroo.build_application("unsupported", p))

    def test_testing_run_with_unsupported_source_says_not_supported(self):
        # Regression test for a fixed bug (the old behaviour): testing.run checks "is every source bounded or given inputs" before it
        # builds the worker, so a Kafka source without inputs gets "never ends by itself; give
        # its values in inputs" (a plain WallarooParameterError) instead of NotSupportedYet.
        p = wallaroo.source("feed", wallaroo.DefaultKafkaSourceCLIParser(stages.latin1, name="feed"))
        with pytest.raises(NotSupportedYet, match="not supported"):
            run(p.to_sink(mem_sink()), {})

    def test_sliding_windows_over_ingest_time_cover_each_value_range_over_slide_times(self):
        from support.aggregations import Total

        window = (wallaroo.range_windows(wallaroo.seconds(9)).with_slide(wallaroo.seconds(3))
                  .with_delay(wallaroo.seconds(1)).with_late_data_policy("drop").over(Total))
        p = iter_source("n", [1, 2]).key_by(lambda x: "k").to(window).to_sink(mem_sink())
        [out] = wallaroo.testing.run(wallaroo.build_application("windowed", p), {}, timeout=10)
        # the end of input fires all three windows of each value
        assert sum(total for _, total in out) == 3 * (1 + 2)

    def test_count_windows_need_a_whole_aggregation(self):
        class Count(wallaroo.Aggregation):
            pass

        with pytest.raises(WallarooParameterError, match="Count has no initial_accumulator"):
            wallaroo.count_windows(2).over(Count)
