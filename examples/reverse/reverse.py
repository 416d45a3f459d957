"""Reverse: echo every line of text back reversed.

Each message on the TCP source "Reverse" is one line of UTF-8 text in a
u32-big-endian-length frame. The sink receives the reversed text followed by a
newline.

Run it (see README.md)::

    wallaroo-run --application-module reverse \\
        --in 'Reverse@127.0.0.1:7010' --out 127.0.0.1:7002
"""
import wallaroo


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    lines = wallaroo.source("Reverse",
                            wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode))

    pipeline = (lines
                .to(reverse)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode)))

    return wallaroo.build_application("Reverse Word", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(payload):
    return payload.decode("utf-8")


@wallaroo.computation(name="reverse")
def reverse(text):
    return text[::-1]


@wallaroo.encoder
def encode(text):
    return (text + "\n").encode("utf-8")
