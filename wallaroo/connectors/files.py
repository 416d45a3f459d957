"""File sources (lines or frames, bounded), file sinks (append, fsync at close) and stdout.

Example::

    >>> FileSource.bounded
    True
"""
from __future__ import annotations

import asyncio
import os
import select
import sys

from wallaroo._core.frames import FrameError, FrameReader, LineReader
from wallaroo.connectors.base import READ_SIZE, Sink, Source


class FileSource(Source):
    """Reads a file once: text lines (str) without a decoder, frames with one.

    With several workers (``ctx.share`` is ``(index, count)``) each reads a share, so every
    message is read once: a text file is split into ``count`` byte ranges and each worker
    reads the lines that *start* in its range; a framed file cannot be cut without reading its
    headers, so each worker cuts all of it into frames (in C) and takes every ``count``-th
    frame, from frame ``index`` on.

    Example::

        >>> FileSource(None, None).progress()
        (0, None)
    """

    bounded = True

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._read = 0
        self._size: int | None = None

    #: With several workers, each reads its share (see the class docstring).
    spread = "every"

    async def start(self) -> None:
        try:
            handle = open(self.config.path, "rb")
        except OSError as exc:
            raise OSError(f"source {self.ctx.name!r}: cannot open {self.config.path!r}: "
                          f"{exc.strerror or exc}") from None
        self._size = os.fstat(handle.fileno()).st_size
        index, count = getattr(self.ctx, "share", (0, 1))
        if self.config.decoder is None and count > 1:
            start, end = _line_range_of(handle, index, count, self._size)
            handle.seek(start)
            self._size = end - start
            self._produce_in_background(self._produce(_Bounded(handle, end - start)))
        else:
            self._produce_in_background(self._produce(handle, index, count))

    def _reader(self):
        dec = self.config.decoder
        if dec is None:
            return LineReader(lambda raw, exc: self.ctx.bad_input("line", raw, exc))
        header = dec.header_length() if callable(getattr(dec, "header_length", None)) else 4
        return FrameReader(header, getattr(dec, "length_fmt", None), dec.payload_length)

    async def _produce(self, handle, index: int = 0, count: int = 1) -> None:
        reader = self._reader()
        frames_seen = 0

        def mine(values: list) -> list:
            """This worker's frames of those just cut: every count-th one."""
            nonlocal frames_seen
            if count == 1:
                return values
            first = (index - frames_seen) % count
            frames_seen += len(values)
            return values[first::count]

        with handle:
            while True:
                await self.ctx.flow.wait_open()
                chunk = handle.read(READ_SIZE)
                if not chunk:
                    break
                self._read += len(chunk)
                try:
                    values = reader.feed(chunk)
                except FrameError as exc:  # a header the decoder cannot read: stop here
                    rest = mine(exc.frames)
                    if rest:
                        self.ctx.emit(rest)
                    if index == 0:   # every worker finds it: the first reports it
                        self.ctx.bad_input("frame", exc.header, exc)
                    return
                values = mine(values)
                if values and not self.ctx.emit(values):
                    return
                await asyncio.sleep(0)
        if isinstance(reader, LineReader):
            rest = reader.finish()
            if rest:
                self.ctx.emit(rest)
        else:
            rest = reader.take_pending()
            if rest and index == 0:
                self.ctx.bad_input("truncated_frame", rest, EOFError(
                    f"{self.config.path}: the last {len(rest)} bytes are an unfinished frame"))

    def describe(self) -> str:
        return self.config.describe()

    def progress(self) -> tuple[int, int | None]:
        return (self._read, self._size)


def _line_range_of(handle, index: int, count: int, size: int) -> tuple[int, int]:
    """[start, end): the bytes of the lines that start in share ``index`` of ``count`` equal
    byte ranges of the file (a line belongs to the range holding its first byte).

    Example (the second half of the bytes starts inside "cd", so its first line is "ef")::

        >>> import io
        >>> _line_range_of(io.BytesIO(b"ab\\ncd\\nef\\n"), 1, 2, 9)
        (6, 9)
    """
    def line_start_at_or_after(offset: int) -> int:
        if offset <= 0:
            return 0
        if offset >= size:
            return size
        handle.seek(offset - 1)
        position = offset - 1
        while True:
            chunk = handle.read(64 * 1024)
            if not chunk:
                return size
            newline = chunk.find(b"\n")
            if newline >= 0:
                return position + newline + 1
            position += len(chunk)

    start = line_start_at_or_after(size * index // count)
    end = line_start_at_or_after(size * (index + 1) // count)
    return start, max(start, end)


class _Bounded:
    """Reads at most ``limit`` bytes from ``handle`` (a range of a file), then reports EOF."""

    def __init__(self, handle, limit: int):
        self.handle = handle
        self.left = limit

    def read(self, size: int) -> bytes:
        data = self.handle.read(min(size, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


class FileSink(Sink):
    """Appends encoded bytes to a file; flushed per batch, fsynced at close.

    Example::

        >>> FileSink.encodes
        True
    """

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._file = None
        #: The file written: the config's path, or with several workers this worker's part
        #: of it (``PATH.part-INDEX``).
        self.path = ctx.part_path(config.path) if ctx is not None else None

    async def start(self) -> None:
        try:
            self._file = open(self.path, "ab")
        except OSError as exc:
            raise OSError(f"sink {self.describe()}: cannot open for writing: "
                          f"{exc.strerror or exc}") from None

    def push(self, batch) -> None:
        self._file.write(b"".join(batch.values))
        self._file.flush()

    def describe(self) -> str:
        return f"file://{os.path.abspath(self.path)}"

    async def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


class StdoutSink(Sink):
    """Writes encoded bytes to standard output, flushed per batch (as text where the stream
    takes only text, as in a notebook).

    Example::

        >>> StdoutSink(None, None).encodes
        True
    """

    def push(self, batch) -> None:
        if getattr(self.ctx, "shares_output", False):
            self._write_whole_messages(batch.values)
            return
        data = b"".join(batch.values)
        binary = getattr(sys.stdout, "buffer", None)
        if binary is not None:
            binary.write(data)
            binary.flush()
        else:  # a text-only stream, such as a notebook's
            sys.stdout.write(data.decode("utf-8", "replace"))
            sys.stdout.flush()

    def _write_whole_messages(self, values: list) -> None:
        """Several workers write to the same standard output: write pieces of whole messages
        of at most PIPE_BUF bytes each, which a pipe never interleaves with another writer's
        (a single message longer than that can still be cut)."""
        sys.stdout.flush()
        fd = sys.stdout.fileno()
        piece: list = []
        size = 0
        for value in values:
            if piece and size + len(value) > select.PIPE_BUF:
                _write_all(fd, b"".join(piece))
                piece, size = [], 0
            piece.append(value)
            size += len(value)
        if piece:
            _write_all(fd, b"".join(piece))

    async def flush(self, timeout: float) -> bool:
        sys.stdout.flush()
        return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
