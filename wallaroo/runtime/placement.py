"""Where one worker stands among the workers of a run: its index, how many there are, and what
follows from that for its sources, sinks, watermark inputs and key groups.

With one worker (the default) every rule below is the identity: origins are the plan's,
every source runs, file sinks write their own path.

Example::

    >>> p = Placement(index=1, count=2)
    >>> p.origin(3), p.origins(3)
    (7, [6, 7])
    >>> p.part_path("out/counts.txt")
    'out/counts.txt.part-1'
    >>> Placement().part_path("counts.txt")
    'counts.txt'
"""
from __future__ import annotations

from dataclasses import dataclass

from wallaroo._core.hashing import DEFAULT_KEY_GROUPS
from wallaroo._core.routing import RoutingTable


@dataclass(frozen=True)
class Placement:
    """Worker ``index`` of ``count`` (named ``name``); key groups are spread evenly over the
    workers, in contiguous ranges (``routing_table``).

    Example::

        >>> Placement(0, 2, key_groups=4).routing_table().as_list()
        [0, 0, 1, 1]
    """

    index: int = 0
    count: int = 1
    name: str = "initializer"
    key_groups: int = DEFAULT_KEY_GROUPS
    #: Its TCP sources listen on ports a supervisor reserved (with SO_REUSEPORT), so they
    #: bind with SO_REUSEPORT too, even with one worker.
    shared_ports: bool = False

    @property
    def alone(self) -> bool:
        """True when this is the only worker."""
        return self.count == 1

    def origin(self, plan_origin: int) -> int:
        """The origin id this worker's instance of a source or window stamps on its batches:
        each instance is its own watermark input downstream."""
        return plan_origin * self.count + self.index

    def origins(self, plan_origin: int) -> list[int]:
        """The origin ids of every worker's instance of the plan's ``plan_origin``."""
        return [plan_origin * self.count + i for i in range(self.count)]

    def runs(self, spread: str) -> bool:
        """Whether this worker runs a source that spreads as ``spread``: ``"every"`` (each
        worker takes its share, such as TCP connections or a file's byte range) or
        ``"first"`` (the first worker alone reads it; on the others it ends at once)."""
        return spread == "every" or self.index == 0

    def part_path(self, path: str) -> str:
        """The file a file sink of this worker writes: ``path`` itself with one worker, else
        ``path.part-INDEX``, one part per worker."""
        return path if self.alone else f"{path}.part-{self.index}"

    def routing_table(self) -> RoutingTable:
        """Key group -> worker index: contiguous, even ranges."""
        return RoutingTable.even(self.key_groups, self.count)
