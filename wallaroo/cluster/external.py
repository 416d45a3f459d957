"""The external control port: ask a running cluster how it is doing, or tell it to shut down.

:class:`ExternalServer` listens on one TCP port (``wallaroo-run --external HOST:PORT``) that
speaks two protocols, told apart by the first bytes a client sends:

**HTTP/1.1 + JSON**, for curl and scripts (the first bytes are an HTTP method)::

    GET  /                  the endpoints
    GET  /status            {"worker_names": [...], "worker_count": N, "processing_messages": true}
    GET  /partitions        {"key_groups": N, "workers": {WORKER: [key group, ...]},
                             "state_partitions": {STATE: {WORKER: keys}}}
    GET  /state-entities    {STATE: {"workers": {WORKER: keys}, "total": N}}
    POST /shutdown          begins a clean shutdown: {"shutting_down": true}

Replies are JSON with ``Content-Type: application/json`` and ``Connection: close``: 404 for an
unknown path, 405 for a wrong method, 431 for a request head over 64 KiB. When the cluster has
a secret every request needs the header ``X-Wallaroo-Auth: UNIX_TIME.NONCE.MAC`` (see
:mod:`wallaroo.cluster.auth`; MAC is over ``"UNIX_TIME.NONCE.METHOD PATH"``), else it gets 401
and a JSON ``{"error": REASON}``. From a shell::

    ts=$(date +%s); nonce=$(openssl rand -hex 16)
    mac=$(printf '%s' "$ts.$nonce.GET /status" \\
          | openssl dgst -sha256 -hmac "$WALLAROO_CLUSTER_SECRET" -r | cut -d' ' -f1)
    curl -H "X-Wallaroo-Auth: $ts.$nonce.$mac" http://127.0.0.1:5050/status

**Framed**, in the spirit of the original Wallaroo external protocol, and what
``wallaroo cluster`` speaks. A frame is a u32 big-endian length, then a u16 big-endian
message id, then the payload; the length counts the id and the payload. A client's first
frame must be AUTH; then it may send any number of requests on the same connection.

====  ==================  =========  ==============================================
id    name                sent by    payload
====  ==================  =========  ==============================================
3     CLEAN_SHUTDOWN      client     none (the original's id); reply as for 10-12
10    STATUS              client     none
11    PARTITIONS          client     none
12    STATE_ENTITIES      client     none
100   REPLY               server     the JSON object the request asked for
101   ERROR               server     UTF-8 text: what went wrong
200   AUTH                client     a token over ``"external"`` (empty without a secret)
201   AUTH_OK             server     none
202   AUTH_FAILED         server     UTF-8 text: why; the server then closes
====  ==================  =========  ==============================================

An unknown id gets ERROR ``unknown message id N``. A frame over 64 KiB gets ERROR and the
connection is closed. No frame can start with an ASCII capital letter (it would announce
more than 1 GiB), which is how the two protocols are told apart. A refused client changes
nothing: the control methods are only called once a request is authenticated.

The cluster's side is a *control* object with four coroutine methods, ``status()``,
``partitions()``, ``state_entities()`` and ``shutdown()``, each returning a JSON-able dict.

Example::

    >>> encode_frame(STATUS)
    b'\\x00\\x00\\x00\\x02\\x00\\n'
    >>> import asyncio
    >>> class Control:
    ...     async def status(self):
    ...         return {"worker_names": ["initializer"], "worker_count": 1, "processing_messages": True}
    >>> async def demo():
    ...     server = ExternalServer(Control(), "127.0.0.1", 0, secret="s3cret")
    ...     await server.start()
    ...     client = await ExternalClient.connect(*server.address, secret="s3cret")
    ...     try:
    ...         return await client.request(STATUS)
    ...     finally:
    ...         await client.close()
    ...         await server.close()
    >>> asyncio.run(demo())
    {'worker_names': ['initializer'], 'worker_count': 1, 'processing_messages': True}
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
from http import HTTPStatus
from typing import Any, Protocol

from wallaroo.cluster.auth import (AUTH_HEADER, HANDSHAKE_TIMEOUT, AuthError, HttpAuth, auth_token,
                                   peer_name)
from wallaroo.cluster.wire import MAX_MESSAGE, WireError, decode_message

log = logging.getLogger("wallaroo")

CLEAN_SHUTDOWN = 3
STATUS = 10
PARTITIONS = 11
STATE_ENTITIES = 12
REPLY = 100
ERROR = 101
AUTH = 200
AUTH_OK = 201
AUTH_FAILED = 202

EXTERNAL_SUBJECT = "external"    # what an AUTH token's MAC is over
MAX_REQUEST = 64 * 1024          # largest HTTP request head / request body / client frame
REQUEST_TIMEOUT = HANDSHAKE_TIMEOUT   # to send an HTTP request, or the AUTH frame

_LENGTH = struct.Struct(">I")
_ID = struct.Struct(">H")
_HEAD_END = re.compile(rb"\r?\n\r?\n")

# request id -> name of the control method
_REQUESTS = {CLEAN_SHUTDOWN: "shutdown", STATUS: "status", PARTITIONS: "partitions",
             STATE_ENTITIES: "state_entities"}

# path -> (method, control method or None for the index, description)
_ROUTES: dict[str, tuple[str, str | None, str]] = {
    "/": ("GET", None, "this list"),
    "/status": ("GET", "status", "the workers and whether they are processing messages"),
    "/partitions": ("GET", "partitions", "which worker owns each key group; state keys per worker"),
    "/state-entities": ("GET", "state_entities", "keys of each state computation per worker and in total"),
    "/shutdown": ("POST", "shutdown", "begin a clean shutdown of the whole cluster"),
}


class Control(Protocol):
    """What :class:`ExternalServer` asks; the coordinator implements it."""

    async def status(self) -> dict[str, Any]: ...
    async def partitions(self) -> dict[str, Any]: ...
    async def state_entities(self) -> dict[str, Any]: ...
    async def shutdown(self) -> dict[str, Any]: ...


class FrameError(Exception):
    """A framed-protocol connection carried something that is not a valid frame."""


class ExternalError(Exception):
    """The external control port answered with an error, or not in its protocol."""


def encode_frame(message_id: int, payload: bytes = b"") -> bytes:
    """One frame of the framed protocol: u32 length (of id + payload), u16 id, payload.

    Example: ``encode_frame(AUTH, b"") == b"\\x00\\x00\\x00\\x02\\x00\\xc8"``.
    """
    return _LENGTH.pack(_ID.size + len(payload)) + _ID.pack(message_id) + payload


async def read_frame(reader: asyncio.StreamReader, max_size: int,
                     header: bytes | None = None) -> tuple[int, bytes] | None:
    """Read one frame; return ``(message id, payload)``, or ``None`` on EOF between frames.

    ``header`` is the frame's 4-byte length when the caller has read it already. Raises
    :class:`FrameError` for a length over ``max_size`` or under 2, or EOF inside a frame.

    Example: ``message_id, payload = await read_frame(reader, MAX_REQUEST)``.
    """
    try:
        if header is None:
            header = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as err:
        if not err.partial:
            return None
        raise FrameError("connection closed inside a frame header") from None
    (length,) = _LENGTH.unpack(header)
    if length > max_size:
        raise FrameError(f"frame of {length} bytes is over the {max_size}-byte limit")
    if length < _ID.size:
        raise FrameError(f"frame of {length} bytes is too short to hold a message id")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as err:
        raise FrameError(f"connection closed inside a frame ({len(err.partial)} of {length} bytes)") from None
    return _ID.unpack_from(body)[0], body[_ID.size:]


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an error reply to a request that was not read whole: send EOF, then drop what the
    client still sends (for up to 1 s), so closing does not reset the connection before the
    client has read the reply."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(1.0):
            while await reader.read(65536):
                pass
    except (TimeoutError, OSError):
        pass


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ExternalServer:
    """The external control port of a cluster, on ``host:port`` (port 0: any free port).

    ``control`` answers the requests (see :class:`Control`); ``secret`` (or ``None``) is the
    cluster secret every request must prove.

    Example::

        server = ExternalServer(coordinator, "127.0.0.1", 5050, secret=secret)
        await server.start()
        print("external control port on %s:%d" % server.address)
        ...
        await server.close()
    """

    def __init__(self, control: Control, host: str, port: int, secret: str | None = None) -> None:
        self.control = control
        self.host = host
        self.port = port
        self.secret = secret or None
        self._auth = HttpAuth(self.secret)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start listening; raises ``OSError`` if the address cannot be bound, its message
        naming ``--external`` and the address."""
        try:
            self._server = await asyncio.start_server(self._on_connect, self.host, self.port)
        except OSError as exc:
            raise OSError(exc.errno, f"--external {self.host}:{self.port}: cannot listen: "
                                     f"{exc.strerror or exc}") from None
        log.info("external control port on %s:%d", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually listened on (the port chosen when 0 was asked)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the external control port is not listening: call start() first")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        peer = peer_name(writer)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                first = await reader.readexactly(_LENGTH.size)
            if b"A" <= first[:1] <= b"Z":
                await self._serve_http(first, reader, writer, peer)
            else:
                await self._serve_framed(first, reader, writer, peer)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as err:
            log.debug("external control port: connection from %s ended: %r", peer, err)
        except Exception:
            log.exception("external control port: connection from %s failed", peer)
        finally:
            writer.close()
            self._handlers.discard(task)

    async def _call(self, name: str) -> dict[str, Any]:
        """``await control.NAME()``, which must give a dict."""
        result = await getattr(self.control, name)()
        if not isinstance(result, dict):
            raise TypeError(f"control.{name}() returned {type(result).__name__}, not a dict")
        return result

    # ---- HTTP ---------------------------------------------------------------------------

    async def _serve_http(self, first: bytes, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, peer: str) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                method, target, headers = await self._read_request(first, reader)
        except TimeoutError:
            await self._respond(writer, 408, {"error": f"request not received within {REQUEST_TIMEOUT:g} s"})
            await _linger(reader, writer)
            return
        except _HttpError as err:
            await self._respond(writer, err.status, {"error": str(err)})
            await _linger(reader, writer)
            return
        path = target.split("?", 1)[0]
        route = _ROUTES.get(path)
        if route is None:
            await self._respond(writer, 404, {"error": f"no endpoint {path}; GET / lists them"})
            return
        allowed, name, _ = route
        if method != allowed:
            await self._respond(writer, 405, {"error": f"{path} takes {allowed}, not {method}"},
                                extra=f"Allow: {allowed}\r\n")
            return
        reason = self._auth.check(headers.get(AUTH_HEADER.lower()), method, target)
        if reason is not None:
            log.warning("external control port: refused %s %s from %s: %s", method, target, peer, reason)
            await self._respond(writer, 401, {"error": reason})
            return
        if name is None:
            await self._respond(writer, 200, {
                "endpoints": {f"{m} {p}": text for p, (m, _, text) in _ROUTES.items()},
                "auth": (f"every request needs an {AUTH_HEADER} header" if self.secret else "none"),
            })
            return
        try:
            result = await self._call(name)
        except Exception as err:
            log.warning("external control port: %s failed", name, exc_info=True)
            await self._respond(writer, 500, {"error": f"{name} failed: {err}"})
            return
        await self._respond(writer, 200, result)

    async def _read_request(self, first: bytes, reader: asyncio.StreamReader
                            ) -> tuple[str, str, dict[str, str]]:
        """Read the request head (and drop the body); return method, target, headers."""
        buffer = bytearray(first)
        searched = 0
        while (end := _HEAD_END.search(buffer, max(0, searched - 3))) is None:
            if len(buffer) > MAX_REQUEST:
                raise _HttpError(431, f"request head over {MAX_REQUEST} bytes")
            searched = len(buffer)
            chunk = await reader.read(65536)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(buffer), None)
            buffer += chunk
        if end.start() > MAX_REQUEST:
            raise _HttpError(431, f"request head over {MAX_REQUEST} bytes")
        lines = buffer[:end.start()].decode("latin-1").split("\n")
        body_start = bytes(buffer[end.end():])
        request_line = lines[0].rstrip("\r").split(" ")
        if len(request_line) != 3 or not request_line[2].startswith("HTTP/1."):
            raise _HttpError(400, "expected a request line such as 'GET /status HTTP/1.1'")
        method, target, _ = request_line
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.rstrip("\r").partition(":")
            if not sep or not name.strip():
                raise _HttpError(400, f"malformed header line {line.strip()[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _HttpError(411, "chunked request bodies are not supported; send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _HttpError(400, f"bad Content-Length {length_text!r}")
        length = int(length_text)
        if length > MAX_REQUEST:
            raise _HttpError(413, f"request body over {MAX_REQUEST} bytes")
        if length > len(body_start):   # read (and drop) the body so closing does not reset it
            await reader.readexactly(length - len(body_start))
        return method, target, headers

    async def _respond(self, writer: asyncio.StreamWriter, status: int, obj: dict[str, Any],
                       extra: str = "") -> None:
        body = _json_bytes(obj) + b"\n"
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n{extra}\r\n")
        writer.write(head.encode("latin-1") + body)
        await writer.drain()

    # ---- framed -------------------------------------------------------------------------

    async def _serve_framed(self, first: bytes, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, peer: str) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                frame = await read_frame(reader, MAX_REQUEST, header=first)
        except TimeoutError:
            await self._refuse(writer, peer, f"no AUTH message within {REQUEST_TIMEOUT:g} s")
            return
        except FrameError as err:
            await self._refuse(writer, peer, f"bad first frame: {err}")
            return
        if frame is None:
            return
        message_id, payload = frame
        if message_id != AUTH:
            await self._refuse(writer, peer, f"the first message must be AUTH (id {AUTH}), "
                                             f"got message id {message_id}")
            return
        reason = self._auth.check_token(payload.decode("utf-8", "replace"), EXTERNAL_SUBJECT)
        if reason is not None:
            await self._refuse(writer, peer, reason)
            return
        writer.write(encode_frame(AUTH_OK))
        await writer.drain()
        while True:
            try:
                frame = await read_frame(reader, MAX_REQUEST)
            except FrameError as err:
                writer.write(encode_frame(ERROR, f"{err}; closing the connection".encode()))
                await writer.drain()
                return
            if frame is None:
                return
            message_id, _ = frame
            writer.write(await self._answer(message_id))
            await writer.drain()

    async def _answer(self, message_id: int) -> bytes:
        name = _REQUESTS.get(message_id)
        if name is None:
            return encode_frame(ERROR, f"unknown message id {message_id}".encode())
        try:
            return encode_frame(REPLY, _json_bytes(await self._call(name)))
        except Exception as err:
            log.warning("external control port: %s failed", name, exc_info=True)
            return encode_frame(ERROR, f"{name} failed: {err}".encode())

    async def _refuse(self, writer: asyncio.StreamWriter, peer: str, reason: str) -> None:
        log.warning("external control port: refused %s: %s", peer, reason)
        writer.write(encode_frame(AUTH_FAILED, reason.encode()))
        await writer.drain()


class ExternalClient:
    """A framed-protocol client of the external control port (what ``wallaroo cluster`` uses).

    :meth:`connect` opens the connection and authenticates; :meth:`request` sends one request
    id and returns the JSON reply. Errors: ``OSError`` when the port cannot be reached,
    ``TimeoutError`` after ``timeout`` s without an answer, :class:`AuthError` when the
    cluster refuses the secret, :class:`ExternalError` when it answers with an error.

    Example::

        client = await ExternalClient.connect("127.0.0.1", 5050, secret=None, timeout=10)
        print(await client.request(STATUS))
        await client.close()
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def connect(cls, host: str, port: int, secret: str | None = None,
                      timeout: float = 10.0) -> ExternalClient:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer, timeout)
        try:
            token = auth_token(secret, EXTERNAL_SUBJECT) if secret else ""
            message_id, payload = await client._exchange(AUTH, token.encode())
            if message_id == AUTH_FAILED:
                raise AuthError(payload.decode("utf-8", "replace") or "no reason given")
            if message_id != AUTH_OK:
                raise ExternalError(f"unexpected answer (message id {message_id}) to AUTH; "
                                    f"is this a wallaroo external control port?")
        except BaseException:
            await client.close()
            raise
        return client

    async def _exchange(self, message_id: int, payload: bytes = b"") -> tuple[int, bytes]:
        async with asyncio.timeout(self.timeout):
            self.writer.write(encode_frame(message_id, payload))
            await self.writer.drain()
            try:
                frame = await read_frame(self.reader, MAX_MESSAGE)
            except FrameError as err:
                raise ExternalError(f"broken answer: {err}") from None
        if frame is None:
            raise ExternalError("the server closed the connection without answering")
        return frame

    async def request(self, message_id: int) -> dict[str, Any]:
        """Send request ``message_id`` (:data:`STATUS`, ...) and return the server's JSON reply."""
        answer_id, payload = await self._exchange(message_id)
        if answer_id == ERROR:
            raise ExternalError(payload.decode("utf-8", "replace"))
        if answer_id != REPLY:
            raise ExternalError(f"unexpected answer (message id {answer_id})")
        try:
            return decode_message(payload)
        except WireError as err:
            raise ExternalError(f"broken reply: {err}") from None

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
