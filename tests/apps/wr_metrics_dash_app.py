"""The app of tests/e2e/test_dashboard_e2e.py, which watches a run in the metrics dashboard.

TCP source "readings" (u32-BE frames of UTF-8 ``SENSOR,VALUE``, address from ``--in``)
-> ``parse reading`` (to a (sensor, value) pair)
-> key_by(sensor) (an exchange with several workers)
-> ``running max`` (a state computation: the largest value seen per sensor)
-> TCP sink (``--out``): ``"SENSOR MAX\\n"``.
"""
import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def reading_frame(payload):
    return payload.decode("utf-8")


@wallaroo.computation(name="parse reading")
def parse_reading(text):
    sensor, value = text.split(",", 1)
    return sensor, float(value)


@wallaroo.key_extractor
def sensor_key(reading):
    return reading[0]


class Highest:
    def __init__(self):
        self.value = float("-inf")


@wallaroo.state_computation(name="running max", state=Highest)
def running_max(reading, highest):
    highest.value = max(highest.value, reading[1])
    return f"{reading[0]} {highest.value:g}"


@wallaroo.encoder
def line_out(text):
    return f"{text}\n"


def application_setup(args):
    (name, host, port), = wallaroo.tcp_parse_input_addrs(args)
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    pipeline = (wallaroo.source("readings", wallaroo.TCPSourceConfig(name, host, port, reading_frame))
                .to(parse_reading)
                .key_by(sensor_key)
                .to(running_max)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, line_out)))
    return wallaroo.build_application("Sensor Maxima", pipeline)
