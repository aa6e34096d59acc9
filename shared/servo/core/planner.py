"""The planner: (manifest, selection, partitions) -> a deterministic Plan.

A plan has one task per (asset, partition) and an edge from every task to the tasks of the
partitions it reads, through the partition mappings. The same inputs produce the same plan,
byte for byte, in any process: iteration orders are sorted, nothing depends on hash seeds,
and the fingerprint is the sha256 of a canonical spec that holds no ids or timestamps.

Which partitions of each asset run:
* an unpartitioned asset has one task;
* a partitioned asset with no partitioned upstream in the run takes the requested partitions
  (``--partition``/``--partition-range``), interpreted by its own partitions definition;
* a partitioned asset with partitioned upstreams in the run takes every partition that reads one
  of their planned partitions (daily 2024-01-01..31 upstream -> monthly 2024-01-01 downstream).
Upstream partitions outside the run are read as already materialized.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from servo.core.canonical import canonical_json, sha256_hex
from servo.core.errors import PartitionError
from servo.core.keys import AssetKey, PartitionKey, TaskKey, task_id_of
from servo.core.manifest import AssetSpec, Manifest, RetryPolicySpec
from servo.core.mappings import (
    IdentityPartitionMapping,
    PartitionMapping,
    default_mapping,
    mapping_from_spec,
)
from servo.core.partitions import PartitionContext, PartitionsDefinition, partitions_from_spec

PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PartitionSelection:
    """Which partitions a run targets, as the user wrote them."""

    keys: tuple[str, ...] = ()
    ranges: tuple[tuple[str, str], ...] = ()
    all: bool = False

    @property
    def empty(self) -> bool:
        return not self.keys and not self.ranges and not self.all

    def to_json(self) -> dict[str, Any]:
        return {"all": self.all, "keys": list(self.keys), "ranges": [list(r) for r in self.ranges]}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> PartitionSelection:
        if not data:
            return cls()
        return cls(
            keys=tuple(data.get("keys", ())),
            ranges=tuple((str(a), str(b)) for a, b in data.get("ranges", ())),
            all=bool(data.get("all", False)),
        )


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """One task of a plan."""

    key: TaskKey
    id: str
    index: int
    upstream: tuple[str, ...]
    max_retries: int
    timeout_ms: int | None
    pool: str | None

    def spec(self) -> dict[str, Any]:
        return {"key": self.key.to_json(), "upstream": list(self.upstream)}


@dataclass(frozen=True)
class Plan:
    """A deterministic execution plan."""

    code_version: str
    manifest_id: str
    assets: tuple[str, ...]
    partitions: PartitionSelection
    tasks: tuple[PlannedTask, ...]
    fingerprint: str
    by_id: dict[str, PlannedTask] = field(repr=False, compare=False, default_factory=dict)

    def downstream(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {t.id: [] for t in self.tasks}
        for t in self.tasks:
            for u in t.upstream:
                out[u].append(t.id)
        return out


def plan_spec_text(
    code_version: str,
    manifest_id: str,
    assets: Sequence[str],
    partitions: PartitionSelection,
    task_texts: Sequence[str],
) -> str:
    """The canonical JSON text of :func:`plan_spec`, built from each task's canonical text
    without materializing the whole document (100,000-task plans)."""
    head = canonical_json(
        {
            "assets": list(assets),
            "code_version": code_version,
            "manifest_id": manifest_id,
            "partitions": partitions.to_json(),
            "schema": PLAN_SCHEMA_VERSION,
        }
    )
    return head[:-1] + ',"tasks":[' + ",".join(task_texts) + "]}"


def plan_spec(
    code_version: str,
    manifest_id: str,
    assets: Sequence[str],
    partitions: PartitionSelection,
    tasks: Sequence[PlannedTask],
) -> dict[str, Any]:
    """The canonical preimage of a plan's fingerprint (no ids, no timestamps)."""
    return {
        "schema": PLAN_SCHEMA_VERSION,
        "code_version": code_version,
        "manifest_id": manifest_id,
        "assets": list(assets),
        "partitions": partitions.to_json(),
        "tasks": [t.spec() for t in tasks],
    }


class _PartsCache:
    """One partitions definition object per distinct spec, so that assets sharing a
    definition share its key caches and compare equal by identity."""

    def __init__(self) -> None:
        self.by_asset: dict[str, PartitionsDefinition | None] = {}
        self.by_spec: dict[str, PartitionsDefinition] = {}

    def __call__(self, spec: AssetSpec) -> PartitionsDefinition | None:
        if spec.key in self.by_asset:
            return self.by_asset[spec.key]
        found: PartitionsDefinition | None = None
        if spec.partitions is not None:
            text = canonical_json(spec.partitions)
            found = self.by_spec.get(text)
            if found is None:
                found = partitions_from_spec(spec.partitions)
                self.by_spec[text] = found
        self.by_asset[spec.key] = found
        return found


def _requested_keys(
    asset: AssetSpec,
    parts: PartitionsDefinition,
    selection: PartitionSelection,
    ctx: PartitionContext,
) -> list[PartitionKey]:
    if selection.all:
        return parts.keys(ctx)
    out: list[PartitionKey] = []
    for text in selection.keys:
        try:
            out.append(parts.parse_key(text, ctx))
        except PartitionError as exc:
            raise PartitionError(f"asset `{asset.key}`: {exc}") from None
    for start, end in selection.ranges:
        try:
            out.extend(parts.key_range(start, end, ctx))
        except PartitionError as exc:
            raise PartitionError(f"asset `{asset.key}`: {exc}") from None
    return sorted(set(out))


def _max_retries(policy: RetryPolicySpec | None) -> int:
    return policy.max_retries if policy is not None else 0


def plan_run(
    manifest: Manifest,
    assets: Iterable[AssetKey],
    partitions: PartitionSelection | None = None,
    ctx: PartitionContext | None = None,
) -> Plan:
    """Plan a run of ``assets`` (an already-resolved selection) for ``partitions``."""
    ctx = ctx or PartitionContext()
    partitions = partitions or PartitionSelection()
    selected = set(assets)
    unknown = sorted(str(k) for k in selected if str(k) not in manifest.assets_by_key)
    if unknown:
        raise PartitionError(f"cannot plan unknown assets: {', '.join(unknown)}")
    order = manifest.graph.toposort(selected)
    parts_of = _PartsCache()
    planned: dict[str, list[PartitionKey | None]] = {}
    used_selection = False
    for akey in order:
        spec = manifest.assets_by_key[str(akey)]
        parts = parts_of(spec)
        if parts is None:
            planned[spec.key] = [None]
            continue
        derived: set[PartitionKey] = set()
        has_partitioned_upstream = False
        for dep in spec.deps:
            if dep.asset not in planned:
                continue
            up_spec = manifest.assets_by_key[dep.asset]
            up_parts = parts_of(up_spec)
            if up_parts is None:
                continue
            has_partitioned_upstream = True
            mapping = _mapping(dep.mapping, up_parts, parts)
            if isinstance(mapping, IdentityPartitionMapping) and up_parts is parts:
                # Same definition: every planned upstream partition is a downstream one.
                derived.update(k for k in planned[dep.asset] if k is not None)
                continue
            for up_key in planned[dep.asset]:
                for down_key in mapping.downstream_keys(up_key, up_parts, parts, ctx):
                    if down_key is not None:
                        derived.add(down_key)
        if has_partitioned_upstream:
            planned[spec.key] = [*sorted(derived)]
            continue
        if partitions.empty:
            raise PartitionError(
                f"asset `{spec.key}` is partitioned ({parts.describe()}); choose partitions with "
                "--partition KEY or --partition-range START...END"
            )
        used_selection = True
        requested = _requested_keys(spec, parts, partitions, ctx)
        if not requested:
            raise PartitionError(f"asset `{spec.key}`: the partition selection is empty")
        planned[spec.key] = list(requested)
    if not partitions.empty and not used_selection:
        raise PartitionError(
            "partitions were requested but none of the selected assets takes them directly "
            f"(selected: {', '.join(str(k) for k in order)}); drop --partition or select a "
            "partitioned asset"
        )

    tasks: list[PlannedTask] = []
    task_texts: list[str] = []
    ids: dict[tuple[str, PartitionKey | None], str] = {}
    for akey in order:
        spec = manifest.assets_by_key[str(akey)]
        parts = parts_of(spec)
        dep_info: list[tuple[str, PartitionMapping | None, PartitionsDefinition | None]] = []
        for dep in spec.deps:
            if dep.asset not in planned:
                continue
            up_parts = parts_of(manifest.assets_by_key[dep.asset])
            dep_mapping: PartitionMapping | None = None
            if up_parts is not None and parts is not None:
                dep_mapping = _mapping(dep.mapping, up_parts, parts)
            dep_info.append((dep.asset, dep_mapping, up_parts))
        max_retries = _max_retries(spec.retry_policy)
        for pkey in planned[spec.key]:
            tkey = TaskKey(asset=akey, partition=pkey)
            key_text = tkey.canonical()
            tid = task_id_of(key_text)
            upstream: set[str] = set()
            for up_asset, dep_map, up_parts in dep_info:
                if up_parts is None:
                    found = ids.get((up_asset, None))
                    if found:
                        upstream.add(found)
                    continue
                if parts is None or pkey is None:
                    # Unpartitioned downstream reads every planned upstream partition.
                    for up_key in planned[up_asset]:
                        upstream.add(ids[(up_asset, up_key)])
                    continue
                assert dep_map is not None
                if isinstance(dep_map, IdentityPartitionMapping):
                    found = ids.get((up_asset, pkey))
                    if found:
                        upstream.add(found)
                    continue
                for up_key in dep_map.upstream_keys(pkey, up_parts, parts, ctx):
                    found = ids.get((up_asset, up_key))
                    if found:
                        upstream.add(found)
            ids[(spec.key, pkey)] = tid
            task_texts.append(
                '{"key":'
                + key_text
                + ',"upstream":['
                + ",".join(f'"{u}"' for u in sorted(upstream))
                + "]}"
            )
            tasks.append(
                PlannedTask(
                    key=tkey,
                    id=tid,
                    index=len(tasks),
                    upstream=tuple(sorted(upstream)),
                    max_retries=max_retries,
                    timeout_ms=spec.timeout_ms,
                    pool=spec.pool,
                )
            )
    asset_names = tuple(str(k) for k in order)
    spec_obj = plan_spec(
        manifest.code_version, manifest.manifest_id, asset_names, partitions, tasks
    )
    fingerprint = sha256_hex(canonical_json(spec_obj))
    return Plan(
        code_version=manifest.code_version,
        manifest_id=manifest.manifest_id,
        assets=asset_names,
        partitions=partitions,
        tasks=tuple(tasks),
        fingerprint=fingerprint,
        by_id={t.id: t for t in tasks},
    )


def _mapping(
    spec: dict[str, Any] | None, upstream: PartitionsDefinition, downstream: PartitionsDefinition
) -> PartitionMapping:
    if spec is not None:
        return mapping_from_spec(spec)
    found = default_mapping(upstream, downstream)
    if found is None:
        raise PartitionError(
            f"no partition mapping between {upstream.describe()} and {downstream.describe()}"
        )
    if upstream == downstream and not isinstance(found, IdentityPartitionMapping):
        return IdentityPartitionMapping()
    return found
