"""Applications for tests/test_cli.py, configured by their command line.

Options read from ``args`` (they are app args, not engine flags):
  --input PATH    lines to read (FileSourceConfig)
  --output PATH   where results go (FileSinkConfig)
  --args-file P   write json.dumps(args) there first
Every line becomes ``upper(line) + "\\n"``.
"""
import json
import os

import wallaroo
from wr_api_stages import Countdown


def _opt(args, name, default=None):
    if name in args:
        return args[args.index(name) + 1]
    return default


def _record_args(args):
    path = _opt(args, "--args-file") or os.environ.get("WR_ARGS_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({"args": list(args), "argv": list(wallaroo._ARGS)}, f)


@wallaroo.computation(name="upper")
def upper(line):
    return line.upper()


@wallaroo.encoder
def line_out(value):
    return f"{value}\n"


@wallaroo.decoder(header_length=4, length_fmt=">I")
def utf8(payload):
    return payload.decode("utf-8")


def application_setup(args):
    """File lines -> upper -> file."""
    _record_args(args)
    src = wallaroo.FileSourceConfig("lines", _opt(args, "--input"))
    p = (wallaroo.source("lines", src).to(upper)
         .to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"), line_out)))
    return wallaroo.build_application("Upper Files", p)


def to_stdout(args):
    """File lines -> upper -> stdout."""
    src = wallaroo.FileSourceConfig("lines", _opt(args, "--input"))
    p = wallaroo.source("lines", src).to(upper).to_sink(wallaroo.StdoutSinkConfig(line_out))
    return wallaroo.build_application("Upper Stdout", p)


def tcp_app(args):
    """TCP source "frames" (u32 frames, utf-8) -> upper -> TCP sink (use --out)."""
    _record_args(args)
    host, port = wallaroo.tcp_parse_output_addrs(args)[0] if "--out" in args else ("127.0.0.1", 9)
    src = wallaroo.TCPSourceConfig("frames", "127.0.0.1", 0, utf8)
    p = (wallaroo.source("frames", src).to(upper)
         .to_sink(wallaroo.TCPSinkConfig(host, port, line_out)))
    return wallaroo.build_application("Upper TCP", p)


def _own_port():
    """The app's own (hard-coded) port: the test points it at a port it holds busy."""
    return int(os.environ.get("WR_OWN_PORT", "9"))


def two_tcp_sources(args):
    """Two TCP sources "left" and "right" merged -> TCP sink, all on the app's own port."""
    port = _own_port()
    left = wallaroo.source("left", wallaroo.TCPSourceConfig("left", "127.0.0.1", port, utf8))
    right = wallaroo.source("right", wallaroo.TCPSourceConfig("right", "127.0.0.1", port, utf8))
    p = left.merge(right).to(upper).to_sink(wallaroo.TCPSinkConfig("127.0.0.1", port, line_out))
    return wallaroo.build_application("Two TCP", p)


@wallaroo.computation(name="lower")
def lower(line):
    return line.lower()


def two_tcp_sinks(args):
    """TCP source "mixed" -> upper -> sink A (added first) and -> lower -> sink B.

    The pipeline with sink B is built in front in the merge, so the nesting differs from the
    order the sinks were added."""
    port = _own_port()
    src = wallaroo.source("mixed", wallaroo.TCPSourceConfig("mixed", "127.0.0.1", port, utf8))
    to_a = src.to(upper).to_sink(wallaroo.TCPSinkConfig("127.0.0.1", port, line_out))
    to_b = src.to(lower).to_sink(wallaroo.TCPSinkConfig("127.0.0.1", port, line_out))
    return wallaroo.build_application("Two Sinks", to_b.merge(to_a))


def gen_app(args):
    """GenSource counting down from --count -> stdout."""
    n = int(_opt(args, "--count", "3"))
    p = (wallaroo.source("countdown", wallaroo.GenSourceConfig("countdown", Countdown(n)))
         .to_sink(wallaroo.StdoutSinkConfig(line_out)))
    return wallaroo.build_application("Countdown", p)


def iter_app(args):
    """IterSource of the words after --words (comma-separated) -> upper -> stdout."""
    words = _opt(args, "--words", "a,b").split(",")
    p = (wallaroo.source("words", wallaroo.IterSourceConfig("words", words)).to(upper)
         .to_sink(wallaroo.StdoutSinkConfig(line_out)))
    return wallaroo.build_application("Iter Words", p)


def no_sink(args):
    """Forgets to_sink: build_application raises."""
    p = wallaroo.source("words", wallaroo.IterSourceConfig("words", ["a"])).to(upper)
    return wallaroo.build_application("No Sink", p)


def not_an_app(args):
    return 42


def kafka_app(args):
    """A Kafka source: not supported by this engine yet."""
    p = (wallaroo.source("kafka_source", wallaroo.DefaultKafkaSourceCLIParser(utf8))
         .to_sink(wallaroo.StdoutSinkConfig(line_out)))
    return wallaroo.build_application("Kafka", p)


# An application object at module level, for --app wr_cli_app:APP.
APP = wallaroo.build_application(
    "Module Object",
    wallaroo.source("fixed", wallaroo.IterSourceConfig("fixed", ["x", "y", "z"])).to(upper)
    .to_sink(wallaroo.StdoutSinkConfig(line_out)))



@wallaroo.encoder
def skip_comments(value):
    """None for comment lines: the sink writes nothing for them."""
    if value.startswith("#"):
        return None
    return value.encode("utf-8") + b"\n"


def encoder_drops(args):
    """File lines -> file, without the lines starting with '#'."""
    src = wallaroo.FileSourceConfig("lines", _opt(args, "--input"))
    p = wallaroo.source("lines", src).to_sink(wallaroo.FileSinkConfig(_opt(args, "--output"),
                                                                      skip_comments))
    return wallaroo.build_application("Encoder Drops", p)
