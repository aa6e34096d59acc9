"""The fold: ledger events -> rows of the projection tables.

Folding happens in DuckDB, with no Python work per event beyond handing it over:

1. :class:`EventBatch` hands events to DuckDB in bulk: events already decoded into dicts as
   Arrow columns (the envelope converted by Arrow, ``data`` encoded by the C JSON encoder), a
   ledger segment as stored as JSON for DuckDB's reader (only decompressed, never decoded in
   Python).
2. :func:`stage` reads them into a *staging* table, one row per distinct event: it drops
   malformed events (no string ``id`` or ``type``) and duplicates (by id), classifies the rest
   as :func:`~servo.projections.schema.classify` does (unknown types and versions are kept,
   marked ``known = false``), coerces values of the wrong type (:data:`COERCIONS`), upcasts
   ``data`` to the newest version this reader knows
   (:data:`~servo.projections.schema.SQL_UPCASTERS`), and adds the event's causal position
   ``ord``.
3. :func:`derive_tables` derives every table's rows from the staging table (vectorized SQL,
   :data:`CONTRIBUTIONS`, reading the fields of ``data`` as ``d``, parsed for the events the
   table reads): a task's state change contributes a ``tasks`` row with only its state columns
   set, an ``attempts`` row, maybe a ``partitions`` row, and so on. The rows of each key then
   merge by the table's rules (:func:`merge_sql`, :class:`~servo.projections.schema.Group`).

Every merge rule is idempotent, commutative and associative, and ``ord`` (Lamport clock, then
time, then event id) breaks every tie, so the result depends only on the *set* of events:
duplicates and out-of-order delivery change nothing, and merging already-merged files gives
the same table as folding all events at once. Compaction relies on that to fold only new
events into delta files and merge files later.

``data`` is stored as DuckDB writes JSON (members in the order the emitter wrote them, no
whitespace), whichever way an event arrives, so a segment read as stored and the same events
read as dicts fold to the same rows.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring_ascii,
)
from types import TracebackType
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from servo.adapters.segments import GZIP_MAGIC
from servo.core.errors import PartitionError, ServoError
from servo.core.keys import PartitionKey
from servo.projections.schema import (
    BACKFILL_PREFIX,
    DATA_VERSIONS,
    ENVELOPE_VERSION,
    SQL_NORMALIZERS,
    SQL_UPCASTERS,
    TABLE_SPECS,
    TICK_PREFIXES,
    TableSpec,
    sql_text,
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
# Events given as dicts are converted this many at a time (a chunk with a value of an
# unexpected type is read as JSON instead: small chunks keep the others on the fast way).
CHUNK_EVENTS = 1_000

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


# ----------------------------------------------------------------------------- encoding

# ensure_ascii: the text is then plain ASCII, so encoding it to bytes is a copy.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False, allow_nan=False)
_encode = _ENCODER.encode


def _encoder_of_values() -> Callable[[Any], str]:
    # JSONEncoder.encode builds a new C encoder on every call; for one small value per event
    # that costs more than the encoding, so the C encoder is made once (where it exists).
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return _encode
    make = c_make_encoder(
        None, _ENCODER.default, encode_basestring_ascii, None, ":", ",", False, False, False
    )
    join = "".join
    return lambda value: join(make(value, 0))


_encode_value = _encoder_of_values()

# How a segment written by `encode_segment` starts: its events are the rest of it but "]}".
_SEGMENT_HEAD = re.compile(rb'\{"stream":"(?:[^"\\]|\\.)*","seq":-?[0-9]+,"events":\[')

# The envelope fields the fold reads: text, and integers.
TEXT_FIELDS = (
    "id",
    "type",
    "run_id",
    "task_id",
    "correlation_id",
    "causation_id",
    "actor",
    "source",
    "time",
)
INTEGER_FIELDS = ("specversion", "dataversion", "time_ms", "lc", "attempt", "seq")
# The envelope of well-typed events, converted by Arrow without a Python loop (a value of
# another type fails the conversion; such events are read as JSON instead).
_ENVELOPE_ARROW = pa.struct(
    [(f, pa.string()) for f in TEXT_FIELDS] + [(f, pa.int64()) for f in INTEGER_FIELDS]
)


class EventBatch:
    """Events on their way into DuckDB, read by :func:`stage`.

    Events given as dicts are converted a chunk at a time: the envelope by Arrow, ``data`` by
    the C JSON encoder. A chunk with a value of an unexpected type, and a ledger segment as
    stored (only decompressed, never decoded in Python), go to JSON files in a temporary
    directory instead (~:attr:`FILE_BYTES` each, so that DuckDB's reader spreads them over its
    threads), and DuckDB coerces what it reads there (:data:`COERCIONS`). Events that cannot
    be encoded as JSON (a value that is not JSON, an event that is not a mapping) are left out
    and counted in :attr:`unencodable`. :meth:`close` (or leaving a ``with`` block) deletes
    the files.
    """

    FILE_BYTES = 8 * 2**20

    def __init__(self, directory: str | None = None) -> None:
        self._parent = directory
        self.directory: str | None = None
        self.paths: list[str] = []
        self.tables: list[pa.Table] = []
        self.unencodable = 0
        self.largest = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def __enter__(self) -> EventBatch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def empty(self) -> bool:
        """Whether nothing was added (or only events that could not be encoded)."""
        return not (self.tables or self.paths or self._pending)

    def close(self) -> None:
        """Forget the events and delete the files."""
        self._pending = []
        self.tables = []
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def add_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append events given as dicts (any iterable, consumed once)."""
        iterator = iter(events)
        while chunk := list(itertools.islice(iterator, CHUNK_EVENTS)):
            try:
                # malloc rather than Arrow's default allocator, which in a fresh process spends
                # more time in the kernel growing its heap than this takes otherwise.
                pool = pa.system_memory_pool()
                envelope = pa.array(chunk, type=_ENVELOPE_ARROW, memory_pool=pool)
                texts = [_encode_value(e.get("data")) for e in chunk]
                data = pa.array(texts, type=pa.string(), memory_pool=pool)
            except (pa.ArrowException, AttributeError, OverflowError, TypeError, ValueError):
                self._add_json(chunk)
                continue
            self.tables.append(pa.Table.from_struct_array(envelope).append_column("data", data))

    def _add_json(self, chunk: Sequence[Any]) -> None:
        try:
            text = _encode(chunk)
        except (TypeError, ValueError):
            parts = []
            for event in chunk:
                try:
                    if not isinstance(event, Mapping):
                        raise TypeError("an event must be a mapping")
                    parts.append(_encode(event if type(event) is dict else dict(event)))
                except (TypeError, ValueError):
                    self.unencodable += 1
            text = "[" + ",".join(parts) + "]"
        self._add_members(text[1:-1].encode("ascii"))

    def add_segment(self, body: bytes) -> None:
        """Append a ledger segment as stored (``{"stream", "seq", "events"}`` JSON, maybe
        gzip-compressed)."""
        if body[:2] == GZIP_MAGIC:
            body = gzip.decompress(body)
        body = body.strip()
        head = _SEGMENT_HEAD.match(body)
        if head is not None and body.endswith(b"]}"):
            self._add_members(body[head.end() : -2])
            return
        # Not in the ledger encoder's layout (written by hand, or by another encoder).
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise ServoError(f"a ledger segment to fold is not JSON: {exc}") from exc
        events = document.get("events") if isinstance(document, dict) else None
        if not isinstance(events, list):
            raise ServoError("a ledger segment must be a JSON object with an `events` list")
        self._add_json(events)

    def _add_members(self, members: bytes) -> None:
        # `members`: events of a JSON array without its brackets.
        if not members.strip():
            return
        self._pending.append(members)
        self._pending_bytes += len(members)
        if self._pending_bytes >= self.FILE_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the JSON still pending to a file of its own."""
        if not self._pending:
            return
        if self.directory is None:
            self.directory = tempfile.mkdtemp(prefix="servo-fold-", dir=self._parent)
        path = os.path.join(self.directory, f"{len(self.paths):06d}.json")
        with open(path, "wb") as handle:
            handle.write(b"[")
            handle.write(b",".join(self._pending))
            handle.write(b"]")
        self.paths.append(path)
        self.largest = max(self.largest, self._pending_bytes + 2)
        self._pending = []
        self._pending_bytes = 0


# ----------------------------------------------------------------------------- staging


def _json_number(x: str) -> str:
    # The number the JSON value `x` (its text) holds: a number, or a string holding one;
    # anything else (booleans, null, lists, objects, other strings) holds none.
    number = (
        f"CASE WHEN starts_with({x}, '\"') THEN TRY_CAST(json_extract_string({x}, '$') AS DOUBLE)"
        f" ELSE TRY_CAST({x} AS DOUBLE) END"
    )
    return _integer_part(number)


def _integer_part(number: str) -> str:
    return f"CASE WHEN isfinite({number}) THEN trunc({number}) END"


def _json_string(x: str) -> str:
    return f"CASE WHEN starts_with({x}, '\"') THEN json_extract_string({x}, '$') END"


# The envelope as read from JSON: values whose JSON type matters are kept as JSON text; text
# fields take any value (a number or an object becomes its JSON text).
_ENVELOPE_JSON = {
    **dict.fromkeys(TEXT_FIELDS, "VARCHAR"),
    "id": "JSON",
    "type": "JSON",
    **dict.fromkeys(INTEGER_FIELDS, "JSON"),
    "data": "JSON",
}

# Both ways of reading events give: the envelope's text fields (``id`` and ``type`` NULL when
# not strings), the integer part of each integer field as a DOUBLE (``n_<field>``, NULL when
# it holds no number) and ``raw``, the JSON text of ``data`` as DuckDB writes it.
_FROM_JSON = ", ".join(
    [
        *(
            f"{_json_string(f'e.{f}') if f in ('id', 'type') else f'e.{f}'} AS {f}"
            for f in TEXT_FIELDS
        ),
        *(f"{_json_number(f'CAST(e.{f} AS VARCHAR)')} AS n_{f}" for f in INTEGER_FIELDS),
        "CAST(e.data AS VARCHAR) AS raw",
    ]
)
_FROM_ARROW = ", ".join(
    [
        *(f"e.{f} AS {f}" for f in TEXT_FIELDS),
        *(f"CAST(e.{f} AS DOUBLE) AS n_{f}" for f in INTEGER_FIELDS),
        "CAST(json(e.data) AS VARCHAR) AS raw",
    ]
)


def _clamped(number: str, high: int) -> str:
    return f"CAST(least({high}, greatest(0, {number})) AS BIGINT)"


# How the envelope's values are read (a value of the wrong type is coerced, never fatal):
COERCIONS: dict[str, str] = {
    "id": "id",
    "type": "type",
    "run_id": "run_id",
    "task_id": "task_id",
    # An integer field holding a number that is no integer reads as its integer part.
    "attempt": "TRY_CAST(n_attempt AS BIGINT)",
    # A Lamport clock out of range (or missing) reads as the nearest one (0).
    "lc": _clamped("coalesce(n_lc, 0)", MAX_LC),
    # Milliseconds missing: from the ISO `time`, or 0.
    "time_ms": _clamped(
        "coalesce(n_time_ms, CAST(epoch_ms(TRY_CAST(time AS TIMESTAMPTZ)) AS DOUBLE), 0)",
        MAX_TIME_MS,
    ),
    "seq": "TRY_CAST(n_seq AS BIGINT)",
    "source": "source",
    "actor": "actor",
    "correlation_id": "correlation_id",
    "causation_id": "causation_id",
    # Versions missing read as 1.
    "specversion": "coalesce(TRY_CAST(n_specversion AS BIGINT), 1)",
    "dataversion_given": "TRY_CAST(n_dataversion AS BIGINT)",
    "sv": "coalesce(n_specversion, 1)",
    "dv": "coalesce(n_dataversion, 1)",
    "raw": "raw",
}

_NEWEST = (
    "CASE type "
    + " ".join(f"WHEN {sql_text(t)} THEN {v}" for t, v in sorted(DATA_VERSIONS.items()))
    + " END"
)
_GENERIC = " OR ".join(
    f"starts_with(type, {sql_text(p)})" for p in (*TICK_PREFIXES, BACKFILL_PREFIX)
)


def _current_data() -> str:
    """SQL of a known event's data in the newest shape (from ``base``: its data object, or
    ``{}``; ``dv``: the version it was written in)."""
    branches = []
    for type_, newest in sorted(DATA_VERSIONS.items()):
        data = "base"
        for version in range(1, newest):
            step = SQL_UPCASTERS.get((type_, version))
            if step is not None:
                data = f"(CASE WHEN dv <= {version} THEN {step(data)} ELSE {data} END)"
        normalize = SQL_NORMALIZERS.get(type_)
        if normalize is not None:
            data = normalize(data)
        if data != "base":
            branches.append(f"WHEN {sql_text(type_)} THEN {data}")
    return f"CASE type {' '.join(branches)} ELSE base END" if branches else "base"


def _staging_select(front: str) -> str:
    # `front`: rows as _FROM_JSON or _FROM_ARROW give them.
    coerced = ", ".join(f"{sql} AS {name}" for name, sql in COERCIONS.items())
    return f"""
        SELECT id, type, run_id, task_id, attempt, lc, time_ms, seq, source, actor,
               correlation_id, causation_id, specversion,
               CASE WHEN known THEN coalesce(newest, dataversion_given, 1)
                    ELSE coalesce(dataversion_given, 1) END AS dataversion,
               known, data,
               lpad(CAST(lc AS VARCHAR), 12, '0') || lpad(CAST(time_ms AS VARCHAR), 13, '0') || id
                 AS ord,
               json_transform(data, '{{"partition": "VARCHAR"}}').partition AS partition
        FROM (
            SELECT *,
                   CASE WHEN NOT known THEN
                            CASE WHEN starts_with(raw, '{{') THEN raw
                                 ELSE '{{"value":' || coalesce(raw, 'null') || '}}' END
                        ELSE {_current_data()} END AS data
            FROM (
                SELECT *, CASE WHEN starts_with(raw, '{{') THEN raw ELSE '{{}}' END AS base,
                       id IS NOT NULL AND type IS NOT NULL AND sv <= {ENVELOPE_VERSION}
                       AND CASE WHEN newest IS NULL THEN {_GENERIC} ELSE dv <= newest END
                         AS known
                FROM (SELECT *, {_NEWEST} AS newest FROM (SELECT {coerced} FROM ({front})))
            )
        )
    """


def _json_source(batch: EventBatch) -> str:
    paths = ", ".join(sql_text(p) for p in batch.paths)
    columns = ", ".join(f"{sql_text(k)}: {sql_text(t)}" for k, t in _ENVELOPE_JSON.items())
    size = max(16 * 2**20, batch.largest + 1)
    return (
        f"read_json([{paths}], format = 'array', maximum_object_size = {size}, "
        f"columns = {{{columns}}})"
    )


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


# ----------------------------------------------------------------------------- folding


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


# A canonical key without '%' (escapes) or '=' (dimensions) is written as users write it (a
# key that is not canonical stays as it is): only the others need parsing, in Python.
_PARTITION_NEEDS_PARSING = "(contains({p}, '%') OR contains({p}, '='))"


_STAGED_ORDER = (
    "ord, type, data, run_id, task_id, attempt, seq, source, actor, correlation_id, "
    "causation_id, specversion, dataversion, known"
)


def _read_rows(
    con: duckdb.DuckDBPyConnection, batch: EventBatch, rows: str, *, append: bool = False
) -> None:
    # Every event read (malformed ones too, with a NULL id or type) into the table `rows`.
    batch.flush()
    fronts: list[str] = []
    name = f"{rows}__arrow"
    if batch.tables or not batch.paths:
        arrow = (
            pa.concat_tables(batch.tables)
            if batch.tables
            else pa.schema(
                [
                    *(pa.field(f.name, f.type) for f in _ENVELOPE_ARROW),
                    pa.field("data", pa.string()),
                ]
            ).empty_table()
        )
        con.register(name, arrow)
        fronts.append(f"SELECT {_FROM_ARROW} FROM {name} AS e")
    if batch.paths:
        fronts.append(f"SELECT {_FROM_JSON} FROM {_json_source(batch)} AS e")
    try:
        for front in fronts:
            select = _staging_select(front)
            con.execute(
                f"INSERT INTO {rows} {select}"
                if append
                else f"CREATE OR REPLACE TEMP TABLE {rows} AS {select}"
            )
            append = True
    except duckdb.InvalidInputException as exc:
        raise ServoError(f"the events to fold are not readable JSON: {exc}") from exc
    finally:
        with contextlib.suppress(duckdb.Error):
            con.unregister(name)


def _publish_rows(
    con: duckdb.DuckDBPyConnection, rows: str, view: str, unencodable: int = 0
) -> FoldStats:
    # Malformed events and duplicates out of `rows`, the staging view `view` over what is left.
    total, malformed, distinct = _one(
        con,
        f"SELECT count(*), count(*) FILTER (WHERE id IS NULL OR type IS NULL), "
        f"count(DISTINCT id) FILTER (WHERE type IS NOT NULL) FROM {rows}",
    )
    duplicates = total - malformed - distinct
    if malformed:
        con.execute(f"DELETE FROM {rows} WHERE id IS NULL OR type IS NULL")
    if duplicates:
        # Copies of one event are equal; should two different events share an id, the one
        # first in causal order (then by every other column) is kept, whatever the order read.
        con.execute(
            f"DELETE FROM {rows} WHERE rowid IN (SELECT rowid FROM {rows} "
            f"QUALIFY row_number() OVER (PARTITION BY id ORDER BY {_STAGED_ORDER}) > 1)"
        )
    unknown, max_time_ms = _one(
        con, f"SELECT count(*) FILTER (WHERE NOT known), coalesce(max(time_ms), 0) FROM {rows}"
    )
    special = [
        str(p)
        for (p,) in con.execute(
            f"SELECT DISTINCT partition FROM {rows} WHERE "
            + _PARTITION_NEEDS_PARSING.format(p="partition")
        ).fetchall()
    ]
    if special:
        users = f"{view}__users"
        con.register(
            users,
            pa.table(
                {"canonical": special, "user_form": [partition_user(p) for p in special]},
                schema=pa.schema([("canonical", pa.string()), ("user_form", pa.string())]),
            ),
        )
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT s.*, "
            f"CASE WHEN {_PARTITION_NEEDS_PARSING.format(p='s.partition')} THEN u.user_form "
            f"ELSE s.partition END AS partition_user "
            f"FROM {rows} s LEFT JOIN {users} u ON u.canonical = s.partition"
        )
    else:
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW {view} AS "
            f"SELECT *, partition AS partition_user FROM {rows}"
        )
    return FoldStats(
        events=total + unencodable,
        duplicates=duplicates,
        unknown=unknown,
        malformed=malformed + unencodable,
        max_time_ms=max_time_ms,
    )


def stage(con: duckdb.DuckDBPyConnection, batch: EventBatch, view: str) -> FoldStats:
    """Read ``batch`` into the staging view ``view`` (see the module docstring) and return
    what was read. Drop it with :func:`unstage`."""
    _read_rows(con, batch, f"{view}__rows")
    return _publish_rows(con, f"{view}__rows", view, batch.unencodable)


def unstage(con: duckdb.DuckDBPyConnection, view: str) -> None:
    """Drop what :func:`stage` created for ``view``."""
    con.execute(f"DROP VIEW IF EXISTS {view}")
    con.execute(f"DROP TABLE IF EXISTS {view}__rows")
    with contextlib.suppress(duckdb.Error):
        con.unregister(f"{view}__users")


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[int, ...]:
    (row,) = con.execute(sql).fetchall()
    return tuple(int(v) for v in row)


def derive_tables(
    con: duckdb.DuckDBPyConnection, view: str, *, sort: bool = True
) -> dict[str, pa.Table]:
    """Every table derived from the staging view ``view`` and merged. Runs in DuckDB only
    (no Python per row). Without ``sort`` the events table is left in the order read (a later
    merge sorts it)."""
    out: dict[str, pa.Table] = {}
    for name, spec in TABLE_SPECS.items():
        if name == "events":
            # Already one row per event id.
            columns = ", ".join(_quote(c) for c in spec.column_names)
            sql = sort_sql(spec, view) if sort else f"SELECT {columns} FROM {view}"
        else:
            sql = merge_sql(spec, f"({contribution_sql(name, view)})")
        out[name] = con.sql(sql).to_arrow_table().cast(spec.schema)
    return out


def _data_struct(sql: str) -> str:
    # The fields of `data` that `sql` reads (as d.<field>), as json_transform's structure.
    used = {m.group(2) for m in re.finditer(r'\bd\.("?)(\w+)\1', sql)}
    return json.dumps({k: t for k, t in DATA_FIELDS.items() if k in used})


# Each table's contributions parse only the fields of `data` they read, and only for the
# events they read (the filters on the envelope apply first).
_CONTRIBUTION_DATA = {name: _data_struct(sql) for name, sql in CONTRIBUTIONS.items()}


def contribution_sql(table: str, view: str) -> str:
    """SQL of the rows the staging view ``view`` contributes to ``table``, before they merge."""
    parsed = f"(SELECT *, json_transform(data, '{_CONTRIBUTION_DATA[table]}') AS d FROM {view})"
    return CONTRIBUTIONS[table].replace("{v}", parsed)


def fold_batch(
    con: duckdb.DuckDBPyConnection, batch: EventBatch, *, sort: bool = True
) -> tuple[dict[str, pa.Table], FoldStats]:
    """Every table computed from the events in ``batch``, and what was read."""
    view = f"__staged_{next(_names)}"
    try:
        stats = stage(con, batch, view)
        return derive_tables(con, view, sort=sort), stats
    finally:
        unstage(con, view)


def event_batch(events: Iterable[Mapping[str, Any]]) -> EventBatch:
    """``events`` written as :class:`EventBatch` (close it, or use it in a ``with`` block)."""
    batch = EventBatch()
    try:
        batch.add_events(events)
    except BaseException:
        batch.close()
        raise
    return batch


def fold_with_stats(
    events: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, pa.Table], FoldStats]:
    """Every projection table computed from ``events`` alone, and what was read."""
    con = connect()
    try:
        with event_batch(events) as batch:
            return fold_batch(con, batch)
    finally:
        con.close()


def fold(events: Iterable[Mapping[str, Any]]) -> dict[str, pa.Table]:
    """Every projection table computed from ``events`` alone (any order, any duplicates)."""
    return fold_with_stats(events)[0]


def fold_batches(
    batches: Iterable[EventBatch],
    *,
    events_before_ms: int | None = None,
    max_staged_events: int = 2_000_000,
) -> tuple[dict[str, pa.Table], FoldStats]:
    """Fold a stream of batches into final tables (merged, sorted), closing each batch.

    DuckDB reads a batch on a second thread while the caller writes the next one (which
    holds the interpreter lock only to encode events that arrive as dicts); the tables are
    derived once everything is read, or every ``max_staged_events`` events (and those parts
    merged). Events before ``events_before_ms`` are left out of the events table (retention);
    the other tables keep them."""
    parts: dict[str, list[pa.Table]] = {name: [] for name in TABLE_SPECS}
    stats = FoldStats()
    view = f"__batches_{next(_names)}"
    rows = f"{view}__rows"
    con = connect()
    staged = 0
    unencodable = 0

    def read(batch: EventBatch, append: bool) -> int:
        with batch:
            _read_rows(con, batch, rows, append=append)
            return batch.unencodable

    def derive() -> None:
        nonlocal staged, unencodable
        try:
            stats.add(_publish_rows(con, rows, view, unencodable))
            for name, table in derive_tables(con, view).items():
                if table.num_rows:
                    parts[name].append(table)
        finally:
            unstage(con, view)
        staged = unencodable = 0

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="servo-fold") as pool:
            pending: tuple[Future[int], EventBatch] | None = None
            iterator = iter(batches)
            try:
                for batch in iterator:
                    if pending is not None:
                        unencodable += pending[0].result()
                        (staged,) = _one(con, f"SELECT count(*) FROM {rows}")
                        pending = None
                        if staged >= max_staged_events:
                            derive()
                    pending = (pool.submit(read, batch, staged > 0), batch)
                if pending is not None:
                    unencodable += pending[0].result()
                    pending = None
                    derive()
            finally:
                # Whatever happened, no batch is left behind on disk.
                if pending is not None and pending[0].cancel():
                    pending[1].close()
                for batch in iterator:
                    batch.close()
        if all(len(p) <= 1 for p in parts.values()):
            # Read in one part: merged and sorted already.
            tables = {
                name: parts[name][0] if parts[name] else spec.schema.empty_table()
                for name, spec in TABLE_SPECS.items()
            }
            if events_before_ms is not None:
                events = tables["events"]
                tables["events"] = events.filter(
                    pc.greater_equal(events["time_ms"], events_before_ms)
                )
            return tables, stats
        return finish_tables(con, parts, stats, events_before_ms), stats
    finally:
        con.close()


def finish_tables(
    con: duckdb.DuckDBPyConnection,
    parts: Mapping[str, Sequence[pa.Table]],
    stats: FoldStats,
    events_before_ms: int | None = None,
) -> dict[str, pa.Table]:
    """Merge the tables of the parts of a fold into final ones. An event read in two parts is
    counted as a duplicate in ``stats`` (which is updated) and kept once."""
    out: dict[str, pa.Table] = {}
    for name, spec in TABLE_SPECS.items():
        nonempty = [p.select(list(spec.column_names)) for p in parts[name] if p.num_rows]
        table = pa.concat_tables(nonempty) if nonempty else spec.schema.empty_table()
        relation = f"__finish_{spec.name}_{next(_names)}"
        con.register(relation, table)
        try:
            if spec.key == ("id",):
                # One row per event id within a part; across parts only if no event was read
                # twice, which one count tells.
                (distinct,) = _one(con, f"SELECT count(DISTINCT id) FROM {relation}")
                repeated = table.num_rows - distinct
                if name == "events" and repeated:
                    stats.duplicates += repeated
                    (stats.unknown,) = _one(
                        con, f"SELECT count(DISTINCT id) FILTER (WHERE NOT known) FROM {relation}"
                    )
                source = relation
                if name == "events" and events_before_ms is not None:
                    source = f"(SELECT * FROM {relation} WHERE time_ms >= {int(events_before_ms)})"
                sql = merge_sql(spec, source) if repeated else sort_sql(spec, source)
            else:
                sql = merge_sql(spec, relation)
            out[name] = con.sql(sql).to_arrow_table().cast(spec.schema)
        finally:
            con.unregister(relation)
    return out
