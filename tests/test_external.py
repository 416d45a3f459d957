"""Tests for the external control port (wallaroo.cluster.external) and ``wallaroo cluster``.

The server runs with a fake control object on its own event loop in a background thread, so
the tests can talk to it with blocking clients: ``urllib.request`` and raw sockets for HTTP,
and the ``wallaroo cluster`` CLI as a real subprocess for the framed protocol. 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from support.net import HOST, free_port
from support.processes import WALLAROO
from wallaroo.cluster.auth import AUTH_HEADER, SECRET_ENV, AuthError, auth_token, http_auth_header
from wallaroo.cluster.external import (AUTH, AUTH_FAILED, AUTH_OK, CLEAN_SHUTDOWN, ERROR, PARTITIONS, REPLY,
                                       STATE_ENTITIES, STATUS, ExternalClient, ExternalError, ExternalServer,
                                       encode_frame)

STATUS_REPLY = {"worker_names": ["initializer", "w1"], "worker_count": 2, "processing_messages": True}
PARTITIONS_REPLY = {"key_groups": 8, "workers": {"initializer": [0, 1, 2, 3], "w1": [4, 5, 6, 7]},
                    "state_partitions": {"count": {"initializer": 123, "w1": 98}}}
STATE_REPLY = {"count": {"workers": {"initializer": 123, "w1": 98}, "total": 221}}


class FakeControl:
    """Answers like a coordinator and records every call (from the server's thread)."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail

    async def _answer(self, name: str, reply: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(name)
        if name == self.fail:
            raise RuntimeError(f"{name} is broken today")
        return reply

    async def status(self):
        return await self._answer("status", STATUS_REPLY)

    async def partitions(self):
        return await self._answer("partitions", PARTITIONS_REPLY)

    async def state_entities(self):
        return await self._answer("state_entities", STATE_REPLY)

    async def shutdown(self):
        return await self._answer("shutdown", {"shutting_down": True})


class Running:
    """An ExternalServer on 127.0.0.1:0 with its own event loop in a daemon thread."""

    def __init__(self, control: FakeControl, secret: str | None) -> None:
        self.control = control
        self.loop = asyncio.new_event_loop()
        self.server = ExternalServer(control, HOST, 0, secret=secret)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start())
        self.port = self.server.address[1]
        self.address = f"{HOST}:{self.port}"
        self.url = f"http://{self.address}"

    def call(self, coroutine, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def external():
    """``external(secret=None, fail=None)`` starts a :class:`Running` server with a fresh
    :class:`FakeControl` (whose method ``fail`` raises); each is stopped in teardown."""
    started: list[Running] = []

    def start(secret: str | None = None, fail: str | None = None) -> Running:
        started.append(Running(FakeControl(fail), secret))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None,
         data: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body) of one request, whatever the status."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), json.loads(err.read())


def raw_exchange(port: int, data: bytes, shut: bool = False) -> bytes:
    """Send ``data`` on a fresh connection (then half-close if ``shut``) and return everything
    the server sends until it closes."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def frames_in(data: bytes) -> list[tuple[int, bytes]]:
    found, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        (message_id,) = struct.unpack_from(">H", data, pos + 4)
        found.append((message_id, data[pos + 6:pos + 4 + length]))
        pos += 4 + length
    assert pos == len(data), data
    return found


def run_cluster(*args: str, secret_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(SECRET_ENV, None)
    if secret_env is not None:
        env[SECRET_ENV] = secret_env
    return subprocess.run([WALLAROO, "cluster", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=15)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "wallaroo" and r.levelno >= logging.WARNING]


# ---- HTTP -------------------------------------------------------------------------------

def test_http_endpoints_answer_json(external):
    server = external()
    status, headers, body = http(server.url + "/status")
    assert (status, body) == (200, STATUS_REPLY)
    assert headers["Content-Type"] == "application/json"
    assert headers["Connection"] == "close"
    assert http(server.url + "/partitions")[::2] == (200, PARTITIONS_REPLY)
    assert http(server.url + "/state-entities")[::2] == (200, STATE_REPLY)
    assert server.control.calls == ["status", "partitions", "state_entities"]


def test_http_index_lists_the_endpoints(external):
    status, _, body = http(external().url + "/")
    assert status == 200
    assert set(body["endpoints"]) == {"GET /", "GET /status", "GET /partitions", "GET /state-entities",
                                      "POST /shutdown"}
    assert body["auth"] == "none"


def test_http_shutdown_is_a_post(external):
    server = external()
    status, headers, body = http(server.url + "/shutdown")
    assert status == 405 and headers["Allow"] == "POST"
    assert body == {"error": "/shutdown takes POST, not GET"}
    assert server.control.calls == []
    assert http(server.url + "/shutdown", method="POST", data=b"{}")[::2] == (200, {"shutting_down": True})
    assert server.control.calls == ["shutdown"]


def test_http_unknown_path_and_wrong_method(external):
    server = external()
    status, _, body = http(server.url + "/nope")
    assert status == 404 and body["error"] == "no endpoint /nope; GET / lists them"
    assert http(server.url + "/status", method="DELETE")[0] == 405
    assert server.control.calls == []


def test_http_with_a_secret_needs_a_good_fresh_token(external, caplog):
    server = external(secret="s3cret")
    with caplog.at_level(logging.WARNING, logger="wallaroo"):
        missing = http(server.url + "/shutdown", method="POST")
        wrong = http(server.url + "/shutdown", method="POST",
                     headers={AUTH_HEADER: http_auth_header("guess", "POST", "/shutdown")})
        other_request = http(server.url + "/shutdown", method="POST",
                             headers={AUTH_HEADER: http_auth_header("s3cret", "GET", "/status")})
    assert [missing[0], wrong[0], other_request[0]] == [401, 401, 401]
    assert missing[2]["error"].startswith("missing X-Wallaroo-Auth header")
    assert wrong[2]["error"].startswith("wrong cluster secret")
    assert server.control.calls == []           # a refused request changes nothing
    logged = warnings_of(caplog)
    assert len(logged) == 3
    assert all(line.startswith("external control port: refused POST /shutdown from 127.0.0.1:") for line in logged)

    good = {AUTH_HEADER: http_auth_header("s3cret", "GET", "/status")}
    assert http(server.url + "/status", headers=good)[::2] == (200, STATUS_REPLY)
    replayed = http(server.url + "/status", headers=good)
    assert replayed[0] == 401 and "replay" in replayed[2]["error"]
    assert server.control.calls == ["status"]


def test_http_control_failure_is_a_500_with_the_reason(external):
    status, _, body = http(external(fail="status").url + "/status")
    assert (status, body) == (500, {"error": "status failed: status is broken today"})


def test_http_bad_requests(external):
    server = external()
    huge = b"GET /status HTTP/1.1\r\nX-Filler: " + b"x" * (70 * 1024) + b"\r\n\r\n"
    assert raw_exchange(server.port, huge).startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert raw_exchange(server.port, b"GET nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    bare_newlines = raw_exchange(server.port, b"GET /status HTTP/1.0\n\n")
    assert bare_newlines.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(bare_newlines.split(b"\r\n\r\n", 1)[1]) == STATUS_REPLY


# ---- framed, in process -----------------------------------------------------------------

def test_framed_protocol_on_the_wire(external):
    server = external()
    data = raw_exchange(server.port, encode_frame(AUTH) + encode_frame(STATUS) + encode_frame(99)
                        + encode_frame(CLEAN_SHUTDOWN), shut=True)
    (auth_id, _), (status_id, status), (unknown_id, unknown), (shutdown_id, shutdown) = frames_in(data)
    assert (auth_id, status_id, unknown_id, shutdown_id) == (AUTH_OK, REPLY, ERROR, REPLY)
    assert json.loads(status) == STATUS_REPLY
    assert unknown == b"unknown message id 99"
    assert json.loads(shutdown) == {"shutting_down": True}
    assert server.control.calls == ["status", "shutdown"]


def test_framed_first_message_must_be_auth_and_nothing_happens_before(external, caplog):
    server = external(secret="s3cret")
    with caplog.at_level(logging.WARNING, logger="wallaroo"):
        skipped = frames_in(raw_exchange(server.port, encode_frame(CLEAN_SHUTDOWN)))
        wrong = frames_in(raw_exchange(server.port, encode_frame(AUTH, auth_token("guess", "external").encode())
                                       + encode_frame(CLEAN_SHUTDOWN)))
        empty = frames_in(raw_exchange(server.port, encode_frame(AUTH) + encode_frame(CLEAN_SHUTDOWN)))
    assert skipped == [(AUTH_FAILED, b"the first message must be AUTH (id 200), got message id 3")]
    assert wrong[0][0] == AUTH_FAILED and wrong[0][1].startswith(b"wrong cluster secret")
    assert len(wrong) == 1 and len(empty) == 1
    assert empty[0][0] == AUTH_FAILED and empty[0][1].startswith(b"no auth token")
    assert server.control.calls == []
    assert len(warnings_of(caplog)) == 3


def test_framed_oversized_frame_is_refused(external):
    server = external()
    data = raw_exchange(server.port, encode_frame(AUTH) + struct.pack(">IH", 1 << 20, STATUS))
    assert frames_in(data) == [(AUTH_OK, b""),
                               (ERROR, b"frame of 1048576 bytes is over the 65536-byte limit; closing the connection")]
    assert server.control.calls == []


def test_clients_that_disconnect_mid_request_do_not_hurt_the_server(external, caplog):
    server = external(secret="s3cret")
    token = auth_token("s3cret", "external").encode()
    cuts = [
        b"\x00\x00",                                             # inside the first header
        encode_frame(AUTH, token)[:10],                          # inside the AUTH frame
        encode_frame(AUTH, auth_token("s3cret", "external").encode()) + struct.pack(">IH", 10, STATUS) + b"ab",
        b"GET /status HTTP/1.1\r\nHost: x",                      # inside an HTTP head
        b"POST /shutdown HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",   # inside an HTTP body
    ]
    with caplog.at_level(logging.DEBUG, logger="wallaroo"):
        for cut in cuts:
            with socket.create_connection((HOST, server.port), timeout=5) as sock:
                sock.sendall(cut)
        time.sleep(0.2)

        async def ask():
            client = await ExternalClient.connect(HOST, server.port, secret="s3cret", timeout=5)
            try:
                return await client.request(STATUS)
            finally:
                await client.close()

        assert asyncio.run(ask()) == STATUS_REPLY
    assert server.control.calls == ["status"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_client_raises_auth_and_server_errors(external):
    server = external(secret="s3cret", fail="partitions")

    async def go():
        with pytest.raises(AuthError, match="wrong cluster secret"):
            await ExternalClient.connect(HOST, server.port, secret="guess", timeout=5)
        client = await ExternalClient.connect(HOST, server.port, secret="s3cret", timeout=5)
        try:
            with pytest.raises(ExternalError, match="partitions failed: partitions is broken today"):
                await client.request(PARTITIONS)
            assert await client.request(STATE_ENTITIES) == STATE_REPLY   # the connection goes on
        finally:
            await client.close()

    asyncio.run(go())


# ---- framed, through the CLI as a subprocess --------------------------------------------

def test_cli_human_and_json_output(external):
    server = external()
    status = run_cluster("status", "--external", server.address)
    assert (status.returncode, status.stdout) == (0, "2 workers: initializer, w1 — processing\n"), status.stderr
    as_json = run_cluster("status", "--external", server.address, "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == STATUS_REPLY
    partitions = run_cluster("partitions", "--external", server.address)
    assert partitions.returncode == 0
    assert partitions.stdout.splitlines() == [
        "8 key groups over 2 workers",
        "  initializer: 4 key groups (0-3)",
        "  w1: 4 key groups (4-7)",
        "state keys per worker:",
        "  count: initializer 123, w1 98",
    ]
    entities = run_cluster("state-entities", "--external", server.address)
    assert entities.stdout == "count: 221 keys (initializer 123, w1 98)\n"
    assert server.control.calls == ["status", "status", "partitions", "state_entities"]


def test_cli_shutdown_with_the_secret_from_the_environment(external):
    server = external(secret="s3cret")
    result = run_cluster("shutdown", "--external", server.address, secret_env="s3cret")
    assert (result.returncode, result.stdout) == (0, "the cluster is shutting down\n"), result.stderr
    assert server.control.calls == ["shutdown"]


def test_cli_wrong_or_missing_secret_exits_1_and_changes_nothing(external):
    server = external(secret="s3cret")
    wrong = run_cluster("shutdown", "--external", server.address, "--secret", "guess", secret_env="s3cret")
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.startswith(f"wallaroo cluster: the cluster at {server.address} refused this client: "
                                   f"wrong cluster secret")
    missing = run_cluster("shutdown", "--external", server.address)
    assert missing.returncode == 1
    assert "no auth token" in missing.stderr and f"give it with --secret or {SECRET_ENV}" in missing.stderr
    assert server.control.calls == []


def test_cli_cannot_connect():
    address = f"{HOST}:{free_port()}"
    result = run_cluster("status", "--external", address)
    assert result.returncode == 1
    assert result.stderr == (f"wallaroo cluster: cannot reach the external control port at {address}: "
                             f"connection refused; is the cluster running with --external {address}?\n")


def test_cli_reports_a_control_error(external):
    server = external(fail="status")
    result = run_cluster("status", "--external", server.address)
    assert result.returncode == 1
    assert "answered with an error: status failed: status is broken today" in result.stderr
