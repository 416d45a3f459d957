"""What every source and sink offers the worker.

A source is started with a *context* from the runtime (duck-typed, so connectors do not import
the runtime): ``ctx.emit(values)`` hands a natural batch to the dataflow and returns False once
the run is stopping; ``ctx.bad_input(kind, value, exc)`` reports input that could not be taken;
``ctx.flow`` is the back-pressure gate (``await ctx.flow.wait_open()``, ``ctx.flow.subscribe``);
``ctx.finished()`` says a bounded source has read everything.

A sink receives ``push(batch)`` with encoded bytes (or raw values when ``encodes`` is False),
and is flushed and closed at the end of the run.

Example::

    >>> class Nothing(Source):
    ...     async def start(self): self.ctx.finished()
    >>> Nothing(None, None).describe()
    'Nothing'
"""
from __future__ import annotations

import asyncio

#: Most values a producer source puts in one batch before it yields to the event loop.
MAX_BATCH = 1024
#: Bytes a file or socket read takes at once.
READ_SIZE = 256 * 1024


class Source:
    """Base of sources: ``start`` begins reading, ``stop`` stops it, ``progress`` reports.

    Example::

        >>> Source(None, None).progress()
        (0, None)
    """

    bounded = False

    def __init__(self, config, ctx):
        self.config = config
        self.ctx = ctx
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Open the source (bind, open a file) and begin producing."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop reading; nothing more is emitted."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def describe(self) -> str:
        """Where this source reads, for the startup line."""
        return type(self).__name__

    def progress(self) -> tuple[int, int | None]:
        """(units read, total units or None): bytes for files, items for sized iterables."""
        return (0, None)

    # -- checkpoints (resilience on) ----------------------------------------------------------

    #: Whether the source can go back to a checkpoint's ``position`` after a crash (plain TCP
    #: cannot: its senders do not resend).
    replayable = False

    def position(self):
        """Where to read on from after a restart (picklable), taken between two emits; None
        for a source that cannot replay."""
        return None

    def restore(self, position) -> None:
        """Read on from ``position`` (what ``position()`` gave) once started."""

    def checkpoint_complete(self, position) -> None:
        """The checkpoint that holds ``position`` is complete: what came before it will never
        be asked for again (a connector source acknowledges it)."""

    def announce_restart(self) -> None:
        """The run rolls back to its last checkpoint: tell the senders (best effort)."""

    def _produce_in_background(self, coro) -> None:
        self._task = asyncio.get_running_loop().create_task(coro)
        self._task.add_done_callback(self._producer_done)

    def _producer_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.ctx.crash(error)
        else:
            self.ctx.finished()


class Sink:
    """Base of sinks: ``push`` takes a batch, ``flush`` waits until it is written, ``close``.

    Example::

        >>> Sink(None, None).encodes
        True
    """

    encodes = True

    def __init__(self, config, ctx):
        self.config = config
        self.ctx = ctx

    async def start(self) -> None:
        """Open the sink (connect, open a file)."""

    def push(self, batch) -> None:
        """Write one batch of encoded values (bytes)."""
        raise NotImplementedError

    async def flush(self, timeout: float) -> bool:
        """Wait until everything pushed is written; False if some of it could not be."""
        return True

    async def close(self) -> None:
        """Release the sink's resources."""

    # -- two-phase commit (resilience on) -----------------------------------------------------

    #: Whether output waits for checkpoints to complete (exactly-once); other sinks write at
    #: once and may write again what follows a checkpoint after a crash (at-least-once).
    transactional = False

    async def recover(self, checkpoint_id, record) -> None:
        """Before any push after a (re)start: settle what the restored checkpoint
        ``checkpoint_id`` committed (``record``, what ``prepare`` gave; None on a fresh
        start) and abort whatever came after it."""

    async def prepare(self, checkpoint_id: int):
        """Phase 1 at a checkpoint's barrier: make what was pushed durable but not visible;
        the (picklable) record that ``commit`` applies. Raising votes against the checkpoint."""
        return None

    async def commit(self, checkpoint_id: int, record) -> None:
        """Phase 2, once every worker has the checkpoint: make ``record``'s output visible."""

    def describe(self) -> str:
        """Where this sink writes, for the startup line."""
        return self.config.describe()
