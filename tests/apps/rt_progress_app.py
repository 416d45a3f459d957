"""Test app (tests/test_runtime.py): a slow computation over a text file, into a file.

    wallaroo-run --app rt_progress_app --input IN --output OUT [--spin-us N]
"""
import time

import wallaroo


def _arg(args, name, default=None):
    return args[args.index(name) + 1] if name in args else default


def application_setup(args):
    spin = float(_arg(args, "--spin-us", "20")) / 1e6

    @wallaroo.computation(name="slow")
    def slow(line):
        end = time.perf_counter() + spin
        while time.perf_counter() < end:
            pass
        return line.upper()

    enc = wallaroo.encoder(lambda s: s + "\n")
    p = (wallaroo.source("lines", wallaroo.FileSourceConfig("lines", _arg(args, "--input")))
         .to(slow)
         .to_sink(wallaroo.FileSinkConfig(_arg(args, "--output"), enc)))
    return wallaroo.build_application("rt progress", p)
