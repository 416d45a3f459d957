"""Word count for the cluster tests (tests/e2e/test_cluster_e2e.py and test_netns_e2e.py).

Options read from ``args`` (app args, not engine flags):
  --input PATH    read lines from this file (FileSourceConfig "lines": bounded; with several
                  workers each one reads the lines that start in its byte range of the file)
                  instead of the TCP source "lines" (u32-BE-length frames of UTF-8, unbounded;
                  its address comes from ``--in lines@HOST:PORT``)
  --output PATH   file sink (with several workers each writes ``PATH.part-INDEX``)

Each line is split on whitespace into words; the words are keyed by themselves and a state
computation counts each one; every count goes to the sink as ``"word => N\\n"``, so the last
line of a word holds its total, and all of a word's lines are in the part file of the worker
that owns it.
"""
import wallaroo


def _opt(args, name, default=None):
    if name in args:
        return args[args.index(name) + 1]
    return default


@wallaroo.decoder(header_length=4, length_fmt=">I")
def utf8_frame(payload):
    return payload.decode("utf-8")


@wallaroo.computation_multi(name="split")
def split(line):
    return line.split()


@wallaroo.key_extractor
def word_key(word):
    return word


class Total:
    def __init__(self):
        self.count = 0


@wallaroo.state_computation(name="count", state=Total)
def count(word, total):
    total.count += 1
    return (word, total.count)


@wallaroo.encoder
def count_line(pair):
    return f"{pair[0]} => {pair[1]}\n"


def application_setup(args):
    path = _opt(args, "--input")
    if path is not None:
        source = wallaroo.FileSourceConfig("lines", path)
    else:
        source = wallaroo.TCPSourceConfig("lines", "127.0.0.1", 0, utf8_frame)
    pipeline = (wallaroo.source("lines", source)
                .to(split)
                .key_by(word_key)
                .to(count)
                .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output", "counts.txt"),
                                                 count_line)))
    return wallaroo.build_application("Cluster Word Count", pipeline)
