"""Applications for the resilience tests (tests/e2e/test_resilience_e2e.py and
tests/e2e/test_resilience_cluster_e2e.py), run with ``--run-with-resilience``.

Each is named with ``--app wr_resilience_app:NAME``; options are app args, not engine flags:

- ``word_count``: ``--input`` text file (FileSourceConfig: each worker reads the lines starting
  in its byte range; replayable) -> ``split`` (computation_multi, words on whitespace)
  -> key_by(word) -> ``count`` (state computation: a counter per word)
  -> ``--output`` file sink (two-phase with resilience; ``PATH.part-INDEX`` per worker with
  several workers): ``"WORD N\\n"``, so a word's lines are ``WORD 1`` .. ``WORD total``.
- ``sequences``: a generator source (GenSourceConfig: read by the first worker only;
  replayable) of the integers 0 .. ``--total``-1 -> ``tag`` (i -> key ``k{i % KEYS}``, seq
  ``i // KEYS + 1``; ``--keys``) -> key_by(key) -> ``last seq`` (state computation keeping the
  last seq of its key, emitting what it was given as it is: it neither drops nor fixes
  anything, so gaps, repeats or reorderings made by the engine reach the output)
  -> ``--output`` file sink: ``"KEY SEQ\\n"``.
- ``tcp_word_count``: the word count from the TCP source "lines" (u32-BE frames of UTF-8,
  address from ``--in lines@HOST:PORT``), which cannot replay; ``--output`` file sink.

``--slow N`` (both): sleep 1 ms every N messages in the first computation, so that a run
lasts long enough to be killed several times (0, the default: no sleep).
"""
import time

import wallaroo


def _opt(args, name, default=None):
    if name in args:
        return args[args.index(name) + 1]
    if default is None:
        raise ValueError(f"wr_resilience_app needs {name}")
    return default


class _Slowdown:
    """Sleep 1 ms every ``every`` calls (never when ``every`` is 0)."""

    every = 0
    calls = 0

    @classmethod
    def tick(cls):
        if cls.every:
            cls.calls += 1
            if cls.calls % cls.every == 0:
                time.sleep(0.001)


def _set_slow(args):
    _Slowdown.every = int(_opt(args, "--slow", "0"))
    _Slowdown.calls = 0


@wallaroo.encoder
def line_out(value):
    return f"{value}\n"


# -- word count -------------------------------------------------------------------------------

@wallaroo.computation_multi(name="split")
def split(line):
    _Slowdown.tick()
    if _FAIL_ON[0] is not None and _FAIL_ON[0] in line:
        raise ValueError(f"{_FAIL_ON[0]!r} in the input")
    return line.split()


#: ``--fail-on WORD``: split raises on a line holding WORD (a user error, not a crash).
_FAIL_ON = [None]


@wallaroo.key_extractor
def word_key(word):
    return word


class WordTotal:
    def __init__(self):
        self.n = 0


@wallaroo.state_computation(name="count", state=WordTotal)
def count(word, total):
    total.n += 1
    return (word, total.n)


@wallaroo.encoder
def count_out(pair):
    word, n = pair
    return f"{word} {n}\n"


def _word_count(name, source_name, source_config, args):
    pipeline = (wallaroo.source(source_name, source_config)
                .to(split)
                .key_by(word_key)
                .to(count)
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), count_out)))
    return wallaroo.build_application(name, pipeline)


def word_count(args):
    _set_slow(args)
    _FAIL_ON[0] = _opt(args, "--fail-on", "") or None
    source = wallaroo.FileSourceConfig("lines", _opt(args, "--input"))
    return _word_count("Resilient Word Count", "lines", source, args)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def utf8_frame(payload):
    return payload.decode("utf-8")


def tcp_word_count(args):
    _set_slow(args)
    host, port = "127.0.0.1", 0
    for name, h, p in wallaroo.tcp_parse_input_addrs(args):
        if name == "lines":
            host, port = h, p
    source = wallaroo.TCPSourceConfig("lines", host, port, utf8_frame)
    return _word_count("Resilient TCP Word Count", "lines", source, args)


# -- sequences --------------------------------------------------------------------------------

class Upto:
    """0, 1, ..., total - 1."""

    def __init__(self, total):
        self.total = total

    def initial_value(self):
        return 0 if self.total > 0 else None

    def apply(self, previous):
        following = previous + 1
        return following if following < self.total else None


_KEYS = [1]   # --keys, set by sequences()


@wallaroo.computation(name="tag")
def tag(i):
    _Slowdown.tick()
    keys = _KEYS[0]
    return (f"k{i % keys}", i // keys + 1)


@wallaroo.key_extractor
def seq_key(pair):
    return pair[0]


class LastSeq:
    def __init__(self):
        self.seq = 0


@wallaroo.state_computation(name="last seq", state=LastSeq)
def last_seq(pair, last):
    """Keep the last seq of the key; emit the pair as it came (no check, no fix)."""
    last.seq = pair[1]
    return pair


@wallaroo.encoder
def seq_out(pair):
    return f"{pair[0]} {pair[1]}\n"


def sequences(args):
    _set_slow(args)
    total = int(_opt(args, "--total"))
    _KEYS[0] = int(_opt(args, "--keys"))
    pipeline = (wallaroo.source("numbers", wallaroo.GenSourceConfig("numbers", Upto(total)))
                .to(tag)
                .key_by(seq_key)
                .to(last_seq)
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), seq_out)))
    return wallaroo.build_application("Resilient Sequences", pipeline)
