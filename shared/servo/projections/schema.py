"""Versions of events and projection tables, and the upcasting of old events.

Events carry two versions:

* ``specversion`` — the envelope (the fields around ``data``); :data:`ENVELOPE_VERSION`;
* ``dataversion`` — the shape of ``data`` for the event's type; absent means 1. Emitters that
  adopt a newer shape write it; readers upcast older shapes step by step to the newest one they
  know (:data:`DATA_VERSIONS`), so the fold only ever sees current shapes.

An event of a type the reader does not know, or of a newer version than it knows, is kept as
it is (it still shows in a run's event list) but folds into no other table: a newer writer
never wedges an older compactor. An event without an ``id`` or ``type`` is malformed and is
skipped (and counted).

Projection tables are versioned too (:data:`TABLE_SPECS`): a table's files live under
``<table>/v<version>/`` and a change of a table's columns or meaning bumps its version, which
makes the next compaction rebuild that table from the ledger instead of mixing shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from servo.core import events as ev

ENVELOPE_VERSION = ev.EVENT_SPEC_VERSION

# Event types added by later parts of the system; the fold accepts them when they appear.
TICK_PREFIXES = ("servo.tick.", "servo.schedule.", "servo.sensor.", "servo.automation.")
BACKFILL_PREFIX = "servo.backfill."

# The newest data version of each known event type.
DATA_VERSIONS: dict[str, int] = {
    ev.RUN_CREATED: 1,
    ev.RUN_STATE: 1,
    ev.TASKS_CREATED: 1,
    # v2: `error` (the failure's message) and `duration_ms` (the attempt's run time) in data.
    ev.TASK_STATE: 2,
    ev.TASK_DUPLICATE: 1,
    ev.TASK_REJECTED: 1,
    # v2: `inputs` is a list of {asset, partition, output_path}: the committed upstream
    # outputs the materialization read (its lineage).
    ev.MATERIALIZATION: 2,
    ev.CHECK_EVALUATED: 1,
    ev.DEPLOYED: 1,
    ev.RUN_KEY_HIT: 1,
    "servo.schedule.ticked": 1,
    "servo.sensor.ticked": 1,
}

FAILURE_EVENTS = frozenset({"FAIL", "EXECUTION_TIMEOUT", "HEARTBEAT_TIMEOUT"})


def upcast_task_state(data: dict[str, Any]) -> dict[str, Any]:
    """``servo.task.state_changed`` data v1 -> v2 (v1 recorded only the first line of a
    failure, as the reason, and no run time)."""
    out = dict(data)
    if "error" not in out:
        event = out.get("event")
        failed = isinstance(event, str) and event in FAILURE_EVENTS
        out["error"] = out.get("reason") if failed else None
    out.setdefault("duration_ms", None)
    return out


def input_ref(item: Any) -> dict[str, Any] | None:
    """One entry of a materialization's ``inputs`` as {asset, partition, output_path}, or None
    when it names no asset."""
    if isinstance(item, str):
        asset, sep, partition = item.partition("|")
        return {"asset": asset, "partition": partition if sep else None, "output_path": None}
    if isinstance(item, Mapping) and isinstance(item.get("asset"), str):
        part = item.get("partition")
        path = item.get("output_path", item.get("path"))
        return {
            "asset": item["asset"],
            "partition": part if isinstance(part, str) else None,
            "output_path": path if isinstance(path, str) else None,
        }
    return None


def _materialization_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 left the shape of `inputs` open: asset names, "asset|partition" strings or dicts.
    out = dict(data)
    raw = out.get("inputs")
    refs = [input_ref(i) for i in raw] if isinstance(raw, list) else []
    out["inputs"] = [r for r in refs if r is not None]
    return out


# (type, from_version) -> function from that version's data to the next version's data.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    (ev.TASK_STATE, 1): upcast_task_state,
    (ev.MATERIALIZATION, 1): _materialization_1_to_2,
}


# ----------------------------------------------------------------------------- upcasting in SQL
#
# The fold upcasts in DuckDB, on the JSON text of ``data`` (an object, as DuckDB writes JSON:
# no whitespace). These are the SQL twins of :data:`UPCASTERS`: each turns an SQL expression of
# one version's text into that of the next version. Members an upcaster adds go at the end of
# the object, as the Python upcasters add them to the dict.


def sql_text(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_add_members(obj: str, members: str) -> str:
    """SQL appending ``members`` (SQL giving ``,"key":value…`` text, or ``''``) to the JSON
    object text ``obj``."""
    return (
        f"(CASE WHEN {members} = '' THEN {obj} WHEN {obj} = '{{}}' "
        f"THEN '{{' || substr({members}, 2) || '}}' "
        f"ELSE left({obj}, length({obj}) - 1) || {members} || '}}' END)"
    )


def _sql_task_state_1_to_2(data: str) -> str:
    failures = ", ".join(sql_text(e) for e in sorted(FAILURE_EVENTS))
    error = (
        f"CASE WHEN json_extract_string({data}, '$.event') IN ({failures}) "
        f"THEN coalesce(CAST(json_extract({data}, '$.reason') AS VARCHAR), 'null') ELSE 'null' END"
    )
    members = (
        f"(CASE WHEN json_exists({data}, '$.error') THEN '' ELSE ',\"error\":' || ({error}) END"
        f" || CASE WHEN json_exists({data}, '$.duration_ms') THEN '' "
        f"ELSE ',\"duration_ms\":null' END)"
    )
    return sql_add_members(data, members)


def _sql_input_ref(item: str) -> str:
    # `input_ref` of one JSON item of `inputs`; NULL when it names no asset.
    text = f"json_extract_string({item}, '$')"

    def string_member(name: str) -> str:
        return (
            f"CASE WHEN json_type({item}, '$.{name}') = 'VARCHAR' "
            f"THEN json_extract_string({item}, '$.{name}') END"
        )

    return (
        f"CASE json_type({item}) "
        f"WHEN 'VARCHAR' THEN {{'asset': split_part({text}, '|', 1), "
        f"'partition': CASE WHEN contains({text}, '|') "
        f"THEN substr({text}, strpos({text}, '|') + 1) END, "
        "'output_path': CAST(NULL AS VARCHAR)} "
        f"WHEN 'OBJECT' THEN CASE WHEN json_type({item}, '$.asset') = 'VARCHAR' "
        f"THEN {{'asset': json_extract_string({item}, '$.asset'), "
        f"'partition': {string_member('partition')}, "
        f"'output_path': CASE WHEN json_exists({item}, '$.output_path') "
        f"THEN {string_member('output_path')} ELSE {string_member('path')} END}} END "
        "END"
    )


def _sql_materialization_inputs(data: str) -> str:
    refs = (
        f"CASE WHEN json_type({data}, '$.inputs') = 'ARRAY' "
        f"THEN CAST(to_json(list_filter(list_transform(json_extract({data}, '$.inputs[*]'), "
        f"lambda item: {_sql_input_ref('item')}), lambda ref: ref IS NOT NULL)) AS VARCHAR) "
        "ELSE '[]' END"
    )
    return (
        f"CAST(json_merge_patch({data}, json_object('inputs', CAST(({refs}) AS JSON))) AS VARCHAR)"
    )


# (type, from_version) -> SQL from that version's data text to the next version's.
SQL_UPCASTERS: dict[tuple[str, int], Callable[[str], str] | None] = {
    (ev.TASK_STATE, 1): _sql_task_state_1_to_2,
    # v1 -> v2 normalizes `inputs`, which SQL_NORMALIZERS does for every version.
    (ev.MATERIALIZATION, 1): None,
}

# type -> SQL bringing data text of the newest version to the form the fold stores: a
# materialization's `inputs` as {asset, partition, output_path} dicts, whatever the emitter
# wrote (the fold's contract for lineage).
SQL_NORMALIZERS: dict[str, Callable[[str], str]] = {
    ev.MATERIALIZATION: _sql_materialization_inputs,
}

Readable = Literal["current", "unknown", "malformed"]


def _as_int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return default


def classify(event: Mapping[str, Any]) -> Readable:
    """Whether the fold can read ``event`` (after upcasting), must keep it opaque, or skip it."""
    if not isinstance(event.get("id"), str) or not isinstance(event.get("type"), str):
        return "malformed"
    if _as_int(event.get("specversion"), 1) > ENVELOPE_VERSION:
        return "unknown"
    type_ = event["type"]
    newest = DATA_VERSIONS.get(type_)
    if newest is None:
        generic = type_.startswith(TICK_PREFIXES) or type_.startswith(BACKFILL_PREFIX)
        return "current" if generic else "unknown"
    if _as_int(event.get("dataversion"), 1) > newest:
        return "unknown"
    return "current"


def upcast_data(type_: str, version: int, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` of an event of ``type_`` at ``version`` in the newest shape the reader knows."""
    out = dict(data)
    newest = DATA_VERSIONS.get(type_, version)
    while version < newest:
        step = UPCASTERS.get((type_, version))
        if step is not None:
            out = step(out)
        version += 1
    return out


def event_data(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event's ``data``, upcast to the newest known shape (unknown types unchanged)."""
    raw = event.get("data")
    data = dict(raw) if isinstance(raw, Mapping) else {}
    type_ = str(event.get("type"))
    if type_ not in DATA_VERSIONS:
        return data
    return upcast_data(type_, _as_int(event.get("dataversion"), 1), data)


# ----------------------------------------------------------------------------- tables

Op = Literal["argmax", "argmin", "min", "max", "any"]


@dataclass(frozen=True)
class Group:
    """Columns merged together. ``argmax``/``argmin`` take every column of the group from the
    row with the highest/lowest ``ord`` (an event's causal position); ``min``/``max`` merge
    each column on its own; ``any`` is for columns that are equal in every row of a key."""

    op: Op
    columns: tuple[str, ...]
    ord: str | None = None


@dataclass(frozen=True)
class TableSpec:
    """A projection table: its version, schema, key and how rows of one key merge.

    Every merge is idempotent, commutative and associative, so merging the rows of any split
    of the events — folded in any order, with any event repeated — gives the same table. That
    is what lets compaction fold only new events into small delta files and merge files later.
    """

    name: str
    version: int
    key: tuple[str, ...]
    columns: tuple[tuple[str, pa.DataType], ...]
    groups: tuple[Group, ...]
    sort: tuple[str, ...]

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, t) for n, t in self.columns])

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.columns)


STR, INT, BOOL = pa.string(), pa.int64(), pa.bool_()

EVENTS = TableSpec(
    name="events",
    # v2: JSON text as DuckDB writes it (members in the emitter's order; v1 sorted them).
    version=2,
    key=("id",),
    columns=(
        ("id", STR),
        ("type", STR),
        ("run_id", STR),
        ("task_id", STR),
        ("attempt", INT),
        ("lc", INT),
        ("time_ms", INT),
        ("seq", INT),
        ("ord", STR),
        ("source", STR),
        ("actor", STR),
        ("correlation_id", STR),
        ("causation_id", STR),
        ("specversion", INT),
        ("dataversion", INT),
        ("known", BOOL),
        ("data", STR),
    ),
    groups=(
        Group(
            "any",
            (
                "type",
                "run_id",
                "task_id",
                "attempt",
                "lc",
                "time_ms",
                "seq",
                "ord",
                "source",
                "actor",
                "correlation_id",
                "causation_id",
                "specversion",
                "dataversion",
                "known",
                "data",
            ),
        ),
    ),
    sort=("run_id", "ord"),
)

RUNS = TableSpec(
    name="runs",
    # v2: JSON text as DuckDB writes it (members in the emitter's order; v1 sorted them).
    version=2,
    key=("run_id",),
    columns=(
        ("run_id", STR),
        ("c_ord", STR),
        ("created_ms", INT),
        ("selection", STR),
        ("partitions", STR),
        ("fingerprint", STR),
        ("code_version", STR),
        ("task_count", INT),
        ("run_key", STR),
        ("trigger_type", STR),
        ("trigger", STR),
        ("tags", STR),
        ("parent_run_id", STR),
        ("actor", STR),
        ("s_ord", STR),
        ("state", STR),
        ("reason", STR),
        ("last_event", STR),
        ("state_ms", INT),
        ("started_ms", INT),
        ("ended_ms", INT),
    ),
    groups=(
        Group(
            "argmax",
            (
                "created_ms",
                "selection",
                "partitions",
                "fingerprint",
                "code_version",
                "task_count",
                "run_key",
                "trigger_type",
                "trigger",
                "tags",
                "parent_run_id",
                "actor",
            ),
            "c_ord",
        ),
        Group("argmax", ("state", "reason", "last_event", "state_ms"), "s_ord"),
        Group("min", ("started_ms",)),
        Group("max", ("ended_ms",)),
    ),
    sort=("run_id",),
)

TASKS = TableSpec(
    name="tasks",
    version=1,
    key=("run_id", "task_id"),
    columns=(
        ("run_id", STR),
        ("task_id", STR),
        ("asset", STR),
        ("partition", STR),
        ("partition_user", STR),
        ("c_ord", STR),
        ("display", STR),
        ("position", INT),
        ("created_ms", INT),
        ("s_ord", STR),
        ("state", STR),
        ("reason", STR),
        ("last_event", STR),
        ("state_ms", INT),
        ("attempt", INT),
        ("r_ord", STR),
        ("started_ms", INT),
        ("ended_ms", INT),
        ("d_ord", STR),
        ("error", STR),
        ("duration_ms", INT),
    ),
    groups=(
        Group("max", ("asset", "partition", "partition_user")),
        Group("argmax", ("display", "position", "created_ms"), "c_ord"),
        Group("argmax", ("state", "reason", "last_event", "state_ms"), "s_ord"),
        Group("max", ("attempt", "ended_ms")),
        Group("argmax", ("started_ms",), "r_ord"),
        Group("argmax", ("error", "duration_ms"), "d_ord"),
    ),
    sort=("run_id", "task_id"),
)

ATTEMPTS = TableSpec(
    name="attempts",
    version=1,
    key=("run_id", "task_id", "attempt"),
    columns=(
        ("run_id", STR),
        ("task_id", STR),
        ("attempt", INT),
        ("asset", STR),
        ("partition", STR),
        ("dispatched_ms", INT),
        ("started_ms", INT),
        ("x_ord", STR),
        ("outcome", STR),
        ("exit_event", STR),
        ("exit_reason", STR),
        ("ended_ms", INT),
        ("d_ord", STR),
        ("error", STR),
        ("duration_ms", INT),
    ),
    groups=(
        Group("max", ("asset", "partition")),
        Group("min", ("dispatched_ms", "started_ms")),
        Group("argmin", ("outcome", "exit_event", "exit_reason", "ended_ms"), "x_ord"),
        Group("argmax", ("error", "duration_ms"), "d_ord"),
    ),
    sort=("run_id", "task_id", "attempt"),
)

MATERIALIZATIONS = TableSpec(
    name="materializations",
    # v2: JSON text as DuckDB writes it (members in the emitter's order; v1 sorted them).
    version=2,
    key=("id",),
    columns=(
        ("id", STR),
        ("asset", STR),
        ("partition", STR),
        ("partition_user", STR),
        ("run_id", STR),
        ("task_id", STR),
        ("attempt", INT),
        ("time_ms", INT),
        ("ord", STR),
        ("output_path", STR),
        ("size", INT),
        ("code_version", STR),
        ("metadata", STR),
        ("inputs", STR),
    ),
    groups=(
        Group(
            "any",
            (
                "asset",
                "partition",
                "partition_user",
                "run_id",
                "task_id",
                "attempt",
                "time_ms",
                "ord",
                "output_path",
                "size",
                "code_version",
                "metadata",
                "inputs",
            ),
        ),
    ),
    sort=("asset", "partition", "ord"),
)

LINEAGE = TableSpec(
    name="lineage",
    version=1,
    key=("id", "upstream_asset", "upstream_partition"),
    columns=(
        ("id", STR),
        ("upstream_asset", STR),
        ("upstream_partition", STR),
        ("asset", STR),
        ("partition", STR),
        ("upstream_output_path", STR),
    ),
    groups=(Group("any", ("asset", "partition", "upstream_output_path")),),
    sort=("asset", "partition", "id"),
)

PARTITIONS = TableSpec(
    name="partitions",
    version=1,
    key=("asset", "partition"),
    columns=(
        ("asset", STR),
        ("partition", STR),
        ("partition_user", STR),
        ("m_ord", STR),
        ("mat_id", STR),
        ("mat_run_id", STR),
        ("mat_ms", INT),
        ("mat_output_path", STR),
        ("mat_code_version", STR),
        ("f_ord", STR),
        ("fail_run_id", STR),
        ("fail_ms", INT),
        ("fail_reason", STR),
        ("t_ord", STR),
        ("last_task_state", STR),
        ("last_run_id", STR),
    ),
    groups=(
        Group("max", ("partition_user",)),
        Group(
            "argmax",
            ("mat_id", "mat_run_id", "mat_ms", "mat_output_path", "mat_code_version"),
            "m_ord",
        ),
        Group("argmax", ("fail_run_id", "fail_ms", "fail_reason"), "f_ord"),
        Group("argmax", ("last_task_state", "last_run_id"), "t_ord"),
    ),
    sort=("asset", "partition"),
)

CHECKS = TableSpec(
    name="checks",
    # v2: JSON text as DuckDB writes it (members in the emitter's order; v1 sorted them).
    version=2,
    key=("asset", "partition", "check_name"),
    columns=(
        ("asset", STR),
        ("partition", STR),
        ("check_name", STR),
        ("ord", STR),
        ("passed", BOOL),
        ("severity", STR),
        ("blocking", BOOL),
        ("description", STR),
        ("metadata", STR),
        ("run_id", STR),
        ("event_id", STR),
        ("time_ms", INT),
    ),
    groups=(
        Group(
            "argmax",
            (
                "passed",
                "severity",
                "blocking",
                "description",
                "metadata",
                "run_id",
                "event_id",
                "time_ms",
            ),
            "ord",
        ),
    ),
    sort=("asset", "partition", "check_name"),
)

TICKS = TableSpec(
    name="ticks",
    # v2: JSON text as DuckDB writes it (members in the emitter's order; v1 sorted them).
    version=2,
    key=("tick_id",),
    columns=(
        ("tick_id", STR),
        ("kind", STR),
        ("name", STR),
        ("first_ms", INT),
        ("ord", STR),
        ("status", STR),
        ("tick_ms", INT),
        ("run_ids", STR),
        ("reason", STR),
        ("cursor", STR),
        ("type", STR),
    ),
    groups=(
        Group("max", ("kind", "name")),
        Group("min", ("first_ms",)),
        Group("argmax", ("status", "tick_ms", "run_ids", "reason", "cursor", "type"), "ord"),
    ),
    sort=("name", "tick_id"),
)

BACKFILLS = TableSpec(
    name="backfills",
    # v2: JSON text as DuckDB writes it (members in the emitter's order; v1 sorted them).
    version=2,
    key=("backfill_id",),
    columns=(
        ("backfill_id", STR),
        ("created_ms", INT),
        ("c_ord", STR),
        ("selection", STR),
        ("partitions", STR),
        ("actor", STR),
        ("ord", STR),
        ("state", STR),
        ("reason", STR),
        ("run_ids", STR),
        ("updated_ms", INT),
    ),
    groups=(
        Group("min", ("created_ms",)),
        Group("argmax", ("selection", "partitions", "actor"), "c_ord"),
        Group("argmax", ("state", "reason", "run_ids", "updated_ms"), "ord"),
    ),
    sort=("backfill_id",),
)

DEPLOYMENTS = TableSpec(
    name="deployments",
    version=1,
    key=("code_version",),
    columns=(
        ("code_version", STR),
        ("manifest_id", STR),
        ("first_ms", INT),
        ("last_ms", INT),
        ("actor", STR),
    ),
    groups=(
        Group("max", ("manifest_id", "actor", "last_ms")),
        Group("min", ("first_ms",)),
    ),
    sort=("code_version",),
)

TABLE_SPECS: dict[str, TableSpec] = {
    t.name: t
    for t in (
        EVENTS,
        RUNS,
        TASKS,
        ATTEMPTS,
        MATERIALIZATIONS,
        LINEAGE,
        PARTITIONS,
        CHECKS,
        TICKS,
        BACKFILLS,
        DEPLOYMENTS,
    )
}
