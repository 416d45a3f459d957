"""The metrics hub: gathers every worker's reports and answers what the HTTP API serves.

Workers report cumulative figures every second (wallaroo.runtime.metering). The hub keeps, per
worker, its last two reports (rates come from their difference), its figures of the last
``RECENT_SECONDS`` (latency percentiles are of that window, so a dashboard shows latency now,
not since the start), and a history of throughput for the last ``HISTORY_SECONDS``. A worker
that restarts (its pid or start time changes, or a count goes down) starts from zero again: the hub folds
what it had counted before into a base, so totals never go back.

Example::

    >>> import wallaroo
    >>> p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", [1]))
    ...      .to(wallaroo.computation(name="inc")(lambda x: x + 1))
    ...      .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
    >>> hub = MetricsHub(wallaroo.build_application("inc", p), workers=1)
    >>> [n["name"] for n in hub.graph()["nodes"]]
    ['n', 'inc', 'sink 0 (stdout)']
    >>> hub.update({"worker": "w", "pid": 1, "time": 10.0, "messages_in": 5, "messages_out": 5,
    ...             "stages": {"n1": {"node": "n1", "kind": "map", "name": "inc",
    ...                               "messages": 5, "latency_ns": None}},
    ...             "sinks": {}, "latency_ns": None, "backpressure": {},
    ...             "cpu_percent": 1.0, "rss_bytes": 1})
    >>> [(s["id"], s["messages"]) for s in hub.metrics()["stages"]]
    [('n0', 0), ('n1', 5)]
"""
from __future__ import annotations

import collections
import time

from wallaroo import graph as g
from wallaroo._core.histogram import Histogram
from wallaroo.plan import PhysicalPlan
from wallaroo.runtime.metering import REPORT_INTERVAL

#: Seconds of throughput history kept (the dashboard's charts).
HISTORY_SECONDS = 300
#: Latency percentiles and bins are of the last this many seconds.
RECENT_SECONDS = 60
#: A worker whose last report is older than this many intervals counts as not moving.
STALE_INTERVALS = 3


class Series:
    """One measured quantity of one worker: a message count and a latency histogram, cumulative
    across the worker's restarts.

    Example::

        >>> s = Series()
        >>> s.take(5, {"count": 1, "sum": 3, "min": 3, "max": 3, "bins": {"2": 1}})
        >>> s.take(2, None)       # the worker restarted: counted from zero again
        >>> s.messages
        7
    """

    __slots__ = ("base_messages", "base_latency", "last_messages", "last_latency")

    def __init__(self):
        self.base_messages = 0
        self.base_latency = Histogram()
        self.last_messages = 0
        self.last_latency = Histogram()

    def take(self, messages: int, latency: dict | None) -> None:
        """A new report's cumulative figures (``latency`` as ``Histogram.to_dict``, or None)."""
        histogram = Histogram.from_dict(latency) if latency else Histogram()
        if messages < self.last_messages or histogram.count < self.last_latency.count:
            self.restarted()
        self.last_messages = messages
        self.last_latency = histogram

    def restarted(self) -> None:
        """The worker started again from zero: keep what it had counted."""
        self.base_messages += self.last_messages
        self.base_latency.merge(self.last_latency)
        self.last_messages = 0
        self.last_latency = Histogram()

    @property
    def messages(self) -> int:
        """Messages counted, over every run of the worker."""
        return self.base_messages + self.last_messages

    def latency(self) -> Histogram:
        """The latency histogram over every run of the worker (a new object)."""
        merged = Histogram()
        merged.merge(self.base_latency)
        merged.merge(self.last_latency)
        return merged


class WorkerFigures:
    """What the hub knows of one worker: its series, its last reports and the window of its
    recent latency histograms."""

    def __init__(self, name: str):
        self.name = name
        self.pid: int | None = None
        #: (pid, start time) of the worker's process: a new one means it restarted.
        self.run: tuple | None = None
        self.series: dict[tuple, Series] = collections.defaultdict(Series)
        self.report: dict | None = None
        self.received_at = 0.0
        #: (report time, {series key: messages}) of the report before the last one.
        self.previous: tuple[float, dict] | None = None
        #: (report time, {series key: cumulative Histogram}), oldest first. It starts with an
        #: empty entry (nothing counted yet), so what the first report holds is recent too.
        self.window: collections.deque = collections.deque()
        #: Per back-pressure holder, [seconds held at the previous report, at the last, name].
        self.held: dict[str, list] = {}

    def take(self, report: dict, received_at: float) -> None:
        """Fold in a report (see wallaroo.runtime.metering)."""
        run = (report.get("pid"), report.get("started"))
        restarted = self.run is not None and run != self.run
        self.run = run
        if restarted:
            for series in self.series.values():
                series.restarted()
            self.held.clear()   # the new process's holds count from zero
        self.previous = None if self.report is None else (
            self.report["time"], {key: s.messages for key, s in self.series.items()})
        self.pid = report.get("pid")
        for stage_id, stage in report["stages"].items():
            self.series[("stage", stage_id)].take(stage["messages"], stage.get("latency_ns"))
        for sink_id, sink in report["sinks"].items():
            self.series[("pipeline", sink_id)].take(sink["messages"], sink.get("latency_ns"))
        self.series[("in",)].take(report["messages_in"], report.get("latency_ns"))
        self.series[("out",)].take(report["messages_out"], None)
        for by, hold in report.get("backpressure", {}).items():
            before = self.held.get(by, [0.0, 0.0])[1]
            self.held[by] = [before, hold["seconds"], hold["name"]]
        if not self.window:
            self.window.append((report.get("started") or report["time"], {}))
        self.report = report
        self.received_at = received_at
        now = report["time"]
        self.window.append((now, {key: s.latency() for key, s in self.series.items()}))
        while len(self.window) > 1 and self.window[0][0] < now - RECENT_SECONDS:
            self.window.popleft()

    def rate(self, key: tuple, now: float) -> float:
        """Messages per second of one series between the last two reports (0 when the worker
        has not reported for a while)."""
        if self.previous is None or now - self.received_at > STALE_INTERVALS * REPORT_INTERVAL:
            return 0.0
        then, counts = self.previous
        span = self.report["time"] - then
        series = self.series.get(key)
        if span <= 0 or series is None:
            return 0.0
        return max(0.0, (series.messages - counts.get(key, 0)) / span)

    def recent_latency(self, key: tuple) -> Histogram:
        """A series' latency over the window (the last ``RECENT_SECONDS``)."""
        if not self.window or key not in self.window[-1][1]:
            return Histogram()
        latest = self.window[-1][1][key]
        oldest = self.window[0][1].get(key)
        if oldest is None:   # the series began within the window
            return latest
        return latest.difference(oldest)

    def backpressure(self) -> list[dict]:
        """Who held this worker's sources, and the share of the last interval they did."""
        if self.previous is None:
            return []
        span = self.report["time"] - self.previous[0]
        return [{"by": by, "name": name, "share": min(1.0, max(0.0, (now - before) / span))}
                for by, (before, now, name) in self.held.items() if span > 0 and now > before]


class MetricsHub:
    """Every worker's reports for one application (``update``), and the views the HTTP API
    serves: ``graph()``, ``metrics()``, ``history()``; ``tick()`` adds a point to the
    history (the server calls it every interval).

    ``workers`` is how many workers the run has.
    """

    def __init__(self, app, workers: int, clock=time.time):
        self.app_name = app.name
        self.workers_expected = workers
        self.clock = clock
        self.started = clock()
        self.figures: dict[str, WorkerFigures] = {}
        self._graph = _describe_graph(app)
        self._stages = [dict(stage) for stage in _initial_stages(app)]
        self._stage_ids = {stage["id"] for stage in self._stages}
        self._pipelines = [n for n in self._graph["nodes"] if n["kind"] == g.SINK]
        self.history_points: collections.deque = collections.deque(
            maxlen=int(HISTORY_SECONDS / REPORT_INTERVAL))
        #: Checkpoints: None with resilience off.
        self.checkpoints: dict | None = None

    # -- input ----------------------------------------------------------------------------

    def update(self, report: dict) -> None:
        """Take one worker's report."""
        name = report["worker"]
        figures = self.figures.get(name)
        if figures is None:
            figures = self.figures[name] = WorkerFigures(name)
        figures.take(report, self.clock())
        for stage_id, stage in report["stages"].items():
            if stage_id not in self._stage_ids:   # a sub-stage: a decoder, an encoder
                self._stage_ids.add(stage_id)
                self._stages.append({"id": stage_id, "node": stage["node"],
                                     "kind": stage["kind"], "name": stage["name"],
                                     "pipeline": self._pipeline_of(stage["node"])})
                self._stages.sort(key=_stage_order)
        for sink_id, sink in report["sinks"].items():   # the names the workers use
            for node in self._graph["nodes"]:
                if node["id"] == sink_id:
                    node["name"] = sink["name"]

    def enable_checkpoints(self) -> None:
        """Resilience is on: the metrics say so even before the first checkpoint."""
        if self.checkpoints is None:
            self.checkpoints = {"last_id": None, "last_duration_s": None, "last_bytes": None,
                                "completed": 0, "restarts": 0}

    def checkpoint_done(self, checkpoint_id: int, seconds: float, size: int) -> None:
        """A checkpoint completed on every worker in ``seconds``, ``size`` bytes in all."""
        self.enable_checkpoints()
        self.checkpoints.update(last_id=checkpoint_id, last_duration_s=seconds,
                                last_bytes=size, completed=self.checkpoints["completed"] + 1)

    def workers_restarted(self) -> None:
        """The workers were started again to recover."""
        self.enable_checkpoints()
        self.checkpoints["restarts"] += 1

    def tick(self) -> None:
        """Add the throughput now to the history (called every interval)."""
        now = self.clock()
        self.history_points.append((
            now,
            {s["id"]: self._total_rate(("stage", s["id"]), now) for s in self._stages},
            {p["id"]: self._total_rate(("pipeline", p["id"]), now) for p in self._pipelines},
            {name: f.rate(("in",), now) for name, f in self.figures.items()}))

    # -- views ----------------------------------------------------------------------------

    def graph(self) -> dict:
        """The dataflow: nodes (sources, stages, sinks; merges left out) and edges, with
        exchanges marked."""
        return {"app": self.app_name, "nodes": [dict(n) for n in self._graph["nodes"]],
                "edges": [dict(e) for e in self._graph["edges"]],
                "workers": sorted(self.figures)}

    def metrics(self) -> dict:
        """Every stage, pipeline and worker now (see docs/metrics.md)."""
        now = self.clock()
        return {"app": self.app_name, "time": now, "interval_s": REPORT_INTERVAL,
                "uptime_s": now - self.started, "workers_expected": self.workers_expected,
                "stages": [self._series_view(dict(s), ("stage", s["id"]), now)
                           for s in self._stages],
                "pipelines": [self._series_view(
                                  {"id": p["id"], "node": p["id"], "name": p["pipeline"],
                                   "sink": p["name"]}, ("pipeline", p["id"]), now)
                              for p in self._pipelines],
                "workers": [self._worker_view(f, now) for _, f in sorted(self.figures.items())
                            if f.report is not None],
                "checkpoints": dict(self.checkpoints) if self.checkpoints else None}

    def history(self) -> dict:
        """Throughput per second over the last ``HISTORY_SECONDS``, oldest first."""
        points = list(self.history_points)
        return {"interval_s": REPORT_INTERVAL,
                "time": [p[0] for p in points],
                "stages": {s["id"]: [p[1].get(s["id"], 0.0) for p in points]
                           for s in self._stages},
                "pipelines": {p["id"]: [pt[2].get(p["id"], 0.0) for pt in points]
                              for p in self._pipelines},
                "workers": {name: [p[3].get(name, 0.0) for p in points] for name in self.figures}}

    def state(self) -> dict:
        """What the hub has counted, as JSON-ready data that ``restore`` takes back: a TCP
        cluster's initializer keeps it across the exec that restarts it to recover.

        Example::

            >>> import wallaroo
            >>> p = wallaroo.source("n", wallaroo.IterSourceConfig("n", [])).to_sink(
            ...     wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
            >>> hub = MetricsHub(wallaroo.build_application("c", p), workers=1)
            >>> hub.update({"worker": "w", "pid": 1, "time": 5.0, "messages_in": 3,
            ...             "messages_out": 3, "stages": {}, "sinks": {}, "latency_ns": None,
            ...             "cpu_percent": 0.0, "rss_bytes": 1})
            >>> again = MetricsHub(wallaroo.build_application("c", p), workers=1)
            >>> again.restore(hub.state())
            >>> again.figures["w"].series[("in",)].messages
            3
        """
        return {"started": self.started, "stages": self._stages,
                "checkpoints": self.checkpoints,
                "history": [list(point) for point in self.history_points],
                "workers": {name: [[list(key), series.messages, series.latency().to_dict()]
                                   for key, series in figures.series.items()]
                            for name, figures in self.figures.items()}}

    def restore(self, state: dict) -> None:
        """Take back what ``state()`` gave: every total goes on from there."""
        self.started = state["started"]
        self._stages = state["stages"]
        self._stage_ids = {stage["id"] for stage in self._stages}
        self.checkpoints = state["checkpoints"]
        self.history_points.extend(tuple(point) for point in state["history"])
        now = self.clock()
        for name, series_list in state["workers"].items():
            figures = self.figures[name] = WorkerFigures(name)
            for key, messages, latency in series_list:
                series = figures.series[tuple(key)]
                series.base_messages = messages
                series.base_latency = Histogram.from_dict(latency)
            figures.window.append((now, {key: s.latency() for key, s in figures.series.items()}))

    def series(self):
        """For Prometheus: (kind, id, worker, messages, cumulative Histogram) for every series
        of every worker; kind is "stage", "pipeline", "in" or "out"."""
        for name, figures in sorted(self.figures.items()):
            for key, series in figures.series.items():
                yield key[0], (key[1] if len(key) > 1 else None), name, series.messages, \
                    series.latency()

    def stage_info(self, stage_id: str) -> dict | None:
        """A stage's (or a sink's) id, node, kind, name and pipeline."""
        for stage in [*self._stages, *self._pipelines]:
            if stage["id"] == stage_id:
                return stage
        return None

    # -- helpers --------------------------------------------------------------------------

    def _pipeline_of(self, node_id: str) -> str:
        for node in self._graph["nodes"]:
            if node["id"] == node_id:
                return node["pipeline"]
        return ""

    def _total_rate(self, key: tuple, now: float) -> float:
        return sum(f.rate(key, now) for f in self.figures.values())

    def _series_view(self, view: dict, key: tuple, now: float) -> dict:
        total = Histogram()
        workers = {}
        messages = 0
        for name, figures in sorted(self.figures.items()):
            series = figures.series.get(key)
            if series is None:
                continue
            recent = figures.recent_latency(key)
            total.merge(recent)
            messages += series.messages
            workers[name] = {"messages": series.messages, "rate": figures.rate(key, now),
                             "latency_ns": recent.summary()}
        view.update(messages=messages, rate=sum(w["rate"] for w in workers.values()),
                    latency_ns=total.summary(), bins=_bins(total), workers=workers)
        return view

    def _worker_view(self, figures: WorkerFigures, now: float) -> dict:
        report = figures.report
        recent = figures.recent_latency(("in",))
        return {"name": figures.name, "pid": figures.pid,
                "messages_in": figures.series[("in",)].messages,
                "messages_out": figures.series[("out",)].messages,
                "rate_in": figures.rate(("in",), now), "rate_out": figures.rate(("out",), now),
                "latency_ns": recent.summary(), "bins": _bins(recent),
                "cpu_percent": report["cpu_percent"], "rss_bytes": report["rss_bytes"],
                "backpressure": figures.backpressure(),
                "report_age_s": max(0.0, now - figures.received_at)}


#: Where a sub-stage goes among its node's stages.
_SUB_STAGE_ORDER = {"": 0, "decoder": 1, "event_time": 2, "encoder": 3}


def _stage_order(stage: dict) -> tuple[int, int]:
    """Stages in the order of the graph: a node, then its decoder, event time or encoder."""
    sub = stage["id"].partition(".")[2]
    return int(stage["node"][1:]), _SUB_STAGE_ORDER.get(sub, 4)


def _bins(histogram: Histogram) -> list[dict]:
    return [{"le_ns": edge, "share": share} for edge, share in histogram.shares()]


def _describe_graph(app) -> dict:
    """The application's dataflow for display: nodes but merges, edges through merges."""
    graph = app.graph
    plan = PhysicalPlan(graph)
    ids = graph.ids
    nodes, edges = [], []
    sinks = {node: position for position, node in enumerate(graph.sinks)}
    for node in graph.nodes:
        if node.kind == g.MERGE:
            continue
        name = node.name
        if node.kind == g.SINK:
            name = f"sink {sinks[node]} ({node.spec.describe()})"
        nodes.append({"id": ids[node], "kind": node.kind, "name": name,
                      "pipeline": graph.pipeline_of(node)})
        for parent in _real_inputs(node):
            edges.append({"from": ids[parent], "to": ids[node],
                          "exchange": plan.is_exchange_into(node)})
    return {"nodes": nodes, "edges": edges}


def _real_inputs(node: g.Node) -> list[g.Node]:
    """A node's inputs, with each merge replaced by its own inputs."""
    found = []
    for parent in node.inputs:
        found.extend(_real_inputs(parent) if parent.kind == g.MERGE else [parent])
    return found


def _initial_stages(app) -> list[dict]:
    """The graph's stages (sources and operators; sinks are pipelines), before any report."""
    graph = app.graph
    return [{"id": graph.ids[n], "node": graph.ids[n], "kind": n.kind, "name": n.name,
             "pipeline": graph.pipeline_of(n)}
            for n in graph.nodes if n.kind not in (g.MERGE, g.SINK)]
