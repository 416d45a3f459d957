"""wallaroo: ultrafast, elastic stream processing for Python.

Write plain functions, wire them into a dataflow, run it in a notebook, as one process, or as
many. The API is that of the original Wallaroo 0.6, plus bounded file/iterable sources and an
in-process test runner.

Example::

    >>> import wallaroo, wallaroo.testing
    >>> @wallaroo.computation(name="double")
    ... def double(x):
    ...     return x * 2
    >>> @wallaroo.encoder
    ... def as_line(x):
    ...     return f"{x}\\n"
    >>> p = (wallaroo.source("numbers", wallaroo.IterSourceConfig("numbers", [1, 2, 3]))
    ...      .to(double).to_sink(wallaroo.StdoutSinkConfig(as_line)))
    >>> wallaroo.testing.run(wallaroo.build_application("Doubler", p), {})
    [[2, 4, 6]]
"""
from wallaroo.api.configs import (
    CustomKafkaSinkCLIParser,
    CustomKafkaSourceCLIParser,
    DefaultKafkaSinkCLIParser,
    DefaultKafkaSourceCLIParser,
    FileSinkConfig,
    FileSourceConfig,
    GenSourceConfig,
    IterSourceConfig,
    SinkConfig,
    SourceConfig,
    StdoutSinkConfig,
    TCPSinkConfig,
    TCPSourceConfig,
)
from wallaroo.api.decorators import (
    Computation,
    ComputationMulti,
    Decoder,
    Encoder,
    KeyExtractor,
    StateComputation,
    StateComputationMulti,
    computation,
    computation_multi,
    decoder,
    encoder,
    key_extractor,
    state_computation,
    state_computation_multi,
)
from wallaroo.api.helpers import (
    deserialize,
    dt_to_timestamp,
    hours,
    microseconds,
    milliseconds,
    minutes,
    nanoseconds,
    seconds,
    serialize,
    tcp_parse_input_addrs,
    tcp_parse_output_addrs,
)
from wallaroo.api.pipeline import Application, Pipeline, build_application, source
from wallaroo.api.windows import (
    Aggregation,
    CountWindowsBuilder,
    RangeWindowsBuilder,
    SessionWindowsBuilder,
    WindowSpec,
    count_windows,
    range_windows,
    session_windows,
)
from wallaroo.errors import WallarooParameterError

__version__ = "0.1.0"

#: The full command line of the running worker (set by ``wallaroo-run``), as in the original.
_ARGS: list[str] = []

__all__ = [
    "Aggregation", "Application", "Computation", "ComputationMulti", "CountWindowsBuilder",
    "CustomKafkaSinkCLIParser", "CustomKafkaSourceCLIParser", "Decoder",
    "DefaultKafkaSinkCLIParser", "DefaultKafkaSourceCLIParser", "Encoder", "FileSinkConfig",
    "FileSourceConfig", "GenSourceConfig", "IterSourceConfig", "KeyExtractor", "Pipeline",
    "RangeWindowsBuilder", "SessionWindowsBuilder", "SinkConfig", "SourceConfig",
    "StateComputation", "WindowSpec", "session_windows",
    "StateComputationMulti", "StdoutSinkConfig", "TCPSinkConfig", "TCPSourceConfig",
    "WallarooParameterError", "build_application", "computation", "computation_multi",
    "count_windows", "decoder", "deserialize", "dt_to_timestamp", "encoder", "hours",
    "key_extractor", "microseconds", "milliseconds", "minutes", "nanoseconds", "range_windows",
    "seconds", "serialize", "source", "state_computation", "state_computation_multi",
    "tcp_parse_input_addrs", "tcp_parse_output_addrs",
]
