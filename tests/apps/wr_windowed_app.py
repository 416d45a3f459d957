"""Test app (tests/e2e/test_windows_e2e.py): per-key sums in tumbling event-time windows.

TCP source "events": u32-BE-length frames, each the UTF-8 text ``t_ms,key,value`` (what
``wallaroo send --file`` makes of a text file's lines); the event time is ``t_ms`` milliseconds.

- Sink 1 (first ``--out`` address): ``key_by(key)`` -> ``range_windows(--window-ms)``
  ``.with_delay(--delay-ms)`` over ``Sum`` -> one line per (key, window):
  ``key,start_ms,end_ms,sum,count``.
- Sink 2 (second ``--out`` address): every message as it is read, ``ack,t_ms,key,value``, so a
  test knows what the engine has taken in (both paths run on the same batch).

App flags: ``--window-ms N`` (default 1000), ``--delay-ms N`` (default 0).

Example::

    wallaroo-run --app wr_windowed_app --in events@127.0.0.1:0 \\
        --out 127.0.0.1:7002,127.0.0.1:7003 --window-ms 1000
"""
import wallaroo


def _opt(args, name, default=None):
    if name in args:
        return args[args.index(name) + 1]
    return default


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(payload):
    t_ms, key, value = payload.decode("utf-8").split(",")
    return (int(t_ms), key, int(value))


def event_time(event):
    return wallaroo.milliseconds(event[0])


@wallaroo.key_extractor
def event_key(event):
    return event[1]


class Sum(wallaroo.Aggregation):
    """[sum, count] of the values of one key in one window."""

    def initial_accumulator(self):
        return [0, 0]

    def update(self, event, acc):
        acc[0] += event[2]
        acc[1] += 1

    def combine(self, acc1, acc2):
        return [acc1[0] + acc2[0], acc1[1] + acc2[1]]

    def output(self, key, acc, window):
        start, end = window
        ms = wallaroo.milliseconds(1)
        return f"{key},{start // ms},{end // ms},{acc[0]},{acc[1]}"


@wallaroo.computation(name="ack")
def ack(event):
    return "ack,{},{},{}".format(*event)


@wallaroo.encoder
def line_out(line):
    return (line + "\n").encode("utf-8")


def application_setup(args):
    (out_host, out_port), (ack_host, ack_port) = wallaroo.tcp_parse_output_addrs(args)[:2]
    window = wallaroo.milliseconds(int(_opt(args, "--window-ms", "1000")))
    delay = wallaroo.milliseconds(int(_opt(args, "--delay-ms", "0")))
    events = wallaroo.source("events", wallaroo.TCPSourceConfig("events", "127.0.0.1", 0, decode),
                             event_time=event_time)
    sums = (events.key_by(event_key)
            .to(wallaroo.range_windows(window).with_delay(delay).over(Sum))
            .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, line_out)))
    acks = events.to(ack).to_sink(wallaroo.TCPSinkConfig(ack_host, ack_port, line_out))
    return wallaroo.build_application("Windowed Sums", sums.merge(acks))
