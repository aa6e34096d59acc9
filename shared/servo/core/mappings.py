"""Partition mappings: which upstream partitions a downstream partition reads, and back.

A mapping is asked about one partition at a time (the planner asks once per task), so every
method here costs time proportional to its answer, not to the number of partitions; the
definitions cache their key lists per :class:`~servo.core.partitions.PartitionContext`.

Unpartitioned sides are written ``None``: when the upstream is unpartitioned every mapping
answers ``[None]`` for ``upstream_keys``, and ``downstream_keys`` answers ``[None]`` when the
downstream is unpartitioned (and the upstream partition feeds it). Results never hold
duplicates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import UTC, timedelta
from itertools import product
from typing import Any, ClassVar

from servo.core.canonical import canonical_json
from servo.core.errors import DefinitionError, PartitionError
from servo.core.keys import PartitionKey
from servo.core.partitions import (
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
    PartitionContext,
    PartitionsDefinition,
    StaticPartitionsDefinition,
    TimeWindowPartitionsDefinition,
)

__all__ = [
    "AllPartitionMapping",
    "IdentityPartitionMapping",
    "LastPartitionMapping",
    "MultiPartitionMapping",
    "MultiToSingleDimensionPartitionMapping",
    "PartitionMapping",
    "StaticPartitionMapping",
    "TimeWindowPartitionMapping",
    "default_mapping",
    "mapping_from_spec",
]

_TINY = timedelta(microseconds=1)


def _name(defn: PartitionsDefinition | None) -> str:
    return "an unpartitioned asset" if defn is None else defn.describe()


def _optional(keys: Sequence[PartitionKey]) -> list[PartitionKey | None]:
    return list(keys)


def _single(key: PartitionKey, role: str) -> str:
    if key.value is None:
        raise PartitionError(
            f"{role} partition {key.user_string()!r} is multi-dimensional but this mapping "
            "works between single-dimension partitions"
        )
    return key.value


class PartitionMapping(ABC):
    """How the partitions of a downstream asset depend on those of an upstream asset.

    Mappings compare equal (and hash) by their spec.
    """

    kind: ClassVar[str]

    @abstractmethod
    def to_spec(self) -> dict[str, Any]:
        """A canonical-JSON-able description with a ``kind``."""

    def problems(
        self, upstream: PartitionsDefinition | None, downstream: PartitionsDefinition | None
    ) -> list[str]:
        """Why this mapping cannot relate ``upstream`` to ``downstream``; ``[]`` if it can."""
        return []

    def upstream_keys(
        self,
        downstream_key: PartitionKey | None,
        upstream: PartitionsDefinition | None,
        downstream: PartitionsDefinition | None,
        ctx: PartitionContext,
    ) -> list[PartitionKey | None]:
        """The upstream partitions that the downstream partition ``downstream_key`` reads.

        ``[None]`` when the upstream is unpartitioned; ``downstream_key`` is None exactly when
        the downstream is unpartitioned.
        """
        if upstream is None:
            return [None]
        if downstream is None:
            return _optional(self._upstream_of_whole(upstream, ctx))
        if downstream_key is None:
            raise PartitionError(
                f"{_name(downstream)} is partitioned: pass the downstream partition key"
            )
        return _optional(self._upstream(downstream_key, upstream, downstream, ctx))

    def downstream_keys(
        self,
        upstream_key: PartitionKey | None,
        upstream: PartitionsDefinition | None,
        downstream: PartitionsDefinition | None,
        ctx: PartitionContext,
    ) -> list[PartitionKey | None]:
        """The downstream partitions that read the upstream partition ``upstream_key``.

        ``[None]`` when the downstream is unpartitioned and reads that partition.
        """
        if upstream is None:
            return [None] if downstream is None else _optional(downstream.keys_view(ctx))
        if upstream_key is None:
            raise PartitionError(
                f"{_name(upstream)} is partitioned: pass the upstream partition key"
            )
        if downstream is None:
            return [None] if self._feeds_whole(upstream_key, upstream, ctx) else []
        return _optional(self._downstream(upstream_key, upstream, downstream, ctx))

    def _upstream_of_whole(
        self, upstream: PartitionsDefinition, ctx: PartitionContext
    ) -> Sequence[PartitionKey]:
        """What an unpartitioned downstream reads: by default every upstream partition."""
        return upstream.keys_view(ctx)

    def _feeds_whole(
        self, upstream_key: PartitionKey, upstream: PartitionsDefinition, ctx: PartitionContext
    ) -> bool:
        """Whether an unpartitioned downstream reads ``upstream_key``: by default yes."""
        return True

    @abstractmethod
    def _upstream(
        self,
        downstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]: ...

    @abstractmethod
    def _downstream(
        self,
        upstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]: ...

    def _spec_json(self) -> str:
        return canonical_json(self.to_spec())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionMapping):
            return NotImplemented
        return self._spec_json() == other._spec_json()

    def __hash__(self) -> int:
        return hash(self._spec_json())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.to_spec()!r}>"


def _needs_partitioned_upstream(mapping: str, upstream: PartitionsDefinition | None) -> list[str]:
    if upstream is None:
        return [
            f"{mapping} needs a partitioned upstream, but the upstream asset is not "
            "partitioned; remove the partition mapping"
        ]
    return []


class AllPartitionMapping(PartitionMapping):
    """Every downstream partition reads every upstream partition."""

    kind = "all"

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def _upstream(
        self,
        downstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        return upstream.keys_view(ctx)

    def _downstream(
        self,
        upstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        return downstream.keys_view(ctx)


class LastPartitionMapping(PartitionMapping):
    """Every downstream partition reads the last upstream partition (in definition order)."""

    kind = "last"

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def problems(
        self, upstream: PartitionsDefinition | None, downstream: PartitionsDefinition | None
    ) -> list[str]:
        return _needs_partitioned_upstream("LastPartitionMapping", upstream)

    def _upstream_of_whole(
        self, upstream: PartitionsDefinition, ctx: PartitionContext
    ) -> Sequence[PartitionKey]:
        last = upstream.last_key(ctx)
        return [] if last is None else [last]

    def _feeds_whole(
        self, upstream_key: PartitionKey, upstream: PartitionsDefinition, ctx: PartitionContext
    ) -> bool:
        return upstream_key == upstream.last_key(ctx)

    def _upstream(
        self,
        downstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        return self._upstream_of_whole(upstream, ctx)

    def _downstream(
        self,
        upstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        if upstream_key != upstream.last_key(ctx):
            return []
        return downstream.keys_view(ctx)


def _identity_compatible(upstream: PartitionsDefinition, downstream: PartitionsDefinition) -> bool:
    """Whether one key can name corresponding partitions in both definitions."""
    if upstream == downstream:
        return True
    free_form = (StaticPartitionsDefinition, DynamicPartitionsDefinition)
    if isinstance(upstream, free_form) and isinstance(downstream, free_form):
        return True
    if isinstance(upstream, TimeWindowPartitionsDefinition) and isinstance(
        downstream, TimeWindowPartitionsDefinition
    ):
        grid = ("unit", "timezone", "fmt", "minute_offset", "hour_offset", "day_offset")
        up, down = upstream.to_spec(), downstream.to_spec()
        return all(up[k] == down[k] for k in grid)
    if isinstance(upstream, MultiPartitionsDefinition) and isinstance(
        downstream, MultiPartitionsDefinition
    ):
        if upstream.problems() or downstream.problems():
            return False
        up_dims, down_dims = upstream.dimensions, downstream.dimensions
        return list(up_dims) == list(down_dims) and all(
            _identity_compatible(up_dims[n], down_dims[n]) for n in up_dims
        )
    return False


class IdentityPartitionMapping(PartitionMapping):
    """Each downstream partition reads the upstream partition with the same key.

    Keys present on one side only map to nothing.
    """

    kind = "identity"

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def problems(
        self, upstream: PartitionsDefinition | None, downstream: PartitionsDefinition | None
    ) -> list[str]:
        found = _needs_partitioned_upstream("IdentityPartitionMapping", upstream)
        if downstream is None:
            found.append(
                "IdentityPartitionMapping needs a partitioned downstream; for an unpartitioned "
                "asset use AllPartitionMapping or LastPartitionMapping"
            )
        if (
            upstream is not None
            and downstream is not None
            and not _identity_compatible(upstream, downstream)
        ):
            found.append(
                f"IdentityPartitionMapping cannot relate {upstream.describe()} to "
                f"{downstream.describe()}: the same key does not name corresponding "
                "partitions; use TimeWindowPartitionMapping, StaticPartitionMapping or "
                "MultiToSingleDimensionPartitionMapping"
            )
        return found

    def _upstream(
        self,
        downstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        return [downstream_key] if upstream.has_key(downstream_key, ctx) else []

    def _downstream(
        self,
        upstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        return [upstream_key] if downstream.has_key(upstream_key, ctx) else []


def _time(defn: PartitionsDefinition, role: str) -> TimeWindowPartitionsDefinition:
    if not isinstance(defn, TimeWindowPartitionsDefinition):
        raise PartitionError(
            f"TimeWindowPartitionMapping needs time-window partitions, but the {role} has "
            f"{defn.describe()}"
        )
    return defn


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TimeWindowPartitionMapping(PartitionMapping):
    """A downstream partition reads every upstream partition overlapping its time window.

    The window is widened (or narrowed) first: its start moves by ``start_offset`` and its end
    by ``end_offset`` downstream periods, so ``start_offset=-1`` also reads the previous
    period. This gives daily -> monthly and hourly -> daily roll-ups, monthly -> daily
    fan-out, and timezone conversions. Upstream partitions outside the upstream definition
    (before its start, after its end, or not yet ended) are dropped.
    """

    kind = "time_window"

    def __init__(self, start_offset: int = 0, end_offset: int = 0) -> None:
        self.start_offset = start_offset
        self.end_offset = end_offset

    def to_spec(self) -> dict[str, Any]:
        def plain(value: object) -> Any:
            return value if _is_int(value) else repr(value)

        return {
            "kind": self.kind,
            "start_offset": plain(self.start_offset),
            "end_offset": plain(self.end_offset),
        }

    def problems(
        self, upstream: PartitionsDefinition | None, downstream: PartitionsDefinition | None
    ) -> list[str]:
        found: list[str] = []
        for name, value in (("start_offset", self.start_offset), ("end_offset", self.end_offset)):
            if not _is_int(value):
                found.append(f"TimeWindowPartitionMapping {name} must be an integer, got {value!r}")
        if not found and self.start_offset > self.end_offset:
            found.append(
                f"TimeWindowPartitionMapping start_offset {self.start_offset} is after "
                f"end_offset {self.end_offset}, which leaves an empty window; make start_offset "
                "less than or equal to end_offset"
            )
        found.extend(_needs_partitioned_upstream("TimeWindowPartitionMapping", upstream))
        for role, defn in (("upstream", upstream), ("downstream", downstream)):
            if defn is not None and not isinstance(defn, TimeWindowPartitionsDefinition):
                found.append(
                    f"TimeWindowPartitionMapping needs time-window partitions on both sides, "
                    f"but the {role} has {defn.describe()}"
                )
        if downstream is None:
            found.append(
                "TimeWindowPartitionMapping needs a partitioned downstream; for an "
                "unpartitioned asset use AllPartitionMapping or LastPartitionMapping"
            )
        return found

    def _upstream(
        self,
        downstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        up, down = _time(upstream, "upstream"), _time(downstream, "downstream")
        window = down.window(downstream_key)
        start, end = window.start, window.end
        if self.start_offset:
            start = down.calendar_window_at(window.start, self.start_offset).start
        if self.end_offset:
            end = down.calendar_window_at(window.start, self.end_offset).end
        return up.keys_overlapping(start, end, ctx)

    def _downstream(
        self,
        upstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        up, down = _time(upstream, "upstream"), _time(downstream, "downstream")
        window = up.window(upstream_key)
        if window.duration <= timedelta(0):
            return []
        if self.start_offset == 0 and self.end_offset == 0:
            return down.keys_overlapping(window.start, window.end, ctx)
        # Downstream partition d reads this window when d + end_offset reaches the window's
        # first downstream period and d + start_offset does not pass its last one.
        last_instant = window.end.astimezone(UTC) - _TINY
        low = down.calendar_window_at(window.start, -self.end_offset).start
        high = down.calendar_window_at(last_instant, -self.start_offset).end
        return down.keys_overlapping(low, high, ctx)


class StaticPartitionMapping(PartitionMapping):
    """An explicit table from upstream keys to the downstream key(s) that read them.

    Works between single-dimension definitions; keys not in the definitions are ignored.
    """

    kind = "static"

    def __init__(self, upstream_to_downstream: Mapping[str, str | Sequence[str]]) -> None:
        self._arg: object = upstream_to_downstream
        self._table: dict[str, tuple[str, ...]] | None = None
        self._inverse: dict[str, tuple[str, ...]] | None = None
        self._found: list[str] = []
        self._build()

    def _build(self) -> None:
        arg = self._arg
        if not isinstance(arg, Mapping):
            self._found.append(
                "StaticPartitionMapping needs a mapping of upstream key to downstream key(s), "
                f"got {type(arg).__name__} {arg!r}"
            )
            return
        table: dict[str, tuple[str, ...]] = {}
        for up, targets in arg.items():
            listed: object = [targets] if isinstance(targets, str) else targets
            if (
                not isinstance(up, str)
                or not isinstance(listed, (list, tuple, set, frozenset))
                or not all(isinstance(t, str) for t in listed)
            ):
                self._found.append(
                    f"StaticPartitionMapping entry {up!r}: {targets!r} must map a key string to "
                    "a key string or a list of key strings"
                )
                continue
            table[up] = tuple(sorted(set(listed)))
        inverse: dict[str, set[str]] = {}
        for up, targets in table.items():
            for target in targets:
                inverse.setdefault(target, set()).add(up)
        self._table = table
        self._inverse = {down: tuple(sorted(ups)) for down, ups in inverse.items()}

    def to_spec(self) -> dict[str, Any]:
        if self._table is None:
            return {"kind": self.kind, "upstream_to_downstream": repr(self._arg)}
        return {
            "kind": self.kind,
            "upstream_to_downstream": {up: list(t) for up, t in self._table.items()},
        }

    def problems(
        self, upstream: PartitionsDefinition | None, downstream: PartitionsDefinition | None
    ) -> list[str]:
        found = list(self._found)
        found.extend(_needs_partitioned_upstream("StaticPartitionMapping", upstream))
        if downstream is None:
            found.append(
                "StaticPartitionMapping needs a partitioned downstream; for an unpartitioned "
                "asset use AllPartitionMapping or LastPartitionMapping"
            )
        for role, defn in (("upstream", upstream), ("downstream", downstream)):
            if isinstance(defn, MultiPartitionsDefinition):
                found.append(
                    f"StaticPartitionMapping works between single-dimension partitions, but "
                    f"the {role} has {defn.describe()}; use MultiPartitionMapping"
                )
        table = self._table or {}
        if isinstance(upstream, StaticPartitionsDefinition) and not upstream.problems():
            known = {str(k.value) for k in upstream.keys_view()}
            unknown = sorted(set(table) - known)
            if unknown:
                found.append(
                    f"StaticPartitionMapping maps {unknown} which are not partitions of "
                    f"{upstream.describe()}"
                )
        if isinstance(downstream, StaticPartitionsDefinition) and not downstream.problems():
            known = {str(k.value) for k in downstream.keys_view()}
            unknown = sorted({t for ts in table.values() for t in ts} - known)
            if unknown:
                found.append(
                    f"StaticPartitionMapping maps to {unknown} which are not partitions of "
                    f"{downstream.describe()}"
                )
        return found

    def _upstream(
        self,
        downstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        inverse = self._inverse or {}
        keys = (
            PartitionKey.single(u) for u in inverse.get(_single(downstream_key, "downstream"), ())
        )
        return [k for k in keys if upstream.has_key(k, ctx)]

    def _downstream(
        self,
        upstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        table = self._table or {}
        keys = (PartitionKey.single(d) for d in table.get(_single(upstream_key, "upstream"), ()))
        return [k for k in keys if downstream.has_key(k, ctx)]


def _multi(defn: PartitionsDefinition, role: str, mapping: str) -> MultiPartitionsDefinition:
    if not isinstance(defn, MultiPartitionsDefinition):
        raise PartitionError(
            f"{mapping} needs multi-dimensional partitions, but the {role} has {defn.describe()}"
        )
    return defn


def _keys_from_values(names: Sequence[str], values: Sequence[Sequence[str]]) -> list[PartitionKey]:
    """The product of per-dimension values, in key order (``names`` sorted)."""
    ordered = [sorted(set(v)) for v in values]
    return [PartitionKey(dims=tuple(zip(names, combo, strict=True))) for combo in product(*ordered)]


class MultiPartitionMapping(PartitionMapping):
    """Between two multi-dimensional definitions with the same dimension names, map each
    dimension on its own: with the mapping given for it, or the default mapping between the
    two dimensions. A downstream partition reads the product of the per-dimension answers.
    """

    kind = "multi"

    def __init__(self, dimension_mappings: Mapping[str, PartitionMapping] | None = None) -> None:
        arg: object = {} if dimension_mappings is None else dimension_mappings
        self._arg = dict(arg) if isinstance(arg, Mapping) else arg

    def to_spec(self) -> dict[str, Any]:
        arg = self._arg
        if not isinstance(arg, dict):
            return {"kind": self.kind, "dimensions": repr(arg)}
        dims = {
            str(name): m.to_spec() if isinstance(m, PartitionMapping) else repr(m)
            for name, m in arg.items()
        }
        return {"kind": self.kind, "dimensions": dims}

    def _resolve(
        self, upstream: MultiPartitionsDefinition, downstream: MultiPartitionsDefinition
    ) -> dict[str, PartitionMapping | None]:
        given = self._arg if isinstance(self._arg, dict) else {}
        up_dims, down_dims = upstream.dimensions, downstream.dimensions
        resolved: dict[str, PartitionMapping | None] = {}
        for name in up_dims:
            explicit = given.get(name)
            if isinstance(explicit, PartitionMapping):
                resolved[name] = explicit
            else:
                resolved[name] = default_mapping(up_dims[name], down_dims.get(name))
        return resolved

    def problems(
        self, upstream: PartitionsDefinition | None, downstream: PartitionsDefinition | None
    ) -> list[str]:
        found = _needs_partitioned_upstream("MultiPartitionMapping", upstream)
        arg = self._arg
        if not isinstance(arg, dict):
            found.append(
                "MultiPartitionMapping needs a mapping of dimension name to partition mapping, "
                f"got {type(arg).__name__} {arg!r}"
            )
            return found
        for name, mapping in arg.items():
            if not isinstance(mapping, PartitionMapping):
                found.append(
                    f"MultiPartitionMapping dimension {name!r}: {mapping!r} is not a partition mapping"
                )
            elif isinstance(
                mapping, (MultiPartitionMapping, MultiToSingleDimensionPartitionMapping)
            ):
                found.append(
                    f"MultiPartitionMapping dimension {name!r}: {type(mapping).__name__} maps "
                    "whole multi-dimensional keys; give a single-dimension mapping"
                )
        if upstream is None:
            return found
        if not isinstance(upstream, MultiPartitionsDefinition) or not isinstance(
            downstream, MultiPartitionsDefinition
        ):
            found.append(
                f"MultiPartitionMapping relates two multi-dimensional definitions, not "
                f"{_name(upstream)} and {_name(downstream)}"
            )
            return found
        if upstream.problems() or downstream.problems():
            return found  # reported with the definitions themselves
        up_names, down_names = upstream.dimension_names(), downstream.dimension_names()
        if up_names != down_names:
            found.append(
                f"MultiPartitionMapping needs the same dimension names on both sides, but the "
                f"upstream has {up_names} and the downstream {down_names}"
            )
            return found
        unknown = sorted(set(map(str, arg)) - set(up_names))
        if unknown:
            found.append(
                f"MultiPartitionMapping names dimension(s) {unknown} that the partitions do "
                f"not have; the dimensions are {up_names}"
            )
        up_dims, down_dims = upstream.dimensions, downstream.dimensions
        for name, mapping in self._resolve(upstream, downstream).items():
            if mapping is None:
                found.append(
                    f"MultiPartitionMapping dimension {name!r}: {up_dims[name].describe()} and "
                    f"{down_dims[name].describe()} have no default mapping; give one for it"
                )
            else:
                found.extend(
                    f"MultiPartitionMapping dimension {name!r}: {p}"
                    for p in mapping.problems(up_dims[name], down_dims[name])
                )
        return found

    def _map(
        self,
        key: PartitionKey,
        source: MultiPartitionsDefinition,
        target: MultiPartitionsDefinition,
        upstream_is_source: bool,
        ctx: PartitionContext,
    ) -> list[PartitionKey]:
        source_dims, target_dims = source.dimensions, target.dimensions
        if upstream_is_source:
            mappings = self._resolve(source, target)
        else:
            mappings = self._resolve(target, source)
        names = list(source_dims)
        if [d for d, _ in key.dims] != names:
            raise PartitionError(
                f"partition {key.user_string()!r} does not have the dimensions {names}"
            )
        values: list[list[str]] = []
        for name, value in key.dims:
            mapping = mappings.get(name)
            if mapping is None:
                raise PartitionError(
                    f"MultiPartitionMapping dimension {name!r} has no mapping; give one for it"
                )
            single = PartitionKey.single(value)
            if upstream_is_source:
                mapped = mapping.downstream_keys(single, source_dims[name], target_dims[name], ctx)
            else:
                mapped = mapping.upstream_keys(single, target_dims[name], source_dims[name], ctx)
            found = [k.value for k in mapped if k is not None and k.value is not None]
            if not found:
                return []
            values.append(found)
        return _keys_from_values(names, values)

    def _upstream(
        self,
        downstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        up = _multi(upstream, "upstream", "MultiPartitionMapping")
        down = _multi(downstream, "downstream", "MultiPartitionMapping")
        return self._map(downstream_key, down, up, upstream_is_source=False, ctx=ctx)

    def _downstream(
        self,
        upstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        up = _multi(upstream, "upstream", "MultiPartitionMapping")
        down = _multi(downstream, "downstream", "MultiPartitionMapping")
        return self._map(upstream_key, up, down, upstream_is_source=True, ctx=ctx)


class MultiToSingleDimensionPartitionMapping(PartitionMapping):
    """Between a multi-dimensional definition and a single-dimension one that equals one of
    its dimensions (on either side): a multi key corresponds to the single key equal to its
    value in that dimension. ``dimension`` names it; None picks the one dimension whose
    definition equals the single-dimension definition.
    """

    kind = "multi_to_single"

    def __init__(self, dimension: str | None = None) -> None:
        self.dimension = dimension

    def to_spec(self) -> dict[str, Any]:
        dimension: object = self.dimension
        return {
            "kind": self.kind,
            "dimension": dimension
            if dimension is None or isinstance(dimension, str)
            else repr(dimension),
        }

    def _resolve(
        self, upstream: PartitionsDefinition | None, downstream: PartitionsDefinition | None
    ) -> tuple[MultiPartitionsDefinition, PartitionsDefinition, str] | str:
        """(the multi side, the single side, the dimension), or the reason there is none."""
        up_multi = isinstance(upstream, MultiPartitionsDefinition)
        down_multi = isinstance(downstream, MultiPartitionsDefinition)
        if upstream is None or downstream is None or up_multi == down_multi:
            return (
                "MultiToSingleDimensionPartitionMapping relates a multi-dimensional and a "
                f"single-dimension definition, not {_name(upstream)} and {_name(downstream)}"
            )
        multi = upstream if up_multi else downstream
        single = downstream if up_multi else upstream
        assert isinstance(multi, MultiPartitionsDefinition)
        if multi.problems():
            return "the multi-dimensional partitions are not valid"
        dims = multi.dimensions
        if self.dimension is None:
            matching = [name for name, d in dims.items() if d == single]
            if len(matching) != 1:
                which = "none" if not matching else f"{matching}"
                return (
                    f"MultiToSingleDimensionPartitionMapping cannot tell which dimension of "
                    f"{multi.describe()} corresponds to {single.describe()} ({which} equal it); "
                    "name it with dimension=..."
                )
            return multi, single, matching[0]
        if self.dimension not in dims:
            return (
                f"MultiToSingleDimensionPartitionMapping dimension {self.dimension!r} is not a "
                f"dimension of {multi.describe()}; its dimensions are {list(dims)}"
            )
        if not _identity_compatible(dims[self.dimension], single):
            return (
                f"MultiToSingleDimensionPartitionMapping: dimension {self.dimension!r} "
                f"({dims[self.dimension].describe()}) does not match {single.describe()}"
            )
        return multi, single, self.dimension

    def problems(
        self, upstream: PartitionsDefinition | None, downstream: PartitionsDefinition | None
    ) -> list[str]:
        found = _needs_partitioned_upstream("MultiToSingleDimensionPartitionMapping", upstream)
        if upstream is None:
            return found
        resolved = self._resolve(upstream, downstream)
        if isinstance(resolved, str):
            found.append(resolved)
        return found

    def _resolved(
        self, upstream: PartitionsDefinition, downstream: PartitionsDefinition
    ) -> tuple[MultiPartitionsDefinition, PartitionsDefinition, str]:
        resolved = self._resolve(upstream, downstream)
        if isinstance(resolved, str):
            raise PartitionError(resolved)
        return resolved

    def _upstream(
        self,
        downstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        multi, single, dim = self._resolved(upstream, downstream)
        if multi is upstream:
            return multi.keys_with({dim: _single(downstream_key, "downstream")}, ctx)
        key = PartitionKey.single(downstream_key.get(dim))
        return [key] if single.has_key(key, ctx) else []

    def _downstream(
        self,
        upstream_key: PartitionKey,
        upstream: PartitionsDefinition,
        downstream: PartitionsDefinition,
        ctx: PartitionContext,
    ) -> Sequence[PartitionKey]:
        multi, single, dim = self._resolved(upstream, downstream)
        if multi is downstream:
            return multi.keys_with({dim: _single(upstream_key, "upstream")}, ctx)
        key = PartitionKey.single(upstream_key.get(dim))
        return [key] if single.has_key(key, ctx) else []


def default_mapping(
    upstream: PartitionsDefinition | None, downstream: PartitionsDefinition | None
) -> PartitionMapping | None:
    """The mapping used when a dependency names none; None when the two partitionings need an
    explicit one.

    Unpartitioned on either side: all partitions. Equal definitions: identity. Two time
    windows: overlapping windows. Two multi-dimensional definitions with the same dimension
    names: per-dimension defaults (if every dimension has one). A multi-dimensional and a
    single-dimension definition that equals exactly one of its dimensions: that dimension.
    """
    if upstream is None or downstream is None:
        return AllPartitionMapping()
    if upstream == downstream:
        return IdentityPartitionMapping()
    if isinstance(upstream, TimeWindowPartitionsDefinition) and isinstance(
        downstream, TimeWindowPartitionsDefinition
    ):
        return TimeWindowPartitionMapping()
    up_multi = isinstance(upstream, MultiPartitionsDefinition)
    down_multi = isinstance(downstream, MultiPartitionsDefinition)
    if up_multi and down_multi:
        assert isinstance(upstream, MultiPartitionsDefinition)
        assert isinstance(downstream, MultiPartitionsDefinition)
        if upstream.problems() or downstream.problems():
            return None
        up_dims, down_dims = upstream.dimensions, downstream.dimensions
        if list(up_dims) != list(down_dims):
            return None
        per_dimension: dict[str, PartitionMapping] = {}
        for name in up_dims:
            mapping = default_mapping(up_dims[name], down_dims[name])
            if mapping is None:
                return None
            per_dimension[name] = mapping
        return MultiPartitionMapping(per_dimension)
    if up_multi != down_multi:
        candidate = MultiToSingleDimensionPartitionMapping()
        resolved = candidate._resolve(upstream, downstream)
        if isinstance(resolved, str):
            return None
        return MultiToSingleDimensionPartitionMapping(resolved[2])
    return None


def mapping_from_spec(spec: Mapping[str, Any]) -> PartitionMapping:
    """Rebuild a mapping from :meth:`PartitionMapping.to_spec` output."""
    if not isinstance(spec, Mapping):
        raise DefinitionError(f"a partition mapping spec must be a mapping, got {spec!r}")
    kind = spec.get("kind")
    if kind == AllPartitionMapping.kind:
        return AllPartitionMapping()
    if kind == IdentityPartitionMapping.kind:
        return IdentityPartitionMapping()
    if kind == LastPartitionMapping.kind:
        return LastPartitionMapping()
    if kind == TimeWindowPartitionMapping.kind:
        return TimeWindowPartitionMapping(
            start_offset=spec.get("start_offset", 0), end_offset=spec.get("end_offset", 0)
        )
    if kind == StaticPartitionMapping.kind:
        table = spec.get("upstream_to_downstream")
        if not isinstance(table, Mapping):
            raise DefinitionError(
                f"partition mapping spec {dict(spec)!r}: 'upstream_to_downstream' must be a mapping"
            )
        return StaticPartitionMapping(table)
    if kind == MultiPartitionMapping.kind:
        dims = spec.get("dimensions", {})
        if not isinstance(dims, Mapping):
            raise DefinitionError(
                f"partition mapping spec {dict(spec)!r}: 'dimensions' must be a mapping"
            )
        return MultiPartitionMapping({n: mapping_from_spec(s) for n, s in dims.items()})
    if kind == MultiToSingleDimensionPartitionMapping.kind:
        return MultiToSingleDimensionPartitionMapping(spec.get("dimension"))
    raise DefinitionError(
        f"partition mapping spec has unknown kind {kind!r}; expected one of 'all', 'identity', "
        "'last', 'time_window', 'static', 'multi', 'multi_to_single'"
    )
