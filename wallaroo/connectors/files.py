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
from wallaroo.connectors.forked import start_in_child


#: Bytes of a read handed to the dataflow at once: the event loop (control messages, a
#: checkpoint's barrier) gets a turn between two of them, and a source's position is exact
#: at each.
FEED_SIZE = 32 * 1024


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
        #: Where this run began reading (a byte offset), the reader cutting lines or frames,
        #: and the frames cut from the start of the file (for the every-count-th share).
        self._base = 0
        self._reader = None
        self._frames_seen = 0
        self._restored: dict | None = None

    #: With several workers, each reads its share (see the class docstring).
    spread = "every"
    #: A checkpoint records where to read on from (see ``position``).
    replayable = True

    def position(self) -> dict:
        """Where to read on from after a restart: the byte offset of the first line or frame
        not yet emitted, and how many frames come before it.

        Example::

            >>> src = FileSource(None, None)
            >>> src._base, src._read = 100, 50
            >>> src.position()
            {'offset': 150, 'frames': 0}
        """
        pending = self._reader.pending if self._reader is not None else 0
        return {"offset": self._base + self._read - pending, "frames": self._frames_seen}

    def restore(self, position: dict) -> None:
        """Read on from ``position`` (what ``position()`` returned) when started."""
        self._restored = position

    async def start(self) -> None:
        try:
            handle = open(self.config.path, "rb")
        except OSError as exc:
            raise OSError(f"source {self.ctx.name!r}: cannot open {self.config.path!r}: "
                          f"{exc.strerror or exc}") from None
        self._size = os.fstat(handle.fileno()).st_size
        index, count = getattr(self.ctx, "share", (0, 1))
        self._reader = self._make_reader()
        resume = self._restored or {"offset": 0, "frames": 0}
        if self.config.decoder is None and count > 1:
            start, end = _line_range_of(handle, index, count, self._size)
            offset = max(start, min(resume["offset"], end))
            self._base, self._read, self._size = start, offset - start, end - start
            handle.seek(offset)
            self._produce_in_background(self._produce(_Bounded(handle, end - offset)))
        else:
            self._read = resume["offset"]
            self._frames_seen = resume["frames"]
            handle.seek(self._read)
            self._produce_in_background(self._produce(handle, index, count))

    def _make_reader(self):
        dec = self.config.decoder
        if dec is None:
            return LineReader(lambda raw, exc: self.ctx.bad_input("line", raw, exc))
        header = dec.header_length() if callable(getattr(dec, "header_length", None)) else 4
        return FrameReader(header, getattr(dec, "length_fmt", None), dec.payload_length)

    async def _produce(self, handle, index: int = 0, count: int = 1) -> None:
        reader = self._reader

        def mine(values: list) -> list:
            """This worker's frames of those just cut: every count-th one."""
            if count == 1:
                return values
            first = (index - self._frames_seen) % count
            self._frames_seen += len(values)
            return values[first::count]

        with handle:
            while True:
                chunk = handle.read(READ_SIZE)
                if not chunk:
                    break
                view = memoryview(chunk)
                for start in range(0, len(chunk), FEED_SIZE):
                    await self.ctx.flow.wait_open()
                    piece = view[start:start + FEED_SIZE]
                    self._read += len(piece)
                    try:
                        values = reader.feed(piece)
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

    With resilience on (``ctx.resilient``) it commits in two phases instead: what is pushed
    goes to a hidden pending segment next to the file (``.NAME.pending.*``); ``prepare`` (at a
    checkpoint's barrier) fsyncs the segment and starts the next one; ``commit`` (once the
    checkpoint is complete) appends the segment to the file and fsyncs it. The file only ever
    holds committed bytes; a commit is redone after a crash from the checkpoint's record.

    Example::

        >>> import asyncio, os, tempfile
        >>> from types import SimpleNamespace
        >>> path = os.path.join(tempfile.mkdtemp(), "out.txt")
        >>> ctx = SimpleNamespace(part_path=lambda p: p, resilient=True)
        >>> async def two_phases():
        ...     sink = FileSink(SimpleNamespace(path=path), ctx)
        ...     await sink.start(); await sink.recover(None, None)
        ...     sink.push(SimpleNamespace(values=[b"a\\n", b"b\\n"]))
        ...     record = await sink.prepare(1)
        ...     before = open(path, "rb").read()
        ...     await sink.commit(1, record); await sink.close()
        ...     return before, open(path, "rb").read()
        >>> asyncio.run(two_phases())
        (b'', b'a\\nb\\n')
    """

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._file = None
        #: The file written: the config's path, or with several workers this worker's part
        #: of it (``PATH.part-INDEX``).
        self.path = ctx.part_path(config.path) if ctx is not None else None
        self.transactional = bool(getattr(ctx, "resilient", False))
        self._segments = 0
        self._segment_path: str | None = None
        self._committed = 0

    async def start(self) -> None:
        try:
            self._file = open(self.path, "ab")
            if self.transactional:   # the file itself only changes at commits
                self._file.close()
                self._file = None
        except OSError as exc:
            raise OSError(f"sink {self.describe()}: cannot open for writing: "
                          f"{exc.strerror or exc}") from None

    def push(self, batch) -> None:
        self._file.write(b"".join(batch.values))
        if not self.transactional:
            self._file.flush()

    def describe(self) -> str:
        return f"file://{os.path.abspath(self.path)}"

    async def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        segment, self._segment_path = self._segment_path, None
        if self.transactional and segment is not None and os.path.exists(segment):
            if os.path.getsize(segment) == 0:   # nothing uncommitted: no trace
                os.unlink(segment)

    # -- two-phase commit (resilience on) -------------------------------------------------

    async def recover(self, checkpoint_id, record) -> None:
        """Make the file hold exactly the output committed up to the restored checkpoint
        (redo its commit if a crash cut it short), drop every pending segment, and start a
        new one."""
        if record is not None:
            self._apply(record)
        self._committed = os.path.getsize(self.path)
        folder, prefix = self._segment_prefix()
        for name in os.listdir(folder):
            if name.startswith(prefix):
                os.unlink(os.path.join(folder, name))
        self._open_segment()

    async def prepare(self, checkpoint_id: int) -> dict:
        """Phase 1: make what was pushed since the last checkpoint durable in its segment and
        start the next segment; the record that ``commit`` (or a recovery) applies."""
        self._file.flush()
        os.fsync(self._file.fileno())
        fsync_dir(os.path.dirname(self._segment_path))   # the segment's name is durable too
        length = self._file.tell()
        self._file.close()
        record = {"segment": self._segment_path, "base": self._committed, "length": length}
        self._committed += length
        self._open_segment()
        return record

    async def commit(self, checkpoint_id: int, record: dict) -> None:
        """Phase 2: append the checkpoint's segment to the file (the bytes become visible), in
        a forked child (see wallaroo.connectors.forked): output to the next segment goes on
        meanwhile."""
        await start_in_child(self._apply, record).result()

    def _apply(self, record: dict) -> None:
        base, length, segment = record["base"], record["length"], record["segment"]
        size = os.path.getsize(self.path)
        with open(self.path, "r+b") as visible:
            if size >= base + length:        # applied already: drop anything after it
                if size > base + length:
                    visible.truncate(base + length)
            else:
                try:
                    pending = open(segment, "rb")
                except FileNotFoundError:
                    pending = None
                available = os.fstat(pending.fileno()).st_size if pending is not None else 0
                if size < base or available < length:
                    if pending is not None:
                        pending.close()
                    raise OSError(f"sink {self.describe()}: the committed output of a "
                                  f"checkpoint is missing ({segment} holds {available} of "
                                  f"{length} bytes; the file {size} of {base + length})")
                visible.truncate(base)
                with pending:
                    _copy_range(pending.fileno(), visible.fileno(), length, base)
            visible.flush()
            os.fsync(visible.fileno())
        if os.path.exists(segment):
            os.unlink(segment)

    def _segment_prefix(self) -> tuple[str, str]:
        folder, name = os.path.split(os.path.abspath(self.path))
        return folder, f".{name}.pending."

    def _open_segment(self) -> None:
        folder, prefix = self._segment_prefix()
        self._segments += 1
        self._segment_path = os.path.join(folder, f"{prefix}{os.getpid()}.{self._segments}")
        self._file = open(self._segment_path, "wb")


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in directory ``path`` durable.

    Example::

        >>> import tempfile
        >>> fsync_dir(tempfile.mkdtemp())
    """
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_range(source_fd: int, target_fd: int, length: int, at: int) -> None:
    """Copy the first ``length`` bytes of ``source_fd`` to offset ``at`` of ``target_fd``, in
    the kernel where it can."""
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(source_fd, target_fd, length - done, done, at + done)
        except OSError:   # not on this file system: through user space
            n = os.pwrite(target_fd, os.pread(source_fd, min(length - done, 1 << 24), done),
                          at + done)
        if n == 0:
            raise OSError(f"the pending segment ended after {done} of {length} bytes")
        done += n


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
