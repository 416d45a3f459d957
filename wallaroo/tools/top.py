"""``wallaroo top``: a running application's metrics as a table in the terminal, refreshed.

It reads ``/api/metrics`` from the address the run serves its metrics on (``wallaroo-run
--metrics HOST:PORT``, or the address the run printed at startup). Exit code 0 when stopped
with Ctrl-C (or after one table with ``--once``), 1 when the address cannot be reached with
``--once``; without it, an unreachable run is shown as such and asked again.

Example::

    wallaroo top --metrics 127.0.0.1:5001
    wallaroo top --metrics 127.0.0.1:5001 --once

The table, from what the API gives::

    >>> metrics = {"app": "wc", "uptime_s": 65, "workers_expected": 1, "checkpoints": None,
    ...     "stages": [{"name": "split", "kind": "flat_map", "messages": 1200, "rate": 100.0,
    ...                 "latency_ns": {"count": 4, "p50": 900, "p99": 2_000, "p99.9": 2_000}}],
    ...     "pipelines": [], "workers": []}
    >>> print(render(metrics, "http://127.0.0.1:5001/", width=100))
    wc at http://127.0.0.1:5001/ | up 1m05s | 0 of 1 workers reporting | resilience off
    <BLANKLINE>
    STAGE                                  KIND       MESSAGES    MSGS/S       P50       P99     P99.9
    split                                  flat_map      1,200       100     900ns     2.0µs     2.0µs
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.error
import urllib.request

import click

#: Clears the terminal and puts the cursor at the top left.
CLEAR = "\x1b[H\x1b[2J"
#: What a wallaroo metrics answer holds at the top.
METRICS_KEYS = ("app", "uptime_s", "workers_expected", "checkpoints", "stages", "pipelines",
                "workers")


def fetch(base: str, timeout: float = 2.0) -> dict:
    """``/api/metrics`` of the run at ``base`` (``http://HOST:PORT/``); OSError when it cannot
    be reached, ValueError when what it answers is not the metrics JSON."""
    with urllib.request.urlopen(base + "api/metrics", timeout=timeout) as response:
        data = json.loads(response.read())
    if not isinstance(data, dict) or not all(key in data for key in METRICS_KEYS):
        raise ValueError(f"{base} does not serve wallaroo metrics")
    return data


def render(metrics: dict, base: str, width: int = 120) -> str:
    """The whole table: a header line, then stages, pipelines and workers."""
    checkpoints = metrics.get("checkpoints")
    if checkpoints is None:
        resilience = "resilience off"
    elif checkpoints.get("last_id") is None:
        resilience = "no checkpoint yet"
    else:
        resilience = (f"checkpoint {checkpoints['last_id']} "
                      f"({_duration_ns(checkpoints['last_duration_s'] * 1e9)})")
    lines = [f"{metrics['app']} at {base} | up {_uptime(metrics['uptime_s'])} | "
             f"{len(metrics['workers'])} of {metrics['workers_expected']} workers reporting | "
             f"{resilience}", ""]
    name_width = max(18, min(48, width - 62))
    header = f"{{:<{name_width}}} {{:<8}} {{:>10}} {{:>9}} {{:>9}} {{:>9}} {{:>9}}"
    lines.append(header.format("STAGE", "KIND", "MESSAGES", "MSGS/S", "P50", "P99", "P99.9"))
    for stage in metrics["stages"]:
        lines.append(header.format(_cut(stage["name"], name_width), stage["kind"][:8],
                                   *_figures(stage)))
    if metrics["pipelines"]:
        lines += ["", header.format("PIPELINE (start to end)", "", "MESSAGES", "MSGS/S", "P50",
                                    "P99", "P99.9")]
        for pipeline in metrics["pipelines"]:
            lines.append(header.format(_cut(f"{pipeline['name']} -> {pipeline['sink']}",
                                            name_width), "", *_figures(pipeline)))
    if metrics["workers"]:
        lines += ["", f"{'WORKER':<16} {'IN':>10} {'OUT':>10} {'IN/S':>9} {'P99':>9} "
                      f"{'CPU':>5} {'RSS':>9}  BACK-PRESSURE"]
        for worker in metrics["workers"]:
            held = ", ".join(f"{b['name']} {b['share']:.0%}" for b in worker["backpressure"])
            lines.append(f"{_cut(worker['name'], 16):<16} {worker['messages_in']:>10,} "
                         f"{worker['messages_out']:>10,} {worker['rate_in']:>9,.0f} "
                         f"{_duration_ns(worker['latency_ns']['p99']):>9} "
                         f"{worker['cpu_percent']:>4.0f}% "
                         f"{worker['rss_bytes'] / 2**20:>7.1f}Mi  {held or '-'}")
    return "\n".join(line[:width] for line in lines)


def _figures(series: dict) -> tuple:
    latency = series["latency_ns"]
    timed = latency["count"] > 0
    return (f"{series['messages']:,}", f"{series['rate']:,.0f}",
            *(_duration_ns(latency[p]) if timed else "-" for p in ("p50", "p99", "p99.9")))


def _duration_ns(ns: float) -> str:
    """A duration in the unit that suits it.

    Example::

        >>> _duration_ns(512), _duration_ns(25_000), _duration_ns(3_100_000), _duration_ns(2e9)
        ('512ns', '25.0µs', '3.1ms', '2.00s')
    """
    if ns < 1_000:
        return f"{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def base_url(address: str) -> str:
    """``http://HOST:PORT/`` from ``HOST:PORT`` (or a URL given as is).

    Example::

        >>> base_url("127.0.0.1:5001"), base_url("http://[::1]:5001")
        ('http://127.0.0.1:5001/', 'http://[::1]:5001/')
    """
    if address.startswith(("http://", "https://")):
        return address.rstrip("/") + "/"
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise click.BadParameter(f"{address!r}: give HOST:PORT, as printed by wallaroo-run "
                                 f"at startup (\"metrics: dashboard at ...\")")
    return f"http://{host}:{port}/"


@click.command()
@click.option("--metrics", "-m", "address", required=True, metavar="HOST:PORT",
              help="where the run serves its metrics (wallaroo-run --metrics, or as printed "
                   "at its startup)")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="seconds between refreshes")
@click.option("--once", is_flag=True, help="print one table and exit")
def top(address: str, interval: float, once: bool) -> None:
    """Show a running application's stages, pipelines and workers, refreshed in place."""
    base = base_url(address)
    if once:
        try:
            screen = render(fetch(base), base, shutil.get_terminal_size().columns)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            click.echo(f"wallaroo top: cannot read metrics at {base}: {exc!r}; is the run up, "
                       f"and is this the address it printed at startup?", err=True)
            sys.exit(1)
        click.echo(screen)
        return
    try:
        while True:
            width = shutil.get_terminal_size().columns
            try:
                screen = render(fetch(base), base, width)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                screen = f"wallaroo top: cannot read metrics at {base} ({exc}); trying again"
            click.echo(CLEAR + screen + f"\n\n(every {interval:g} s; Ctrl-C to quit)", nl=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
