"""What a run did, as JSON: one worker's summary, the summaries of several merged, and the
``--stats-file``; and the lines ``wallaroo-run`` prints at the end of a run.

Example::

    >>> from wallaroo.runtime.worker import RunResult
    >>> summary = result_summary(RunResult(ingested=3))
    >>> merge_summaries([summary, summary])["ingested"]
    6
"""
from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time

from wallaroo._core.histogram import Histogram
from wallaroo.errors import RunStopped, StageFailed

log = logging.getLogger("wallaroo")


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM where /proc has it (``ru_maxrss`` survives
    ``exec`` on Linux, so it can report the peak of whatever process started this one).

    Example::

        >>> peak_rss_bytes() > 1_000_000
        True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def result_summary(result, worker=None) -> dict:
    """One worker's run as JSON-ready data: messages in, exit code, errors, late drops, what
    reached each sink, peak RSS, what could not be delivered, the worker's name, and
    ``processing_s``: the seconds from opening its sources to now (startup left out).

    Without ``worker`` (the Worker that ran), ``processing_s`` and ``worker`` are None.

    Example::

        >>> from wallaroo.runtime.worker import RunResult
        >>> summary = result_summary(RunResult(ingested=3, late={"hourly": 1}))
        >>> summary["ingested"], summary["exit_code"], summary["late"], summary["worker"]
        (3, 0, {'hourly': 1}, None)
    """
    opened = getattr(worker, "sources_opened_at", None)
    return {"ingested": result.ingested, "exit_code": result.exit_code,
            "processing_s": time.monotonic() - opened if opened is not None else None,
            "peak_rss_bytes": peak_rss_bytes(),
            "errors": {f"{stage}: {kind}": n for (stage, kind), n in result.error_counts.items()},
            "late": result.late,
            "sinks": result.sinks,
            "undelivered": list(result.undelivered),
            "worker": worker.placement.name if worker is not None else None}


def merge_summaries(summaries: list[dict]) -> dict:
    """The summaries of several workers as one: counts added, sinks merged by name
    (histograms merged), the highest exit code and peak RSS; ``workers`` keeps each one.

    Example::

        >>> from wallaroo._core.histogram import Histogram
        >>> from wallaroo.runtime.worker import RunResult
        >>> latency = Histogram(); latency.record(1000)
        >>> sink = {"name": "out", "messages": 2, "latency_ns": latency.to_dict()}
        >>> one = result_summary(RunResult(ingested=2, sinks=[sink], late={"w": 1}))
        >>> two = result_summary(RunResult(ingested=3, sinks=[sink], undelivered=["out"]))
        >>> merged = merge_summaries([one, two])
        >>> merged["ingested"], merged["exit_code"], merged["late"], merged["undelivered"]
        (5, 1, {'w': 1}, ['out'])
        >>> [(s["name"], s["messages"]) for s in merged["sinks"]], len(merged["workers"])
        ([('out', 4)], 2)
    """
    merged: dict = {"ingested": 0, "exit_code": 0, "peak_rss_bytes": 0, "processing_s": None,
                    "errors": {},
                    "late": {}, "sinks": [], "undelivered": [], "workers": summaries}
    sinks: dict[str, dict] = {}
    for summary in summaries:
        merged["ingested"] += summary["ingested"]
        merged["exit_code"] = max(merged["exit_code"], summary["exit_code"])
        merged["peak_rss_bytes"] = max(merged["peak_rss_bytes"], summary["peak_rss_bytes"])
        merged["undelivered"] += summary["undelivered"]
        if summary.get("processing_s") is not None:
            merged["processing_s"] = max(merged["processing_s"] or 0.0, summary["processing_s"])
        for field in ("errors", "late"):
            for name, n in summary[field].items():
                merged[field][name] = merged[field].get(name, 0) + n
        for sink in summary["sinks"]:
            into = sinks.get(sink["name"])
            if into is None:
                sinks[sink["name"]] = into = {"name": sink["name"], "messages": 0,
                                              "latency": Histogram()}
                merged["sinks"].append(into)
            into["messages"] += sink["messages"]
            into["latency"].merge(Histogram.from_dict(sink["latency_ns"]))
    for sink in merged["sinks"]:
        latency = sink.pop("latency")
        sink["latency_ns"] = latency.to_dict()
        sink["latency_summary_ns"] = latency.summary()
    return merged


def write_stats(path: str, app_name: str, summary: dict, elapsed_s: float) -> None:
    """Write the ``--stats-file`` JSON from a run's summary (atomically: a reader never sees
    half of it).

    Example::

        >>> import json, tempfile
        >>> from wallaroo.runtime.worker import RunResult
        >>> path = os.path.join(tempfile.mkdtemp(), "stats.json")
        >>> write_stats(path, "app", result_summary(RunResult(ingested=3)), 0.5)
        >>> json.load(open(path))["ingested"]
        3
    """
    stats = {"app": app_name, "elapsed_s": elapsed_s, **summary}
    partial = f"{path}.partial"
    try:
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=1)
            f.write("\n")
        os.replace(partial, path)
    except OSError as exc:
        log.error("cannot write --stats-file %s: %s", path, exc)


def report_end(result, error_summary: list[str]) -> None:
    """Print what a user must know once a worker's run is over: error counts, late drops, why
    it stopped, what was not delivered.

    Counts go to the log as warnings, the rest to standard error.

    Example::

        >>> import contextlib, sys
        >>> from wallaroo.runtime.worker import RunResult
        >>> result = RunResult(failure=RunStopped("worker w1 went away"), undelivered=["out"])
        >>> with contextlib.redirect_stderr(sys.stdout):
        ...     report_end(result, [])
        wallaroo-run: stopped: worker w1 went away
        wallaroo-run: output was not fully delivered to: out
    """
    for line in error_summary:
        log.warning("%s", line)
    for window, late in result.late.items():
        log.warning("window %r dropped %d late message(s): give it a delay (with_delay) or "
                    "another late-data policy to keep them", window, late)
    if isinstance(result.failure, StageFailed):
        failure = result.failure
        sys.stderr.write(getattr(failure, "traceback_text", ""))
        print(f"wallaroo-run: stopped: {failure}. Fix the stage, or run with --on-error skip or "
              f"--on-error dead-letter to go on past such inputs", file=sys.stderr)
    elif isinstance(result.failure, RunStopped):
        print(f"wallaroo-run: stopped: {result.failure}", file=sys.stderr)
    elif result.failure is not None:
        print(f"wallaroo-run: stopped by an internal error: {result.failure!r}", file=sys.stderr)
    if result.undelivered:
        print(f"wallaroo-run: output was not fully delivered to: {', '.join(result.undelivered)}",
              file=sys.stderr)
