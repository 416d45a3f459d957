"""An application for tests/e2e/test_metrics_e2e.py: every kind of stage the metrics measure on
a TCP pipeline, each taking every message exactly once (so each stage's count is the number of
messages sent).

``--app wr_metrics_app:metrics_app``: TCP source "words" (u32-BE frames of UTF-8, ``--in``)
-> decoder ``utf8_frame`` -> computation "strip" -> computation_multi "one each" (a flat_map
that returns a one-item list) -> key_by(word) -> state computation "count" -> TCP sink
(``--out``) with encoder ``line_out``: ``"WORD COUNT\\n"``.
"""
import wallaroo
from wr_workers_app import _tcp_in, line_out, utf8_frame

#: The stages of the app as the metrics name them, in graph order (the sink is a pipeline).
STAGES = ["words", "strip", "one each", "word", "count"]


@wallaroo.computation(name="strip")
def strip(word):
    return word.strip()


@wallaroo.computation_multi(name="one each")
def one_each(word):
    return [word]


@wallaroo.key_extractor
def word(value):
    return value


class Count:
    def __init__(self):
        self.n = 0


@wallaroo.state_computation(name="count", state=Count)
def count(value, total):
    total.n += 1
    return f"{value} {total.n}"


def metrics_app(args):
    host, port = _tcp_in(args, "words")
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    pipeline = (wallaroo.source("words", wallaroo.TCPSourceConfig("words", host, port, utf8_frame))
                .to(strip)
                .to(one_each)
                .key_by(word)
                .to(count)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, line_out)))
    return wallaroo.build_application("Metrics Words", pipeline)
