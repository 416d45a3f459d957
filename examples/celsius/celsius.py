"""Celsius to Fahrenheit, in two stateless steps (multiply by 1.8, add 32).

Input, on the TCP source "Celsius": binary frames holding one big-endian
32-bit float each::

    u32 length (= 4, big-endian) | f32 degrees Celsius (big-endian)

Output, to the TCP sink: framed text, one frame per reading::

    u32 length (big-endian) | ASCII text of the Fahrenheit value with 4 decimals

e.g. ``b"\\x00\\x00\\x00\\x0768.0000"`` for 20 degrees Celsius
(``wallaroo receive --framed`` prints it as the line ``68.0000``).

Run it (see README.md)::

    wallaroo-run --application-module celsius \\
        --in 'Celsius@127.0.0.1:7010' --out 127.0.0.1:7002
"""
import struct

import wallaroo


def application_setup(args):
    in_name, in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    readings = wallaroo.source("Celsius",
                               wallaroo.TCPSourceConfig(in_name, in_host, in_port, decode))

    pipeline = (readings
                .to(multiply)
                .to(add)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode)))

    return wallaroo.build_application("Celsius to Fahrenheit", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(payload):
    return struct.unpack(">f", payload)[0]


@wallaroo.computation(name="multiply by 1.8")
def multiply(degrees):
    return degrees * 1.8


@wallaroo.computation(name="add 32")
def add(degrees):
    return degrees + 32


@wallaroo.encoder
def encode(fahrenheit):
    text = "{:.4f}".format(fahrenheit).encode("ascii")
    return struct.pack(">I", len(text)) + text
