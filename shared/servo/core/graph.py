"""The asset dependency graph: deterministic traversal, cycle detection, closures."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from servo.core.keys import AssetKey


@dataclass(frozen=True, slots=True)
class AssetNode:
    """What selection and planning need to know about one asset."""

    key: AssetKey
    group: str = "default"
    tags: Mapping[str, str] = field(default_factory=dict)
    owners: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()


class AssetGraph:
    """Assets and their dependency edges (upstream -> downstream).

    Edges to keys that are not nodes are ignored here; validation reports them.
    """

    def __init__(
        self, nodes: Iterable[AssetNode], edges: Iterable[tuple[AssetKey, AssetKey]]
    ) -> None:
        self.nodes: dict[AssetKey, AssetNode] = {n.key: n for n in nodes}
        ups: dict[AssetKey, set[AssetKey]] = {k: set() for k in self.nodes}
        downs: dict[AssetKey, set[AssetKey]] = {k: set() for k in self.nodes}
        for up, down in edges:
            if up in self.nodes and down in self.nodes:
                ups[down].add(up)
                downs[up].add(down)
        self.upstream: dict[AssetKey, tuple[AssetKey, ...]] = {
            k: tuple(sorted(v)) for k, v in ups.items()
        }
        self.downstream: dict[AssetKey, tuple[AssetKey, ...]] = {
            k: tuple(sorted(v)) for k, v in downs.items()
        }

    def __contains__(self, key: object) -> bool:
        return key in self.nodes

    def keys(self) -> list[AssetKey]:
        return sorted(self.nodes)

    def find_cycle(self) -> list[AssetKey] | None:
        """One dependency cycle as a path ``[a, b, …, a]``, or None. Deterministic."""
        white, grey, black = 0, 1, 2
        color = dict.fromkeys(self.nodes, white)
        for root in sorted(self.nodes):
            if color[root] != white:
                continue
            stack: list[tuple[AssetKey, int]] = [(root, 0)]
            path: list[AssetKey] = [root]
            color[root] = grey
            while stack:
                node, idx = stack[-1]
                children = self.downstream[node]
                if idx < len(children):
                    stack[-1] = (node, idx + 1)
                    child = children[idx]
                    if color[child] == grey:
                        start = path.index(child)
                        return [*path[start:], child]
                    if color[child] == white:
                        color[child] = grey
                        stack.append((child, 0))
                        path.append(child)
                else:
                    color[node] = black
                    stack.pop()
                    path.pop()
        return None

    def toposort(self, subset: Iterable[AssetKey] | None = None) -> list[AssetKey]:
        """Keys in dependency order, ties broken by key order. Raises on a cycle."""
        keys = set(self.nodes) if subset is None else set(subset)
        indegree = {k: sum(1 for u in self.upstream[k] if u in keys) for k in keys}
        heap = [k for k, d in indegree.items() if d == 0]
        heapq.heapify(heap)
        out: list[AssetKey] = []
        while heap:
            k = heapq.heappop(heap)
            out.append(k)
            for d in self.downstream[k]:
                if d in indegree:
                    indegree[d] -= 1
                    if indegree[d] == 0:
                        heapq.heappush(heap, d)
        if len(out) != len(keys):
            cycle = self.find_cycle()
            path = " -> ".join(str(k) for k in cycle or [])
            raise ValueError(f"dependency cycle: {path}")
        return out

    def _closure(
        self,
        start: Iterable[AssetKey],
        neighbours: Mapping[AssetKey, tuple[AssetKey, ...]],
        depth: int | None,
    ) -> set[AssetKey]:
        seen = set(start)
        frontier = list(seen)
        level = 0
        while frontier and (depth is None or level < depth):
            nxt: list[AssetKey] = []
            for k in frontier:
                for n in neighbours.get(k, ()):
                    if n not in seen:
                        seen.add(n)
                        nxt.append(n)
            frontier = nxt
            level += 1
        return seen

    def upstream_closure(self, keys: Iterable[AssetKey], depth: int | None = None) -> set[AssetKey]:
        """``keys`` and their ancestors up to ``depth`` levels (all when None)."""
        return self._closure(keys, self.upstream, depth)

    def downstream_closure(
        self, keys: Iterable[AssetKey], depth: int | None = None
    ) -> set[AssetKey]:
        """``keys`` and their descendants up to ``depth`` levels (all when None)."""
        return self._closure(keys, self.downstream, depth)
