"""The metrics of one run: its hub and the HTTP server in front of it, started together.

Example::

    >>> import asyncio, wallaroo
    >>> p = wallaroo.source("n", wallaroo.IterSourceConfig("n", [])).to_sink(
    ...     wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
    >>> async def start_and_stop():
    ...     service = MetricsService(wallaroo.build_application("copy", p), 1, ("127.0.0.1", 0))
    ...     await service.start()
    ...     started = service.url.startswith("http://127.0.0.1:")
    ...     await service.close()
    ...     return started
    >>> asyncio.run(start_and_stop())
    True
"""
from __future__ import annotations

import logging

from wallaroo.metrics.hub import MetricsHub
from wallaroo.metrics.server import MetricsServer

log = logging.getLogger("wallaroo")

#: Where the metrics are served when ``--metrics`` is not given (port 0: a free port).
DEFAULT_ADDRESS = ("127.0.0.1", 0)


class MetricsUnavailable(Exception):
    """The metrics address cannot be listened on; the message says which and what to do."""


class MetricsService:
    """A hub for ``app`` run by ``workers`` workers, served on ``address`` (host, port)."""

    def __init__(self, app, workers: int, address: tuple[str, int] = DEFAULT_ADDRESS):
        self.hub = MetricsHub(app, workers)
        self.server = MetricsServer(self.hub, *address)

    @property
    def url(self) -> str:
        """The dashboard's address (once started)."""
        return self.server.url

    async def start(self) -> None:
        """Listen (MetricsUnavailable when the address cannot be had); ``announce`` says
        where, once the run has started."""
        try:
            await self.server.start()
        except OSError as exc:
            raise MetricsUnavailable(
                f"cannot serve metrics on {self.server.host}:{self.server.port}: "
                f"{exc.strerror or exc}; give another --metrics HOST:PORT (port 0 picks a free "
                f"one), or --no-metrics") from None

    def announce(self) -> None:
        """Log where the dashboard, the JSON and the Prometheus text are."""
        log.info("metrics: dashboard at %s (JSON: %sapi/metrics, Prometheus: %smetrics)",
                 self.url, self.url, self.url)

    async def close(self) -> None:
        """Stop serving."""
        await self.server.close()
