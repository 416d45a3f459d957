"""Source and sink configurations: where data comes from and where results go.

A config only describes a connector; the runtime opens it. Each config has a ``kind`` the runtime
looks up, and sources say whether they are ``bounded`` (a bounded run ends by itself).

Example::

    >>> import wallaroo
    >>> cfg = wallaroo.TCPSourceConfig("lines", "127.0.0.1", "7010", wallaroo.decoder(bytes.decode))
    >>> cfg.kind, cfg.host, cfg.port, cfg.bounded
    ('tcp', '127.0.0.1', 7010, False)
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from wallaroo.errors import WallarooParameterError


def _check_port(port: Any, where: str) -> int:
    try:
        value = int(port)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value <= 65535:
        raise WallarooParameterError(
            f"{where}: port {port!r} is not a TCP port (0-65535; 0 picks a free port)"
        )
    return value


def _check_has(obj: Any, method: str, where: str, decorator: str) -> None:
    if not callable(getattr(obj, method, None)):
        raise WallarooParameterError(
            f"{where}: expected a @wallaroo.{decorator} object with a {method}() method; "
            f"got {obj!r}"
        )


class SourceConfig:
    """Base of every source config: ``kind`` names the connector, ``bounded`` says it ends.

    Example::

        >>> SourceConfig().bounded
        False
    """

    kind = "source"
    bounded = False
    name: str | None = None

    def describe(self) -> str:
        """How the startup line shows this source (before it is opened)."""
        return self.kind


class SinkConfig:
    """Base of every sink config.

    Example::

        >>> SinkConfig().kind
        'sink'
    """

    kind = "sink"

    def describe(self) -> str:
        """How the startup line shows this sink."""
        return self.kind


class TCPSourceConfig(SourceConfig):
    """The worker listens on ``host:port``; each frame is decoded by ``decoder``.

    ``max_size`` is the largest frame accepted; a longer one closes that connection with a logged
    reason. ``valid``, ``parallelism`` and ``max_received_count`` are accepted for compatibility.
    The original three-argument form ``TCPSourceConfig(host, port, decoder)`` also works.

    Example::

        >>> import wallaroo
        >>> @wallaroo.decoder(header_length=4, length_fmt=">I")
        ... def decode(b): return b.decode()
        >>> wallaroo.TCPSourceConfig("words", "127.0.0.1", "0", decode).port
        0
    """

    kind = "tcp"

    def __init__(self, name, host, port=None, decoder=None, valid=True, parallelism=10,
                 max_size=16384, max_received_count=50):
        if decoder is None and port is not None and callable(getattr(port, "decode", None)):
            name, host, port, decoder = None, name, host, port  # (host, port, decoder) form
        where = f"TCPSourceConfig({name!r})" if name else "TCPSourceConfig"
        _check_has(decoder, "decode", where, "decoder")
        self.name = name
        self.host = str(host)
        self.port = _check_port(port, where)
        self.decoder = decoder
        self.valid = valid
        self.parallelism = parallelism
        if not isinstance(max_size, int) or max_size <= 0:
            raise WallarooParameterError(f"{where}: max_size must be a positive int, got {max_size!r}")
        self.max_size = max_size
        self.max_received_count = max_received_count

    def describe(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class GenSourceConfig(SourceConfig):
    """An internal generator: ``gen.initial_value()``, then ``gen.apply(prev)``; None ends it.

    Example::

        >>> import wallaroo
        >>> class Count:
        ...     def initial_value(self): return 1
        ...     def apply(self, n): return n + 1 if n < 3 else None
        >>> wallaroo.GenSourceConfig("count", Count()).bounded
        True
    """

    kind = "gen"
    bounded = True

    def __init__(self, name, gen=None):
        if gen is None and not isinstance(name, str):
            name, gen = None, name  # the original one-argument form
        where = f"GenSourceConfig({name!r})"
        _check_has(gen, "initial_value", where, "generator (an object)")
        _check_has(gen, "apply", where, "generator (an object)")
        self.name = name
        self.gen = gen

    def describe(self) -> str:
        return f"gen:{type(self.gen).__name__}"


class IterSourceConfig(SourceConfig):
    """Values from a Python iterable, as they are (no decoding). Bounded.

    Example::

        >>> import wallaroo
        >>> wallaroo.IterSourceConfig("numbers", range(10)).bounded
        True
    """

    kind = "iter"
    bounded = True

    def __init__(self, name, iterable: Iterable):
        try:
            iter(iterable)
        except TypeError:
            raise WallarooParameterError(
                f"IterSourceConfig({name!r}): {type(iterable).__name__} is not iterable"
            ) from None
        self.name = name
        self.iterable = iterable

    def describe(self) -> str:
        return f"iter:{type(self.iterable).__name__}"


class FileSourceConfig(SourceConfig):
    """Reads a file once. Without a decoder each line is a value (str, newline stripped);
    with a ``@decoder`` the file holds frames (length header, then payload). Bounded.

    Example::

        >>> import wallaroo
        >>> wallaroo.FileSourceConfig("log", "/var/log/app.log").kind
        'file'
    """

    kind = "file"
    bounded = True

    def __init__(self, name, path, decoder=None):
        if decoder is not None:
            _check_has(decoder, "decode", f"FileSourceConfig({name!r})", "decoder")
        self.name = name
        self.path = os.fspath(path)
        self.decoder = decoder

    def describe(self) -> str:
        return f"file://{os.path.abspath(self.path)}"


class TCPSinkConfig(SinkConfig):
    """The worker connects to ``host:port`` (and reconnects) and writes ``encode(value)`` bytes.

    Example::

        >>> import wallaroo
        >>> wallaroo.TCPSinkConfig("127.0.0.1", 7002, wallaroo.encoder(str)).describe()
        'tcp://127.0.0.1:7002'
    """

    kind = "tcp"

    def __init__(self, host, port, encoder):
        _check_has(encoder, "encode", "TCPSinkConfig", "encoder")
        self.host = str(host)
        self.port = _check_port(port, f"TCPSinkConfig({host!r}, {port!r})")
        self.encoder = encoder

    def describe(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class FileSinkConfig(SinkConfig):
    """Appends ``encode(value)`` bytes to a file; flushed and fsynced when the run ends.

    Example::

        >>> import wallaroo
        >>> wallaroo.FileSinkConfig("out.txt", wallaroo.encoder(str)).kind
        'file'
    """

    kind = "file"

    def __init__(self, path, encoder):
        _check_has(encoder, "encode", f"FileSinkConfig({path!r})", "encoder")
        self.path = os.fspath(path)
        self.encoder = encoder

    def describe(self) -> str:
        return f"file://{os.path.abspath(self.path)}"


class StdoutSinkConfig(SinkConfig):
    """Writes ``encode(value)`` bytes to standard output.

    Example::

        >>> import wallaroo
        >>> wallaroo.StdoutSinkConfig(wallaroo.encoder(str)).describe()
        'stdout'
    """

    kind = "stdout"

    def __init__(self, encoder):
        _check_has(encoder, "encode", "StdoutSinkConfig", "encoder")
        self.encoder = encoder

    def describe(self) -> str:
        return "stdout"


class _NotYetSource(SourceConfig):
    """A source kind whose connector is not built yet: the run stops at start with a clear line."""

    feature = ""

    def __init__(self, name=None, **options):
        self.name = name
        self.options = options


class _NotYetSink(SinkConfig):
    feature = ""

    def __init__(self, **options):
        self.options = options


class KafkaSourceConfig(_NotYetSource):
    """A Kafka source (options from the Kafka CLI parsers). Not supported yet by this engine.

    Example::

        >>> KafkaSourceConfig(name="kafka_source").kind
        'kafka'
    """

    kind = "kafka"
    feature = "Kafka sources"


class KafkaSinkConfig(_NotYetSink):
    """A Kafka sink (options from the Kafka CLI parsers). Not supported yet by this engine.

    Example::

        >>> KafkaSinkConfig().kind
        'kafka'
    """

    kind = "kafka"
    feature = "Kafka sinks"


class SourceConnectorConfig(SourceConfig):
    """The worker listens on ``host:port`` for connector-protocol clients
    (``wallaroo.experimental.AtLeastOnceSourceConnector``, ``send_lines``). Each MESSAGE's
    payload is decoded by ``decoder`` (bytes as they are when it is None). A client must
    present ``cookie``; it gets ``max_credits`` credits, topped up once at most
    ``refill_credits`` are left. ``encoder`` is kept for clients that build their payloads
    from the config.

    Example::

        >>> cfg = SourceConnectorConfig("feed", encoder=None, decoder=None, port=7100,
        ...                             cookie="c", max_credits=10, refill_credits=8)
        >>> cfg.kind, cfg.describe(), cfg.bounded
        ('source_connector', 'connector://127.0.0.1:7100', False)
        >>> SourceConnectorConfig("feed", None, None, 7100, "c", 10, 10)
        Traceback (most recent call last):
        ...
        wallaroo.errors.WallarooParameterError: SourceConnectorConfig('feed'): refill_credits (10) must be less than max_credits (10)
    """

    kind = "source_connector"
    bounded = False

    def __init__(self, name, encoder, decoder, port, cookie, max_credits, refill_credits,
                 host="127.0.0.1"):
        where = f"SourceConnectorConfig({name!r})"
        if decoder is not None:
            _check_has(decoder, "decode", where, "decoder")
        self.name = name
        self.encoder = encoder
        self.decoder = decoder
        self.host = str(host)
        self.port = _check_port(port, where)
        self.cookie = self._check_cookie(cookie, where)
        self.max_credits = self._check_positive(max_credits, "max_credits", where)
        self.refill_credits = self._check_positive(refill_credits, "refill_credits", where)
        if self.refill_credits >= self.max_credits:
            raise WallarooParameterError(
                f"{where}: refill_credits ({refill_credits}) must be less than max_credits "
                f"({max_credits})")

    def describe(self) -> str:
        return f"connector://{self.host}:{self.port}"

    @staticmethod
    def _check_cookie(cookie, where: str) -> str:
        if isinstance(cookie, bytes):
            cookie = cookie.decode("utf-8", "replace")
        if not isinstance(cookie, str):
            raise WallarooParameterError(f"{where}: cookie must be a string, got {cookie!r}")
        return cookie

    @staticmethod
    def _check_positive(value, name: str, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise WallarooParameterError(f"{where}: {name} must be a positive int, got {value!r}")
        return value


class SinkConnectorConfig(SinkConfig):
    """The worker connects to a connector-protocol sink server at ``host:port``
    (``python -m wallaroo.experimental.sink_server``) and sends ``encode(value)`` bytes; with
    resilience they are committed with each checkpoint (two-phase commit). ``decoder`` is
    kept for servers that read the config.

    Example::

        >>> import wallaroo
        >>> cfg = SinkConnectorConfig("out", wallaroo.encoder(str), None, 7200, "c")
        >>> cfg.kind, cfg.describe()
        ('sink_connector', 'connector://127.0.0.1:7200')
    """

    kind = "sink_connector"

    def __init__(self, name, encoder, decoder, port, cookie, host="127.0.0.1"):
        where = f"SinkConnectorConfig({name!r})"
        _check_has(encoder, "encode", where, "encoder")
        self.name = name
        self.encoder = encoder
        self.decoder = decoder
        self.host = str(host)
        self.port = _check_port(port, where)
        self.cookie = SourceConnectorConfig._check_cookie(cookie, where)

    def describe(self) -> str:
        return f"connector://{self.host}:{self.port}"


def _kafka_options(args, prefix: str, names: tuple[str, ...]) -> dict:
    """Pick ``--<prefix>_<name> value`` pairs out of an argv list."""
    args = list(args or [])
    found = {}
    for option in names:
        flag = f"--{prefix}_{option}"
        for i, arg in enumerate(args):
            if arg == flag and i + 1 < len(args):
                found[option] = args[i + 1]
            elif arg.startswith(flag + "="):
                found[option] = arg.split("=", 1)[1]
    return found


_SOURCE_OPTIONS = ("topic", "brokers", "log_level")
_SINK_OPTIONS = ("topic", "brokers", "log_level", "max_produce_buffer_ms", "max_message_size")


def DefaultKafkaSourceCLIParser(decoder, name="kafka_source"):
    """A Kafka source config from ``--kafka_source_topic`` / ``--kafka_source_brokers``.

    Example::

        >>> DefaultKafkaSourceCLIParser(decoder=None).kind
        'kafka'
    """
    import wallaroo

    return KafkaSourceConfig(name=name, decoder=decoder,
                             **_kafka_options(wallaroo._ARGS, name, _SOURCE_OPTIONS))


def DefaultKafkaSinkCLIParser(encoder, name="kafka_sink"):
    """A Kafka sink config from ``--kafka_sink_topic`` / ``--kafka_sink_brokers``.

    Example::

        >>> DefaultKafkaSinkCLIParser(encoder=None).kind
        'kafka'
    """
    import wallaroo

    return KafkaSinkConfig(encoder=encoder, **_kafka_options(wallaroo._ARGS, name, _SINK_OPTIONS))


def CustomKafkaSourceCLIParser(args, decoder):
    """A Kafka source config from the given argv (``--kafka_source_*`` options).

    Example::

        >>> CustomKafkaSourceCLIParser(["--kafka_source_topic", "t"], None).options["topic"]
        't'
    """
    return KafkaSourceConfig(name="kafka_source", decoder=decoder,
                             **_kafka_options(args, "kafka_source", _SOURCE_OPTIONS))


def CustomKafkaSinkCLIParser(args, encoder):
    """A Kafka sink config from the given argv (``--kafka_sink_*`` options).

    Example::

        >>> CustomKafkaSinkCLIParser(["--kafka_sink_topic", "t"], None).options["topic"]
        't'
    """
    return KafkaSinkConfig(encoder=encoder, **_kafka_options(args, "kafka_sink", _SINK_OPTIONS))
