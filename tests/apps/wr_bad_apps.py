"""Applications that meet bad input or failing user code, for tests/test_bad_input.py.

Options read from ``args``: ``--input PATH`` / ``--output PATH`` (file source and sink),
``--out HOST:PORT`` (TCP sink), ``--max-size N`` (TCP source frame limit).
"""
import wallaroo


def _opt(args, name, default=None):
    if name in args:
        return args[args.index(name) + 1]
    return default


@wallaroo.encoder
def line_out(value):
    return f"{value}\n"


def _tcp_sink(args):
    host, port = wallaroo.tcp_parse_output_addrs(args)[0]
    return wallaroo.TCPSinkConfig(host, port, line_out)


def _file_pipeline(args):
    return wallaroo.source("lines", wallaroo.FileSourceConfig("lines", _opt(args, "--input")))


def _file_sink(args, encoder=line_out):
    return wallaroo.FileSinkConfig(_opt(args, "--output"), encoder)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def utf8(payload):
    return payload.decode("utf-8")


@wallaroo.decoder(header_length=4, length_fmt=">I")
def picky_decoder(payload):
    if payload == b"skip":
        return None  # dropped, not an error
    if payload.startswith(b"bad"):
        raise ValueError(f"cannot decode {payload[:20]!r}")
    return payload.decode("utf-8")


def capped(args):
    """TCP source "capped" with max_size=--max-size -> TCP sink."""
    size = int(_opt(args, "--max-size", "64"))
    src = wallaroo.TCPSourceConfig("capped", "127.0.0.1", 0, utf8, max_size=size)
    return wallaroo.build_application("Capped", wallaroo.source("capped", src).to_sink(_tcp_sink(args)))


def bad_decoder(args):
    """TCP source "raw": the decoder raises on payloads starting with b"bad", drops b"skip"."""
    src = wallaroo.TCPSourceConfig("raw", "127.0.0.1", 0, picky_decoder)
    return wallaroo.build_application("Picky", wallaroo.source("raw", src).to_sink(_tcp_sink(args)))


@wallaroo.key_extractor
def key_of(line):
    if line.startswith("boom"):
        raise KeyError(f"no key in {line!r}")
    if line.startswith("float"):
        return 1.5
    return line.split(":")[0]


class Count:
    def __init__(self):
        self.n = 0


@wallaroo.state_computation(name="count per key", state=Count)
def count(line, state):
    state.n += 1
    return f"{line} #{state.n}"


def bad_keys(args):
    """File lines "key:value" -> key_by(key_of) -> count per key -> file."""
    p = _file_pipeline(args).key_by(key_of).to(count).to_sink(_file_sink(args))
    return wallaroo.build_application("Bad Keys", p)


@wallaroo.encoder
def int_for_bad(line):
    if line.startswith("bad"):
        return len(line)
    return f"{line}\n"


def bad_encoder(args):
    """File lines -> file sink whose encoder returns an int for lines starting with "bad"."""
    return wallaroo.build_application("Bad Encoder",
                                      _file_pipeline(args).to_sink(_file_sink(args, int_for_bad)))


@wallaroo.computation(name="parse number")
def parse_number(line):
    return int(line) * 2


def bad_compute(args):
    """File lines -> int(line) * 2 (raises ValueError on non-numbers) -> file."""
    p = _file_pipeline(args).to(parse_number).to_sink(_file_sink(args))
    return wallaroo.build_application("Bad Compute", p)


def bad_compute_tcp(args):
    """TCP source "numbers" -> int(line) * 2 -> TCP sink."""
    src = wallaroo.TCPSourceConfig("numbers", "127.0.0.1", 0, utf8)
    p = wallaroo.source("numbers", src).to(parse_number).to_sink(_tcp_sink(args))
    return wallaroo.build_application("Bad Compute TCP", p)
