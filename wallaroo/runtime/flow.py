"""Back-pressure: one gate per worker that sinks close when they cannot keep up.

While any sink holds the gate closed, socket sources stop reading (their kernel buffers fill and
TCP pushes back on the sender) and producer sources wait. Memory stays bounded whatever the
input rate.

Example::

    >>> gate = FlowControl()
    >>> gate.block("sink"); gate.paused
    True
    >>> gate.unblock("sink"); gate.paused
    False
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable


class FlowControl:
    """The back-pressure gate: ``block``/``unblock`` by sinks, ``wait_open``/``subscribe`` by
    sources.

    Example::

        >>> events = []
        >>> gate = FlowControl()
        >>> gate.subscribe(lambda: events.append("pause"), lambda: events.append("resume"))
        >>> gate.block(1); gate.block(2); gate.unblock(1); gate.unblock(2); events
        ['pause', 'resume']
    """

    def __init__(self):
        self._blockers: set = set()
        self._open: asyncio.Event | None = None
        self._listeners: list[tuple[Callable[[], None], Callable[[], None]]] = []
        #: Per holder, nanoseconds it held the gate closed, over holds that have ended.
        self._held_ns: dict = {}
        #: Per current holder, when its hold began (time.monotonic_ns()).
        self._since: dict = {}

    @property
    def paused(self) -> bool:
        """True while some sink holds the gate closed."""
        return bool(self._blockers)

    def block(self, who) -> None:
        """Close the gate on behalf of ``who`` (a sink)."""
        was_open = not self._blockers
        if who not in self._blockers:
            self._since[who] = time.monotonic_ns()
        self._blockers.add(who)
        if was_open:
            if self._open is not None:
                self._open.clear()
            for pause, _ in self._listeners:
                pause()

    def unblock(self, who) -> None:
        """Release ``who``'s hold; the gate opens when nobody holds it."""
        if who not in self._blockers:
            return
        self._blockers.discard(who)
        self._held_ns[who] = self._held_ns.get(who, 0) + time.monotonic_ns() - self._since.pop(who)
        if not self._blockers:
            if self._open is not None:
                self._open.set()
            for _, resume in self._listeners:
                resume()

    def held_seconds(self) -> dict:
        """Per holder (anyone who ever closed the gate), the seconds it has held it closed so
        far, its current hold included: where back-pressure came from.

        Example::

            >>> gate = FlowControl()
            >>> gate.block("sink"); gate.unblock("sink")
            >>> list(gate.held_seconds()), gate.held_seconds()["sink"] >= 0
            (['sink'], True)
        """
        now = time.monotonic_ns()
        held = dict(self._held_ns)
        for who, since in self._since.items():
            held[who] = held.get(who, 0) + now - since
        return {who: ns / 1e9 for who, ns in held.items()}

    def subscribe(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Call ``pause()`` when the gate closes and ``resume()`` when it opens."""
        self._listeners.append((pause, resume))

    @staticmethod
    def joined(*gates: "FlowControl") -> "JoinedGates":
        """One gate that closes and opens all of ``gates`` together (what a sink holds).

        Example::

            >>> a, b = FlowControl(), FlowControl()
            >>> both = FlowControl.joined(a, b); both.block("sink"); a.paused, b.paused
            (True, True)
        """
        return JoinedGates(gates)

    async def wait_open(self) -> None:
        """Return at once if the gate is open, else when it opens."""
        if not self._blockers:
            return
        if self._open is None:
            self._open = asyncio.Event()
        await self._open.wait()


class JoinedGates:
    """Several gates moved as one (see ``FlowControl.joined``). A sink holds one: when it
    cannot keep up it closes both its worker's source gate and intake gate, so it holds back
    that worker's own sources and what the other workers send it alike.

    Example::

        >>> sources, intake = FlowControl(), FlowControl()
        >>> both = JoinedGates([sources, intake])
        >>> intake.block("another sink"); both.paused
        True
        >>> both.block("sink"); both.unblock("sink"); sources.paused, intake.paused
        (False, True)
    """

    def __init__(self, gates):
        self.gates = gates

    @property
    def paused(self) -> bool:
        """True while any of the gates is closed, by whoever holds it."""
        return any(gate.paused for gate in self.gates)

    def block(self, who) -> None:
        """Close every gate on behalf of ``who``."""
        for gate in self.gates:
            gate.block(who)

    def unblock(self, who) -> None:
        """Release ``who``'s hold on every gate; each opens when nobody else holds it."""
        for gate in self.gates:
            gate.unblock(who)
