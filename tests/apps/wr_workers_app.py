"""Applications for tests/e2e/test_workers_e2e.py (``wallaroo-run --workers N``).

Each is named with ``--app wr_workers_app:NAME``; options are app args, not engine flags:

- ``pids_app``: TCP source "values" (u32-BE frames of UTF-8, address from ``--in``)
  -> ``ingest pid`` (before key_by: runs on the worker that accepted the connection)
  -> key_by(the part of the value before the first "/")
  -> ``owner pid`` (stateless, right after key_by: runs on the worker owning the key)
  -> TCP sink (``--out``): ``"VALUE INGEST_PID OWNER_PID\\n"``.
- ``count_app``: TCP source "words" (u32-BE frames of UTF-8) -> key_by(word) -> a state
  computation counting each word -> TCP sink: ``"WORD COUNT\\n"``.
- ``file_lines_app``: ``--input`` text file (FileSourceConfig without decoder: each worker reads
  the lines starting in its byte range) -> the line unchanged -> ``--output`` file sink
  (``PATH.part-INDEX`` per worker with several workers): ``"LINE\\n"``.
- ``framed_file_app``: ``--input`` file of u32-BE frames (FileSourceConfig with a decoder: read
  by one worker) -> ``"PAYLOAD PID"`` -> ``--output`` file sink.
- ``file_words_app``: ``--input`` text file -> split on whitespace -> key_by(word) -> count
  -> ``--output`` file sink: ``"WORD COUNT\\n"`` (more messages out than lines in).
"""
import os
import time

import wallaroo
from wallaroo._core.hashing import key_group
from wr_windowed_app import Sum


def _opt(args, name):
    if name not in args:
        raise ValueError(f"wr_workers_app needs {name}")
    return args[args.index(name) + 1]


def _tcp_in(args, source):
    for name, host, port in wallaroo.tcp_parse_input_addrs(args):
        if name == source:
            return host, port
    raise ValueError(f"wr_workers_app needs --in {source}@HOST:PORT")


@wallaroo.decoder(header_length=4, length_fmt=">I")
def utf8_frame(payload):
    return payload.decode("utf-8")


@wallaroo.encoder
def line_out(value):
    return f"{value}\n"


# -- pids_app ---------------------------------------------------------------------------------

@wallaroo.computation(name="ingest pid")
def ingest_pid(value):
    return f"{value} {os.getpid()}"


@wallaroo.key_extractor
def key_of_tagged(tagged):
    return tagged.split(" ", 1)[0].split("/", 1)[0]


@wallaroo.computation(name="owner pid")
def owner_pid(tagged):
    return f"{tagged} {os.getpid()}"


def pids_app(args):
    host, port = _tcp_in(args, "values")
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    pipeline = (wallaroo.source("values", wallaroo.TCPSourceConfig("values", host, port, utf8_frame))
                .to(ingest_pid)
                .key_by(key_of_tagged)
                .to(owner_pid)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, line_out)))
    return wallaroo.build_application("Worker Pids", pipeline)


# -- counting words ---------------------------------------------------------------------------

class Count:
    def __init__(self):
        self.n = 0


@wallaroo.key_extractor
def word_key(word):
    return word


@wallaroo.state_computation(name="count", state=Count)
def count(word, total):
    total.n += 1
    return f"{word} {total.n}"


@wallaroo.computation_multi(name="split")
def split(line):
    return line.split()


def count_app(args):
    host, port = _tcp_in(args, "words")
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    pipeline = (wallaroo.source("words", wallaroo.TCPSourceConfig("words", host, port, utf8_frame))
                .key_by(word_key)
                .to(count)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, line_out)))
    return wallaroo.build_application("Word Counts", pipeline)


def file_words_app(args):
    pipeline = (wallaroo.source("lines", wallaroo.FileSourceConfig("lines", _opt(args, "--input")))
                .to(split)
                .key_by(word_key)
                .to(count)
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), line_out)))
    return wallaroo.build_application("File Word Counts", pipeline)


# -- file lines -------------------------------------------------------------------------------

@wallaroo.computation(name="same line")
def same_line(line):
    return line


def file_lines_app(args):
    pipeline = (wallaroo.source("lines", wallaroo.FileSourceConfig("lines", _opt(args, "--input")))
                .to(same_line)
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), line_out)))
    return wallaroo.build_application("File Lines", pipeline)


@wallaroo.computation(name="tag pid")
def tag_pid(payload):
    return f"{payload} {os.getpid()}"


def framed_file_app(args):
    source = wallaroo.FileSourceConfig("frames", _opt(args, "--input"), utf8_frame)
    pipeline = (wallaroo.source("frames", source)
                .to(tag_pid)
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), line_out)))
    return wallaroo.build_application("Framed File", pipeline)


# -- event-time windows over a file ------------------------------------------------------------

class SumCount(Sum):
    """[sum, count] of one key's values in one window, with the window in nanoseconds."""

    def output(self, key, acc, window):
        return f"{key},{window[0]},{window[1]},{acc[0]},{acc[1]}"


@wallaroo.computation(name="parse event")
def parse_event(line):
    t_ms, key, value = line.split(",")
    return (int(t_ms), key, int(value))


def line_event_time(line):
    return wallaroo.milliseconds(int(line.split(",", 1)[0]))


def windowed_file_app(args):
    """Lines ``t_ms,key,value`` -> per key, tumbling 100 ms event-time windows of [sum, count]
    -> ``key,start_ns,end_ns,sum,count`` lines."""
    source = wallaroo.FileSourceConfig("events", _opt(args, "--input"))
    pipeline = (wallaroo.source("events", source, event_time=line_event_time)
                .to(parse_event)
                .key_by(lambda event: event[1])
                .to(wallaroo.range_windows(wallaroo.milliseconds(100)).over(SumCount))
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), line_out)))
    return wallaroo.build_application("Windowed File", pipeline)


# -- watermarks through two exchanges, and a window after a window ----------------------------

class Seen:
    def __init__(self):
        self.n = 0


@wallaroo.state_computation(name="note user", state=Seen)
def note_user(event, seen):
    """State per user; slow for the users of the second half of the key groups in one stretch
    of event time, so that one worker's messages lag behind the other's."""
    seen.n += 1
    if 9000 <= event[0] < 10000 and key_group(event[1], 2048) >= 1024:
        time.sleep(0.0005)
    return event


class CountAll(wallaroo.Aggregation):
    """How many messages."""

    def initial_accumulator(self):
        return [0]

    def update(self, event, acc):
        acc[0] += 1

    def combine(self, acc1, acc2):
        return [acc1[0] + acc2[0]]

    def output(self, key, acc, window):
        return f"{key},{window[0]},{window[1]},{acc[0]}"


def two_exchanges_app(args):
    """Lines ``t_ms,user,region`` -> key_by user -> state -> key_by region -> 1 s windows
    counting messages per region: a watermark reaches the window through both exchanges."""
    source = wallaroo.FileSourceConfig("events", _opt(args, "--input"))
    pipeline = (wallaroo.source("events", source, event_time=line_event_time)
                .to(wallaroo.computation(name="parse")(lambda line: tuple(line.split(","))))
                .to(wallaroo.computation(name="time")(lambda e: (int(e[0]), e[1], e[2])))
                .key_by(lambda event: event[1])
                .to(note_user)
                .key_by(lambda event: event[2])
                .to(wallaroo.range_windows(wallaroo.seconds(1)).over(CountAll))
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), line_out)))
    return wallaroo.build_application("Two Exchanges", pipeline)


class Windows(wallaroo.Aggregation):
    """How many 100 ms windows' outputs, and their total."""

    def initial_accumulator(self):
        return [0, 0]

    def update(self, line, acc):
        acc[0] += 1
        acc[1] += int(line.rsplit(",", 2)[-2])

    def combine(self, acc1, acc2):
        return [acc1[0] + acc2[0], acc1[1] + acc2[1]]

    def output(self, key, acc, window):
        return f"{key},{window[0]},{window[1]},{acc[0]},{acc[1]}"


def window_after_window_app(args):
    """Per key, 100 ms windows of [sum, count], then straight (no exchange) into 1 s windows
    over those outputs."""
    source = wallaroo.FileSourceConfig("events", _opt(args, "--input"))
    pipeline = (wallaroo.source("events", source, event_time=line_event_time)
                .to(parse_event)
                .key_by(lambda event: event[1])
                .to(wallaroo.range_windows(wallaroo.milliseconds(100)).over(SumCount))
                .to(wallaroo.range_windows(wallaroo.seconds(1)).over(Windows))
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), line_out)))
    return wallaroo.build_application("Window After Window", pipeline)


def stdout_lines_app(args):
    """Each line of a text file, to standard output."""
    pipeline = (wallaroo.source("lines", wallaroo.FileSourceConfig("lines", _opt(args, "--input")))
                .to(same_line)
                .to_sink(wallaroo.StdoutSinkConfig(line_out)))
    return wallaroo.build_application("Stdout Lines", pipeline)


@wallaroo.computation(name="refuse boom")
def refuse_boom(word):
    if word == "boom":
        raise ValueError("boom is not a word")
    return word


def failing_app(args):
    """Words of a text file, keyed, through a stage that raises on the word "boom"."""
    pipeline = (wallaroo.source("lines", wallaroo.FileSourceConfig("lines", _opt(args, "--input")))
                .to(split)
                .key_by(word_key)
                .to(refuse_boom)
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), line_out)))
    return wallaroo.build_application("Failing", pipeline)
