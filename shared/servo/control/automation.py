"""automation: runs requested by the assets themselves (``@asset(automation=...)``).

* ``"on_missing"`` — every partition of the asset (the asset itself when unpartitioned) that
  has never been materialized is requested, once every upstream partition it reads has been
  materialized. Time-partitioned assets thus fill each new partition as it closes.
* ``"eager"`` — a partition is requested when every one of its upstream assets has a
  materialization newer than the partition's own (or the partition was never materialized):
  when the inputs have all moved on, the asset follows.

Both are evaluated on every tick (:func:`evaluate_automation`) and whenever materializations
are recorded (:func:`automation_on_materializations`, which follows the event ledger with a
cursor). Requests are deduplicated by run_key: ``automation:on_missing:<asset>:<partition>``
asks once per partition, ``automation:eager:<asset>:<partition>:<upstream versions>`` once per
set of upstream materializations — so a failed run is not retried in a loop, and a run in
flight is not requested twice. At most ``automation_max_requests_per_asset`` new runs per asset
are requested per evaluation (newest partitions first); the rest follow on later evaluations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from servo.control.automation_common import (
    AUTOMATION_STATE,
    AutomationSettings,
    current_manifest,
    iso_utc,
    ledger_head,
    read_many,
    request_run,
    run_key_doc_id,
)
from servo.control.common import ASSET_PARTITIONS, RUN_KEYS, asset_partition_id
from servo.control.drain import EVENTS_STREAM
from servo.control.uow import Cause, UnitOfWork, in_uow
from servo.core import events as ev
from servo.core.canonical import sha256_hex
from servo.core.errors import InvalidRequest, PartitionError
from servo.core.keys import AssetKey, PartitionKey
from servo.core.manifest import AssetSpec, Manifest
from servo.core.mappings import (
    IdentityPartitionMapping,
    PartitionMapping,
    default_mapping,
    mapping_from_spec,
)
from servo.core.partitions import PartitionContext, PartitionsDefinition, partitions_from_spec
from servo.ports import Ports

log = logging.getLogger("servo.automation")

EAGER = "eager"
ON_MISSING = "on_missing"
MATERIALIZATION_CURSOR = "materializations"


@dataclass(frozen=True)
class AutomationRequest:
    """One run asked for by an asset's automation policy."""

    asset: str
    partition: str | None
    policy: str
    run_key: str
    run_id: str
    created: bool


@dataclass
class AutomationReport:
    """The result of one evaluation of asset automation."""

    now: str
    assets: int = 0
    requests: list[AutomationRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.requests]


@dataclass(frozen=True)
class _Dep:
    asset: str
    parts: PartitionsDefinition | None
    mapping: PartitionMapping | None


@dataclass(frozen=True)
class _Candidate:
    key: PartitionKey | None
    run_key: str


def evaluate_automation(
    ports: Ports, now: datetime | None = None, *, assets: Iterable[str] | None = None
) -> AutomationReport:
    """Request the runs the automation policies of ``assets`` (default: all) call for."""
    at = (now or ports.clock.now()).astimezone(UTC)
    report = AutomationReport(now=iso_utc(at))
    manifest = current_manifest(ports)
    if manifest is None:
        return report
    wanted = set(assets) if assets is not None else None
    settings = AutomationSettings.of(ports)
    ctx = PartitionContext(now=at)
    for spec in manifest.assets:
        if spec.automation not in (EAGER, ON_MISSING):
            continue
        if wanted is not None and spec.key not in wanted:
            continue
        report.assets += 1
        try:
            candidates = _candidates(ports, manifest, spec, ctx)
            _request(ports, manifest, spec, candidates, settings, report)
        except (InvalidRequest, PartitionError) as exc:
            report.errors.append(f"asset `{spec.key}` ({spec.automation}): {exc}")
            log.warning("automation of %s: %s", spec.key, exc)
    return report


def _deps(manifest: Manifest, spec: AssetSpec, parts: PartitionsDefinition | None) -> list[_Dep]:
    out: list[_Dep] = []
    for dep in spec.deps:
        up = manifest.assets_by_key.get(dep.asset)
        if up is None:
            continue
        up_parts = partitions_from_spec(up.partitions) if up.partitions else None
        mapping: PartitionMapping | None = None
        if up_parts is not None and parts is not None:
            if dep.mapping is not None:
                mapping = mapping_from_spec(dep.mapping)
            else:
                mapping = default_mapping(up_parts, parts)
                if up_parts == parts and not isinstance(mapping, IdentityPartitionMapping):
                    mapping = IdentityPartitionMapping()
            if mapping is None:
                raise InvalidRequest(
                    f"no partition mapping from `{dep.asset}` to `{spec.key}`; declare one"
                )
        out.append(_Dep(dep.asset, up_parts, mapping))
    return out


def _upstream_keys(
    dep: _Dep, key: PartitionKey | None, parts: PartitionsDefinition | None, ctx: PartitionContext
) -> list[PartitionKey | None]:
    if dep.parts is None:
        return [None]
    if parts is None or key is None:
        return list(dep.parts.keys(ctx))
    assert dep.mapping is not None
    return dep.mapping.upstream_keys(key, dep.parts, parts, ctx)


def _pid(asset: str, key: PartitionKey | None) -> str:
    return asset_partition_id(asset, key.canonical() if key is not None else None)


def _candidates(
    ports: Ports, manifest: Manifest, spec: AssetSpec, ctx: PartitionContext
) -> list[_Candidate]:
    """The partitions of ``spec`` its policy asks for now, newest first, with run_keys."""
    parts = partitions_from_spec(spec.partitions) if spec.partitions else None
    keys: list[PartitionKey | None] = list(reversed(parts.keys(ctx))) if parts else [None]
    deps = _deps(manifest, spec, parts)
    if spec.automation == EAGER and not deps:
        return []
    ups: dict[PartitionKey | None, list[tuple[str, list[str]]]] = {}
    wanted_ids: set[str] = set()
    for key in keys:
        per_dep = []
        for dep in deps:
            ids = [_pid(dep.asset, k) for k in _upstream_keys(dep, key, parts, ctx)]
            per_dep.append((dep.asset, ids))
            wanted_ids.update(ids)
        ups[key] = per_dep
    own = read_many(ports, ASSET_PARTITIONS, [_pid(spec.key, k) for k in keys])
    upstream_docs = read_many(ports, ASSET_PARTITIONS, sorted(wanted_ids))
    out: list[_Candidate] = []
    for key in keys:
        label = key.user_string() if key is not None else "-"
        mine = own.get(_pid(spec.key, key))
        per_dep = ups[key]
        if any(not ids or any(i not in upstream_docs for i in ids) for _, ids in per_dep):
            continue  # an input is missing: a run now would fail to load it
        if spec.automation == ON_MISSING:
            if mine is None:
                out.append(_Candidate(key, f"automation:on_missing:{spec.key}:{label}"))
            continue
        mine_ms = int(mine["materialized_ms"]) if mine is not None else -1
        newest = [max(int(upstream_docs[i]["materialized_ms"]) for i in ids) for _, ids in per_dep]
        if all(ms > mine_ms for ms in newest):
            versions = sorted(
                f"{i}@{upstream_docs[i].get('run_id')}#{upstream_docs[i].get('materializations')}"
                for _, ids in per_dep
                for i in ids
            )
            digest = sha256_hex("\n".join(versions))[:16]
            out.append(_Candidate(key, f"automation:eager:{spec.key}:{label}:{digest}"))
    return out


def _request(
    ports: Ports,
    manifest: Manifest,
    spec: AssetSpec,
    candidates: Sequence[_Candidate],
    settings: AutomationSettings,
    report: AutomationReport,
) -> None:
    if not candidates:
        return
    used = read_many(ports, RUN_KEYS, [run_key_doc_id(c.run_key) for c in candidates])
    fresh = [c for c in candidates if run_key_doc_id(c.run_key) not in used]
    for c in fresh[: max(0, settings.automation_max_requests_per_asset)]:
        partition = c.key.user_string() if c.key is not None else None
        result = request_run(
            ports,
            selection=f'key:"{spec.key}"',
            run_key=c.run_key,
            partition_key=partition,
            tags={"servo/automation": str(spec.automation)},
            trigger_info={
                "type": "automation",
                "policy": spec.automation,
                "asset": spec.key,
                "partition": partition,
            },
            actor="automation",
            code_version=manifest.code_version,
        )
        report.requests.append(
            AutomationRequest(
                asset=spec.key,
                partition=partition,
                policy=str(spec.automation),
                run_key=c.run_key,
                run_id=result.run_id,
                created=result.created,
            )
        )


def automation_on_materializations(
    ports: Ports, now: datetime | None = None, *, max_segments: int = 200
) -> AutomationReport:
    """Evaluate the automated assets downstream of materializations recorded since the last
    call (read from the event ledger after a stored cursor)."""
    at = (now or ports.clock.now()).astimezone(UTC)
    state = ports.state.get(AUTOMATION_STATE, MATERIALIZATION_CURSOR)
    last = ledger_head(ports)
    if state is None:
        _save_cursor(ports, last)  # start from now: history is the tick's business
        return AutomationReport(now=iso_utc(at))
    cursor = int(state.get("seq", -1))
    if last <= cursor:
        return AutomationReport(now=iso_utc(at))
    segments = ports.ledger.read(EVENTS_STREAM, after_seq=cursor, limit=max_segments)
    materialized = {
        str((e.get("data") or {}).get("asset"))
        for seg in segments
        for e in seg.events
        if e.get("type") == ev.MATERIALIZATION
    }
    report = AutomationReport(now=iso_utc(at))
    manifest = current_manifest(ports)
    if manifest is not None and materialized:
        graph = manifest.graph
        affected: set[str] = set()
        for asset in materialized:
            key = AssetKey.parse(asset)
            if key in graph:
                affected.update(str(k) for k in graph.downstream.get(key, ()))
        automated = {k for k in affected if manifest.assets_by_key[k].automation}
        if automated:
            report = evaluate_automation(ports, at, assets=automated)
    # The requests are idempotent (run_keys), so moving the cursor after them is safe: a
    # crash in between evaluates the same segments again and finds the same runs.
    if segments:
        _save_cursor(ports, segments[-1].seq)
    return report


def _save_cursor(ports: Ports, seq: int) -> None:
    """Move the materialization cursor forward to ``seq`` (never back)."""

    def body(uow: UnitOfWork) -> Any:
        state = uow.get(AUTOMATION_STATE, MATERIALIZATION_CURSOR)
        current = int(state["seq"]) if state is not None else None
        if current is not None and current >= seq:
            return None
        doc = {"seq": seq, "updated_ms": uow.now_ms}
        if state is None:
            uow.create(AUTOMATION_STATE, MATERIALIZATION_CURSOR, doc)
        else:
            uow.update(AUTOMATION_STATE, MATERIALIZATION_CURSOR, doc)
        return None

    in_uow(ports, Cause(actor="automation", source="servo/automation"), body)
