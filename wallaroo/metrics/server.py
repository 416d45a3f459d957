"""The metrics HTTP server: the live dashboard, the JSON API and Prometheus text.

It runs on the event loop of the process that holds the hub (the single worker, the supervisor
of local workers, or a TCP cluster's initializer) and answers ``GET`` only:

- ``/``: the dashboard page; ``/static/<file>``: its scripts and styles (all served from the
  package: the page needs no internet);
- ``/api/graph``, ``/api/metrics``, ``/api/history``: JSON (see docs/metrics.md);
- ``/metrics``: Prometheus text.

Every second it adds a point to the hub's history.

Example::

    >>> import asyncio, urllib.request, wallaroo
    >>> from wallaroo.metrics.hub import MetricsHub
    >>> p = wallaroo.source("n", wallaroo.IterSourceConfig("n", [])).to_sink(
    ...     wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
    >>> async def serve_once():
    ...     server = MetricsServer(MetricsHub(wallaroo.build_application("copy", p), 1),
    ...                            "127.0.0.1", 0)
    ...     await server.start()
    ...     url = f"http://127.0.0.1:{server.port}/api/graph"
    ...     body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())
    ...     await server.close()
    ...     return body[:15]
    >>> asyncio.run(serve_once())
    b'{"app": "copy",'
"""
from __future__ import annotations

import asyncio
import json
import logging
import os

from wallaroo.metrics.prometheus import exposition
from wallaroo.runtime.metering import REPORT_INTERVAL

log = logging.getLogger("wallaroo")

#: Where the dashboard's files are.
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "application/javascript",
                 ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png",
                 ".ico": "image/x-icon"}
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The longest request head the server reads (a longer one is answered 431).
MAX_REQUEST_HEAD = 16 * 1024
#: Seconds a connection may take to send a request, or stay idle between two, before it is
#: closed (the dashboard asks every second; a scraper reconnects).
REQUEST_TIMEOUT = 10.0
#: Connections served at once; more are answered 503 and closed, so that clients cannot use up
#: the process's file descriptors (its sources need them).
MAX_CONNECTIONS = 64
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


class MetricsServer:
    """Serves ``hub`` over HTTP on ``host:port`` (port 0: a free one; ``port`` says which once
    started)."""

    def __init__(self, hub, host: str, port: int):
        self.hub = hub
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.Task | None = None
        #: The task serving each open connection.
        self._connections: set[asyncio.Task] = set()
        self._routes = {"/api/graph": hub.graph, "/api/metrics": hub.metrics,
                        "/api/history": hub.history}

    @property
    def url(self) -> str:
        """The dashboard's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        """Listen (OSError if the address cannot be had) and start the history's clock."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=MAX_REQUEST_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def close(self) -> None:
        """Stop listening, and end open connections and the clock."""
        tasks = list(self._connections)
        if self._ticker is not None:
            tasks.append(self._ticker)
        if self._server is not None:
            self._server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            self.hub.tick()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                await self._answer(writer, 503, "text/plain",
                                   b"too many connections to the metrics server\n", False)
                return
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:   # a broken page must never take the run down
            log.warning("metrics: a request failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; whether the connection stays open for another."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            return False
        except asyncio.LimitOverrunError:
            await self._answer(writer, 431, "text/plain", b"request head too large\n", False)
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            await self._answer(writer, 400, "text/plain", b"bad request line\n", False)
            return False
        method, target, version = parts
        keep_alive = version == "HTTP/1.1" and not any(
            line.lower().startswith("connection:") and "close" in line.lower()
            for line in lines[1:])
        if method not in ("GET", "HEAD"):
            await self._answer(writer, 405, "text/plain", b"only GET and HEAD are served here\n",
                               keep_alive, extra="Allow: GET, HEAD\r\n")
            return keep_alive
        try:
            status, kind, body = self._resource(target.split("?", 1)[0])
        except Exception as exc:   # the hub could not answer: say so, and go on serving
            log.warning("metrics: %s failed: %s: %s", target, type(exc).__name__, exc)
            status, kind, body = 500, "text/plain", f"{type(exc).__name__}: {exc}\n".encode()
        await self._answer(writer, status, kind, body, keep_alive, head_only=method == "HEAD")
        return keep_alive

    def _resource(self, path: str) -> tuple[int, str, bytes]:
        if path in self._routes:
            body = json.dumps(self._routes[path](), separators=(", ", ": "))
            return 200, "application/json", body.encode()
        if path == "/metrics":
            return 200, PROMETHEUS_TYPE, exposition(self.hub).encode()
        if path in ("/", "/index.html"):
            path = "/static/index.html"
        if path.startswith("/static/"):
            name = path[len("/static/"):]
            if "/" not in name and not name.startswith("."):
                file = os.path.join(STATIC_DIR, name)
                kind = CONTENT_TYPES.get(os.path.splitext(name)[1])
                if kind is not None and os.path.isfile(file):
                    with open(file, "rb") as f:
                        return 200, kind, f.read()
        return 404, "text/plain", f"nothing at {path}; try / or /api/metrics\n".encode()

    @staticmethod
    async def _answer(writer, status: int, kind: str, body: bytes, keep_alive: bool,
                      head_only: bool = False, extra: str = "") -> None:
        head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{extra}"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
        writer.write(head.encode() + (b"" if head_only else body))
        await writer.drain()
