"""The fold: ledger events -> rows of the projection tables.

Folding happens in two steps:

1. :func:`contributions` maps every event, on its own, to the rows it contributes to each table
   (a task's state change contributes a ``tasks`` row with only its state columns set, an
   ``attempts`` row, maybe a ``partitions`` row …). Events are deduplicated by id, upcast to the
   newest data version, and unknown types contribute only their ``events`` row.
2. :func:`reduce_table` merges the rows of each key with the table's merge rules
   (:class:`~servo.projections.schema.Group`) in DuckDB.

Every merge rule is idempotent, commutative and associative, and ``ord`` (Lamport clock, then
time, then event id) breaks every tie, so the result depends only on the *set* of events:
duplicates and out-of-order delivery change nothing, and reducing already-reduced files gives
the same table as reducing all events at once. Compaction relies on that to fold only new
events into delta files and merge files later.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from servo.core import events as ev
from servo.core.errors import PartitionError
from servo.core.keys import PartitionKey
from servo.projections.schema import (
    BACKFILL_PREFIX,
    DATA_VERSIONS,
    ENVELOPE_VERSION,
    TABLE_SPECS,
    TICK_PREFIXES,
    TableSpec,
    classify,
    event_data,
    input_ref,
)

TERMINAL_TASK = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED"})
TERMINAL_RUN = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"})
ACTIVE_TASK = frozenset({"DISPATCHED", "RUNNING"})
# Task events that end an attempt with a result (they carry the error and run time).
COMPLETION_EVENTS = frozenset(
    {"SUCCEED", "FAIL", "EXECUTION_TIMEOUT", "HEARTBEAT_TIMEOUT", "CANCELLED_BY_WORKER"}
)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def order_key(lc: int, time_ms: int, event_id: str) -> str:
    """An event's causal position as a string that sorts like ``(lc, time_ms, id)``."""
    return f"{lc:012d}{time_ms:013d}{event_id}"


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _time_ms(event: Mapping[str, Any]) -> int:
    value = event.get("time_ms")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = event.get("time")
    if isinstance(text, str):
        try:
            return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return 0
    return 0


@dataclass
class FoldStats:
    """What a fold saw: events read, duplicates dropped, unknown and malformed events."""

    events: int = 0
    duplicates: int = 0
    unknown: int = 0
    malformed: int = 0
    max_time_ms: int = 0

    def add(self, other: FoldStats) -> None:
        self.events += other.events
        self.duplicates += other.duplicates
        self.unknown += other.unknown
        self.malformed += other.malformed
        self.max_time_ms = max(self.max_time_ms, other.max_time_ms)

    def to_json(self) -> dict[str, int]:
        return {
            "events": self.events,
            "duplicates": self.duplicates,
            "unknown": self.unknown,
            "malformed": self.malformed,
            "max_time_ms": self.max_time_ms,
        }


@dataclass
class Contributions:
    """Rows contributed by a batch of events, per table, before merging keys."""

    rows: dict[str, list[tuple[Any, ...]]] = field(
        default_factory=lambda: {name: [] for name in TABLE_SPECS}
    )
    stats: FoldStats = field(default_factory=FoldStats)

    def table(self, name: str) -> pa.Table:
        spec = TABLE_SPECS[name]
        rows = self.rows[name]
        if not rows:
            return spec.schema.empty_table()
        columns = list(zip(*rows, strict=True))
        return pa.Table.from_arrays(
            [pa.array(col, type=t) for col, (_, t) in zip(columns, spec.columns, strict=True)],
            schema=spec.schema,
        )


class _PartitionNames:
    """Canonical partition key -> the form users type, memoized (one parse per key)."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def user(self, canonical: str | None) -> str | None:
        if canonical is None:
            return None
        found = self._cache.get(canonical)
        if found is None:
            try:
                found = PartitionKey.parse_canonical(canonical).user_string()
            except PartitionError:
                found = canonical
            self._cache[canonical] = found
        return found


_NAMES = _PartitionNames()


def contributions(
    events: Iterable[Mapping[str, Any]], seen: set[str] | None = None
) -> Contributions:
    """Map events to the rows they contribute (see the module docstring).

    ``seen`` holds event ids already mapped in this fold; it is updated, so a caller folding a
    stream in batches can pass the same set to every call.
    """
    out = Contributions()
    stats = out.stats
    seen = set() if seen is None else seen
    r = out.rows
    ev_rows = r["events"]
    user_of = _NAMES.user
    versions = DATA_VERSIONS

    for e in events:
        stats.events += 1
        eid = e.get("id")
        type_ = e.get("type")
        newest = versions.get(type_) if isinstance(type_, str) else None
        # Fast path for the common case: a known type at a version this reader knows.
        sv = e.get("specversion", 1)
        dv = e.get("dataversion", 1)
        if (
            newest is not None
            and type(eid) is str
            and type(sv) is int
            and sv <= ENVELOPE_VERSION
            and (dv is None or (type(dv) is int and dv <= newest))
        ):
            known = True
        else:
            readable = classify(e)
            if readable == "malformed":
                stats.malformed += 1
                continue
            known = readable == "current"
            if not known:
                stats.unknown += 1
        assert isinstance(eid, str)
        assert isinstance(type_, str)
        if eid in seen:
            stats.duplicates += 1
            continue
        seen.add(eid)
        lc = max(0, _int_or_none(e.get("lc")) or 0)
        tms = max(0, _time_ms(e))
        stats.max_time_ms = max(stats.max_time_ms, tms)
        ord_ = order_key(lc, tms, eid)
        run_id = _str_or_none(e.get("run_id"))
        task_id = _str_or_none(e.get("task_id"))
        attempt = _int_or_none(e.get("attempt"))
        if known:
            data = event_data(e)
            dataversion = versions.get(type_, _int_or_none(e.get("dataversion")) or 1)
        else:
            raw = e.get("data")
            data = dict(raw) if isinstance(raw, Mapping) else {"value": raw}
            dataversion = _int_or_none(e.get("dataversion")) or 1
        ev_rows.append(
            (
                eid,
                type_,
                run_id,
                task_id,
                attempt,
                lc,
                tms,
                _int_or_none(e.get("seq")),
                ord_,
                _str_or_none(e.get("source")),
                _str_or_none(e.get("actor")),
                _str_or_none(e.get("correlation_id")),
                _str_or_none(e.get("causation_id")),
                _int_or_none(e.get("specversion")) or 1,
                dataversion,
                known,
                _dumps(data),
            )
        )
        if not known:
            continue

        try:
            _fold_known(r, type_, data, e, eid, ord_, tms, run_id, task_id, attempt, user_of)
        except (KeyError, TypeError, ValueError, AttributeError):
            # A known type with a malformed body: it stays in the event list, folds nowhere.
            stats.malformed += 1
    return out


def _fold_known(
    r: dict[str, list[tuple[Any, ...]]],
    type_: str,
    data: Mapping[str, Any],
    e: Mapping[str, Any],
    eid: str,
    ord_: str,
    tms: int,
    run_id: str | None,
    task_id: str | None,
    attempt: int | None,
    user_of: Callable[[str | None], str | None],
) -> None:
    """Append the rows one readable event contributes (besides its ``events`` row)."""
    if type_ == ev.TASK_STATE:
        if run_id is None or task_id is None:
            return
        to = data.get("to")
        frm = data.get("from")
        event_name = data.get("event")
        asset = _str_or_none(data.get("asset"))
        partition = _str_or_none(data.get("partition"))
        puser = user_of(partition)
        completion = event_name in COMPLETION_EVENTS
        error = _str_or_none(data.get("error")) if completion else None
        duration = _int_or_none(data.get("duration_ms")) if completion else None
        r["tasks"].append(
            (
                run_id,
                task_id,
                asset,
                partition,
                puser,
                None,
                None,
                None,
                None,
                ord_,
                _str_or_none(to),
                _str_or_none(data.get("reason")),
                _str_or_none(event_name),
                tms,
                attempt,
                ord_ if to == "RUNNING" else None,
                tms if to == "RUNNING" else None,
                tms if to in TERMINAL_TASK else None,
                ord_ if completion else None,
                error,
                duration,
            )
        )
        if attempt is not None:
            exits = frm in ACTIVE_TASK and to not in ACTIVE_TASK
            r["attempts"].append(
                (
                    run_id,
                    task_id,
                    attempt,
                    asset,
                    partition,
                    tms if to == "DISPATCHED" else None,
                    tms if to == "RUNNING" else None,
                    ord_ if exits else None,
                    _str_or_none(to) if exits else None,
                    _str_or_none(event_name) if exits else None,
                    _str_or_none(data.get("reason")) if exits else None,
                    tms if exits else None,
                    ord_ if completion else None,
                    error,
                    duration,
                )
            )
        if to in TERMINAL_TASK and asset is not None:
            failed = to == "FAILED"
            r["partitions"].append(
                (
                    asset,
                    partition,
                    puser,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    ord_ if failed else None,
                    run_id if failed else None,
                    tms if failed else None,
                    _str_or_none(data.get("reason")) if failed else None,
                    ord_,
                    to,
                    run_id,
                )
            )
    elif type_ == ev.MATERIALIZATION:
        asset = _str_or_none(data.get("asset"))
        if asset is None:
            return
        partition = _str_or_none(data.get("partition"))
        puser = user_of(partition)
        raw_inputs = data.get("inputs")
        refs = [input_ref(i) for i in raw_inputs] if isinstance(raw_inputs, list) else []
        inputs = [ref for ref in refs if ref is not None]
        output_path = _str_or_none(data.get("output_path"))
        code_version = _str_or_none(data.get("code_version"))
        r["materializations"].append(
            (
                eid,
                asset,
                partition,
                puser,
                run_id,
                task_id,
                attempt,
                tms,
                ord_,
                output_path,
                _int_or_none(data.get("size")),
                code_version,
                _dumps(data.get("metadata") or {}),
                _dumps(inputs),
            )
        )
        for ref in inputs:
            r["lineage"].append(
                (
                    eid,
                    ref["asset"],
                    ref["partition"],
                    asset,
                    partition,
                    ref["output_path"],
                )
            )
        r["partitions"].append(
            (
                asset,
                partition,
                puser,
                ord_,
                eid,
                run_id,
                tms,
                output_path,
                code_version,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
            )
        )
    elif type_ == ev.RUN_STATE:
        if run_id is None:
            return
        to = data.get("to")
        r["runs"].append(
            (
                run_id,
                *((None,) * 13),
                ord_,
                _str_or_none(to),
                _str_or_none(data.get("reason")),
                _str_or_none(data.get("event")),
                tms,
                tms if to == "STARTING" else None,
                tms if to in TERMINAL_RUN else None,
            )
        )
    elif type_ == ev.RUN_CREATED:
        if run_id is None:
            return
        trigger = data.get("trigger")
        trigger_type = trigger.get("type") if isinstance(trigger, Mapping) else None
        r["runs"].append(
            (
                run_id,
                ord_,
                tms,
                _str_or_none(data.get("selection")),
                _dumps(data.get("partitions")),
                _str_or_none(data.get("fingerprint")),
                _str_or_none(data.get("code_version")),
                _int_or_none(data.get("task_count")),
                _str_or_none(data.get("run_key")),
                _str_or_none(trigger_type),
                _dumps(trigger),
                _dumps(data.get("tags") or {}),
                _str_or_none(data.get("parent_run_id")),
                _str_or_none(e.get("actor")),
                ord_,
                "QUEUED",
                None,
                None,
                tms,
                None,
                None,
            )
        )
    elif type_ == ev.TASKS_CREATED:
        if run_id is None:
            return
        created = data.get("tasks")
        if not isinstance(created, list):
            return
        for position, item in enumerate(created):
            if not isinstance(item, Mapping) or not isinstance(item.get("task_id"), str):
                return
            display = _str_or_none(item.get("key"))
            asset, puser = None, None
            if display is not None:
                # "asset:partition#operation"; asset keys never contain ':' or '#'.
                head = display.split("#", 1)[0]
                asset_text, sep, part_text = head.partition(":")
                asset, puser = asset_text, (part_text if sep else None)
            r["tasks"].append(
                (
                    run_id,
                    item["task_id"],
                    asset,
                    None,
                    puser,
                    ord_,
                    display,
                    position,
                    tms,
                    ord_,
                    _str_or_none(item.get("state")),
                    None,
                    None,
                    tms,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                )
            )
    elif type_ == ev.CHECK_EVALUATED:
        asset = _str_or_none(data.get("asset"))
        name = _str_or_none(data.get("name"))
        if asset is None or name is None:
            return
        r["checks"].append(
            (
                asset,
                _str_or_none(data.get("partition")),
                name,
                ord_,
                bool(data.get("passed")),
                _str_or_none(data.get("severity")),
                bool(data.get("blocking")),
                _str_or_none(data.get("description")),
                _dumps(data.get("metadata") or {}),
                run_id,
                eid,
                tms,
            )
        )
    elif type_ == ev.DEPLOYED:
        cv = _str_or_none(data.get("code_version"))
        if cv is not None:
            r["deployments"].append(
                (cv, _str_or_none(data.get("manifest_id")), tms, tms, _str_or_none(e.get("actor")))
            )
    elif type_.startswith(TICK_PREFIXES):
        r["ticks"].append(_tick_row(type_, data, eid, ord_, tms, run_id))
    elif type_.startswith(BACKFILL_PREFIX):
        r["backfills"].append(_backfill_row(type_, data, eid, ord_, tms, e))


def _tick_row(
    type_: str, data: Mapping[str, Any], eid: str, ord_: str, tms: int, run_id: str | None
) -> tuple[Any, ...]:
    # Schedules and sensors are recorded by services that may not exist yet in every
    # deployment: accept the fields they are likely to carry and leave the rest empty.
    family, _, action = type_.removeprefix("servo.").partition(".")
    tick_id = data.get("tick_id") or data.get("id") or eid
    kind = data.get("kind") or (family if family != "tick" else None)
    name = data.get("name") or data.get("schedule") or data.get("sensor")
    run_ids = data.get("run_ids")
    if run_ids is None:
        single = data.get("run_id") or run_id
        run_ids = [single] if single else []
    cursor = data.get("cursor")
    return (
        str(tick_id),
        _str_or_none(kind),
        _str_or_none(name),
        tms,
        ord_,
        _str_or_none(data.get("status") or action or None),
        _int_or_none(data.get("tick_ms") or data.get("scheduled_ms")) or tms,
        _dumps(run_ids),
        _str_or_none(data.get("reason") or data.get("skip_reason")),
        None if cursor is None else (cursor if isinstance(cursor, str) else _dumps(cursor)),
        type_,
    )


def _backfill_row(
    type_: str, data: Mapping[str, Any], eid: str, ord_: str, tms: int, e: Mapping[str, Any]
) -> tuple[Any, ...]:
    action = type_.removeprefix(BACKFILL_PREFIX)
    backfill_id = data.get("backfill_id") or e.get("correlation_id") or eid
    creates = action in ("created", "requested")
    return (
        str(backfill_id),
        tms,
        ord_ if creates else None,
        _str_or_none(data.get("selection")) if creates else None,
        _dumps(data.get("partitions")) if creates else None,
        _str_or_none(e.get("actor")) if creates else None,
        ord_,
        _str_or_none(data.get("state") or data.get("to") or action),
        _str_or_none(data.get("reason")),
        _dumps(data.get("run_ids") or []),
        tms,
    )


# ----------------------------------------------------------------------------- merging


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def merge_sql(spec: TableSpec, source: str) -> str:
    """SQL that merges the rows of every key of ``source`` by the table's rules."""
    select: dict[str, str] = {k: _quote(k) for k in spec.key}
    for g in spec.groups:
        if g.op in ("argmax", "argmin"):
            assert g.ord is not None
            fn = "arg_max_null" if g.op == "argmax" else "arg_min_null"
            order = _quote(g.ord)
            keep = f"FILTER (WHERE {order} IS NOT NULL)"
            for c in g.columns:
                select[c] = f"{fn}({_quote(c)}, {order}) {keep}"
            select[g.ord] = f"{'max' if g.op == 'argmax' else 'min'}({order})"
        else:
            fn = {"min": "min", "max": "max", "any": "any_value"}[g.op]
            for c in g.columns:
                select[c] = f"{fn}({_quote(c)})"
    cols = ", ".join(f"{select[name]} AS {_quote(name)}" for name in spec.column_names)
    keys = ", ".join(_quote(k) for k in spec.key)
    order = ", ".join(f"{_quote(c)} NULLS FIRST" for c in (*spec.sort, *spec.key))
    return f"SELECT {cols} FROM {source} GROUP BY {keys} ORDER BY {order}"


def sort_sql(spec: TableSpec, source: str) -> str:
    order = ", ".join(f"{_quote(c)} NULLS FIRST" for c in (*spec.sort, *spec.key))
    cols = ", ".join(_quote(c) for c in spec.column_names)
    return f"SELECT {cols} FROM {source} ORDER BY {order}"


_names = itertools.count()


def reduce_tables(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, parts: Sequence[pa.Table]
) -> pa.Table:
    """Merge ``parts`` (contributions or already merged rows) into one row per key."""
    name = f"__reduce_{spec.name}_{next(_names)}"
    nonempty = [p for p in parts if p.num_rows]
    if not nonempty:
        return spec.schema.empty_table()
    combined = pa.concat_tables([p.select(list(spec.column_names)) for p in nonempty])
    con.register(name, combined)
    try:
        result = con.sql(merge_sql(spec, name)).to_arrow_table()
    finally:
        con.unregister(name)
    return result.cast(spec.schema)


def fold_tables(
    con: duckdb.DuckDBPyConnection, contrib: Contributions, *, unique_keys: bool = True
) -> dict[str, pa.Table]:
    """Every table of ``contrib``, merged.

    With ``unique_keys`` (the contributions were deduplicated by event id), tables keyed by
    event id already hold one row per key and are only sorted.
    """
    out: dict[str, pa.Table] = {}
    for name, spec in TABLE_SPECS.items():
        table = contrib.table(name)
        if unique_keys and spec.key == ("id",):
            out[name] = _sorted(con, spec, table)
        else:
            out[name] = reduce_tables(con, spec, [table])
    return out


def _sorted(con: duckdb.DuckDBPyConnection, spec: TableSpec, table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        return table
    name = f"__sort_{spec.name}_{next(_names)}"
    con.register(name, table)
    try:
        result = con.sql(sort_sql(spec, name)).to_arrow_table()
    finally:
        con.unregister(name)
    return result.cast(spec.schema)


def fold(events: Iterable[Mapping[str, Any]]) -> dict[str, pa.Table]:
    """Every projection table computed from ``events`` alone (any order, any duplicates)."""
    con = duckdb.connect()
    try:
        return fold_tables(con, contributions(events))
    finally:
        con.close()
