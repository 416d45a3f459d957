"""Progress of a long bounded run on stderr (when stderr is a terminal): items, rate, share read.

Example::

    >>> format_progress(items=12345, elapsed=2.0, done=50, total=200)
    '  12,345 items  6,172/s  25% of input'
"""
from __future__ import annotations

import asyncio
import sys
import time


def format_progress(items: int, elapsed: float, done: int | None, total: int | None) -> str:
    """One progress line.

    Example::

        >>> format_progress(10, 1.0, None, None)
        '  10 items  10/s'
    """
    line = f"  {items:,} items  {items / elapsed if elapsed > 0 else 0:,.0f}/s"
    if total:
        line += f"  {100 * done // total}% of input"
    return line


class ProgressReporter:
    """Redraws one stderr line twice a second while a bounded run goes on.

    ``items()`` returns the items ingested so far; ``shares()`` yields (done, total) pairs of
    the bounded sources (total None when unknown). Nothing is shown for runs shorter than a
    second, or when stderr is not a terminal.

    Example::

        >>> ProgressReporter(lambda: 0, lambda: []).interval
        0.5
    """

    interval = 0.5

    def __init__(self, items, shares, stream=None):
        self._items = items
        self._shares = shares
        self._stream = stream or sys.stderr
        self._task: asyncio.Task | None = None
        self._shown = False

    def start(self) -> None:
        """Begin redrawing (a no-op when the stream is not a terminal)."""
        if self._stream.isatty():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            elapsed = time.monotonic() - started
            if elapsed < 1.0:
                continue
            pairs = list(self._shares())
            done = sum(d for d, _ in pairs)
            total = None if any(t is None for _, t in pairs) else sum(t for _, t in pairs)
            self._stream.write("\r" + format_progress(self._items(), elapsed, done, total) + "\x1b[K")
            self._stream.flush()
            self._shown = True

    def stop(self) -> None:
        """Stop and clear the line."""
        if self._task is not None:
            self._task.cancel()
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
