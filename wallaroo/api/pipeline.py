"""The immutable pipeline builder: ``source(...).to(...).key_by(...).to_sink(...)``.

Every builder call returns a new Pipeline; the one it was called on is unchanged, so a partial
pipeline can be reused (reusing it in two branches means fan-out from one node).

Example::

    >>> import wallaroo
    >>> @wallaroo.computation(name="double")
    ... def double(x): return x * 2
    >>> @wallaroo.encoder
    ... def enc(x): return f"{x}\\n"
    >>> p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", [1, 2]))
    ...      .to(double).to_sink(wallaroo.StdoutSinkConfig(enc)))
    >>> app = wallaroo.build_application("Doubler", p)
    >>> app.name, [n.name for n in app.graph.nodes]
    ('Doubler', ['n', 'double', 'stdout'])
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from wallaroo import graph as g
from wallaroo.api.configs import SinkConfig, SourceConfig
from wallaroo.api.decorators import KeyExtractor
from wallaroo.api.windows import WindowSpec
from wallaroo.errors import WallarooParameterError

def _stage_kind(stage: Any) -> str:
    """Classify what ``Pipeline.to`` was given, or raise naming what was wrong."""
    if isinstance(stage, WindowSpec):
        return g.WINDOW
    if callable(getattr(stage, "initial_state", None)):
        if callable(getattr(stage, "compute_multi", None)):
            return g.STATE_MULTI
        if callable(getattr(stage, "compute", None)):
            return g.STATE
    elif callable(getattr(stage, "compute_multi", None)):
        return g.FLAT_MAP
    elif callable(getattr(stage, "compute", None)):
        return g.MAP
    if callable(stage) and hasattr(stage, "__qualname__"):
        got = (f"the plain function {stage.__qualname__!r}: decorate it with "
               f"@wallaroo.computation, @wallaroo.computation_multi or @wallaroo.state_computation")
    else:
        got = f"{type(stage).__name__} {stage!r}"
    raise WallarooParameterError(
        f"Pipeline.to() expects a computation, state computation or window; got {got}"
    )


def _stage_name(stage: Any) -> str:
    name = getattr(stage, "name", None)
    if callable(name):
        try:
            return str(name())
        except TypeError:
            pass
    return getattr(stage, "__name__", type(stage).__name__)


class Pipeline:
    """A partial (open) or closed dataflow. Build it with ``wallaroo.source`` and its methods.

    Example::

        >>> import wallaroo
        >>> p = wallaroo.source("s", wallaroo.IterSourceConfig("s", "ab"))
        >>> p.is_closed()
        False
    """

    __slots__ = ("_head", "_sinks")

    def __init__(self, head: g.Node | None, sinks: tuple[g.Node, ...] = ()):
        self._head = head
        self._sinks = sinks

    def is_closed(self) -> bool:
        """True once the pipeline ends in sinks (no more stages may be added)."""
        return self._head is None

    def _extend(self, call: str, kind: str, spec: Any, name: str, **options) -> "Pipeline":
        if self._head is None:
            raise WallarooParameterError(
                f"You can't add stages after to_sink/s: {call} was called on a closed pipeline"
            )
        return Pipeline(g.Node(kind, spec, (self._head,), name, options))

    def to(self, stage: Any) -> "Pipeline":
        """Add a computation, state computation or window stage.

        Example::

            >>> import wallaroo
            >>> inc = wallaroo.computation(name="inc")(lambda x: x + 1)
            >>> p = wallaroo.source("s", wallaroo.IterSourceConfig("s", [1])).to(inc)
        """
        kind = _stage_kind(stage)
        return self._extend(f"to({_stage_name(stage)!r})", kind, stage, _stage_name(stage))

    def key_by(self, key_extractor: Any) -> "Pipeline":
        """Partition by key from here on (until the next key_by or collect).

        A plain function is accepted too and used as ``@wallaroo.key_extractor``.

        Example::

            >>> import wallaroo
            >>> p = wallaroo.source("s", wallaroo.IterSourceConfig("s", ["a"])).key_by(lambda w: w)
        """
        if not callable(getattr(key_extractor, "extract_key", None)):
            if not callable(key_extractor):
                raise WallarooParameterError(
                    f"key_by() expects a @wallaroo.key_extractor; got {key_extractor!r}"
                )
            key_extractor = KeyExtractor(key_extractor)
        return self._extend("key_by", g.KEY_BY, key_extractor, _stage_name(key_extractor))

    def collect(self) -> "Pipeline":
        """Route every message to one partition (one state object downstream).

        Example::

            >>> import wallaroo
            >>> p = wallaroo.source("s", wallaroo.IterSourceConfig("s", [1])).collect()
        """
        return self._extend("collect", g.COLLECT, None, "collect")

    def merge(self, other: "Pipeline") -> "Pipeline":
        """The union of two pipelines (interleaved, not a join).

        Two open pipelines give an open one; two closed pipelines give one closed pipeline with
        the sinks of both (an application of several pipelines).

        Example::

            >>> import wallaroo
            >>> a = wallaroo.source("a", wallaroo.IterSourceConfig("a", [1]))
            >>> b = wallaroo.source("b", wallaroo.IterSourceConfig("b", [2]))
            >>> a.merge(b).is_closed()
            False
        """
        if not isinstance(other, Pipeline):
            raise WallarooParameterError(f"merge() expects a Pipeline; got {other!r}")
        if self.is_closed() != other.is_closed():
            raise WallarooParameterError(
                "merge() needs two open pipelines (to merge streams) or two closed ones "
                "(to run both); one of these ends in to_sink/s and the other does not"
            )
        if self.is_closed():
            return Pipeline(None, self._sinks + other._sinks)
        return Pipeline(g.Node(g.MERGE, None, (self._head, other._head), "merge"))

    def to_sink(self, config: Any) -> "Pipeline":
        """Close the pipeline into one sink.

        Example::

            >>> import wallaroo
            >>> p = (wallaroo.source("s", wallaroo.IterSourceConfig("s", [1]))
            ...      .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
            >>> p.is_closed()
            True
        """
        return self.to_sinks([config])

    def to_sinks(self, configs: Iterable[Any]) -> "Pipeline":
        """Close the pipeline into several sinks; each receives every output.

        Example::

            >>> import wallaroo
            >>> enc = wallaroo.encoder(str)
            >>> p = (wallaroo.source("s", wallaroo.IterSourceConfig("s", [1]))
            ...      .to_sinks([wallaroo.StdoutSinkConfig(enc), wallaroo.StdoutSinkConfig(enc)]))
        """
        if self._head is None:
            raise WallarooParameterError(
                "You can't add stages after to_sink/s: to_sink/to_sinks was called on a closed "
                "pipeline"
            )
        configs = list(configs) if not isinstance(configs, SinkConfig) else [configs]
        if not configs:
            raise WallarooParameterError("to_sinks() needs at least one sink config")
        sinks = []
        for config in configs:
            if not isinstance(config, SinkConfig):
                raise WallarooParameterError(
                    f"to_sink/to_sinks expects sink configs such as wallaroo.TCPSinkConfig; "
                    f"got {config!r}"
                )
            sinks.append(g.Node(g.SINK, config, (self._head,), config.describe()))
        return Pipeline(None, tuple(sinks))


def source(name: str, config: Any, event_time: Callable | None = None) -> Pipeline:
    """Start a pipeline at a source.

    ``event_time``, if given, is ``fn(value)`` returning the value's event time (nanoseconds or a
    datetime); without it the event time is the ingest time.

    Example::

        >>> import wallaroo
        >>> wallaroo.source("numbers", wallaroo.IterSourceConfig("numbers", range(3))).is_closed()
        False
    """
    if not isinstance(name, str) or not name:
        raise WallarooParameterError(f"source(): the name must be a non-empty str, got {name!r}")
    if not isinstance(config, SourceConfig):
        raise WallarooParameterError(
            f"source({name!r}, ...) expects a source config such as wallaroo.TCPSourceConfig; "
            f"got {config!r}"
        )
    if event_time is not None and not callable(event_time):
        raise WallarooParameterError(f"source({name!r}): event_time must be a function of the value")
    return Pipeline(g.Node(g.SOURCE, config, (), name, {"event_time": event_time}))


class Application:
    """What ``build_application`` returns: a name and a validated logical graph.

    ``serializer`` holds the app module's own ``(serialize, deserialize)`` when it defines both.

    Example::

        >>> import wallaroo
        >>> p = (wallaroo.source("s", wallaroo.IterSourceConfig("s", [1]))
        ...      .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
        >>> wallaroo.build_application("App", p).name
        'App'
    """

    def __init__(self, name: str, graph: g.LogicalGraph):
        self.name = name
        self.graph = graph
        self.serializer: tuple[Callable, Callable] | None = None

    def __repr__(self) -> str:
        return f"<Application {self.name!r}: {len(self.graph.sources)} source(s), {len(self.graph.sinks)} sink(s)>"


def build_application(app_name: str, pipeline: Pipeline) -> Application:
    """Turn a closed pipeline into an application.

    Example::

        >>> import wallaroo
        >>> wallaroo.build_application("x", wallaroo.source("s", wallaroo.IterSourceConfig("s", [])))
        Traceback (most recent call last):
        ...
        wallaroo.errors.WallarooParameterError: An application must end with to_sink/s: ...
    """
    if not isinstance(pipeline, Pipeline):
        raise WallarooParameterError(
            f"build_application({app_name!r}, ...) expects a Pipeline; got {pipeline!r}"
        )
    if not pipeline.is_closed():
        raise WallarooParameterError(
            f"An application must end with to_sink/s: the pipeline given to "
            f"build_application({app_name!r}) has no sink; add .to_sink(...)"
        )
    return Application(str(app_name), g.LogicalGraph(pipeline._sinks))
