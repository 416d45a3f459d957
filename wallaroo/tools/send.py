"""``wallaroo send``: feed messages from a file into a Wallaroo TCP source.

The counterpart of the original Wallaroo "giles sender". Every message goes on
the wire as a u32 big-endian length followed by the payload.

Example::

    wallaroo send --host 127.0.0.1:7010 --file words.txt
    wallaroo send --host 127.0.0.1:7010 --file words.txt --repeat --messages 1000000 \\
        --batch-size 50 --interval 1ms
    wallaroo send --host 127.0.0.1:7010 --file frames.bin --binary
"""
from __future__ import annotations

import itertools
import re
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import click

from wallaroo.tools.framing import Address, HostPort, TruncatedFrame, encode_frame, fail, split_frames

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ns|us|µs|ms|s)?")


def parse_duration(text: str) -> float:
    """Parse a duration such as ``5ms``, ``0.5s``, ``250us`` or ``100ns`` into seconds.

    A bare integer means nanoseconds, like the original tool's ``--interval``.
    Raises ``ValueError`` for anything else.

    Example: ``parse_duration("5ms") == 0.005`` and ``parse_duration("1000") == 1e-06``.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration")
    number, unit = match["number"], match["unit"]
    if unit is None and not number.isdigit():
        raise ValueError(f"{text!r} has no unit; a bare number must be whole nanoseconds")
    return float(number) * _UNIT_SECONDS[unit or "ns"]


class Duration(click.ParamType):
    """Click parameter type for :func:`parse_duration`; the value is in seconds."""

    name = "DURATION"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as err:
            self.fail(f"{err} (use e.g. 5ms, 1s, 250us, 100ns, or whole nanoseconds)", param, ctx)


def load_messages(path: Path, binary: bool) -> list[bytes]:
    """Read ``path`` and return its messages, each already framed for the wire.

    Text files give one message per line (``\\n`` or ``\\r\\n``); with ``binary``
    the file must already hold length-prefixed frames.

    Example: a file holding ``b"a\\r\\nbc\\n"`` gives ``[b"\\0\\0\\0\\1a", b"\\0\\0\\0\\2bc"]``.
    """
    data = path.read_bytes()
    if not data:
        raise click.BadParameter(f"{str(path)!r} is empty; it needs at least one message.", param_hint="'--file'")
    if binary:
        try:
            return split_frames(data)
        except TruncatedFrame as err:
            raise click.BadParameter(
                f"{str(path)!r} ends with a truncated frame at byte offset {err.offset} "
                f"({err.missing} bytes missing); is it really a --binary file of u32-BE-length frames?",
                param_hint="'--file'",
            ) from None
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [encode_frame(line.removesuffix(b"\r")) for line in lines]


def batches(messages: list[bytes], count: int | None, repeat: bool, size: int) -> Iterator[list[bytes]]:
    """Yield the messages to send, ``size`` at a time.

    Stops after ``count`` messages if given; with ``repeat`` cycles over ``messages``.

    Example: ``list(batches([b"a", b"b"], 3, True, 2)) == [[b"a", b"b"], [b"a"]]``.
    """
    source = itertools.cycle(messages) if repeat else iter(messages)
    limited = itertools.islice(source, count)
    while batch := list(itertools.islice(limited, size)):
        yield batch


def connect(address: Address, timeout: float) -> socket.socket:
    """Connect to ``address``, retrying until ``timeout`` seconds have passed.

    The engine may still be starting, so refused connections are retried.
    Exits with status 1 if no connection could be made.

    Example: ``sock = connect(Address("127.0.0.1", 7010), timeout=10)``.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            sock = socket.create_connection((address.host, address.port), timeout=max(remaining, 0.1))
        except OSError as err:
            if remaining <= 0:
                fail("send", f"cannot connect to {address} after {timeout:g} s: {err}; is the engine running?")
            time.sleep(min(0.1, max(remaining, 0)))
            continue
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def send_paced(sock: socket.socket, to_send: Iterable[list[bytes]], interval: float) -> tuple[int, int]:
    """Write each batch to ``sock``, starting batch ``i`` at ``i * interval`` seconds.

    Batches are scheduled against a monotonic clock, so the time spent writing
    does not slow the rate down. Returns ``(messages, bytes)`` sent.

    Example: ``send_paced(sock, [[frame]] * 10, interval=0.01)`` takes about 90 ms.
    """
    start = time.monotonic()
    messages = sent_bytes = 0
    for index, batch in enumerate(to_send):
        delay = start + index * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        payload = b"".join(batch)
        sock.sendall(payload)
        messages += len(batch)
        sent_bytes += len(payload)
    return messages, sent_bytes


@click.command()
@click.option("--host", "address", required=True, type=HostPort(allow_port_zero=False),
              help="HOST:PORT of the Wallaroo TCP source to send to.")
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Messages to send: one per line, or u32-BE-length frames with --binary.")
@click.option("--binary", is_flag=True, help="The file already holds length-prefixed frames; send them as they are.")
@click.option("--messages", "count", type=click.IntRange(min=1),
              help="Stop after this many messages (required with --repeat).")
@click.option("--repeat", is_flag=True, help="Loop over the file until --messages have been sent.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Messages per write.")
@click.option("--interval", default="0", show_default=True, type=Duration(),
              help="Pause between batches: 5ms, 1s, 250us, 100ns, or whole nanoseconds.")
@click.option("--connect-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to keep retrying the connection.")
def send(address: Address, path: Path, binary: bool, count: int | None, repeat: bool,
         batch_size: int, interval: float, connect_timeout: float) -> None:
    """Send the messages in FILE to a Wallaroo TCP source.

    Example: wallaroo send --host 127.0.0.1:7010 --file words.txt --interval 1ms
    """
    if repeat and count is None:
        raise click.UsageError("--repeat loops forever without --messages; add --messages N.")
    messages = load_messages(path, binary)
    sock = connect(address, connect_timeout)
    start = time.monotonic()
    try:
        sent, sent_bytes = send_paced(sock, batches(messages, count, repeat, batch_size), interval)
        sock.shutdown(socket.SHUT_WR)
    except OSError as err:
        fail("send", f"lost the connection to {address}: {err}")
    finally:
        sock.close()
    elapsed = time.monotonic() - start
    click.echo(f"wallaroo send: sent {sent} messages ({sent_bytes} bytes) to {address} in {elapsed:.3f} s", err=True)
