"""Aligning a checkpoint barrier across workers: markers sent in band, in order with records.

Every worker stops its sources when the barrier reaches it and sends a *marker* down each link,
behind every record it sent before. A record's way through the plan crosses up to ``levels``
exchanges (``PhysicalPlan.exchange_depth``), so markers go in rounds: a worker sends its
level-k marker once it has the level-(k-1) marker of every other worker, that is once every
record of the level before has reached it and run. Once it has every worker's last-level
marker, nothing sent before the barrier is still on its way to it: its state is the
checkpoint's. A link whose last marker has arrived carries only records of after the barrier;
they wait (``holds``) until the snapshot is taken.

Each round waits only for rounds before it, and a worker never waits for its own markers, so
rounds cannot deadlock; the last level's records produce no records for other workers.

Example (worker 0 of 2, one exchange: its marker goes out at once; worker 1's marker completes
the alignment, and worker 1's later records are held)::

    >>> sent, aligned = [], []
    >>> align = BarrierAlignment(0, 2, 1, lambda peer, record: sent.append(peer),
    ...                          lambda: aligned.append(True))
    >>> align.begin(5); sent, aligned
    ([1], [])
    >>> align.on_marker(1, *decode_marker(encode_marker(5, 1))); aligned, align.holds(1)
    ([True], True)
    >>> align.finish(); align.holds(1)
    False
"""
from __future__ import annotations

import struct

#: The exchange number of a marker record (no exchange has it).
MARKER_EXCHANGE = 0xFFFFFFFF
_MARKER = struct.Struct(">IBQI")   # exchange number, flags, checkpoint id, level
_PREFIX = struct.pack(">I", MARKER_EXCHANGE)


def encode_marker(checkpoint_id: int, level: int) -> bytes:
    """The record of checkpoint ``checkpoint_id``'s level-``level`` marker.

    Example::

        >>> decode_marker(encode_marker(7, 2))
        (7, 2)
    """
    return _MARKER.pack(MARKER_EXCHANGE, 0, checkpoint_id, level)


def decode_marker(record) -> tuple[int, int] | None:
    """(checkpoint id, level) of a marker record, or None for any other record.

    Example::

        >>> decode_marker(b"\\x00\\x00\\x00\\x01\\x00data") is None
        True
    """
    if len(record) != _MARKER.size or record[:4] != _PREFIX:
        return None
    _, _, checkpoint_id, level = _MARKER.unpack(record)
    return checkpoint_id, level


class BarrierAlignment:
    """Worker ``me``'s alignment of one barrier at a time over ``count`` workers and ``levels``
    rounds (see the module docstring). ``send(peer, record)`` sends a marker;
    ``on_aligned()`` is called once every input is aligned.

    Example (no exchange in the plan: nothing to wait for)::

        >>> done = []
        >>> BarrierAlignment(0, 3, 0, None, lambda: done.append(1)).begin(1); done
        [1]
    """

    def __init__(self, me: int, count: int, levels: int, send, on_aligned):
        self.me = me
        self.peers = [i for i in range(count) if i != me]
        self.levels = levels
        self.send = send
        self.on_aligned = on_aligned
        self.checkpoint_id: int | None = None
        self._reset(None)

    def _reset(self, checkpoint_id: int | None) -> None:
        self.checkpoint_id = checkpoint_id
        self._begun = False
        self._sent = 0
        self._received: dict[int, set[int]] = {level: set() for level in range(1, self.levels + 1)}

    def begin(self, checkpoint_id: int) -> None:
        """The barrier of ``checkpoint_id`` reached this worker (its sources have stopped)."""
        if self.checkpoint_id != checkpoint_id:
            self._reset(checkpoint_id)
        self._begun = True
        self._advance()

    def on_marker(self, sender: int, checkpoint_id: int, level: int) -> None:
        """Worker ``sender``'s marker arrived (possibly before this worker's own barrier)."""
        if self.checkpoint_id != checkpoint_id:
            self._reset(checkpoint_id)
        self._received[level].add(sender)
        self._advance()

    def holds(self, sender: int) -> bool:
        """Whether records from ``sender`` must wait: they come after its last marker."""
        return self.levels > 0 and sender in self._received[self.levels]

    def finish(self) -> None:
        """The snapshot is taken: records flow again."""
        self._reset(None)

    def _advance(self) -> None:
        if not self._begun:
            return
        while self._sent < self.levels:
            if self._sent > 0 and not self._has_all(self._sent):
                return
            self._sent += 1
            for peer in self.peers:
                self.send(peer, encode_marker(self.checkpoint_id, self._sent))
        if self.levels == 0 or self._has_all(self.levels):
            self._begun = False   # called once
            self.on_aligned()

    def _has_all(self, level: int) -> bool:
        return len(self._received[level]) == len(self.peers)
