"""Tests for the cluster secret, the handshake and request tokens (wallaroo.cluster.auth), and
the message framing under them (wallaroo.cluster.wire): real loopback connections, 127.0.0.1."""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

import pytest

from support.net import HOST
from wallaroo.cluster import auth
from wallaroo.cluster.auth import (SECRET_ENV, AuthError, HttpAuth, SecretRequired, auth_token,
                                   client_handshake, cluster_secret, http_auth_header, is_loopback,
                                   require_secret, server_handshake)
from wallaroo.cluster.wire import (MAX_MESSAGE, WireError, decode_message, encode_message, read_message,
                                   write_message)

HOW = "set the same secret on every worker and control client with --cluster-secret or WALLAROO_CLUSTER_SECRET"


# ---- the secret and who needs one ---------------------------------------------------------

def test_cluster_secret_flag_wins_then_env_and_empty_means_none(monkeypatch):
    assert cluster_secret("flag", environ={SECRET_ENV: "env"}) == "flag"
    assert cluster_secret(None, environ={SECRET_ENV: "env"}) == "env"
    assert cluster_secret("", environ={SECRET_ENV: "env"}) == "env"
    assert cluster_secret(None, environ={SECRET_ENV: ""}) is None
    assert cluster_secret(None, environ={}) is None
    monkeypatch.setenv(SECRET_ENV, "from-process-env")
    assert cluster_secret(None) == "from-process-env"
    monkeypatch.delenv(SECRET_ENV)
    assert cluster_secret(None) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST",
                                  "localhost.", "::ffff:127.0.0.1"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "[::]", "10.0.0.1", "192.168.1.20", "fe80::1",
                                  "2001:db8::1"])
def test_hosts_that_are_not_loopback(host):
    assert not is_loopback(host)


def test_a_name_is_loopback_only_if_every_address_it_resolves_to_is(monkeypatch):
    answers = {
        "only-loopback": ["127.0.0.1", "::1"],
        "mixed": ["127.0.0.1", "10.1.1.1"],
        "remote": ["10.1.1.1"],
    }

    def fake_getaddrinfo(name, port, *args, **kwargs):
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0))
                for a in answers[name]]

    monkeypatch.setattr(auth.socket, "getaddrinfo", fake_getaddrinfo)
    assert is_loopback("only-loopback")
    assert not is_loopback("mixed")
    assert not is_loopback("remote")
    assert not is_loopback("unknown")


def test_require_secret_passes_on_loopback_or_with_a_secret():
    require_secret([("--control", "127.0.0.1:7000"), ("--external", "[::1]:7001"),
                    ("--data", "localhost:7002")], None)
    require_secret([("--control", "10.0.0.1:7000"), ("--external", "0.0.0.0:7001")], "s3cret")


def test_require_secret_names_the_flag_the_address_and_the_fix():
    with pytest.raises(SecretRequired) as caught:
        require_secret([("--control", "127.0.0.1:7000"), ("--external", "10.0.0.1:7001")], None)
    message = str(caught.value)
    assert message.startswith("--external 10.0.0.1:7001 is not a loopback address")
    assert "--control" not in message
    assert HOW in message


def test_require_secret_names_every_exposed_bind_and_an_empty_secret_is_none():
    with pytest.raises(SecretRequired) as caught:
        require_secret([("--control", "0.0.0.0:7000"), ("--data", "127.0.0.1:7001"),
                        ("--external", "[::]:7002")], "")
    message = str(caught.value)
    assert message.startswith("--control 0.0.0.0:7000 and --external [::]:7002 are not loopback addresses")
    assert HOW in message


# ---- wire framing -------------------------------------------------------------------------

def read_all(data: bytes, max_size: int = MAX_MESSAGE) -> list[Any]:
    """Every message ``read_message`` gets from ``data`` then EOF, up to the first None."""
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        found = []
        while (message := await read_message(reader, max_size)) is not None:
            found.append(message)
        return found
    return asyncio.run(go())


def test_wire_round_trip_and_clean_eof():
    messages = [{"a": 1}, {"text": "héllo ✓", "list": [1, None, True]}, {}]
    assert read_all(b"".join(encode_message(m) for m in messages)) == messages
    assert read_all(b"") == []


@pytest.mark.parametrize("data, error", [
    (struct.pack(">I", 101) + b"{}", "101 bytes announced, over the 100-byte limit"),
    (struct.pack(">I", 5) + b"{nope", "not valid JSON"),
    (struct.pack(">I", 3) + b"[1]", "must be a JSON object, got a list"),
    (struct.pack(">I", 2) + b"\xff\xfe", "not UTF-8"),
    (struct.pack(">I", 10) + b"{}", "connection closed inside a message (2 of 10 bytes)"),
    (b"\x00\x00", "inside a message header"),
])
def test_wire_errors_say_what_is_wrong(data, error):
    with pytest.raises(WireError, match=error.replace("(", r"\(").replace(")", r"\)")):
        read_all(data, max_size=100)


def test_encode_refuses_non_objects_and_oversized_messages():
    with pytest.raises(WireError, match="must be a dict"):
        encode_message([1, 2])  # type: ignore[arg-type]
    with pytest.raises(WireError, match="over the 10-byte limit"):
        encode_message({"long": "x" * 20}, max_size=10)
    assert decode_message(b'{"ok": true}') == {"ok": True}


# ---- the handshake over real loopback connections ----------------------------------------

class Outcome:
    """What each side of one handshake ended with."""

    server_result: dict[str, Any] | None = None
    client_error: AuthError | None = None
    client_port: int = 0


async def handshake(server_secret: str | None, client_secret: str | None, *, server_role: str = "control",
                    client_role: str = "control", hello: dict[str, Any] | None = None) -> Outcome:
    outcome = Outcome()
    done = asyncio.Event()

    async def on_connect(reader, writer):
        try:
            outcome.server_result = await server_handshake(reader, writer, server_secret, server_role)
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(on_connect, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(HOST, port)
    outcome.client_port = writer.get_extra_info("sockname")[1]
    try:
        await client_handshake(reader, writer, client_secret, client_role, hello or {"name": "w1"})
    except AuthError as err:
        outcome.client_error = err
    writer.close()
    await asyncio.wait_for(done.wait(), 5)
    server.close()
    await server.wait_closed()
    return outcome


def refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "wallaroo" and r.levelno == logging.WARNING]


def test_same_secret_both_sides_accept_and_the_server_gets_the_hello(caplog):
    outcome = asyncio.run(handshake("s3cret", "s3cret", hello={"name": "w7", "data": "127.0.0.1:9"}))
    assert outcome.client_error is None
    assert outcome.server_result == {"name": "w7", "data": "127.0.0.1:9"}
    assert refusals(caplog) == []


def test_without_secrets_anyone_is_accepted():
    outcome = asyncio.run(handshake(None, None))
    assert outcome.client_error is None
    assert outcome.server_result == {"name": "w1"}


def test_wrong_secret_is_refused_by_the_server_with_a_log_line_naming_the_peer(caplog):
    with caplog.at_level(logging.WARNING, logger="wallaroo"):
        outcome = asyncio.run(handshake("s3cret", "guess"))
    assert outcome.server_result is None
    assert "refused this connection: wrong cluster secret" in str(outcome.client_error)
    assert HOW in str(outcome.client_error)
    assert refusals(caplog) == [f"refused a control connection from 127.0.0.1:{outcome.client_port}: "
                                f"wrong cluster secret"]


def test_a_client_without_the_secret_is_refused(caplog):
    with caplog.at_level(logging.WARNING, logger="wallaroo"):
        outcome = asyncio.run(handshake("s3cret", None))
    assert outcome.server_result is None
    assert "this cluster requires a cluster secret" in str(outcome.client_error)
    assert refusals(caplog) == [f"refused a control connection from 127.0.0.1:{outcome.client_port}: "
                                f"no cluster secret"]


def test_a_client_with_a_secret_refuses_a_server_without_one():
    outcome = asyncio.run(handshake(None, "s3cret"))
    assert outcome.server_result == {"name": "w1"}      # the server itself accepts anyone
    assert "did not prove it knows the cluster secret" in str(outcome.client_error)


def test_a_client_refuses_another_kind_of_port():
    outcome = asyncio.run(handshake("s3cret", "s3cret", server_role="data", client_role="control"))
    assert "is a 'data' port, not a 'control' port" in str(outcome.client_error)
    assert outcome.server_result is None


async def lying_server(proof: str | None) -> AuthError | None:
    """A server that follows the protocol but answers with ``proof`` as its mac."""
    async def on_connect(reader, writer):
        await write_message(writer, {"hello": "wallaroo", "role": "control", "challenge": "ab" * 16,
                                     "auth": True})
        await read_message(reader)
        await write_message(writer, {"ok": True, "mac": proof})
        writer.close()

    server = await asyncio.start_server(on_connect, HOST, 0)
    reader, writer = await asyncio.open_connection(HOST, server.sockets[0].getsockname()[1])
    try:
        await client_handshake(reader, writer, "s3cret", "control", {})
        return None
    except AuthError as err:
        return err
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("proof, error", [
    ("00" * 32, "has a different cluster secret"),
    ("not hex at all", "has a different cluster secret"),
    (None, "did not prove it knows the cluster secret"),
])
def test_a_client_with_a_secret_refuses_a_server_with_a_wrong_or_no_proof(proof, error):
    err = asyncio.run(lying_server(proof))
    assert err is not None and error in str(err)


def test_a_silent_or_garbled_client_is_refused_and_logged(caplog):
    async def go(send: bytes) -> tuple[dict | None, bytes]:
        result: list[dict | None] = []

        async def on_connect(reader, writer):
            result.append(await server_handshake(reader, writer, "s3cret", "control", timeout=0.3))

        server = await asyncio.start_server(on_connect, HOST, 0)
        reader, writer = await asyncio.open_connection(HOST, server.sockets[0].getsockname()[1])
        writer.write(send)
        received = await asyncio.wait_for(reader.read(), 5)   # until the server closes
        writer.close()
        server.close()
        await server.wait_closed()
        return result[0], received

    with caplog.at_level(logging.WARNING, logger="wallaroo"):
        silent, said = asyncio.run(go(b""))
        garbled, _ = asyncio.run(go(struct.pack(">I", 4) + b"nope"))
        not_an_object, _ = asyncio.run(go(encode_message({"nonce": 5})))
    assert silent is None and garbled is None and not_an_object is None
    assert b"no answer to the handshake within 0.3 s" in said
    logged = refusals(caplog)
    assert len(logged) == 3
    assert "no answer to the handshake within 0.3 s" in logged[0]
    assert "broken handshake: control message is not valid JSON" in logged[1]
    assert "broken handshake: the answer needs a hex nonce" in logged[2]


def test_a_client_gives_up_on_a_server_that_is_not_wallaroo():
    async def go():
        async def on_connect(reader, writer):
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            await writer.drain()
            await asyncio.sleep(1)
            writer.close()

        server = await asyncio.start_server(on_connect, HOST, 0)
        reader, writer = await asyncio.open_connection(HOST, server.sockets[0].getsockname()[1])
        try:
            with pytest.raises(AuthError, match="broken handshake with 127.0.0.1:"):
                await client_handshake(reader, writer, None, "control", {}, timeout=2)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(go())


# ---- HTTP request tokens ------------------------------------------------------------------

class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_good_token_passes_once_then_is_a_replay():
    clock = Clock(1_700_000_000.0)
    checker = HttpAuth("s3cret", clock=clock)
    header = http_auth_header("s3cret", "get", "/status", now=clock.now)
    assert checker.check(header, "GET", "/status") is None
    clock.now += 30
    assert "replay" in checker.check(header, "GET", "/status")
    fresh = http_auth_header("s3cret", "GET", "/status", now=clock.now)
    assert checker.check(fresh, "GET", "/status") is None


@pytest.mark.parametrize("age", [61, -61, 3600])
def test_a_token_more_than_60_s_off_the_clock_is_refused(age):
    clock = Clock(1_700_000_000.0)
    checker = HttpAuth("s3cret", clock=clock)
    header = http_auth_header("s3cret", "GET", "/status", now=clock.now - age)
    reason = checker.check(header, "GET", "/status")
    assert reason is not None and reason.startswith("expired auth token")
    assert f"{-age:+d} s from this server's clock" in reason
    assert checker.check(http_auth_header("s3cret", "GET", "/status", now=clock.now - 59),
                         "GET", "/status") is None


def test_tokens_for_another_secret_or_request_are_refused():
    checker = HttpAuth("s3cret")
    assert "wrong cluster secret" in checker.check(http_auth_header("other", "GET", "/status"), "GET", "/status")
    assert "another request" in checker.check(http_auth_header("s3cret", "GET", "/status"), "POST", "/shutdown")
    assert "wrong cluster secret" in checker.check_token(auth_token("other", "external"), "external")
    assert checker.check_token(auth_token("s3cret", "external"), "external") is None


@pytest.mark.parametrize("value", ["garbage", "1.2.3", "abc.0123456789abcdef0123456789abcdef." + "0" * 64,
                                   "1700000000.nothex." + "0" * 64, "1700000000." + "a" * 32 + ".short"])
def test_malformed_tokens(value):
    assert HttpAuth("s3cret").check(value, "GET", "/status").startswith("malformed auth token")


def test_missing_header_says_what_to_send_and_no_secret_accepts_anything():
    reason = HttpAuth("s3cret").check(None, "GET", "/status")
    assert reason.startswith("missing X-Wallaroo-Auth header")
    assert "'UNIX_TIME.NONCE_HEX.GET /status'" in reason
    open_door = HttpAuth(None)
    assert open_door.check(None, "GET", "/status") is None
    assert open_door.check("whatever", "POST", "/shutdown") is None


def test_remembered_nonces_are_forgotten_once_they_cannot_pass_again():
    clock = Clock(1_700_000_000.0)
    checker = HttpAuth("s3cret", clock=clock)
    old = http_auth_header("s3cret", "GET", "/status", now=clock.now + 60)   # at the edge of the window
    assert checker.check(old, "GET", "/status") is None
    clock.now += 119
    assert "replay" in checker.check(old, "GET", "/status")   # still inside its own time window
    clock.now += 2    # 121 s: past 120 s, and the token's time is 61 s ago: it cannot pass anyway
    assert checker.check(http_auth_header("s3cret", "GET", "/status", now=clock.now), "GET", "/status") is None
    assert len(checker._seen) == 1
    assert "expired" in checker.check(old, "GET", "/status")
