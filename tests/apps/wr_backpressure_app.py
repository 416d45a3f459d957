"""Back-pressure test app: framed text in on TCP source "in", keyed by the text (so half of it
crosses to the other worker), upper-cased after key_by, newline-terminated out to a TCP sink."""
import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(payload):
    return payload.decode("ascii")


@wallaroo.computation(name="upper")
def upper(text):
    return text.upper()


@wallaroo.encoder
def encode(text):
    return text + "\n"


def application_setup(args):
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    (name, host, port), = wallaroo.tcp_parse_input_addrs(args)
    pipeline = (wallaroo.source("in", wallaroo.TCPSourceConfig(name, host, port, decode))
                .key_by(lambda text: text[:6])
                .to(upper)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode)))
    return wallaroo.build_application("Back-pressure", pipeline)
