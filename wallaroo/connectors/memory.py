"""An in-memory sink that keeps the values it receives (before encoding): for wallaroo.testing.

Example::

    >>> sink = CollectingSink(None, None)
    >>> sink.values
    []
"""
from __future__ import annotations

from wallaroo.connectors.base import Sink


class CollectingSink(Sink):
    """Keeps every value pushed to it, in order.

    Example::

        >>> class B:
        ...     values = [1, 2]
        >>> s = CollectingSink(None, None); s.push(B()); s.values
        [1, 2]
    """

    encodes = False

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.values: list = []

    def push(self, batch) -> None:
        self.values.extend(batch.values)

    def describe(self) -> str:
        return "memory"
