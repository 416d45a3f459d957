"""One worker: builds the chains of a plan, opens sources and sinks, runs on one event loop.

All user code runs on the loop's thread. Sources hand natural batches to their chains; chains
run fused in Cython down to the sinks. A run ends when every source is bounded and done, when
it is asked to stop (a signal), or when a stage fails under the ``fail`` policy; in every case
sources stop first and sinks are flushed before the run returns.

Example::

    >>> import asyncio, wallaroo
    >>> p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", [1, 2]))
    ...      .to(wallaroo.computation(name="inc")(lambda x: x + 1))
    ...      .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(lambda x: f"{x}\\n"))))
    >>> result = asyncio.run(Worker(wallaroo.build_application("inc", p)).run())
    2
    3
    >>> result.exit_code
    0
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from wallaroo import graph as g
from wallaroo._core.chain import (
    WATERMARK_END_OF_INPUT, WATERMARK_NONE, Batch, Chain, ConstantKeyOp, DecodeOp, EncodeOp,
    EventTimeOp, FlatMapOp, KeyByOp, MapOp, StateOp,
)
from wallaroo._core.hashing import DEFAULT_KEY_GROUPS, key_group
from wallaroo._core.histogram import Histogram
from wallaroo._core.windows import CountWindowOp, RangeWindowOp, SessionWindowOp, WindowOp
from wallaroo.connectors.base import Sink
from wallaroo.connectors.connector import ConnectorSink, ConnectorSource
from wallaroo.connectors.files import FileSink, FileSource, StdoutSink
from wallaroo.connectors.generated import GenSource, IterSource
from wallaroo.connectors.memory import CollectingSink
from wallaroo.connectors.tcp import TCPSink, TCPSource
from wallaroo.errors import NotSupportedYet, StageFailed, WallarooParameterError
from wallaroo.plan import PhysicalPlan
from wallaroo.runtime.errors import ErrorPolicy
from wallaroo.runtime.flow import FlowControl
from wallaroo.runtime.placement import Placement
from wallaroo.runtime.progress import ProgressReporter

log = logging.getLogger("wallaroo")

SOURCES = {"tcp": TCPSource, "file": FileSource, "gen": GenSource, "iter": IterSource,
           "source_connector": ConnectorSource}
SINKS = {"tcp": TCPSink, "file": FileSink, "stdout": StdoutSink, "memory": CollectingSink,
         "sink_connector": ConnectorSink}
#: How often (seconds) ingest-time watermarks advance and windows check idle inputs and timeouts.
TICK_SECONDS = 0.1
#: The longest idle timeout (seconds) a run takes: a year.
MAX_IDLE_TIMEOUT = 365 * 86400.0


@dataclass
class RunOptions:
    """How a worker runs: error policy, dead-letter file, key groups, flush time, the idle
    timeout of watermarks (seconds), progress.

    Example::

        >>> RunOptions().on_error
        'fail'
    """

    on_error: str = "fail"
    dead_letter: str | None = None
    key_groups: int = DEFAULT_KEY_GROUPS
    flush_timeout: float = 30.0
    idle_timeout: float = 5.0
    show_progress: bool = False
    #: With a directory, the run takes checkpoints there (``--run-with-resilience``).
    resilience_dir: str | None = None
    #: Seconds between checkpoints (``--time-between-checkpoints``, given in nanoseconds).
    checkpoint_interval: float = 1.0
    #: Workers report their metrics every second (off with ``--no-metrics``).
    metrics: bool = True
    #: No per-interval metrics line in the log (``--quiet``).
    quiet: bool = False

    @property
    def resilient(self) -> bool:
        """Whether the run takes checkpoints and recovers from them."""
        return self.resilience_dir is not None


@dataclass
class RunResult:
    """How a run ended. ``exit_code``: 0 clean, 1 a stage failed or output was lost.

    Example::

        >>> RunResult().exit_code
        0
    """

    failure: BaseException | None = None
    undelivered: list = field(default_factory=list)
    error_counts: dict = field(default_factory=dict)
    ingested: int = 0
    sinks: list = field(default_factory=list)
    late: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failure is not None or self.undelivered else 0


class StartupError(Exception):
    """A source or sink could not be opened; the message says which and why."""


class SourceContext:
    """What a source sees of the worker (see wallaroo.connectors.base)."""

    def __init__(self, worker: "Worker", node: g.Node, emitter: Chain, origin: int):
        self.worker = worker
        self.name = node.name
        self.flow = worker.flow
        self.emitter = emitter
        self.origin = origin
        placement = worker.placement
        #: (this worker's index, the number of workers): a source that splits its input
        #: (a file's byte ranges) reads share ``index`` of ``count``.
        self.share = (placement.index, placement.count)
        #: Local workers all accept on a TCP source's address (SO_REUSEPORT).
        self.reuse_port = not placement.alone or placement.shared_ports
        self.key = node.name
        self.group = key_group(node.name, worker.options.key_groups)
        #: With event time taken from the values, the watermark comes from the extractor;
        #: with ingest time it is the clock.
        self.ingest_time = node.options.get("event_time") is None
        self.done = False
        #: Messages this source has emitted (on this worker).
        self.emitted = 0
        self.worker_name = placement.name
        self.resilient = worker.options.resilient
        #: Batches emitted while a checkpoint barrier holds the input (see ``release_held``).
        self._held: list[Batch] = []

    def emit(self, values: list) -> bool:
        """Push a natural batch into the dataflow; False once the run is stopping."""
        worker = self.worker
        if worker.stopping:
            return False
        worker.ingested += len(values)
        self.emitted += len(values)
        now = time.time_ns()
        mark = now if self.ingest_time else WATERMARK_NONE
        self._push(Batch(values, None, self.key, None, self.group, now, None, self.origin, mark))
        return not worker.stopping

    def advance_watermark(self, mark: int) -> None:
        """Send the watermark ``mark`` alone (the clock's, or the end of input) to the windows
        downstream, if there are any."""
        if self.emitter.sees_watermarks:
            self._push(Batch([], None, self.key, None, self.group, time.time_ns(), None,
                             self.origin, mark))

    def _push(self, batch: Batch) -> None:
        if self.worker.barrier_pending:   # after the barrier: it belongs to the next checkpoint
            self._held.append(batch)
            return
        started = time.monotonic_ns()
        try:
            self.emitter.push(batch)
        except Exception as exc:  # an engine fault, not a user error: those are handled in ops
            self.crash(exc)
        self.worker.passed(started, len(batch.values))

    def release_held(self) -> None:
        """The checkpoint's snapshot is taken: push what was emitted since its barrier."""
        held, self._held = self._held, []
        for batch in held:
            self._push(batch)

    def bad_input(self, kind: str, value, exc: BaseException) -> None:
        """Report input this source could not take (bad frame, ...)."""
        self.worker.errors.bad_input(self.name, kind, value, exc)

    def user_error(self, stage: str, value, exc: BaseException) -> bool:
        """Report user code of this source that raised (a generator)."""
        return self.worker.errors.user_error(stage, value, exc)

    def finished(self) -> None:
        """A bounded source has read all of its input: its open windows can all fire (unless
        the run is stopping because something failed)."""
        self.done = True
        if self.worker.failure is None:
            self.advance_watermark(WATERMARK_END_OF_INPUT)
        self.worker._source_finished()

    def crash(self, exc: BaseException) -> None:
        """Something unexpected broke: stop the run and report it."""
        self.worker.crash(exc)


class SinkProbe:
    """Stands before a sink: counts what reaches it and records, per message, the time from
    ingest at the source to the sink's write (``latency``, nanoseconds): the start-to-end
    latency of the sink's pipeline. ``node_id`` is the sink's id in the graph.

    Example::

        >>> class Keep:
        ...     def push(self, batch): pass
        >>> probe = SinkProbe("out", Keep(), "n1")
        >>> probe.push(Batch([b"a", b"b"], ingest_ns=time.time_ns()))
        >>> probe.messages, probe.latency.count
        (2, 2)
    """

    def __init__(self, name: str, sink, node_id: str = ""):
        self.name = name
        self.node_id = node_id
        self.sink = sink
        self.messages = 0
        self.latency = Histogram()

    def push(self, batch: Batch) -> None:
        self.sink.push(batch)
        n = len(batch.values)
        self.messages += n
        self.latency.record_many(time.time_ns() - batch.ingest_ns, n)

    def report(self) -> dict:
        """What reached the sink: name, message count, latency histogram and summary."""
        return {"name": self.name, "messages": self.messages,
                "latency_ns": self.latency.to_dict(), "latency_summary_ns": self.latency.summary()}


class SinkContext:
    """What a sink sees of the worker: its name, the back-pressure gate, and ``part_path``
    (the file a file sink of this worker writes). A sink that closes the gate stops both this
    worker's sources and what it takes from other workers."""

    def __init__(self, worker: "Worker", name: str):
        self.name = name
        self.flow = FlowControl.joined(worker.flow, worker.intake)
        self.part_path = worker.placement.part_path
        #: Other workers write to the same standard output.
        self.shares_output = not worker.placement.alone
        self.worker_name = worker.placement.name
        self.app_name = worker.app.name
        #: With resilience on, transactional sinks commit in two phases.
        self.resilient = worker.options.resilient


class AbsentSource:
    """Stands for a source another worker reads (see ``Placement.runs``): it ends at once, so
    its input counts as done and its watermark as at the end here."""

    bounded = True

    def __init__(self, source):
        self.source = source
        self.ctx = source.ctx

    async def start(self) -> None:
        asyncio.get_running_loop().call_soon(self.ctx.finished)

    async def stop(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.source.describe()} (read by the first worker)"

    def progress(self) -> tuple[int, int | None]:
        return (0, 0)

    def position(self):
        """Nothing is read here: nothing to go back to."""
        return None

    def restore(self, position) -> None:
        pass

    def checkpoint_complete(self, position) -> None:
        pass

    def announce_restart(self) -> None:
        pass


class Worker:
    """Runs one application on the current event loop.

    ``source_configs`` / ``sink_configs`` map a source name / sink position to a config that
    replaces the application's own (wallaroo.testing and ``--in``/``--out`` use them).

    With several workers, ``placement`` says which one this is, and ``exchange(edge, target)``
    gives what an exchange edge of the plan pushes to in place of ``target`` (something that
    routes each message to the worker owning its key group; see wallaroo.cluster.exchange).
    """

    def __init__(self, app, options: RunOptions | None = None,
                 source_configs: dict | None = None, sink_configs: dict | None = None,
                 placement: Placement | None = None, exchange=None):
        self.app = app
        self.options = options or RunOptions()
        self.placement = placement or Placement(key_groups=self.options.key_groups)
        if self.options.key_groups <= 0:
            raise WallarooParameterError(
                f"key_groups must be a positive number, not {self.options.key_groups}")
        if not 0 < self.options.idle_timeout <= MAX_IDLE_TIMEOUT:
            raise WallarooParameterError(
                f"the idle timeout must be more than 0 and at most {MAX_IDLE_TIMEOUT:.0f} "
                f"seconds, not {self.options.idle_timeout}")
        self.plan = PhysicalPlan(app.graph)
        self.errors = ErrorPolicy(self.options.on_error, self.options.dead_letter,
                                  on_failure=self._on_failure)
        self.flow = FlowControl()
        #: Closed by sinks that cannot keep up (not by full exchange channels): while it is
        #: closed, this worker stops taking batches from other workers too.
        self.intake = FlowControl()
        #: Called, when set, once every source of this worker is done (instead of ending
        #: the run: with several workers the cluster decides when the run ends).
        self.on_input_done = None
        #: Called, when set, with the failure once a stage fails or the engine breaks (with
        #: several workers, the others must stop too, even during a stop).
        self.on_failed = None
        #: Called, when set, for each stop request (a signal) instead of stopping here: with
        #: several workers the coordinator stops them all, and a second request ends the run
        #: without waiting.
        self.on_stop_requested = None
        self.sources_opened_at: float | None = None
        #: True from a checkpoint barrier until its snapshot is taken: input waits.
        self.barrier_pending = False
        self.stopping = False
        self.failure: BaseException | None = None
        self.ingested = 0
        #: Per message, the time a batch takes to pass through this worker: from its arrival
        #: (a source's emit, a record from another worker) to the end of its synchronous pass.
        self.pass_latency = Histogram()
        ids = app.graph.ids
        #: What metrics measure: (stage id, graph node id, kind, name, op) for every op:
        #: the graph's stages, a source's decoder and event-time extractor, a sink's encoder.
        self.measured_ops: list[tuple[str, str, str, str, object]] = []
        self._stopped: asyncio.Event | None = None
        source_configs = source_configs or {}
        sink_configs = sink_configs or {}
        self.sinks = []
        #: One probe before each sink: message counts and ingest-to-write latency.
        self.sink_probes: list[SinkProbe] = []
        targets: dict[object, object] = {}
        for position, node in enumerate(self.plan.sinks):
            config = sink_configs.get(position, node.spec)
            name = f"sink {position} ({config.describe()})"
            sink = self._connector(SINKS, config, "sink", name)(config, SinkContext(self, name))
            self.sinks.append(sink)
            probe = SinkProbe(name, sink, ids[node])
            self.sink_probes.append(probe)
            targets[node] = probe
            if sink.encodes:  # the in-memory sink of wallaroo.testing takes values as they are
                stage = f"{name}: encoder {_function_name(config.encoder)!r}"
                encode = EncodeOp(stage, config.encoder.encode, self.errors)
                self.measured_ops.append((f"{ids[node]}.encoder", ids[node], "encoder", stage,
                                          encode))
                targets[node] = Chain([encode], [probe])
        #: The running chain of each chain of the plan (their ops hold the live state).
        self.chains = {}
        for spec in self.plan.chains:
            ops = [self._op(n) for n in spec.nodes]
            self.measured_ops += [(ids[n], ids[n], n.kind, n.name, op)
                                  for n, op in zip(spec.nodes, ops)]
            self.chains[spec] = Chain(ops)
        targets.update(self.chains)
        # On one worker an exchange edge hands batches straight on: every key group is local.
        # Wired from the last chain back, so each knows whether watermarks matter after it.
        for spec in reversed(self.plan.chains):
            chain = self.chains[spec]
            for edge in spec.edges:
                target = self._target(targets, edge, exchange)
                chain.add_output(target, _wants_watermarks(target))
        self._window_chains = [chain for chain in self.chains.values()
                               if isinstance(chain.ops[0], WindowOp)]
        self.sources = []
        self.source_contexts = []
        for node, edges in self.plan.source_edges.items():
            config = source_configs.get(node.name, node.spec)
            cls = self._connector(SOURCES, config, "source", node.name)
            ops = []
            decoder = getattr(config, "decoder", None)  # raw bytes in, values out
            if decoder is not None:
                stage = f"{node.name}: decoder {_function_name(decoder)!r}"
                ops.append(DecodeOp(stage, decoder.decode, self.errors))
                self.measured_ops.append((f"{ids[node]}.decoder", ids[node], "decoder", stage,
                                          ops[-1]))
            event_time = node.options.get("event_time")
            if event_time is not None:
                fn_name = getattr(event_time, "__qualname__", type(event_time).__name__)
                stage = f"{node.name}: event_time {fn_name!r}"
                ops.append(EventTimeOp(stage, event_time, self.errors))
                self.measured_ops.append((f"{ids[node]}.event_time", ids[node], "event_time",
                                          stage, ops[-1]))
            emitter = Chain(ops)
            for edge in edges:
                target = self._target(targets, edge, exchange)
                emitter.add_output(target, _wants_watermarks(target))
            ctx = SourceContext(self, node, emitter, self.placement.origin(self.plan.origin(node)))
            self.source_contexts.append(ctx)
            source = cls(config, ctx)
            if not self.placement.runs(getattr(source, "spread", "first")):
                source = AbsentSource(source)
            self.sources.append(source)

    def passed(self, started_ns: int, messages: int) -> None:
        """A batch of ``messages`` that arrived at ``started_ns`` (``time.monotonic_ns()``) has
        passed through this worker: record the time it took (``pass_latency``)."""
        self.pass_latency.record_many(time.monotonic_ns() - started_ns, messages)

    def _target(self, targets: dict, edge, exchange):
        """What an edge of the plan pushes to: its target, or an exchange in front of it."""
        target = targets[edge.target]
        if edge.exchange and exchange is not None:
            return exchange(edge, target)
        return target

    @staticmethod
    def _connector(table: dict, config, role: str, name: str):
        cls = table.get(getattr(config, "kind", None))
        if cls is None:
            feature = getattr(config, "feature", "") or f"{type(config).__name__} {role}s"
            raise NotSupportedYet(
                f"{role} {name!r}: {feature} are not supported by this version of the engine yet; "
                f"use TCP, file, generator or iterable {role}s"
            )
        return cls

    def _op(self, node: g.Node):
        spec, name, errors = node.spec, node.name, self.errors
        if node.kind == g.MAP:
            return MapOp(name, spec.compute, errors)
        if node.kind == g.FLAT_MAP:
            return FlatMapOp(name, spec.compute_multi, errors)
        if node.kind == g.STATE:
            return StateOp(name, spec.compute, errors, spec.initial_state, False)
        if node.kind == g.STATE_MULTI:
            return StateOp(name, spec.compute_multi, errors, spec.initial_state, True)
        if node.kind == g.KEY_BY:
            return KeyByOp(name, spec.extract_key, errors, self.options.key_groups)
        if node.kind == g.COLLECT:
            return ConstantKeyOp(name, errors, "collect", self.options.key_groups)
        if node.kind == g.WINDOW:
            return self._window_op(node)
        raise AssertionError(f"no operator for {node!r}")

    def _window_op(self, node: g.Node) -> WindowOp:
        spec, params = node.spec, node.spec.params
        nodes = self.plan.graph.nodes
        # every worker's instance of an input reaches this window when an exchange lies
        # between them; otherwise only this worker's own instance does
        instances = {i: (self.placement.origins(i) if self.plan.routed_between(nodes[i], node, True)
                         else [self.placement.origin(i)])
                     for i in self.plan.watermark_inputs(node)}
        inputs = [origin for i in instances for origin in instances[i]]
        # A message moves its input's watermark only when it comes the one way its input's
        # messages come: not from a window (its outputs trail its watermark), nor, with
        # several workers, from an input whose messages cross two exchanges on the way: they
        # come through every worker in no order (its batches' aligned watermarks move it).
        unmarked = [origin for i in instances if nodes[i].kind == g.WINDOW or (
                        not self.placement.alone and self.plan.routed_twice(nodes[i], node))
                    for origin in instances[i]]
        common = (node.name, spec.aggregation, spec.output_takes_window, self.errors, inputs,
                  int(self.options.idle_timeout * 1e9))
        if spec.kind == "range":
            op = RangeWindowOp(*common, params["range"], params["slide"], params["delay"],
                               params["late_data_policy"], window_inputs=unmarked)
        elif spec.kind == "session":
            op = SessionWindowOp(*common, params["gap"], params["delay"],
                                 params["late_data_policy"], window_inputs=unmarked)
        else:
            op = CountWindowOp(*common, params["count"], params["timeout"], window_inputs=unmarked)
        op.origin = self.placement.origin(self.plan.origin(node))
        return op

    def state_counts(self) -> dict[str, int]:
        """Keys with state on this worker, per state computation and window.

        Example::

            >>> import wallaroo
            >>> count = wallaroo.state_computation(name="count", state=list)(lambda v, s: v)
            >>> p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", []))
            ...      .key_by(str).to(count).to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
            >>> Worker(wallaroo.build_application("c", p)).state_counts()
            {'count': 0}
        """
        counts: dict[str, int] = {}
        for chain in self.chains.values():
            for op in chain.ops:
                if isinstance(op, StateOp):
                    counts[op.name] = len(op.states)
                elif isinstance(op, WindowOp):
                    counts[op.name] = len(op.keys())
        return counts

    def stateful_ops(self) -> list:
        """The state computations and windows of this worker (what checkpoints hold).

        Example::

            >>> import wallaroo
            >>> count = wallaroo.state_computation(name="count", state=list)(lambda v, s: v)
            >>> p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", []))
            ...      .key_by(str).to(count).to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
            >>> [op.name for op in Worker(wallaroo.build_application("c", p)).stateful_ops()]
            ['count']
        """
        return [op for chain in self.chains.values() for op in chain.ops
                if isinstance(op, (StateOp, WindowOp))]

    def late_counts(self) -> dict[str, int]:
        """Late messages each window dropped (only windows that dropped some)."""
        return {chain.ops[0].name: chain.ops[0].late for chain in self._window_chains
                if chain.ops[0].late}

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, on_started=None) -> RunResult:
        """Open everything, process until the end, stop sources, flush and close sinks."""
        await self.open_sinks()
        await self.open_sources()
        if on_started is not None:
            on_started(self)
        progress = None
        if self.options.show_progress and all(s.bounded for s in self.sources):
            progress = ProgressReporter(lambda: self.ingested, lambda: (s.progress() for s in self.sources))
            progress.start()
        try:
            await self._stopped.wait()
        finally:
            if progress is not None:
                progress.stop()
            await self.stop_input()
            await self.finish_output()
        return self.result()

    def result(self) -> RunResult:
        """How the run went (once ``finish_output`` has returned)."""
        return RunResult(self.failure, self._undelivered, dict(self.errors.counts), self.ingested,
                         [probe.report() for probe in self.sink_probes], self.late_counts())

    async def open_sinks(self) -> None:
        """Open every sink (the first step of a run); StartupError if one cannot be."""
        self._stopped = asyncio.Event()
        self._abandon = asyncio.Event()
        self._ticker = None
        if self.stopping:
            self._stopped.set()
        await self._open(self.sinks)

    async def open_sources(self) -> None:
        """Start every source, and the clock of the windows; StartupError if a source cannot
        be opened (the sinks are closed then too)."""
        await self._open(self.sources, also_close=self.sinks)
        #: When input began (time.monotonic()): processing time counts from here.
        self.sources_opened_at = time.monotonic()
        if self._window_chains:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def _open(self, connectors: list, also_close: list = ()) -> None:
        opened = []
        try:
            for connector in connectors:
                await connector.start()
                opened.append(connector)
        except Exception as exc:
            for connector in [*reversed(opened), *also_close]:
                await _quietly(connector.close() if isinstance(connector, Sink) else connector.stop())
            raise StartupError(str(exc)) from exc

    async def wait_stopped(self) -> None:
        """Return once the run is asked to stop (all input done, a signal, a failure)."""
        await self._stopped.wait()

    async def stop_input(self, fire_windows: bool = True) -> None:
        """Stop every source. Unless something failed (or ``fire_windows`` is False), the end
        of input reaches the windows, which fire every open window."""
        self.stopping = True
        for source in self.sources:
            await _quietly(source.stop())
        if self.failure is None and fire_windows:
            for ctx in self.source_contexts:
                if not ctx.done:
                    ctx.done = True
                    ctx.advance_watermark(WATERMARK_END_OF_INPUT)

    async def finish_output(self) -> None:
        """Flush every sink (until the flush timeout, or a second stop request), then close
        them; what could not be delivered is in ``result().undelivered``."""
        if self._ticker is not None:
            self._ticker.cancel()
        flushes = [asyncio.ensure_future(sink.flush(self.options.flush_timeout))
                   for sink in self.sinks]
        abandon = asyncio.ensure_future(self._abandon.wait())
        waiting = set(flushes)
        while waiting and not abandon.done():
            _, waiting = await asyncio.wait(waiting | {abandon},
                                            return_when=asyncio.FIRST_COMPLETED)
            waiting.discard(abandon)
        abandon.cancel()
        for flush in waiting:
            flush.cancel()
        await asyncio.gather(*flushes, return_exceptions=True)
        self._undelivered = [sink.describe() for sink, flush in zip(self.sinks, flushes)
                             if flush.cancelled() or flush.result() is not True]
        for sink in self.sinks:
            await _quietly(sink.close())
        self.errors.close()

    def request_stop(self) -> None:
        """Stop reading input and end the run cleanly: sinks are flushed before it returns."""
        self.stopping = True
        if self._stopped is not None:
            self._stopped.set()

    def abandon_flush(self, why: str = "second stop request") -> None:
        """Stop waiting for sinks to drain: what they still hold is reported undelivered."""
        if not self._abandon.is_set():
            log.warning("%s: not waiting for sinks to drain", why)
            self._abandon.set()

    def signal_stop(self) -> None:
        """What SIGTERM and SIGINT do: the first stops cleanly, a second one stops waiting for
        sinks to drain (what they still hold is reported as undelivered). With several
        workers, ``on_stop_requested`` (when set) passes each request on to the cluster."""
        if self.on_stop_requested is not None:
            self.stopping = True
            self.on_stop_requested()
            return
        if self.stopping and self._stopped is not None and self._stopped.is_set():
            self.abandon_flush()
            return
        self.request_stop()

    async def _tick_forever(self) -> None:
        """Move ingest-time watermarks with the clock; let windows see time pass (idle inputs,
        count-window timeouts)."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            if self.barrier_pending:   # time does not move inside a checkpoint
                continue
            now = time.time_ns()
            for ctx in self.source_contexts:
                if ctx.ingest_time and not ctx.done and not self.stopping:
                    ctx.advance_watermark(now)
            monotonic = time.monotonic_ns()
            for chain in self._window_chains:
                try:
                    chain.tick(monotonic)
                except Exception as exc:
                    self.crash(exc)

    def _source_finished(self) -> None:
        if all(ctx.done for ctx in self.source_contexts):
            if self.on_input_done is not None:
                self.on_input_done()
            else:
                self.request_stop()

    @property
    def input_done(self) -> bool:
        """Whether every source of this worker has ended (or been stopped)."""
        return all(ctx.done for ctx in self.source_contexts)

    def _on_failure(self, failure: StageFailed) -> None:
        first = self.failure is None
        self.failure = failure
        self.request_stop()
        if first and self.on_failed is not None:
            self.on_failed(failure)

    def crash(self, exc: BaseException) -> None:
        """An unexpected error inside the engine or a connector: stop and report it."""
        first = self.failure is None
        if first:
            self.failure = exc
            log.error("internal error, stopping: %s: %s", type(exc).__name__, exc, exc_info=exc)
        self.request_stop()
        if first and self.on_failed is not None:
            self.on_failed(exc)

    def describe(self) -> str:
        """The startup line's body: each source with its address and each sink."""
        parts = [f'source "{ctx.name}" at {src.describe()}'
                 for ctx, src in zip(self.source_contexts, self.sources)]
        parts += [f"sink {sink.describe()}" for sink in self.sinks]
        return " | ".join(parts)


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception as exc:
        log.warning("while stopping: %s: %s", type(exc).__name__, exc)


def _wants_watermarks(target) -> bool:
    """Whether ``target`` (a chain, an exchange or a sink) uses batches that carry only a
    watermark."""
    return bool(getattr(target, "sees_watermarks", False))


def _function_name(stage) -> str:
    """The user's name for a decorated object (its ``name()``), else its type's name."""
    name = getattr(stage, "name", None)
    return str(name()) if callable(name) else type(stage).__name__
