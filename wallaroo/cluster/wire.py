"""Message framing for control connections: a u32 big-endian length, then a UTF-8 JSON object.

Every control connection between workers (and the handshake of :mod:`wallaroo.cluster.auth`)
speaks this framing. A message is one JSON *object*; its encoded length is at most
:data:`MAX_MESSAGE` bytes. :func:`read_message` returns ``None`` when the peer closed the
connection cleanly between two messages, and raises :class:`WireError` for everything else
that is wrong: a frame over the limit, the connection closing inside a frame, bytes that are
not UTF-8 JSON, or JSON that is not an object. After a ``WireError`` the stream cannot be
resynchronized: close the connection.

Example::

    >>> encode_message({"hello": "wallaroo"})
    b'\\x00\\x00\\x00\\x14{"hello":"wallaroo"}'
    >>> decode_message(b'{"n": 1}')
    {'n': 1}
    >>> decode_message(b'[1, 2]')
    Traceback (most recent call last):
    ...
    wallaroo.cluster.wire.WireError: a control message must be a JSON object, got a list

Over a stream::

    >>> import asyncio
    >>> async def demo():
    ...     reader = asyncio.StreamReader()
    ...     reader.feed_data(encode_message({"a": 1}) + encode_message({"b": 2}))
    ...     reader.feed_eof()
    ...     return [await read_message(reader) for _ in range(3)]
    >>> asyncio.run(demo())
    [{'a': 1}, {'b': 2}, None]
"""
from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

MAX_MESSAGE = 16 * 1024 * 1024
"""The largest encoded message (JSON bytes, header excluded) either side accepts."""

HEADER = struct.Struct(">I")


class WireError(Exception):
    """A control connection carried something that is not a valid message; close it."""


def encode_message(obj: dict[str, Any], max_size: int = MAX_MESSAGE) -> bytes:
    """Return ``obj`` as compact UTF-8 JSON behind its u32 big-endian length.

    Raises :class:`WireError` if ``obj`` is not a dict or encodes to more than ``max_size``
    bytes, and ``TypeError`` if it holds something JSON cannot represent.

    Example: ``encode_message({}) == b"\\x00\\x00\\x00\\x02{}"``.
    """
    if not isinstance(obj, dict):
        raise WireError(f"a control message must be a dict, got {type(obj).__name__}")
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > max_size:
        raise WireError(f"control message of {len(payload)} bytes is over the {max_size}-byte limit; "
                        f"send less per message")
    return HEADER.pack(len(payload)) + payload


def decode_message(payload: bytes) -> dict[str, Any]:
    """Parse one message's payload (the bytes after the length header) into a dict.

    Raises :class:`WireError` if it is not UTF-8 JSON or not a JSON object.

    Example: ``decode_message(b'{"ok": true}') == {"ok": True}``.
    """
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise WireError(f"control message is not UTF-8 (bad byte at offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise WireError(f"control message is not valid JSON: {err.msg} at offset {err.pos}") from None
    if not isinstance(obj, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number",
                bool: "a boolean", type(None): "null"}.get(type(obj), type(obj).__name__)
        raise WireError(f"a control message must be a JSON object, got {kind}")
    return obj


async def read_message(reader: asyncio.StreamReader, max_size: int = MAX_MESSAGE) -> dict[str, Any] | None:
    """Read the next message from ``reader``.

    Returns ``None`` on a clean end of stream (EOF exactly between two messages). Raises
    :class:`WireError` when the header announces more than ``max_size`` bytes, when the
    stream ends inside a message, or when the payload is not a JSON object.

    Example: ``message = await read_message(reader)`` (see the module docstring).
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as err:
        if not err.partial:
            return None
        raise WireError(f"connection closed inside a message header "
                        f"({len(err.partial)} of {HEADER.size} bytes)") from None
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise WireError(f"control message of {length} bytes announced, over the {max_size}-byte limit "
                        f"(is the peer a wallaroo worker speaking this protocol?)")
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as err:
        raise WireError(f"connection closed inside a message ({len(err.partial)} of {length} bytes)") from None
    return decode_message(payload)


async def write_message(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    """Encode ``obj`` (see :func:`encode_message`), write it and wait for the buffer to drain.

    Example: ``await write_message(writer, {"ok": True})``.
    """
    writer.write(encode_message(obj))
    await writer.drain()


def send_soon(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    """Queue a message on ``writer`` without waiting for it to be sent (small control
    messages); nothing happens once the writer is closing.

    Example::

        >>> class Writer:
        ...     def is_closing(self): return False
        ...     def write(self, data): print(data)
        >>> send_soon(Writer(), {"type": "probe"})
        b'\\x00\\x00\\x00\\x10{"type":"probe"}'
    """
    if not writer.is_closing():
        writer.write(encode_message(obj))
