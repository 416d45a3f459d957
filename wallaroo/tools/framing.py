"""Wire framing and command-line helpers shared by ``wallaroo send`` and ``wallaroo receive``.

Wallaroo's TCP sources and sinks speak length-prefixed frames: a u32
big-endian payload length followed by the payload bytes.

Example::

    >>> frame = encode_frame(b"hello")
    >>> frame
    b'\\x00\\x00\\x00\\x05hello'
    >>> split_frames(frame + encode_frame(b""))
    [b'\\x00\\x00\\x00\\x05hello', b'\\x00\\x00\\x00\\x00']
"""
from __future__ import annotations

import struct
from typing import NamedTuple, NoReturn

import click

HEADER = struct.Struct(">I")


class TruncatedFrame(ValueError):
    """Raised by :func:`split_frames` when the data ends inside a frame.

    ``offset`` is the byte offset where the incomplete frame starts.
    """

    def __init__(self, offset: int, missing: int) -> None:
        super().__init__(f"truncated frame at byte offset {offset} ({missing} bytes missing)")
        self.offset = offset
        self.missing = missing


def encode_frame(payload: bytes) -> bytes:
    """Return ``payload`` framed with its u32 big-endian length.

    Example: ``encode_frame(b"hi") == b"\\x00\\x00\\x00\\x02hi"``.
    """
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder for a stream of length-prefixed frames.

    Feed it bytes as they arrive, in chunks of any size; :meth:`frames`
    returns each complete frame (header included) exactly once.

    Example::

        >>> decoder = FrameDecoder()
        >>> decoder.feed(b"\\x00\\x00\\x00\\x02h")
        >>> decoder.frames()
        []
        >>> decoder.feed(b"i")
        >>> decoder.frames()
        [b'\\x00\\x00\\x00\\x02hi']
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Append newly received bytes."""
        self._buffer += data

    def frames(self, limit: int | None = None) -> list[bytes]:
        """Remove and return the complete frames buffered so far, at most ``limit`` of them."""
        buffer = self._buffer
        found: list[bytes] = []
        pos = 0
        while (limit is None or len(found) < limit) and len(buffer) - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, pos)
            end = pos + HEADER.size + length
            if end > len(buffer):
                break
            found.append(bytes(buffer[pos:end]))
            pos = end
        del buffer[:pos]
        return found

    @property
    def pending(self) -> int:
        """Number of buffered bytes that do not yet form a complete frame."""
        return len(self._buffer)

    def missing(self) -> int:
        """Number of bytes still needed to complete the buffered partial frame."""
        if len(self._buffer) < HEADER.size:
            return HEADER.size - len(self._buffer)
        (length,) = HEADER.unpack_from(self._buffer, 0)
        return HEADER.size + length - len(self._buffer)


def split_frames(data: bytes) -> list[bytes]:
    """Split a complete buffer of frames into frames (headers kept).

    Raises :class:`TruncatedFrame` if the buffer ends in the middle of a frame.

    Example: ``split_frames(encode_frame(b"a") + encode_frame(b"b"))`` has two items.
    """
    decoder = FrameDecoder()
    decoder.feed(data)
    found = decoder.frames()
    if decoder.pending:
        raise TruncatedFrame(offset=len(data) - decoder.pending, missing=decoder.missing())
    return found


class Address(NamedTuple):
    """A TCP endpoint; ``str(Address("::1", 7002))`` gives ``[::1]:7002``."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class HostPort(click.ParamType):
    """Click parameter type for ``HOST:PORT`` (IPv6 hosts in brackets: ``[::1]:7002``).

    Example: ``@click.option("--host", type=HostPort(allow_port_zero=False))``.
    """

    name = "HOST:PORT"

    def __init__(self, allow_port_zero: bool) -> None:
        self.allow_port_zero = allow_port_zero

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Address:
        if isinstance(value, Address):
            return value
        text = str(value).strip()
        host, sep, port_text = text.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        lowest = 0 if self.allow_port_zero else 1
        if not sep or not host or not port_text.isdigit() or not lowest <= int(port_text) <= 65535:
            self.fail(
                f"{text!r} is not HOST:PORT with a port from {lowest} to 65535 (example: 127.0.0.1:7010)",
                param,
                ctx,
            )
        return Address(host, int(port_text))


def fail(tool: str, message: str, code: int = 1) -> NoReturn:
    """Print ``wallaroo TOOL: MESSAGE`` on stderr and exit with ``code``.

    Example: ``fail("send", "cannot connect to 127.0.0.1:7010")``.
    """
    click.echo(f"wallaroo {tool}: {message}", err=True)
    raise SystemExit(code)
