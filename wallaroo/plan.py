"""The physical plan: the logical graph cut into fused chains joined by edges.

Consecutive stages with one input and one output run fused in one chain. A chain ends where the
graph fans out or merges, before every stateful stage, and before the first stage after a
``key_by`` or ``collect``. An edge is an *exchange*, the place where messages must reach the
worker that owns their key group, when it leads to a stage that needs its key's owner (a state
computation or window, or any stage right after ``key_by``, so that stateless work after
``key_by`` spreads over the workers) and its messages are not on their owner already (they are,
from an exchange until the next ``key_by``). On one worker an exchange hands the batch straight
on; with many workers it routes by key group.

Example::

    >>> import wallaroo
    >>> split = wallaroo.computation_multi(name="split")(str.split)
    >>> class Count:
    ...     n = 0
    >>> count = wallaroo.state_computation(name="count", state=Count)(lambda w, s: w)
    >>> p = (wallaroo.source("text", wallaroo.IterSourceConfig("text", []))
    ...      .to(split).key_by(lambda w: w).to(count)
    ...      .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
    >>> plan = PhysicalPlan(wallaroo.build_application("wc", p).graph)
    >>> [[n.name for n in c.nodes] for c in plan.chains]
    [['split', '<lambda>'], ['count']]
    >>> [(e.exchange, type(e.target).__name__) for e in plan.chains[0].edges]
    [(True, 'ChainSpec')]
    >>> [e.id for e in plan.exchanges]
    [0]
"""
from __future__ import annotations

from dataclasses import dataclass, field

from wallaroo import graph as g


@dataclass(eq=False)
class ChainSpec:
    """A run of fused stage nodes and the edges leaving its last one."""

    nodes: list = field(default_factory=list)
    edges: list = field(default_factory=list)

    @property
    def name(self) -> str:
        """The chain's name: its stages joined by arrows."""
        return " -> ".join(n.name for n in self.nodes)


@dataclass(eq=False)
class Edge:
    """Where a chain's (or a source's) output goes: a chain or a sink node; ``exchange`` marks
    an edge on which messages are routed by key group."""

    target: object
    exchange: bool
    #: The exchange's number (see ``PhysicalPlan.exchanges``); None on other edges.
    id: int | None = None


class PhysicalPlan:
    """Chains, and the edges from every source, for one logical graph.

    ``source_edges[source_node]`` lists where a source's batches go; ``chains`` are in
    topological order; ``sinks`` are the sink nodes in the order they were added.
    """

    def __init__(self, graph: g.LogicalGraph):
        self.graph = graph
        self.chains: list[ChainSpec] = []
        self._chain_of: dict[g.Node, ChainSpec] = {}
        self._exchange_at: set[g.Node] = set()
        self._mark_exchanges()
        for node in graph.nodes:
            if node.kind in (g.SOURCE, g.SINK, g.MERGE):
                continue
            parent = node.inputs[0]
            if self._fuses(parent, node):
                chain = self._chain_of[parent]
            else:
                chain = ChainSpec()
                self.chains.append(chain)
            chain.nodes.append(node)
            self._chain_of[node] = chain
        for chain in self.chains:
            chain.edges = self._edges_from(chain.nodes[-1])
        self.source_edges = {src: self._edges_from(src) for src in graph.sources}
        self.sinks = graph.sinks
        #: Every exchange edge, numbered in a fixed order (sources', then chains'): the same
        #: number on every worker names the same exchange.
        self.exchanges: list[Edge] = [e for edges in [*self.source_edges.values(),
                                                      *(c.edges for c in self.chains)]
                                      for e in edges if e.exchange]
        for number, edge in enumerate(self.exchanges):
            edge.id = number

    def _mark_exchanges(self) -> None:
        """Find the stages an exchange leads to, in one pass in topological order.

        The output of a node is *on its owner* when its messages are on the worker owning
        their key group (after an exchange, until the next key_by or collect), and has a
        *pending key* when a key_by or collect set keys that no exchange has routed yet."""
        owned: dict[g.Node, bool] = {}
        pending: dict[g.Node, bool] = {}
        for node in self.graph.nodes:
            if node.kind == g.SOURCE:
                owned[node], pending[node] = False, False
            elif node.kind in (g.KEY_BY, g.COLLECT):
                owned[node], pending[node] = False, True
            elif node.kind in (g.MERGE, g.SINK):
                owned[node] = all(owned[i] for i in node.inputs)
                pending[node] = any(pending[i] for i in node.inputs)
            else:
                on_owner = all(owned[i] for i in node.inputs)
                needs_owner = node.kind in g.STATEFUL or any(pending[i] for i in node.inputs)
                if needs_owner and not on_owner:
                    self._exchange_at.add(node)
                owned[node] = on_owner or needs_owner
                pending[node] = False

    def exchange_depth(self) -> int:
        """The most exchanges a message crosses on its way through the plan (checkpoint
        barriers are aligned in that many rounds).

        Example::

            >>> import wallaroo
            >>> count = wallaroo.state_computation(name="count", state=list)(lambda w, s: w)
            >>> p = (wallaroo.source("s", wallaroo.IterSourceConfig("s", [])).key_by(str)
            ...      .to(count).to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
            >>> PhysicalPlan(wallaroo.build_application("d", p).graph).exchange_depth()
            1
        """
        depth: dict[g.Node, int] = {}
        for node in self.graph.nodes:
            before = max((depth[i] for i in node.inputs), default=0)
            depth[node] = before + (1 if node in self._exchange_at else 0)
        return max(depth.values(), default=0)

    def origin(self, node: g.Node) -> int:
        """The id batches from ``node`` (a source or window) carry: its place in the graph."""
        return self.graph.nodes.index(node)

    def watermark_inputs(self, node: g.Node) -> list[int]:
        """The inputs whose watermarks ``node`` follows: the nearest sources or windows
        upstream of it, as origin ids.

        Example::

            >>> import wallaroo
            >>> a = wallaroo.source("a", wallaroo.IterSourceConfig("a", []))
            >>> b = wallaroo.source("b", wallaroo.IterSourceConfig("b", []))
            >>> p = a.merge(b).to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str)))
            >>> plan = PhysicalPlan(wallaroo.build_application("m", p).graph)
            >>> plan.watermark_inputs(plan.sinks[0])
            [0, 1]
        """
        found: list[int] = []
        pending = list(node.inputs)
        while pending:
            upstream = pending.pop(0)
            if upstream.kind in (g.SOURCE, g.WINDOW):
                if self.origin(upstream) not in found:
                    found.append(self.origin(upstream))
            else:
                pending.extend(upstream.inputs)
        return sorted(found)

    def routed_between(self, upstream: g.Node, node: g.Node, including_node: bool) -> bool:
        """Whether some path from ``upstream`` down to ``node`` passes an exchange: on an edge
        into a stage after ``upstream``, and before ``node`` (or into ``node`` itself when
        ``including_node``). Then the messages (and watermarks) of one worker's instance of
        ``upstream`` reach ``node`` on every worker, through every worker; otherwise only
        through the worker they started on.

        Example::

            >>> import wallaroo
            >>> count = wallaroo.state_computation(name="count", state=list)(lambda v, s: v)
            >>> p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", []))
            ...      .key_by(str).to(count)
            ...      .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
            >>> plan = PhysicalPlan(wallaroo.build_application("c", p).graph)
            >>> src, state = plan.graph.sources[0], plan.chains[1].nodes[0]
            >>> plan.routed_between(src, state, True), plan.routed_between(src, state, False)
            (True, False)
        """
        def crossed(current: g.Node, include: bool) -> bool:
            here = include and current in self._exchange_at
            for parent in current.inputs:
                if parent is upstream:
                    if here:
                        return True
                elif parent.kind != g.SOURCE and crossed(parent, True) or (
                        here and self._reaches(upstream, parent)):
                    return True
            return False
        return crossed(node, including_node)

    def routed_twice(self, upstream: g.Node, node: g.Node) -> bool:
        """Whether some path from ``upstream`` to ``node`` passes two exchanges (counting the
        one into ``node``): then the messages of one worker's instance of ``upstream`` reach
        ``node`` through every worker, in no order.

        Example::

            >>> import wallaroo
            >>> count = wallaroo.state_computation(name="count", state=list)(lambda v, s: v)
            >>> p = (wallaroo.source("n", wallaroo.IterSourceConfig("n", []))
            ...      .key_by(str).to(count).key_by(str).to(count)
            ...      .to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
            >>> plan = PhysicalPlan(wallaroo.build_application("c", p).graph)
            >>> src = plan.graph.sources[0]
            >>> first, second = plan.chains[1].nodes[0], plan.chains[2].nodes[0]
            >>> plan.routed_twice(src, first), plan.routed_twice(src, second)
            (False, True)
        """
        def routed_into(current: g.Node) -> bool:   # an exchange into current, after another
            return current in self._exchange_at and self.routed_between(upstream, current, False)

        def any_on_paths(current: g.Node) -> bool:
            if current is upstream:
                return False
            if routed_into(current) and self._reaches(upstream, current):
                return True
            return any(any_on_paths(parent) for parent in current.inputs
                       if self._reaches(upstream, parent))
        return any_on_paths(node)

    def _reaches(self, upstream: g.Node, node: g.Node) -> bool:
        """Whether ``upstream`` is ``node`` or one of its ancestors."""
        return node is upstream or any(self._reaches(upstream, i) for i in node.inputs)

    def _fuses(self, parent: g.Node, node: g.Node) -> bool:
        return (
            parent in self._chain_of
            and len(node.inputs) == 1
            and len(self.graph.children[parent]) == 1
            and node.kind not in g.STATEFUL
            and (parent.kind not in (g.KEY_BY, g.COLLECT) or node.kind in (g.KEY_BY, g.COLLECT))
        )

    def is_exchange_into(self, node: g.Node) -> bool:
        """Whether the edges into ``node`` are exchanges (messages reach their key's owner).

        Example::

            >>> import wallaroo
            >>> count = wallaroo.state_computation(name="count", state=list)(lambda w, s: w)
            >>> p = (wallaroo.source("s", wallaroo.IterSourceConfig("s", [])).key_by(str)
            ...      .to(count).to_sink(wallaroo.StdoutSinkConfig(wallaroo.encoder(str))))
            >>> plan = PhysicalPlan(wallaroo.build_application("d", p).graph)
            >>> [plan.is_exchange_into(n) for n in plan.graph.nodes]
            [False, False, True, False]
        """
        return node in self._exchange_at

    def _edges_from(self, node: g.Node) -> list[Edge]:
        edges: list[Edge] = []
        for child in self.graph.children[node]:
            if child.kind == g.MERGE:
                edges.extend(self._edges_from(child))
            elif child.kind == g.SINK:
                edges.append(Edge(child, False))
            elif self._chain_of[child].nodes[0] is child:
                edges.append(Edge(self._chain_of[child], self.is_exchange_into(child)))
        return edges

    def describe(self) -> str:
        """A readable outline of the plan, one chain a line.

        Example::

            >>> print(PhysicalPlan.__doc__.splitlines()[0])
            Chains, and the edges from every source, for one logical graph.
        """
        lines = []
        for src, edges in self.source_edges.items():
            lines.append(f"source {src.name!r} -> {self._targets(edges)}")
        for chain in self.chains:
            lines.append(f"[{chain.name}] -> {self._targets(chain.edges)}")
        return "\n".join(lines)

    @staticmethod
    def _targets(edges: list[Edge]) -> str:
        names = []
        for e in edges:
            name = e.target.name if isinstance(e.target, g.Node) else f"[{e.target.name}]"
            names.append(("exchange " if e.exchange else "") + name)
        return ", ".join(names) or "(nothing)"
