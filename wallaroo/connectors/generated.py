"""Sources that produce values in-process: generators (``GenSourceConfig``) and iterables.

They run flat out in natural batches of up to MAX_BATCH values, yielding to the event loop
between batches and waiting while back-pressure holds the gate closed.

Example::

    >>> IterSource.bounded, GenSource.bounded
    (True, True)
"""
from __future__ import annotations

import asyncio
from itertools import islice

from wallaroo.connectors.base import MAX_BATCH, Source


class _ProducerSource(Source):
    """Pull values from ``_values()`` and emit them a batch at a time."""

    bounded = True
    stage_kind = "iterable"  # how errors name the user code this source runs
    #: A checkpoint records how many values were emitted, and the last one.
    replayable = True

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self._count = 0
        self._last = None
        self._restored: dict | None = None

    def position(self) -> dict:
        """How many values were emitted, and the last of them (a generator goes on from it)."""
        return {"count": self._count, "last": self._last}

    def restore(self, position: dict) -> None:
        """Go on after the values ``position`` counts, when started."""
        self._restored = position
        self._count = position["count"]
        self._last = position["last"]

    async def start(self) -> None:
        self._produce_in_background(self._produce())

    def _values(self):
        raise NotImplementedError

    async def _produce(self) -> None:
        values = iter(self._values())
        while True:
            batch: list = []
            try:
                # filled in C; on an exception, the values pulled before it stay in the batch
                batch.extend(islice(values, MAX_BATCH))
            except Exception as exc:
                # What was produced before the failure flows on; then the policy decides.
                if batch:
                    self._emit(batch)
                self.ctx.user_error(f"{self.ctx.name} {self.stage_kind}",
                                    batch[-1] if batch else None, exc)
                return
            if not batch:
                return
            if not self._emit(batch) or len(batch) < MAX_BATCH:
                return
            await asyncio.sleep(0)
            await self.ctx.flow.wait_open()

    def _emit(self, batch: list) -> bool:
        self._count += len(batch)
        self._last = batch[-1]
        return self.ctx.emit(batch)

    def describe(self) -> str:
        return self.config.describe()


class IterSource(_ProducerSource):
    """Values of an iterable, as they are.

    Example::

        >>> IterSource.progress.__doc__.split(":")[0]
        '(items emitted, len(iterable) when it has one)'
    """

    def _values(self):
        """The iterable's values, from the first not yet emitted.

        Example::

            >>> from types import SimpleNamespace
            >>> src = IterSource(SimpleNamespace(iterable="abcd"), None)
            >>> src.restore({"count": 2, "last": "b"}); list(src._values())
            ['c', 'd']
        """
        return islice(self.config.iterable, self._count, None)

    def progress(self) -> tuple[int, int | None]:
        """(items emitted, len(iterable) when it has one): how far the source has got."""
        try:
            total = len(self.config.iterable)
        except TypeError:
            total = None
        return (self._count, total)


class GenSource(_ProducerSource):
    """``gen.initial_value()``, then ``gen.apply(previous)`` until it returns None.

    A generator (or iterable) that raises ends the source: what it produced before flows on,
    then the error goes to the run's error policy.

    Example::

        >>> GenSource.bounded
        True
    """

    stage_kind = "generator"

    def _values(self):
        """``initial_value()``, then ``apply(previous)`` (from the last value emitted, after a
        restore) until None.

        Example::

            >>> from types import SimpleNamespace
            >>> class Up:
            ...     def initial_value(self): return 1
            ...     def apply(self, n): return n + 1 if n < 5 else None
            >>> src = GenSource(SimpleNamespace(gen=Up()), None)
            >>> src.restore({"count": 3, "last": 3}); list(src._values())
            [4, 5]
        """
        gen = self.config.gen
        value = gen.initial_value() if self._count == 0 else gen.apply(self._last)
        while value is not None:
            yield value
            value = gen.apply(value)

    def progress(self) -> tuple[int, int | None]:
        return (self._count, None)
