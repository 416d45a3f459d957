"""The logical dataflow: an immutable DAG of stages, built by the API layer and validated here.

Nodes are created by the builder (``wallaroo.source(...).to(...)``); a Node used by two
pipelines is one node with two children (fan-out). ``LogicalGraph`` collects the nodes reachable
from the sinks, orders them topologically and checks the whole.

Example::

    >>> src = Node(SOURCE, spec=None, name="numbers")
    >>> out = Node(SINK, spec=None, inputs=(src,), name="stdout")
    >>> [n.name for n in LogicalGraph([out]).nodes]
    ['numbers', 'stdout']
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable

from wallaroo.errors import WallarooParameterError

SOURCE = "source"
MAP = "map"                  # computation
FLAT_MAP = "flat_map"        # computation_multi
STATE = "state"              # state_computation
STATE_MULTI = "state_multi"  # state_computation_multi
KEY_BY = "key_by"
COLLECT = "collect"
MERGE = "merge"
WINDOW = "window"
SINK = "sink"

KINDS = (SOURCE, MAP, FLAT_MAP, STATE, STATE_MULTI, KEY_BY, COLLECT, MERGE, WINDOW, SINK)
STATEFUL = (STATE, STATE_MULTI, WINDOW)

_sequence = itertools.count()


class Node:
    """One stage of the logical graph.

    ``kind`` is one of KINDS, ``spec`` the user object (decorated function, config, window),
    ``inputs`` the upstream nodes, ``name`` the stage name, ``seq`` the creation order (sinks are
    reported in that order), ``options`` anything kind-specific (e.g. a source's event time).

    Example::

        >>> Node(SOURCE, spec=None, name="s").kind
        'source'
    """

    __slots__ = ("kind", "spec", "inputs", "name", "seq", "options")

    def __init__(self, kind: str, spec: Any, inputs: tuple["Node", ...] = (), name: str = "",
                 options: dict | None = None):
        assert kind in KINDS, kind
        self.kind = kind
        self.spec = spec
        self.inputs = tuple(inputs)
        self.name = name
        self.seq = next(_sequence)
        self.options = options or {}

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name!r}>"


class LogicalGraph:
    """The validated DAG behind an application: nodes in topological order, sources, sinks.

    Example::

        >>> a = Node(SOURCE, spec=None, name="a")
        >>> g = LogicalGraph([Node(SINK, spec=None, inputs=(a,), name="out")])
        >>> [s.name for s in g.sources], g.children[a]
        (['a'], [<sink 'out'>])
    """

    def __init__(self, sinks: Iterable[Node]):
        self.sinks: list[Node] = sorted(set(sinks), key=lambda n: n.seq)
        if not self.sinks:
            raise WallarooParameterError("an application needs at least one sink (to_sink/to_sinks)")
        self.nodes: list[Node] = self._topological(self.sinks)
        self.sources: list[Node] = [n for n in self.nodes if n.kind == SOURCE]
        self.children: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for node in self.nodes:
            for parent in node.inputs:
                self.children[parent].append(node)
        self._validate()
        #: A stable id for each node, the same in every process that builds the same
        #: application: ``n`` and its place in ``nodes`` (metrics name stages by it).
        self.ids: dict[Node, str] = {node: f"n{i}" for i, node in enumerate(self.nodes)}

    def pipeline_of(self, node: Node) -> str:
        """The pipeline a node belongs to: the names of the sources upstream of it (itself, for
        a source), joined by "+" in the order of ``sources``.

        Example::

            >>> a, b = Node(SOURCE, None, name="a"), Node(SOURCE, None, name="b")
            >>> both = Node(MERGE, None, inputs=(a, b), name="merge")
            >>> LogicalGraph([Node(SINK, None, inputs=(both,), name="out")]).pipeline_of(both)
            'a+b'
        """
        upstream: set[int] = set()
        stack = [node]
        while stack:
            current = stack.pop()
            if id(current) not in upstream:
                upstream.add(id(current))
                stack.extend(current.inputs)
        return "+".join(src.name for src in self.sources if id(src) in upstream)

    @staticmethod
    def _topological(sinks: list[Node]) -> list[Node]:
        order: list[Node] = []
        seen: set[int] = set()
        stack: list[tuple[Node, bool]] = [(s, False) for s in reversed(sinks)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in reversed(node.inputs) if id(p) not in seen)
        return order

    def _validate(self) -> None:
        names: dict[str, Node] = {}
        for src in self.sources:
            if src.name in names:
                raise WallarooParameterError(
                    f"two different sources are named {src.name!r}; give each source its own name"
                )
            names[src.name] = src

    def stages(self, kind: str) -> list[Node]:
        """All nodes of one kind, in topological order."""
        return [n for n in self.nodes if n.kind == kind]
