"""Test app (tests/test_runtime.py): TCP source "in" -> expand -> TCP sink (address via --out).

Each input ``s`` becomes the line ``s:xxxx...`` (RT_PAD x's). At exit the number of messages the
computation processed is written to $RT_COUNT_FILE, so a test can check that every processed
message reached the sink.
"""
import atexit
import os

import wallaroo

COUNT = [0]
PAD = int(os.environ.get("RT_PAD", "2000"))


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(payload):
    return payload.decode("utf-8")


@wallaroo.computation(name="expand")
def expand(s):
    COUNT[0] += 1
    return f"{s}:{'x' * PAD}\n"


@wallaroo.encoder
def encode(line):
    return line


def _write_count():
    path = os.environ.get("RT_COUNT_FILE")
    if path:
        with open(path, "w") as f:
            f.write(str(COUNT[0]))


atexit.register(_write_count)


def application_setup(args):
    p = (wallaroo.source("in", wallaroo.TCPSourceConfig("in", "127.0.0.1", 0, decode))
         .to(expand)
         .to_sink(wallaroo.TCPSinkConfig("127.0.0.1", 9, encode)))  # replaced by --out
    return wallaroo.build_application("rt sigterm", p)
