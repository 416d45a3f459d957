"""The hub's figures as Prometheus text (exposition format 0.0.4), which a Prometheus server
scrapes from ``/metrics`` as it is.

Counters count messages; histograms are latencies in seconds, with one bucket per power-of-two
bin: ``le`` is the bin's largest value, 2**b - 1 ns (latencies are whole nanoseconds), up to about
18 minutes, then +Inf. A stage's latency histogram
counts the messages whose work was timed (one in ``latency_sampling()``), so its ``_count`` is
smaller than the stage's message counter.

Example::

    >>> import wallaroo
    >>> from wallaroo.metrics.hub import MetricsHub
    >>> p = wallaroo.source("n", wallaroo.IterSourceConfig("n", [])).to_sink(
    ...     wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
    >>> text = exposition(MetricsHub(wallaroo.build_application("copy", p), workers=1))
    >>> text.splitlines()[:2]
    ['# HELP wallaroo_stage_messages_total Messages a stage has taken.', '# TYPE wallaroo_stage_messages_total counter']
"""
from __future__ import annotations

from wallaroo._core.histogram import Histogram

#: The highest bucket bound is 2**LAST_BUCKET ns (about 18 minutes); above it, +Inf.
LAST_BUCKET = 40

_FAMILIES = (
    ("wallaroo_stage_messages_total", "counter", "Messages a stage has taken."),
    ("wallaroo_stage_latency_seconds", "histogram",
     "Time a stage's work takes per message (sampled messages)."),
    ("wallaroo_pipeline_messages_total", "counter", "Messages that reached a pipeline's sink."),
    ("wallaroo_pipeline_latency_seconds", "histogram",
     "Start-to-end latency: ingest at the source to the sink's write."),
    ("wallaroo_worker_messages_in_total", "counter",
     "Messages a worker took from its sources and from other workers."),
    ("wallaroo_worker_messages_out_total", "counter",
     "Messages a worker handed to its sinks and to other workers."),
    ("wallaroo_worker_latency_seconds", "histogram",
     "Time a message's batch takes to pass through a worker."),
    ("wallaroo_worker_cpu_percent", "gauge", "A worker's CPU use, in percent of one core."),
    ("wallaroo_worker_rss_bytes", "gauge", "A worker's resident memory."),
    ("wallaroo_worker_backpressure_seconds_total", "counter",
     "Seconds a worker's sources were held back, by who held them."),
    ("wallaroo_checkpoint_last_id", "gauge", "The last checkpoint every worker completed."),
    ("wallaroo_checkpoint_last_duration_seconds", "gauge",
     "How long the last complete checkpoint took, from barrier to every acknowledgement."),
)


def exposition(hub) -> str:
    """Every metric of ``hub`` (a wallaroo.metrics.hub.MetricsHub) as Prometheus text."""
    samples: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
    app = hub.app_name
    for kind, series_id, worker, messages, latency in hub.series():
        if kind in ("stage", "pipeline"):
            info = hub.stage_info(series_id) or {"pipeline": "", "name": series_id}
            labels = {"app": app, "pipeline": info["pipeline"], "worker": worker,
                      "stage": info["name"], "stage_id": series_id}
            samples[f"wallaroo_{kind}_messages_total"].append(_line(
                f"wallaroo_{kind}_messages_total", labels, messages))
            if kind == "pipeline" or latency.count:
                samples[f"wallaroo_{kind}_latency_seconds"] += _histogram(
                    f"wallaroo_{kind}_latency_seconds", labels, latency)
        else:
            labels = {"app": app, "worker": worker}
            samples[f"wallaroo_worker_messages_{kind}_total"].append(_line(
                f"wallaroo_worker_messages_{kind}_total", labels, messages))
            if kind == "in":
                samples["wallaroo_worker_latency_seconds"] += _histogram(
                    "wallaroo_worker_latency_seconds", labels, latency)
    for name, figures in sorted(hub.figures.items()):
        if figures.report is None:   # not heard from since the hub was restored
            continue
        labels = {"app": app, "worker": name}
        samples["wallaroo_worker_cpu_percent"].append(_line(
            "wallaroo_worker_cpu_percent", labels, figures.report["cpu_percent"]))
        samples["wallaroo_worker_rss_bytes"].append(_line(
            "wallaroo_worker_rss_bytes", labels, figures.report["rss_bytes"]))
        for by, hold in sorted(figures.report.get("backpressure", {}).items()):
            samples["wallaroo_worker_backpressure_seconds_total"].append(_line(
                "wallaroo_worker_backpressure_seconds_total", {**labels, "by": by},
                hold["seconds"]))
    checkpoints = hub.checkpoints
    if checkpoints and checkpoints["last_id"] is not None:
        samples["wallaroo_checkpoint_last_id"].append(_line(
            "wallaroo_checkpoint_last_id", {"app": app}, checkpoints["last_id"]))
        samples["wallaroo_checkpoint_last_duration_seconds"].append(_line(
            "wallaroo_checkpoint_last_duration_seconds", {"app": app},
            checkpoints["last_duration_s"]))
    lines = []
    for name, kind, help_text in _FAMILIES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples[name]]
    return "\n".join(lines) + "\n"


def _histogram(name: str, labels: dict, latency: Histogram) -> list[str]:
    """The _bucket, _sum and _count lines of one histogram (cumulative buckets, seconds)."""
    lines = []
    bins = latency.bins()
    seen = 0
    for b in range(LAST_BUCKET + 1):
        seen += bins[b]
        upper = (Histogram.bin_range(b)[1] - 1) / 1e9   # the bin's largest value
        lines.append(_line(f"{name}_bucket", {**labels, "le": repr(upper)}, seen))
    lines.append(_line(f"{name}_bucket", {**labels, "le": "+Inf"}, latency.count))
    lines.append(_line(f"{name}_sum", labels, latency.total / 1e9))
    lines.append(_line(f"{name}_count", labels, latency.count))
    return lines


def _line(name: str, labels: dict, value) -> str:
    """``name{labels} value``, label values escaped as the format says."""
    body = ",".join(f'{key}="{_escape(str(v))}"' for key, v in labels.items())
    return f"{name}{{{body}}} {_number(value)}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(int(value))
