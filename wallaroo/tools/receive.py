"""``wallaroo receive``: a TCP server that writes out what a Wallaroo TCP sink sends.

The counterpart of the original Wallaroo "data_receiver". The engine connects
as a client and may reconnect, so any number of connections are accepted, one
after another or at the same time. Messages are written whole, so output from
concurrent connections never interleaves inside a message.

Example::

    wallaroo receive --listen 127.0.0.1:7002 --expect 1000 --output out.txt
    wallaroo receive --listen 127.0.0.1:0 --framed --raw --output out.bin --timeout 30
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import BinaryIO, Protocol

import click

from wallaroo.tools.framing import HEADER, Address, FrameDecoder, HostPort, fail

_READ_SIZE = 65536


class MessageReader(Protocol):
    """Turns one connection's byte stream into whole messages ready to write."""

    def feed(self, data: bytes, limit: int | None) -> tuple[bytes, int]:
        """Take new bytes; return the output for at most ``limit`` whole messages and their count."""

    def finish(self) -> tuple[bytes, int]:
        """At end of stream: return ``(tail to write, bytes dropped)``."""


class LineReader:
    """Newline-delimited messages; a partial last line is held until its newline arrives.

    Example::

        >>> reader = LineReader()
        >>> reader.feed(b"a\\nb\\nc", None)
        (b'a\\nb\\n', 2)
        >>> reader.finish()
        (b'c', 0)
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes, limit: int | None) -> tuple[bytes, int]:
        buffer = self._pending + data
        end = buffer.rfind(b"\n") + 1
        count = buffer.count(b"\n", 0, end)
        if limit is not None and count > limit:
            end = _end_of_line(buffer, limit)
            count = limit
        self._pending = buffer[end:]
        return buffer[:end], count

    def finish(self) -> tuple[bytes, int]:
        tail, self._pending = self._pending, b""
        return tail, 0


def _end_of_line(buffer: bytes, number: int) -> int:
    """Return the offset just past the ``number``-th newline in ``buffer``."""
    end = 0
    for _ in range(number):
        end = buffer.index(b"\n", end) + 1
    return end


class FrameReader:
    """Length-prefixed messages, written as ``payload + b"\\n"`` or, if ``raw``, as received.

    Example::

        >>> FrameReader(raw=False).feed(b"\\x00\\x00\\x00\\x02hi", None)
        (b'hi\\n', 1)
    """

    def __init__(self, raw: bool) -> None:
        self._raw = raw
        self._decoder = FrameDecoder()

    def feed(self, data: bytes, limit: int | None) -> tuple[bytes, int]:
        self._decoder.feed(data)
        frames = self._decoder.frames(limit)
        if self._raw:
            return b"".join(frames), len(frames)
        return b"".join(frame[HEADER.size:] + b"\n" for frame in frames), len(frames)

    def finish(self) -> tuple[bytes, int]:
        return b"", self._decoder.pending


class Sink:
    """Writes messages to ``out`` and counts them, up to ``expect`` if given.

    Example::

        sink = Sink(sys.stdout.buffer, expect=10)
        sink.write(b"a\\n", 1)
        sink.remaining  # 9
    """

    def __init__(self, out: BinaryIO, expect: int | None) -> None:
        self.out = out
        self.expect = expect
        self.count = 0
        self.reached = asyncio.Event()

    @property
    def remaining(self) -> int | None:
        """Messages still expected, or ``None`` without ``--expect``."""
        return None if self.expect is None else self.expect - self.count

    def write(self, data: bytes, count: int) -> None:
        """Write ``data`` holding ``count`` messages and flush it so readers see it promptly."""
        if data:
            self.out.write(data)
            self.out.flush()
        self.count += count
        if self.remaining == 0:
            self.reached.set()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                sink: Sink, messages: MessageReader) -> None:
    """Copy one connection's messages into ``sink`` until it closes or enough have arrived."""
    peer = writer.get_extra_info("peername")
    try:
        while not sink.reached.is_set() and (data := await reader.read(_READ_SIZE)):
            sink.write(*messages.feed(data, sink.remaining))
    except ConnectionError as err:
        click.echo(f"wallaroo receive: connection from {peer} failed: {err}", err=True)
    finally:
        writer.close()
        if not sink.reached.is_set():
            tail, dropped = messages.finish()
            sink.write(tail, 0)
            if dropped:
                click.echo(f"wallaroo receive: connection from {peer} closed inside a frame; "
                           f"{dropped} bytes dropped", err=True)


async def serve(address: Address, sink: Sink, framed: bool, raw: bool, timeout: float | None) -> bool:
    """Accept connections on ``address`` and write what arrives into ``sink``.

    Returns ``True`` if it stopped because of ``timeout``, ``False`` when the
    expected count was reached or on SIGINT/SIGTERM.

    Example: ``asyncio.run(serve(Address("127.0.0.1", 0), sink, framed=True, raw=False, timeout=5))``.
    """
    handlers: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await _pump(reader, writer, sink, FrameReader(raw) if framed else LineReader())
        finally:
            handlers.discard(task)

    try:
        server = await asyncio.start_server(on_connect, address.host, address.port)
    except OSError as err:
        fail("receive", f"cannot listen on {address}: {err}")
    port = server.sockets[0].getsockname()[1]
    click.echo(f"wallaroo receive: listening on {Address(address.host, port)}", err=True)
    sys.stderr.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    reached = asyncio.ensure_future(sink.reached.wait())
    done, pending = await asyncio.wait({stopped, reached}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    server.close()
    for task in (*pending, *handlers):
        task.cancel()
    await asyncio.gather(*pending, *handlers, return_exceptions=True)
    await server.wait_closed()
    return not done


def _open_output(path: Path | None) -> BinaryIO:
    """Open ``--output`` for writing (truncating it), or return stdout's binary stream."""
    if path is None:
        return sys.stdout.buffer
    try:
        return path.open("wb")
    except OSError as err:
        raise click.BadParameter(f"cannot write {str(path)!r}: {err.strerror}", param_hint="'--output'") from None


def _close_output(out: BinaryIO) -> None:
    """Flush ``out``; a real file is also fsynced and closed."""
    out.flush()
    if out is not sys.stdout.buffer:
        os.fsync(out.fileno())
        out.close()


@click.command()
@click.option("--listen", "address", required=True, type=HostPort(allow_port_zero=True),
              help="HOST:PORT to listen on; port 0 picks a free port (printed on stderr).")
@click.option("--framed", is_flag=True, help="The stream is u32-BE-length frames; write each payload plus a newline.")
@click.option("--raw", is_flag=True, help="With --framed: write the frames exactly as received, headers included.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of stdout.")
@click.option("--expect", type=click.IntRange(min=1), help="Exit 0 once this many messages have arrived.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this many seconds; exit 1 if --expect was not reached.")
def receive(address: Address, framed: bool, raw: bool, output_path: Path | None,
            expect: int | None, timeout: float | None) -> None:
    """Listen for a Wallaroo TCP sink and write the messages it sends.

    Example: wallaroo receive --listen 127.0.0.1:7002 --framed --expect 100 --output out.txt
    """
    if raw and not framed:
        raise click.UsageError("--raw keeps frame headers, so it needs --framed; add --framed.")
    out = _open_output(output_path)
    sink = Sink(out, expect)
    try:
        timed_out = asyncio.run(serve(address, sink, framed, raw, timeout))
    finally:
        _close_output(out)
    click.echo(f"wallaroo receive: received {sink.count} messages", err=True)
    if timed_out and expect is not None:
        fail("receive", f"timed out after {timeout:g} s: {sink.count} of {expect} expected messages arrived")
