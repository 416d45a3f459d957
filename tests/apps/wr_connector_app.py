"""Application for the connector end-to-end tests (tests/e2e/test_connector_e2e.py).

``--app wr_connector_app`` (``application_setup``): a sequence check between a connector
source and a connector sink.

- source: ``wallaroo.experimental.SourceConnectorConfig`` "lines" on 127.0.0.1:``--source-port``
  with ``--cookie``; each MESSAGE's payload is one line ``"KEY SEQ"`` (``send_lines`` sends a
  file's lines), decoded to str;
- ``parse`` (computation): ``"k17 42"`` -> ``("k17", 42)``;
- key_by(key);
- ``last seq`` (state computation, from wr_resilience_app): keeps the key's last seq and emits the pair exactly as it
  came. It neither drops, reorders nor fixes anything, so any gap, repeat or reordering made
  by the engine (or the connectors) reaches the output;
- sink: ``wallaroo.experimental.SinkConnectorConfig`` "out" on 127.0.0.1:``--sink-port`` with
  the same ``--cookie``: ``f"{key} {seq}\\n"``.

``--slow N``: sleep 1 ms every N messages in ``parse`` (0, the default: no sleep), so a run
lasts long enough to kill its processes several times.
"""
import wallaroo
from wallaroo.experimental import SinkConnectorConfig, SourceConnectorConfig
from wr_resilience_app import _opt, _set_slow, _Slowdown, last_seq, seq_key, seq_out


@wallaroo.decoder(header_length=4, length_fmt=">I")
def utf8(payload):
    return payload.decode("utf-8")


@wallaroo.computation(name="parse")
def parse(line):
    _Slowdown.tick()
    key, seq = line.split(" ")
    return (key, int(seq))


def application_setup(args):
    _set_slow(args)
    cookie = _opt(args, "--cookie")
    source = SourceConnectorConfig("lines", encoder=None, decoder=utf8,
                                   port=int(_opt(args, "--source-port")), cookie=cookie,
                                   max_credits=int(_opt(args, "--max-credits", "500")),
                                   refill_credits=int(_opt(args, "--refill-credits", "250")),
                                   host="127.0.0.1")
    sink = SinkConnectorConfig("out", encoder=seq_out, decoder=None,
                               port=int(_opt(args, "--sink-port")), cookie=cookie,
                               host="127.0.0.1")
    pipeline = (wallaroo.source("lines", source)
                .to(parse)
                .key_by(seq_key)
                .to(last_seq)
                .to_sink(sink))
    return wallaroo.build_application("Connector Sequences", pipeline)
