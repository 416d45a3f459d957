"""Who may join a cluster or control it: the cluster secret, the handshake, HTTP request tokens.

A cluster may have a *secret*, a string every worker and every control client is given with
``--cluster-secret`` (or ``--secret`` for ``wallaroo cluster``) or the environment variable
``WALLAROO_CLUSTER_SECRET`` (:func:`cluster_secret`). The secret itself never crosses the
network: each side proves it knows it with an HMAC-SHA256 over fresh random nonces.

A cluster bound only to loopback addresses may run without a secret; one that listens on
any other address must have one (:func:`require_secret` says so and how to fix it).

**Handshake** (control connections between workers, over :mod:`wallaroo.cluster.wire`
messages; the server speaks first, the whole exchange must finish within 5 s)::

    server -> {"hello": "wallaroo", "role": ROLE, "challenge": NONCE_S, "auth": HAS_SECRET}
    client -> {"nonce": NONCE_C, "mac": HMAC(secret, "client|ROLE|NONCE_S|NONCE_C") or null,
               "hello": {...what the client says about itself...}}
    server -> {"ok": true, "mac": HMAC(secret, "server|ROLE|NONCE_C|NONCE_S") or null}
           or {"ok": false, "error": REASON}  (and closes)

Nonces are 16 random bytes in hex. A server with a secret refuses a client whose mac is
missing or wrong (and logs a warning naming the peer); a server without one accepts anyone.
A client with a secret refuses a server that does not prove the same secret, so a worker never
joins a cluster run by someone else. ``ROLE`` (e.g. ``"control"``) keeps a proof made for one
kind of port from being replayed on another.

**Tokens** (one request, for HTTP clients and the framed external protocol)::

    UNIX_TIME.NONCE_HEX.HMAC(secret, "UNIX_TIME.NONCE_HEX.SUBJECT")

For HTTP the token goes in the ``X-Wallaroo-Auth`` header and ``SUBJECT`` is
``"METHOD PATH"``, e.g. ``"GET /status"``. A server accepts a token whose time is within 60 s
of its own clock and whose nonce it has not seen in the last 120 s (:class:`HttpAuth`).

Example::

    >>> cluster_secret("from-flag", environ={SECRET_ENV: "from-env"})
    'from-flag'
    >>> cluster_secret(None, environ={SECRET_ENV: ""}) is None
    True
    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    >>> require_secret([("--control", "127.0.0.1:7000")], None)   # loopback: no secret needed
    >>> require_secret([("--external", "10.0.0.1:7000")], None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    wallaroo.cluster.auth.SecretRequired: --external 10.0.0.1:7000 is not a loopback address, ...
    >>> checker = HttpAuth("s3cret")
    >>> token = http_auth_header("s3cret", "GET", "/status")
    >>> checker.check(token, "GET", "/status") is None
    True
    >>> checker.check(token, "GET", "/status")
    'token already used (replay): make a new token for every request'
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from wallaroo.cluster.wire import WireError, encode_message, read_message, write_message

log = logging.getLogger("wallaroo")

SECRET_ENV = "WALLAROO_CLUSTER_SECRET"
AUTH_HEADER = "X-Wallaroo-Auth"
HANDSHAKE_TIMEOUT = 5.0
HANDSHAKE_MAX = 64 * 1024   # bytes a handshake message may take: nothing more before proof
NONCE_BYTES = 16
TOKEN_WINDOW = 60.0    # a token's time may be this far from the server's clock, either way
REPLAY_WINDOW = 120.0  # a nonce is remembered at least this long

_HOW_TO_SET = ("set the same secret on every worker and control client with --cluster-secret "
               "or WALLAROO_CLUSTER_SECRET")
_HEX = re.compile(r"[0-9a-f]+")


class SecretRequired(Exception):
    """A worker would listen on a non-loopback address without a cluster secret."""


class AuthError(Exception):
    """A handshake or request was refused, by this side or by the peer; the message says why."""


def cluster_secret(flag_value: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The cluster secret: ``flag_value`` if given and not empty, else ``$WALLAROO_CLUSTER_SECRET``
    if set and not empty, else ``None`` (no secret).

    Example: ``cluster_secret(None)`` reads the environment; ``cluster_secret("x") == "x"``.
    """
    if flag_value:
        return flag_value
    value = (os.environ if environ is None else environ).get(SECRET_ENV)
    return value or None


def _loopback_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if ip.is_loopback:
        return True
    mapped = getattr(ip, "ipv4_mapped", None)   # ::ffff:127.0.0.1
    return mapped is not None and mapped.is_loopback


def is_loopback(host: str) -> bool:
    """Whether ``host`` only ever means this machine: 127.0.0.0/8, ``::1``, ``localhost``, or a
    name every address of which (by ``getaddrinfo``) is one of those. The wildcard addresses
    ``""``, ``0.0.0.0`` and ``::`` listen on every interface, so they are not loopback; nor is a
    name that does not resolve.

    Example: ``is_loopback("127.0.0.2") is True`` and ``is_loopback("10.0.0.1") is False``.
    """
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name:
        return False
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return _loopback_ip(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    try:
        return bool(addresses) and all(_loopback_ip(ipaddress.ip_address(a)) for a in addresses)
    except ValueError:
        return False


def _host_of(address: str) -> str:
    """The host of ``"HOST:PORT"`` (``"[::1]:7000"`` gives ``"::1"``); no port: all of it."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        host = address
    return host.strip().removeprefix("[").removesuffix("]")


def require_secret(binds: Iterable[tuple[str, str]], secret: str | None) -> None:
    """Raise :class:`SecretRequired` if ``secret`` is empty and any of ``binds`` — pairs of
    ``(flag, "HOST:PORT")`` such as ``("--control", "10.0.0.1:7000")`` — listens on an address
    that is not loopback. The message names every such flag and address and how to fix it.

    Example: ``require_secret([("--control", args.control)], cluster_secret(args.cluster_secret))``.
    """
    if secret:
        return
    exposed = [f"{flag} {address}" for flag, address in binds if not is_loopback(_host_of(address))]
    if not exposed:
        return
    if len(exposed) == 1:
        what = f"{exposed[0]} is not a loopback address"
    else:
        what = f"{', '.join(exposed[:-1])} and {exposed[-1]} are not loopback addresses"
    raise SecretRequired(f"{what}, so other machines could join or control this cluster: "
                         f"{_HOW_TO_SET} (or listen on 127.0.0.1 only)")


def _mac(secret: str, text: str) -> str:
    return hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


def _same(expected: str, given: Any) -> bool:
    """Constant-time comparison of a hex MAC with whatever the peer sent."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace"))


def _is_nonce(value: Any) -> bool:
    return isinstance(value, str) and 16 <= len(value) <= 128 and _HEX.fullmatch(value) is not None


def peer_name(writer: asyncio.StreamWriter) -> str:
    """``HOST:PORT`` of the other end of ``writer``'s connection (``[::1]:PORT`` for IPv6).

    Example: ``log.warning("refused %s", peer_name(writer))``.
    """
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else peer[0]
        return f"{host}:{peer[1]}"
    return str(peer) if peer else "an unknown peer"


def _refuse(writer: asyncio.StreamWriter, role: str, peer: str, why: str, tell: str | None) -> None:
    """Tell the client ``tell`` (if any), close, and log a warning that says ``why``."""
    if tell is not None and not writer.is_closing():
        writer.write(encode_message({"ok": False, "error": tell}))
    writer.close()   # buffered data is still sent before the socket closes
    log.warning("refused a %s connection from %s: %s", role, peer, why)


async def server_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           secret: str | None, role: str,
                           timeout: float = HANDSHAKE_TIMEOUT) -> dict[str, Any] | None:
    """Run the server side of the handshake on a freshly accepted connection.

    Returns the client's ``hello`` dict once it is accepted. When it is refused (wrong or
    missing secret, a broken or late answer, the client going away) the client is told why
    when possible, ``writer`` is closed, a warning naming the peer is logged on the
    ``wallaroo`` logger, and ``None`` is returned.

    Example: ``hello = await server_handshake(reader, writer, secret, "control")``.
    """
    secret = secret or None
    peer = peer_name(writer)
    nonce_s = secrets.token_hex(NONCE_BYTES)
    try:
        async with asyncio.timeout(timeout):
            await write_message(writer, {"hello": "wallaroo", "role": role, "challenge": nonce_s,
                                         "auth": secret is not None})
            answer = await read_message(reader, HANDSHAKE_MAX)
    except TimeoutError:
        _refuse(writer, role, peer, f"no answer to the handshake within {timeout:g} s",
                f"no answer to the handshake within {timeout:g} s")
        return None
    except WireError as err:
        _refuse(writer, role, peer, f"broken handshake: {err}", f"broken handshake: {err}")
        return None
    except OSError as err:
        _refuse(writer, role, peer, f"connection failed during the handshake: {err}", None)
        return None
    if answer is None:
        _refuse(writer, role, peer, "closed the connection during the handshake", None)
        return None
    hello = answer.get("hello", {})
    if not _is_nonce(answer.get("nonce")) or not isinstance(hello, dict):
        _refuse(writer, role, peer, "broken handshake: the answer needs a hex nonce and a hello object",
                "broken handshake: the answer needs a hex nonce and a hello object")
        return None
    nonce_c = answer["nonce"]
    if secret is not None:
        given = answer.get("mac")
        if given is None:
            _refuse(writer, role, peer, "no cluster secret",
                    f"this cluster requires a cluster secret: {_HOW_TO_SET}")
            return None
        if not _same(_mac(secret, f"client|{role}|{nonce_s}|{nonce_c}"), given):
            _refuse(writer, role, peer, "wrong cluster secret",
                    f"wrong cluster secret: {_HOW_TO_SET}")
            return None
    proof = None if secret is None else _mac(secret, f"server|{role}|{nonce_c}|{nonce_s}")
    try:
        await write_message(writer, {"ok": True, "mac": proof})
    except OSError as err:
        _refuse(writer, role, peer, f"connection failed during the handshake: {err}", None)
        return None
    return hello


async def client_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           secret: str | None, role: str, hello: dict[str, Any],
                           timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Run the client side of the handshake on a fresh connection to a ``role`` port.

    Returns once the server accepted this client and, when this client has a secret, proved
    the same secret. Raises :class:`AuthError` saying why otherwise: the server refused (its
    reason is included), did not prove the secret, is another kind of port, or broke off.
    The caller closes ``writer`` on error.

    Example: ``await client_handshake(reader, writer, secret, "control", {"name": "w1"})``.
    """
    secret = secret or None
    peer = peer_name(writer)
    try:
        async with asyncio.timeout(timeout):
            challenge = await read_message(reader, HANDSHAKE_MAX)
            if challenge is None:
                raise AuthError(f"{peer} closed the connection before the handshake")
            if challenge.get("hello") != "wallaroo" or not _is_nonce(challenge.get("challenge")):
                raise AuthError(f"{peer} is not a wallaroo {role} port (it did not send a wallaroo "
                                f"challenge); check the address")
            if challenge.get("role") != role:
                raise AuthError(f"{peer} is a {challenge.get('role')!r} port, not a {role!r} port; "
                                f"check the address")
            nonce_s = challenge["challenge"]
            nonce_c = secrets.token_hex(NONCE_BYTES)
            mac = None if secret is None else _mac(secret, f"client|{role}|{nonce_s}|{nonce_c}")
            await write_message(writer, {"nonce": nonce_c, "mac": mac, "hello": hello})
            reply = await read_message(reader, HANDSHAKE_MAX)
    except TimeoutError:
        raise AuthError(f"no handshake from {peer} within {timeout:g} s") from None
    except WireError as err:
        raise AuthError(f"broken handshake with {peer}: {err}") from None
    except OSError as err:
        raise AuthError(f"connection to {peer} failed during the handshake: {err}") from None
    if reply is None:
        raise AuthError(f"{peer} closed the connection during the handshake")
    if reply.get("ok") is not True:
        raise AuthError(f"{peer} refused this connection: {reply.get('error') or 'no reason given'}")
    if secret is not None:
        proof = reply.get("mac")
        if proof is None:
            raise AuthError(f"{peer} did not prove it knows the cluster secret (it runs without one), "
                            f"so this side refuses it: {_HOW_TO_SET}")
        if not _same(_mac(secret, f"server|{role}|{nonce_c}|{nonce_s}"), proof):
            raise AuthError(f"{peer} has a different cluster secret, so this side refuses it: {_HOW_TO_SET}")


def auth_token(secret: str, subject: str, now: float | None = None) -> str:
    """A one-use token ``UNIX_TIME.NONCE.MAC`` proving ``secret`` for ``subject``.

    Example: ``auth_token(secret, "external")`` (the framed external protocol's AUTH payload).
    """
    ts = int(time.time() if now is None else now)
    nonce = secrets.token_hex(NONCE_BYTES)
    return f"{ts}.{nonce}.{_mac(secret, f'{ts}.{nonce}.{subject}')}"


def http_auth_header(secret: str, method: str, path: str, now: float | None = None) -> str:
    """The value of the ``X-Wallaroo-Auth`` header for one ``METHOD PATH`` request.

    Example: ``urllib.request.Request(url, headers={AUTH_HEADER: http_auth_header(s, "GET", "/status")})``.
    """
    return auth_token(secret, f"{method.upper()} {path}", now)


class HttpAuth:
    """Checks request tokens against ``secret``; with no secret every request passes.

    ``check`` and ``check_token`` return ``None`` when the token is good, else the reason it
    is not. A good token's nonce is remembered so the same token is refused the second time.
    ``clock`` (default ``time.time``) is there for tests.

    Example::

        auth = HttpAuth(secret)
        reason = auth.check(headers.get("x-wallaroo-auth"), "GET", "/status")
        if reason is not None: ...respond 401 with reason...
    """

    def __init__(self, secret: str | None, window: float = TOKEN_WINDOW, replay: float = REPLAY_WINDOW,
                 clock: Callable[[], float] = time.time) -> None:
        self.secret = secret or None
        self.window = window
        self.replay = replay
        self.clock = clock
        self._seen: dict[str, float] = {}   # nonce -> when it may be forgotten

    def check(self, header_value: str | None, method: str, path: str) -> str | None:
        """Check the ``X-Wallaroo-Auth`` header of a ``METHOD PATH`` request."""
        if self.secret is None:
            return None
        if not header_value:
            return (f"missing {AUTH_HEADER} header: this cluster has a cluster secret; send "
                    f"{AUTH_HEADER}: UNIX_TIME.NONCE_HEX.HMAC_SHA256_HEX(secret, "
                    f"'UNIX_TIME.NONCE_HEX.{method.upper()} {path}')")
        return self.check_token(header_value, f"{method.upper()} {path}")

    def check_token(self, token: str | None, subject: str) -> str | None:
        """Check a token made by :func:`auth_token` for ``subject``."""
        if self.secret is None:
            return None
        if not token:
            return "no auth token: this cluster has a cluster secret; give it with --secret or " + SECRET_ENV
        parts = token.strip().split(".")
        if (len(parts) != 3 or not parts[0].isdigit() or not _is_nonce(parts[1])
                or len(parts[2]) != 64 or _HEX.fullmatch(parts[2]) is None):
            return "malformed auth token: expected UNIX_TIME.NONCE_HEX.MAC_HEX"
        ts_text, nonce, mac = parts
        if not _same(_mac(self.secret, f"{ts_text}.{nonce}.{subject}"), mac):
            return "wrong cluster secret (or a token made for another request)"
        now = self.clock()
        skew = int(ts_text) - now
        if abs(skew) > self.window:
            return (f"expired auth token: its time is {skew:+.0f} s from this server's clock "
                    f"(more than {self.window:g} s); make a new token, and check the clocks")
        for old in [n for n, until in self._seen.items() if until < now]:
            del self._seen[old]
        if nonce in self._seen:
            return "token already used (replay): make a new token for every request"
        # remember it while the token could still pass the time check, and at least `replay` s
        self._seen[nonce] = max(now + self.replay, int(ts_text) + self.window)
        return None
