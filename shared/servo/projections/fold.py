"""The fold: ledger events -> rows of the projection tables.

Folding happens in three steps:

1. :func:`contributions` reads every event once in Python: it drops duplicates (by id) and
   malformed events, upcasts ``data`` to the newest version this reader knows, and produces
   one flat *staging* row per event (the envelope, ``data`` as JSON, the partition as users
   write it). Unknown types are kept, marked ``known = false``.
2. :func:`fold_tables` derives every table's rows from the staging rows in DuckDB (vectorized
   SQL, :data:`CONTRIBUTIONS`): a task's state change contributes a ``tasks`` row with only its
   state columns set, an ``attempts`` row, maybe a ``partitions`` row, and so on. Values of the
   wrong type become NULL there instead of failing.
3. The rows of each key merge by the table's rules (:func:`merge_sql`,
   :class:`~servo.projections.schema.Group`).

Every merge rule is idempotent, commutative and associative, and ``ord`` (Lamport clock, then
time, then event id) breaks every tie, so the result depends only on the *set* of events:
duplicates and out-of-order delivery change nothing, and merging already-merged files gives
the same table as folding all events at once. Compaction relies on that to fold only new
events into delta files and merge files later.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

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

TERMINAL_TASK = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED")
TERMINAL_RUN = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
ACTIVE_TASK = ("DISPATCHED", "RUNNING")
# Task events that end an attempt with a result (they carry the error and run time).
COMPLETION_EVENTS = (
    "SUCCEED",
    "FAIL",
    "EXECUTION_TIMEOUT",
    "HEARTBEAT_TIMEOUT",
    "CANCELLED_BY_WORKER",
)
MATERIALIZATION = "servo.asset.materialized"
MAX_LC = 10**12 - 1
MAX_TIME_MS = 10**13 - 1

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True)
_dumps = _ENCODER.encode
_names = itertools.count()


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection for folding and queries (no progress bar on the
    terminal, whatever a query's length)."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    return con


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
    except (TypeError, ValueError, OverflowError):
        return None


def _iso_ms(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


def _time_ms(event: Mapping[str, Any]) -> int:
    value = event.get("time_ms")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _iso_ms(event.get("time")) or 0


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


STAGING_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("run_id", pa.string()),
        ("task_id", pa.string()),
        ("attempt", pa.int64()),
        ("lc", pa.int64()),
        ("time_ms", pa.int64()),
        ("seq", pa.int64()),
        ("source", pa.string()),
        ("actor", pa.string()),
        ("correlation_id", pa.string()),
        ("causation_id", pa.string()),
        ("specversion", pa.int64()),
        ("dataversion", pa.int64()),
        ("known", pa.bool_()),
        ("data", pa.string()),
        ("partition_user", pa.string()),
    ]
)


@dataclass
class Contributions:
    """A batch of events read for folding: one staging row per distinct event."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    stats: FoldStats = field(default_factory=FoldStats)

    def staging(self) -> pa.Table:
        """The staging rows as Arrow (malformed values coerced to the column's type)."""
        if not self.rows:
            return STAGING_SCHEMA.empty_table()
        with gc_paused():
            return self._staging()

    def _staging(self) -> pa.Table:
        arrays = []
        for col, f in zip(zip(*self.rows, strict=True), STAGING_SCHEMA, strict=True):
            try:
                arrays.append(pa.array(col, type=f.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                # Well-formed values pass through unchecked; a malformed event (a number
                # where a string belongs, …) is coerced here instead of failing the batch.
                arrays.append(pa.array([_coerce(v, f.type) for v in col], type=f.type))
        return pa.Table.from_arrays(arrays, schema=STAGING_SCHEMA)


def _coerce(value: Any, type_: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_string(type_):
        return value if isinstance(value, str) else _dumps(value)
    if pa.types.is_boolean(type_):
        return bool(value)
    number = _int_or_none(value)
    return number if number is not None and -(2**63) <= number < 2**63 else None


class _PartitionNames:
    """Canonical partition key -> the form users type, memoized (one parse per key)."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def user(self, canonical: Any) -> str | None:
        if not isinstance(canonical, str):
            return None
        found = self._cache.get(canonical)
        if found is None:
            try:
                found = PartitionKey.parse_canonical(canonical).user_string()
            except PartitionError:
                found = canonical
            if len(self._cache) < 1_000_000:
                self._cache[canonical] = found
        return found


_NAMES = _PartitionNames()


def partition_user(canonical: str | None) -> str | None:
    """A canonical partition key as users write it (``2024-01-05|eu``)."""
    return _NAMES.user(canonical)


def contributions(
    events: Iterable[Mapping[str, Any]], seen: set[str] | None = None
) -> Contributions:
    """Read events for folding (see the module docstring).

    ``seen`` holds event ids already read in this fold; it is updated, so a caller folding a
    stream in batches can pass the same set to every call.
    """
    with gc_paused():
        return _contributions(events, set() if seen is None else seen)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: the fold allocates many small objects and keeps
    them (nothing here forms cycles), and every collection would scan the whole heap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _contributions(events: Iterable[Mapping[str, Any]], seen: set[str]) -> Contributions:
    out = Contributions()
    stats = out.stats
    rows = out.rows
    append = rows.append
    user_of = _NAMES.user
    versions = DATA_VERSIONS
    dumps = _dumps
    max_time = 0
    n = 0
    for e in events:
        n += 1
        eid = e.get("id")
        type_ = e.get("type")
        newest = versions.get(type_) if type(type_) is str else None
        sv = e.get("specversion", 1)
        dv = e.get("dataversion")
        # The common case first: a known type at a version this reader knows.
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
        if eid in seen:
            stats.duplicates += 1
            continue
        seen.add(eid)  # type: ignore[arg-type]
        if not known:
            stats.unknown += 1
        lc = e.get("lc")
        if type(lc) is not int or not 0 <= lc <= MAX_LC:
            lc = min(MAX_LC, max(0, _int_or_none(lc) or 0))
        tms = e.get("time_ms")
        if type(tms) is not int or not 0 <= tms <= MAX_TIME_MS:
            tms = min(MAX_TIME_MS, max(0, _time_ms(e)))
        if tms > max_time:  # noqa: PLR1730 - cheaper than max() in this loop
            max_time = tms
        raw = e.get("data")
        if known:
            if (1 if dv is None else dv) == newest and type(raw) is dict:
                data = raw
            else:
                data = event_data(e)
            if type_ == MATERIALIZATION:
                inputs = data.get("inputs")
                refs = [input_ref(i) for i in inputs] if isinstance(inputs, list) else []
                data = {**data, "inputs": [r for r in refs if r is not None]}
            dataversion = newest or _int_or_none(dv) or 1
        else:
            data = dict(raw) if isinstance(raw, Mapping) else {"value": raw}
            dataversion = _int_or_none(dv) or 1
        append(
            (
                eid,
                type_,
                e.get("run_id"),
                e.get("task_id"),
                e.get("attempt"),
                lc,
                tms,
                e.get("seq"),
                e.get("source"),
                e.get("actor"),
                e.get("correlation_id"),
                e.get("causation_id"),
                sv if type(sv) is int else (_int_or_none(sv) or 1),
                dataversion,
                known,
                dumps(data),
                user_of(data.get("partition")),
            )
        )
    stats.events += n
    stats.max_time_ms = max(stats.max_time_ms, max_time)
    return out


# ----------------------------------------------------------------------------- derivation


def _in(values: Sequence[str]) -> str:
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


# The fields of `data` the tables read; anything else stays only in the events table.
DATA_FIELDS = {
    "asset": "VARCHAR",
    "partition": "VARCHAR",
    "from": "VARCHAR",
    "to": "VARCHAR",
    "event": "VARCHAR",
    "reason": "VARCHAR",
    "error": "VARCHAR",
    "duration_ms": "BIGINT",
    "output_path": "VARCHAR",
    "size": "BIGINT",
    "code_version": "VARCHAR",
    "metadata": "JSON",
    "inputs": "JSON",
    "name": "VARCHAR",
    "passed": "BOOLEAN",
    "severity": "VARCHAR",
    "blocking": "BOOLEAN",
    "description": "VARCHAR",
    "selection": "VARCHAR",
    "partitions": "JSON",
    "fingerprint": "VARCHAR",
    "task_count": "BIGINT",
    "run_key": "VARCHAR",
    "trigger": "JSON",
    "tags": "JSON",
    "parent_run_id": "VARCHAR",
    "tasks": "JSON",
    "manifest_id": "VARCHAR",
    "tick_id": "VARCHAR",
    "id": "VARCHAR",
    "kind": "VARCHAR",
    "schedule": "VARCHAR",
    "sensor": "VARCHAR",
    "status": "VARCHAR",
    "tick_ms": "BIGINT",
    "scheduled_ms": "BIGINT",
    "scheduled_time": "VARCHAR",
    "run_ids": "JSON",
    "run_id": "VARCHAR",
    "skip_reason": "VARCHAR",
    "cursor": "JSON",
    "backfill_id": "VARCHAR",
    "state": "VARCHAR",
}
_DATA_STRUCT = json.dumps(DATA_FIELDS)

_TASK_STATE = (
    "known AND type = 'servo.task.state_changed' AND run_id IS NOT NULL AND task_id IS NOT NULL"
)
_TICK = " OR ".join(f"starts_with(type, '{p}')" for p in TICK_PREFIXES)
_RUN_IDS = (
    "coalesce(CAST(d.run_ids AS VARCHAR), CASE WHEN coalesce(d.run_id, run_id) IS NULL "
    "THEN '[]' ELSE to_json([coalesce(d.run_id, run_id)])::VARCHAR END)"
)

# SQL over the staging view {v} (with `ord` and the parsed `d`) giving each table's rows
# before they merge. Columns a branch leaves out are NULL.
CONTRIBUTIONS: dict[str, str] = {
    "runs": f"""
        SELECT run_id, ord AS c_ord, time_ms AS created_ms, d.selection,
               CAST(d.partitions AS VARCHAR) AS partitions, d.fingerprint, d.code_version,
               d.task_count, d.run_key, json_extract_string(d."trigger", '$.type') AS trigger_type,
               CAST(d."trigger" AS VARCHAR) AS "trigger",
               coalesce(CAST(d.tags AS VARCHAR), '{{}}') AS tags, d.parent_run_id, actor,
               ord AS s_ord, 'QUEUED' AS state, CAST(NULL AS VARCHAR) AS reason,
               CAST(NULL AS VARCHAR) AS last_event, time_ms AS state_ms,
               CAST(NULL AS BIGINT) AS started_ms, CAST(NULL AS BIGINT) AS ended_ms
        FROM {{v}} WHERE known AND type = 'servo.run.created' AND run_id IS NOT NULL
        UNION ALL BY NAME
        SELECT run_id, ord AS s_ord, d."to" AS state, d.reason, d.event AS last_event,
               time_ms AS state_ms,
               CASE WHEN d."to" = 'STARTING' THEN time_ms END AS started_ms,
               CASE WHEN d."to" IN {_in(TERMINAL_RUN)} THEN time_ms END AS ended_ms
        FROM {{v}} WHERE known AND type = 'servo.run.state_changed' AND run_id IS NOT NULL
    """,
    "tasks": f"""
        SELECT run_id, task_id, d.asset, d.partition, partition_user,
               ord AS s_ord, d."to" AS state, d.reason, d.event AS last_event,
               time_ms AS state_ms, attempt,
               CASE WHEN d."to" = 'RUNNING' THEN ord END AS r_ord,
               CASE WHEN d."to" = 'RUNNING' THEN time_ms END AS started_ms,
               CASE WHEN d."to" IN {_in(TERMINAL_TASK)} THEN time_ms END AS ended_ms,
               CASE WHEN d.event IN {_in(COMPLETION_EVENTS)} THEN ord END AS d_ord,
               CASE WHEN d.event IN {_in(COMPLETION_EVENTS)} THEN d.error END AS error,
               CASE WHEN d.event IN {_in(COMPLETION_EVENTS)} THEN d.duration_ms END
                 AS duration_ms
        FROM {{v}} WHERE {_TASK_STATE}
        UNION ALL BY NAME
        SELECT run_id, item.task_id AS task_id,
               split_part(split_part(item."key", '#', 1), ':', 1) AS asset,
               CASE WHEN contains(split_part(item."key", '#', 1), ':')
                    THEN substr(split_part(item."key", '#', 1),
                                strpos(split_part(item."key", '#', 1), ':') + 1) END
                 AS partition_user,
               ord AS c_ord, item."key" AS display, position, time_ms AS created_ms,
               ord AS s_ord, item.state AS state, time_ms AS state_ms
        FROM (
            SELECT run_id, ord, time_ms, unnest(l) AS item, unnest(range(len(l))) AS position
            FROM (
                SELECT run_id, ord, time_ms,
                       json_transform(d.tasks,
                         '[{{"task_id": "VARCHAR", "key": "VARCHAR", "state": "VARCHAR"}}]') AS l
                FROM {{v}} WHERE known AND type = 'servo.tasks.created' AND run_id IS NOT NULL
            )
        ) WHERE item.task_id IS NOT NULL
    """,
    "attempts": f"""
        SELECT run_id, task_id, attempt, d.asset, d.partition,
               CASE WHEN d."to" = 'DISPATCHED' THEN time_ms END AS dispatched_ms,
               CASE WHEN d."to" = 'RUNNING' THEN time_ms END AS started_ms,
               CASE WHEN x THEN ord END AS x_ord,
               CASE WHEN x THEN d."to" END AS outcome,
               CASE WHEN x THEN d.event END AS exit_event,
               CASE WHEN x THEN d.reason END AS exit_reason,
               CASE WHEN x THEN time_ms END AS ended_ms,
               CASE WHEN d.event IN {_in(COMPLETION_EVENTS)} THEN ord END AS d_ord,
               CASE WHEN d.event IN {_in(COMPLETION_EVENTS)} THEN d.error END AS error,
               CASE WHEN d.event IN {_in(COMPLETION_EVENTS)} THEN d.duration_ms END
                 AS duration_ms
        FROM (
            SELECT *, coalesce(d."from" IN {_in(ACTIVE_TASK)}
                               AND coalesce(d."to", '') NOT IN {_in(ACTIVE_TASK)}, false) AS x
            FROM {{v}} WHERE {_TASK_STATE} AND attempt IS NOT NULL
        )
    """,
    "materializations": """
        SELECT id, d.asset, d.partition, partition_user, run_id, task_id, attempt, time_ms,
               ord, d.output_path, d.size, d.code_version,
               coalesce(CAST(d.metadata AS VARCHAR), '{}') AS metadata,
               coalesce(CAST(d.inputs AS VARCHAR), '[]') AS inputs
        FROM {v} WHERE known AND type = 'servo.asset.materialized' AND d.asset IS NOT NULL
    """,
    "lineage": """
        SELECT id, item.asset AS upstream_asset, item.partition AS upstream_partition,
               asset, partition, item.output_path AS upstream_output_path
        FROM (
            SELECT id, d.asset AS asset, d.partition AS partition,
                   unnest(json_transform(d.inputs,
                     '[{"asset": "VARCHAR", "partition": "VARCHAR", "output_path": "VARCHAR"}]'))
                     AS item
            FROM {v} WHERE known AND type = 'servo.asset.materialized' AND d.asset IS NOT NULL
        ) WHERE item.asset IS NOT NULL
    """,
    "partitions": f"""
        SELECT d.asset AS asset, d.partition AS partition, partition_user,
               ord AS m_ord, id AS mat_id, run_id AS mat_run_id, time_ms AS mat_ms,
               d.output_path AS mat_output_path, d.code_version AS mat_code_version
        FROM {{v}} WHERE known AND type = 'servo.asset.materialized' AND d.asset IS NOT NULL
        UNION ALL BY NAME
        SELECT d.asset AS asset, d.partition AS partition, partition_user,
               CASE WHEN d."to" = 'FAILED' THEN ord END AS f_ord,
               CASE WHEN d."to" = 'FAILED' THEN run_id END AS fail_run_id,
               CASE WHEN d."to" = 'FAILED' THEN time_ms END AS fail_ms,
               CASE WHEN d."to" = 'FAILED' THEN d.reason END AS fail_reason,
               ord AS t_ord, d."to" AS last_task_state, run_id AS last_run_id
        FROM {{v}} WHERE {_TASK_STATE} AND d.asset IS NOT NULL
          AND d."to" IN {_in(TERMINAL_TASK)}
    """,
    "checks": """
        SELECT d.asset AS asset, d.partition AS partition, d.name AS check_name, ord,
               coalesce(d.passed, false) AS passed, d.severity,
               coalesce(d.blocking, false) AS blocking, d.description,
               coalesce(CAST(d.metadata AS VARCHAR), '{}') AS metadata, run_id,
               id AS event_id, time_ms
        FROM {v} WHERE known AND type = 'servo.check.evaluated'
          AND d.asset IS NOT NULL AND d.name IS NOT NULL
    """,
    "ticks": f"""
        SELECT coalesce(d.tick_id, d.id, id) AS tick_id,
               coalesce(d.kind, nullif(split_part(type, '.', 2), 'tick')) AS kind,
               coalesce(d.name, d.schedule, d.sensor) AS name,
               time_ms AS first_ms, ord,
               coalesce(d.status, nullif(split_part(type, '.', 3), '')) AS status,
               coalesce(d.tick_ms, d.scheduled_ms,
                        epoch_ms(TRY_CAST(d.scheduled_time AS TIMESTAMPTZ)), time_ms)
                 AS tick_ms,
               {_RUN_IDS} AS run_ids,
               coalesce(d.reason, d.skip_reason, d.error) AS reason,
               CASE WHEN json_type(d.cursor) = 'VARCHAR' THEN json_extract_string(d.cursor, '$')
                    ELSE CAST(d.cursor AS VARCHAR) END AS cursor,
               type
        FROM {{v}} WHERE known AND ({_TICK})
    """,
    "backfills": f"""
        SELECT coalesce(d.backfill_id, correlation_id, id) AS backfill_id,
               time_ms AS created_ms,
               CASE WHEN c THEN ord END AS c_ord,
               CASE WHEN c THEN d.selection END AS selection,
               CASE WHEN c THEN CAST(d.partitions AS VARCHAR) END AS partitions,
               CASE WHEN c THEN actor END AS actor,
               ord, coalesce(d.state, d."to", substr(type, {len(BACKFILL_PREFIX) + 1})) AS state,
               d.reason, coalesce(CAST(d.run_ids AS VARCHAR), '[]') AS run_ids,
               time_ms AS updated_ms
        FROM (
            SELECT *, substr(type, {len(BACKFILL_PREFIX) + 1}) IN ('created', 'requested') AS c
            FROM {{v}} WHERE known AND starts_with(type, '{BACKFILL_PREFIX}')
        )
    """,
    "deployments": """
        SELECT d.code_version AS code_version, d.manifest_id, time_ms AS first_ms,
               time_ms AS last_ms, actor
        FROM {v} WHERE known AND type = 'servo.code.deployed' AND d.code_version IS NOT NULL
    """,
}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def staging_view_sql(view: str, source: str) -> str:
    """The staging rows of ``source`` with ``ord`` and the parsed ``data`` fields ``d``,
    materialized once (every table reads it)."""
    return (
        f"CREATE OR REPLACE TEMP TABLE {view} AS SELECT *, "
        "lpad(CAST(lc AS VARCHAR), 12, '0') || lpad(CAST(time_ms AS VARCHAR), 13, '0') || id "
        f"AS ord, json_transform(data, '{_DATA_STRUCT}') AS d FROM {source}"
    )


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
            # "any" columns are equal in every row of a key; min() still gives one
            # deterministic answer should two different events share an id.
            fn = {"min": "min", "max": "max", "any": "min"}[g.op]
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
    con: duckdb.DuckDBPyConnection, contrib: Contributions, *, sort: bool = True
) -> dict[str, pa.Table]:
    """Every table derived from ``contrib`` and merged (one row per key)."""
    return derive_tables(con, contrib.staging(), sort=sort)


def derive_tables(
    con: duckdb.DuckDBPyConnection, staging: pa.Table, *, sort: bool = True
) -> dict[str, pa.Table]:
    """Every table derived from staging rows and merged. Runs in DuckDB only (no Python per
    row), so it can overlap with reading the next batch on another thread. Without ``sort``
    the events table is left in arrival order (a later merge sorts it)."""
    if staging.num_rows == 0:
        return {name: spec.schema.empty_table() for name, spec in TABLE_SPECS.items()}
    n = next(_names)
    source, view = f"__staging_{n}", f"__staged_{n}"
    con.register(source, staging)
    try:
        con.execute(staging_view_sql(view, source))
        out: dict[str, pa.Table] = {}
        for name, spec in TABLE_SPECS.items():
            if name == "events":
                # Already one row per event id.
                columns = ", ".join(_quote(c) for c in spec.column_names)
                sql = sort_sql(spec, view) if sort else f"SELECT {columns} FROM {view}"
            else:
                sql = merge_sql(spec, f"({CONTRIBUTIONS[name].replace('{v}', view)})")
            out[name] = con.sql(sql).to_arrow_table().cast(spec.schema)
        return out
    finally:
        con.execute(f"DROP TABLE IF EXISTS {view}")
        con.unregister(source)


def fold_batches(
    batches: Iterable[Iterable[Mapping[str, Any]]],
    seen: set[str] | None = None,
    *,
    sort: bool = False,
) -> tuple[dict[str, list[pa.Table]], FoldStats]:
    """Fold a stream of event batches into per-batch merged tables (merge them with
    :func:`reduce_tables`). Reading a batch in Python overlaps with deriving the previous one
    in DuckDB, which runs without the interpreter lock on a second thread."""
    seen = set() if seen is None else seen
    parts: dict[str, list[pa.Table]] = {name: [] for name in TABLE_SPECS}
    stats = FoldStats()
    con = connect()

    def collect(tables: dict[str, pa.Table]) -> None:
        for name, table in tables.items():
            if table.num_rows:
                parts[name].append(table)

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="servo-fold") as pool:
            pending: Future[dict[str, pa.Table]] | None = None
            for batch in batches:
                contrib = contributions(batch, seen)
                stats.add(contrib.stats)
                staging = contrib.staging()
                if pending is not None:
                    collect(pending.result())
                pending = pool.submit(derive_tables, con, staging, sort=sort)
            if pending is not None:
                collect(pending.result())
    finally:
        con.close()
    return parts, stats


def fold(events: Iterable[Mapping[str, Any]]) -> dict[str, pa.Table]:
    """Every projection table computed from ``events`` alone (any order, any duplicates)."""
    con = connect()
    try:
        return fold_tables(con, contributions(events))
    finally:
        con.close()
