"""What one worker reports to the metrics hub every second, and its log line.

A report is cumulative since the worker started (the hub takes rates from differences): per
stage its message count and latency histogram (sampled: see
``wallaroo._core.chain.set_latency_sampling``), per sink the start-to-end latency of its
pipeline, and for the worker its messages in and out, the time batches take to pass through
it, who held its sources back (back-pressure), its CPU and RSS.

Example::

    >>> import wallaroo
    >>> from wallaroo.runtime.worker import Worker
    >>> p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", [1, 2]))
    ...      .to(wallaroo.computation(name="inc")(lambda x: x + 1))
    ...      .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
    >>> report = WorkerMeter(Worker(wallaroo.build_application("inc", p))).report()
    >>> sorted(report["stages"]), report["worker"]
    (['n0', 'n1', 'n2.encoder'], 'initializer')
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import psutil

from wallaroo._core.histogram import Histogram
from wallaroo.runtime.checkpointing import BARRIER

log = logging.getLogger("wallaroo")

#: Seconds between two reports.
REPORT_INTERVAL = 1.0
#: The name back-pressure goes by while a checkpoint barrier holds the sources.
CHECKPOINT_HOLDER = "checkpoint"


class WorkerMeter:
    """Takes a worker's figures (``report()``) and says them in one log line (``log_line``).

    ``counters`` are the worker's exchange counters (records and messages to and from other
    workers), when it has any.

    Example::

        >>> import wallaroo
        >>> from wallaroo.runtime.worker import Worker
        >>> p = wallaroo.source("n", wallaroo.IterSourceConfig("n", [])).to_sink(
        ...     wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
        >>> meter = WorkerMeter(Worker(wallaroo.build_application("copy", p)))
        >>> meter.log_line(meter.report()).split()[:4]
        ['metrics', 'worker=initializer', 'in=0', 'out=0']
    """

    def __init__(self, worker, counters=None):
        self.worker = worker
        self.counters = counters
        self.process = psutil.Process()
        self.process.cpu_percent(None)   # the first call starts the measure
        self._cpu = (time.monotonic(), 0.0)
        #: When this process began reporting: with the pid, it tells a restarted worker
        #: (which counts from zero again) from the one before, even after an exec.
        self.started = time.time()
        self._last: tuple[float, int, int] | None = None
        ids = worker.app.graph.ids
        self._sources = [(ids[node], node.name, ctx)
                         for node, ctx in zip(worker.plan.source_edges, worker.source_contexts)]

    def messages_in(self) -> int:
        """Messages this worker took: from its sources and from other workers."""
        received = self.counters.messages_received if self.counters is not None else 0
        return self.worker.ingested + received

    def messages_out(self) -> int:
        """Messages this worker handed on: to its sinks and to other workers."""
        sent = self.counters.messages_sent if self.counters is not None else 0
        return sum(probe.messages for probe in self.worker.sink_probes) + sent

    def report(self) -> dict:
        """The worker's figures now, cumulative since it started (JSON-ready)."""
        worker = self.worker
        stages = {}
        for stage_id, name, ctx in self._sources:
            stages[stage_id] = {"node": stage_id, "kind": "source", "name": name,
                                "messages": ctx.emitted, "latency_ns": None}
        for stage_id, node_id, kind, name, op in worker.measured_ops:
            stages[stage_id] = {"node": node_id, "kind": kind, "name": name,
                                "messages": op.processed, "latency_ns": op.latency.to_dict()}
        sinks = {probe.node_id: {"name": probe.name, "messages": probe.messages,
                                 "latency_ns": probe.latency.to_dict()}
                 for probe in worker.sink_probes}
        memory = self.process.memory_info()
        return {"worker": worker.placement.name, "pid": os.getpid(), "started": self.started,
                "time": time.time(),
                "stages": stages, "sinks": sinks,
                "messages_in": self.messages_in(), "messages_out": self.messages_out(),
                "latency_ns": worker.pass_latency.to_dict(),
                "backpressure": self._backpressure(),
                "cpu_percent": self._cpu_percent(), "rss_bytes": memory.rss}

    def _cpu_percent(self) -> float:
        """CPU use since the last measure; a measure over less than half an interval (the last
        report, at the end of a run) is noise, so the previous one stands."""
        measured_at, percent = self._cpu
        now = time.monotonic()
        if now - measured_at >= REPORT_INTERVAL / 2:
            self._cpu = (now, self.process.cpu_percent(None))
        return self._cpu[1]

    def _backpressure(self) -> dict[str, dict]:
        """Seconds each holder has kept this worker's sources waiting, by who it is: a sink
        (its node id), a full link to another worker (``worker:NAME``) or a checkpoint."""
        sink_ids = {id(probe.sink): (probe.node_id, probe.name)
                    for probe in self.worker.sink_probes}
        held = {}
        for who, seconds in self.worker.flow.held_seconds().items():
            if id(who) in sink_ids:
                by, name = sink_ids[id(who)]
            elif getattr(who, "peer", None) is not None:
                by = name = f"worker:{who.peer}"
            elif who == BARRIER:
                by = name = CHECKPOINT_HOLDER
            else:
                by = name = str(who)
            entry = held.setdefault(by, {"name": name, "seconds": 0.0})
            entry["seconds"] += seconds
        return held

    def log_line(self, report: dict) -> str:
        """One structured line (key=value) for the log: messages in and out so far, their
        rates since the previous line, the worker's p99 latency, CPU and RSS."""
        now, m_in, m_out = report["time"], report["messages_in"], report["messages_out"]
        in_rate = out_rate = 0.0
        if self._last is not None and now > self._last[0]:
            span = now - self._last[0]
            in_rate, out_rate = (m_in - self._last[1]) / span, (m_out - self._last[2]) / span
        self._last = (now, m_in, m_out)
        p99 = Histogram.from_dict(report["latency_ns"]).percentile(0.99)
        return (f"metrics worker={report['worker']} in={m_in} out={m_out} "
                f"in_rate={in_rate:.1f} out_rate={out_rate:.1f} p99_ms={p99 / 1e6:.3f} "
                f"cpu={report['cpu_percent']:.0f}% rss_mb={report['rss_bytes'] / 2**20:.1f}")



class Reporter:
    """Sends ``meter``'s report every ``REPORT_INTERVAL`` seconds with ``send(report)`` and, unless
    ``quiet``, logs its line at INFO; ``stop()`` sends a last one.

    Example::

        >>> import asyncio, wallaroo
        >>> from wallaroo.runtime.worker import Worker
        >>> p = wallaroo.source("n", wallaroo.IterSourceConfig("n", [])).to_sink(
        ...     wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
        >>> sent = []
        >>> async def report_twice():
        ...     reporter = Reporter(WorkerMeter(Worker(wallaroo.build_application("c", p))),
        ...                         sent.append, quiet=True)
        ...     reporter.start(interval=0.01)
        ...     await asyncio.sleep(0.05)
        ...     reporter.stop()
        >>> asyncio.run(report_twice())
        >>> len(sent) >= 2 and sent[-1]["worker"] == "initializer"
        True
    """

    def __init__(self, meter: WorkerMeter, send, quiet: bool = False):
        self.meter = meter
        self.send = send
        self.quiet = quiet
        self._task: asyncio.Task | None = None

    def start(self, interval: float = REPORT_INTERVAL) -> None:
        """Report every ``interval`` seconds from now on."""
        self._task = asyncio.get_running_loop().create_task(self._every(interval))

    def stop(self) -> None:
        """Stop reporting, after one last report (the run's final figures)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
            self.report()

    def report(self) -> None:
        """Send (and log) the figures now; a failure is logged (metrics must never stop the
        run)."""
        try:
            report = self.meter.report()
            self.send(report)
            if not self.quiet:
                log.info("%s", self.meter.log_line(report))
        except Exception as exc:
            log.warning("metrics: a report failed: %s: %s", type(exc).__name__, exc)

    async def _every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.report()
