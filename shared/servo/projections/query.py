"""The read side: runs, a run's tasks and events, assets and partitions, from the projections.

Every query runs in DuckDB over the published Parquet files plus the *tail*: the ledger
segments after the published watermark and the events still in the state store's outbox,
folded in memory by the same fold. Events are committed in the same transaction as the state
change they describe, so the tail makes a query exactly as fresh as the state store — runs in
flight included — while finished history comes from compact columnar files.

The functions return plain JSON-compatible values; the CLI and the HTTP API print them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from servo.control.common import RUNS, TASKS
from servo.control.drain import EVENTS_STREAM
from servo.core.errors import InvalidRequest, NotFound, ServoError
from servo.core.events import ms_to_iso
from servo.ports import Ports, Where
from servo.projections.compaction import (
    CompactionSettings,
    Compactor,
    outbox_events,
    read_segments,
)
from servo.projections.fold import (
    EventBatch,
    connect,
    contribution_sql,
    merge_sql,
    stage,
)
from servo.projections.schema import TABLE_SPECS
from servo.projections.store import Pointer, ProjectionStore

TERMINAL_RUN_STATES = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
PARTITION_STATUSES = ("MISSING", "FAILED", "MATERIALIZED", "STALE")


def _json(text: str | None, default: Any = None) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


class ProjectionReader:
    """A DuckDB connection over one published view plus the live tail.

    ``catch_up``: when more than ``catch_up`` segments are waiting (nothing compacted for a
    while, e.g. no control plane is running), compact them first instead of folding a large
    tail on every query. ``live=False`` reads the published view only.
    """

    def __init__(
        self,
        ports: Ports,
        *,
        live: bool = True,
        catch_up: int | None = 200,
        stream: str = EVENTS_STREAM,
    ) -> None:
        self.ports = ports
        self.store = ProjectionStore(ports.blobs)
        self.con = connect()
        self._registered: list[str] = []
        pointer, _ = self.store.load_pointer()
        lag = ports.ledger.last_seq(stream) - (pointer.watermark if pointer else -1)
        if catch_up is not None and (
            (pointer is None and lag > 0) or lag > catch_up or (pointer and not pointer.current())
        ):
            Compactor(ports, CompactionSettings.of(ports), stream=stream).compact()
            pointer, _ = self.store.load_pointer()
        self.pointer = pointer or Pointer()
        # The tail is staged once; each table's rows are derived from it only if a query
        # asks for that table.
        self._tail: str | None = None
        if live:
            with EventBatch() as batch:
                read_segments(ports.ledger, stream, batch, after_seq=self.pointer.watermark)
                batch.add_events(outbox_events(ports))
                if not batch.empty:
                    stage(self.con, batch, "__tail")
                    self._tail = "__tail"

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> ProjectionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def relation(self, table: str, where: str = "") -> str:
        """SQL for the merged rows of ``table``; ``where`` filters rows *before* they merge,
        so it may only name columns that are equal in every row of a key (key columns, or
        any column of an event-keyed table)."""
        spec = TABLE_SPECS[table]
        files = [f.path for f in self.pointer.table_files(table)]
        conditions = [where] if where else []
        if table == "events" and self.pointer.events_before_ms is not None:
            conditions.append(f"time_ms >= {int(self.pointer.events_before_ms)}")
        cond = f" WHERE {' AND '.join(f'({c})' for c in conditions)}" if conditions else ""
        parts: list[str] = []
        if files:
            source, names = self.store.source(self.con, spec, files)
            self._registered.extend(names)
            parts.append(f"SELECT * FROM {source}{cond}")
        if self._tail is not None:
            if table == "events":
                columns = ", ".join(f'"{c}"' for c in spec.column_names)
                tail_rows = f"SELECT {columns} FROM {self._tail}"
            else:
                tail_rows = contribution_sql(table, self._tail)
            parts.append(f"SELECT * FROM ({tail_rows}){cond}")
        if not parts:
            name = f"__none_{table}"
            if name not in self._registered:
                self.con.register(name, spec.schema.empty_table())
                self._registered.append(name)
            return f"(SELECT * FROM {name})"
        if len(parts) == 1 and len(files) == 1:
            return f"({parts[0]})"  # one file: already merged
        union = " UNION ALL BY NAME ".join(f"({p})" for p in parts)
        return f"({merge_sql(spec, f'({union})')})"

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.con.execute(sql, list(params))
        names = [d[0] for d in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ----------------------------------------------------------------------------- runs


def list_runs(
    ports: Ports,
    *,
    state: str | None = None,
    asset: str | None = None,
    tags: Mapping[str, str] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 20,
    reader: ProjectionReader | None = None,
) -> list[dict[str, Any]]:
    """Recent runs, newest first, filtered by state, asset (a task of the run materializes
    it), tags (all must match) and creation time (``since_ms`` <= created < ``until_ms``)."""
    if limit < 1:
        raise InvalidRequest("limit must be a positive number of runs")
    own = reader is None
    r = reader or ProjectionReader(ports)
    try:
        conditions = ["created_ms IS NOT NULL"]
        params: list[Any] = []
        if state:
            conditions.append("state = ?")
            params.append(state.upper())
        if since_ms is not None:
            conditions.append("created_ms >= ?")
            params.append(int(since_ms))
        if until_ms is not None:
            conditions.append("created_ms < ?")
            params.append(int(until_ms))
        for key, value in sorted((tags or {}).items()):
            conditions.append("json_extract_string(tags, ?) = ?")
            params.extend([f'$."{key}"', value])
        if asset:
            conditions.append(
                f"run_id IN (SELECT run_id FROM {r.relation('tasks')} WHERE asset = ?)"
            )
            params.append(asset)
        sql = (
            f"SELECT run_id, state, run_key, selection, created_ms, started_ms, ended_ms, "
            f"task_count, code_version, trigger, tags, actor, reason "
            f"FROM {r.relation('runs')} WHERE {' AND '.join(conditions)} "
            f"ORDER BY created_ms DESC, run_id DESC LIMIT {int(limit)}"
        )
        out = r.rows(sql, params)
        for row in out:
            row["trigger"] = _json(row["trigger"], {})
            row["tags"] = _json(row["tags"], {})
        return out
    finally:
        if own:
            r.close()


def run_view(
    ports: Ports, run_id: str, *, reader: ProjectionReader | None = None
) -> dict[str, Any]:
    """One run: state, trigger, timings, every task (state, attempts, error, timings) and every
    attempt. Raises NotFound for an unknown run."""
    own = reader is None
    r = reader or ProjectionReader(ports)
    try:
        key = f"run_id = {_quote_literal(run_id)}"
        runs = r.rows(f"SELECT * FROM {r.relation('runs', key)}")
        if not runs or runs[0]["created_ms"] is None:
            raise NotFound(f"run {run_id} does not exist; `servo status` lists recent runs")
        run = runs[0]
        tasks = r.rows(
            f"SELECT * FROM {r.relation('tasks', key)} "
            "ORDER BY c_ord NULLS LAST, position NULLS LAST, task_id"
        )
        attempts = r.rows(f"SELECT * FROM {r.relation('attempts', key)} ORDER BY task_id, attempt")
    finally:
        if own:
            r.close()
    live = _live_tasks(ports, run_id)
    counts: dict[str, int] = {}
    task_out = []
    for t in tasks:
        doc = live.get(t["task_id"], {})
        error = t["error"]
        if doc.get("error"):
            error = (doc["error"] or {}).get("message", error)
        duration = t["duration_ms"] if t["duration_ms"] is not None else doc.get("duration_ms")
        state = t["state"] or "PLANNED"
        counts[state] = counts.get(state, 0) + 1
        task_out.append(
            {
                "task_id": t["task_id"],
                "asset": t["asset"],
                "partition": t["partition_user"],
                "state": state,
                "attempts": int(t["attempt"] or 0),
                "error": error if state != "SUCCEEDED" else None,
                "reason": t["reason"],
                "started_ms": t["started_ms"],
                "ended_ms": t["ended_ms"],
                "duration_ms": duration,
            }
        )
    return {
        "run_id": run["run_id"],
        "state": run["state"],
        "run_key": run["run_key"],
        "fingerprint": run["fingerprint"],
        "code_version": run["code_version"],
        "selection": run["selection"],
        "partitions": _json(run["partitions"]),
        "trigger": _json(run["trigger"], {}),
        "actor": run["actor"],
        "tags": _json(run["tags"], {}),
        "parent_run_id": run["parent_run_id"],
        "created_ms": run["created_ms"],
        "started_ms": run["started_ms"],
        "ended_ms": run["ended_ms"],
        "reason": run["reason"],
        "task_count": run["task_count"],
        "counts": dict(sorted(counts.items())),
        "tasks": task_out,
        "attempts": [
            {
                "task_id": a["task_id"],
                "attempt": a["attempt"],
                "asset": a["asset"],
                "partition": a["partition"],
                "dispatched_ms": a["dispatched_ms"],
                "started_ms": a["started_ms"],
                "ended_ms": a["ended_ms"],
                "outcome": a["outcome"],
                "reason": a["exit_reason"],
                "error": a["error"],
                "duration_ms": a["duration_ms"],
            }
            for a in attempts
        ],
    }


def _live_tasks(ports: Ports, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's task documents, when the state store still has them: they hold the full
    error message and the measured run time, which older events do not carry."""
    try:
        if ports.state.get(RUNS, run_id) is None:
            return {}
        return {
            str(d["task_id"]): d
            for _, d in ports.state.query(TASKS, [Where("run_id", "==", run_id)])
        }
    except ServoError:
        return {}


def run_events(
    ports: Ports, run_id: str, *, reader: ProjectionReader | None = None
) -> list[dict[str, Any]]:
    """Every event of the run in causal order (Lamport clock, time, id), upcast to the newest
    versions this Servo knows."""
    own = reader is None
    r = reader or ProjectionReader(ports)
    try:
        rows = r.rows(
            f"SELECT * FROM {r.relation('events', f'run_id = {_quote_literal(run_id)}')} "
            "ORDER BY ord"
        )
    finally:
        if own:
            r.close()
    return [event_document(row, ports.tenant, ports.workspace) for row in rows]


def event_document(row: Mapping[str, Any], tenant: str, workspace: str) -> dict[str, Any]:
    """An ``events`` row as the event envelope it came from."""
    return {
        "id": row["id"],
        "type": row["type"],
        "specversion": row["specversion"],
        "dataversion": row["dataversion"],
        "source": row["source"],
        "time": ms_to_iso(int(row["time_ms"])),
        "time_ms": row["time_ms"],
        "tenant": tenant,
        "workspace": workspace,
        "run_id": row["run_id"],
        "task_id": row["task_id"],
        "attempt": row["attempt"],
        "correlation_id": row["correlation_id"],
        "causation_id": row["causation_id"],
        "actor": row["actor"],
        "lc": row["lc"],
        "seq": row["seq"],
        "data": _json(row["data"], {}),
    }


# ----------------------------------------------------------------------------- assets


def _declared_partitions(ports: Ports, asset: str) -> list[str] | None:
    """The canonical keys of every partition the deployed code declares for ``asset``."""
    from servo.control.deploy import current_code_version, load_manifest
    from servo.core.partitions import PartitionContext, partitions_from_spec

    try:
        cv = current_code_version(ports)
        if cv is None:
            return None
        manifest = load_manifest(ports, cv)
    except ServoError:
        return None
    spec = manifest.assets_by_key.get(asset)
    if spec is None or not spec.partitions:
        return None
    try:
        parts = partitions_from_spec(spec.partitions)
        return [k.canonical() for k in parts.keys(PartitionContext(now=ports.clock.now()))]
    except ServoError:
        return None


def partition_status(
    ports: Ports,
    asset: str,
    *,
    reader: ProjectionReader | None = None,
    declared: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Every known partition of ``asset`` with its status:

    * FAILED — its latest task failed after (or without) its latest materialization;
    * STALE — materialized, but an upstream partition it read was materialized again since;
    * MATERIALIZED — materialized and current;
    * MISSING — declared (or planned) but never materialized.

    ``declared`` (canonical keys) adds partitions nothing has touched yet; by default they come
    from the deployed code's partitions definition.
    """
    own = reader is None
    r = reader or ProjectionReader(ports)
    try:
        key = f"asset = {_quote_literal(asset)}"
        parts = r.relation("partitions")
        sql = f"""
            WITH p AS (SELECT * FROM {r.relation("partitions", key)}),
            lin AS (
                SELECT l.id, l.upstream_asset, l.upstream_partition, l.upstream_output_path
                FROM {r.relation("lineage", key)} l
            ),
            stale AS (
                SELECT DISTINCT p.asset, p.partition
                FROM p
                JOIN lin ON lin.id = p.mat_id
                JOIN {parts} u
                  ON u.asset = lin.upstream_asset
                 AND u.partition IS NOT DISTINCT FROM lin.upstream_partition
                WHERE u.m_ord > p.m_ord
                  AND (lin.upstream_output_path IS NULL
                       OR u.mat_output_path IS DISTINCT FROM lin.upstream_output_path)
            )
            SELECT p.partition, p.partition_user, p.mat_id, p.mat_run_id, p.mat_ms,
                   p.mat_output_path, p.mat_code_version, p.fail_run_id, p.fail_ms,
                   p.fail_reason, p.last_task_state, p.last_run_id,
                   CASE
                     WHEN p.f_ord IS NOT NULL AND (p.m_ord IS NULL OR p.f_ord > p.m_ord)
                       THEN 'FAILED'
                     WHEN p.m_ord IS NULL THEN 'MISSING'
                     WHEN s.asset IS NOT NULL THEN 'STALE'
                     ELSE 'MATERIALIZED'
                   END AS status
            FROM p LEFT JOIN stale s
              ON s.asset = p.asset AND s.partition IS NOT DISTINCT FROM p.partition
            ORDER BY p.partition NULLS FIRST
        """
        rows = r.rows(sql)
    finally:
        if own:
            r.close()
    if declared is None:
        declared = _declared_partitions(ports, asset)
    if declared:
        seen = {row["partition"] for row in rows}
        from servo.projections.fold import partition_user

        for canonical in declared:
            if canonical not in seen:
                rows.append(
                    {
                        "partition": canonical,
                        "partition_user": partition_user(canonical),
                        "status": "MISSING",
                    }
                )
    return [
        {
            "partition": row.get("partition_user"),
            "partition_key": row.get("partition"),
            "status": row["status"],
            "materialized_ms": row.get("mat_ms"),
            "run_id": row.get("mat_run_id"),
            "output_path": row.get("mat_output_path"),
            "code_version": row.get("mat_code_version"),
            "failed_ms": row.get("fail_ms"),
            "failed_run_id": row.get("fail_run_id"),
            "failure": row.get("fail_reason"),
        }
        for row in rows
    ]


def asset_view(
    ports: Ports,
    asset: str,
    *,
    materializations: int = 20,
    reader: ProjectionReader | None = None,
) -> dict[str, Any]:
    """An asset: its latest materializations (with the upstream ones each read), partition
    status counts and list, and the latest result of each check per partition."""
    own = reader is None
    r = reader or ProjectionReader(ports)
    try:
        key = f"asset = {_quote_literal(asset)}"
        mats = r.rows(
            f"SELECT * FROM {r.relation('materializations', key)} "
            f"ORDER BY ord DESC LIMIT {int(materializations)}"
        )
        total = r.rows(f"SELECT count(*) AS n FROM {r.relation('materializations', key)}")[0]["n"]
        ids = [m["id"] for m in mats]
        upstream: dict[str, list[dict[str, Any]]] = {}
        if ids:
            placeholders = ", ".join("?" for _ in ids)
            for row in r.rows(
                f"""SELECT l.id, l.upstream_asset, l.upstream_partition, l.upstream_output_path,
                           m.id AS upstream_id
                    FROM {r.relation("lineage", key)} l
                    LEFT JOIN {r.relation("materializations")} m
                      ON m.output_path = l.upstream_output_path
                    WHERE l.id IN ({placeholders})
                    ORDER BY l.upstream_asset, l.upstream_partition""",
                ids,
            ):
                upstream.setdefault(row["id"], []).append(
                    {
                        "asset": row["upstream_asset"],
                        "partition": row["upstream_partition"],
                        "output_path": row["upstream_output_path"],
                        "materialization_id": row["upstream_id"],
                    }
                )
        checks = r.rows(
            f"SELECT * FROM {r.relation('checks', key)} ORDER BY check_name, partition NULLS FIRST"
        )
        partitions = partition_status(ports, asset, reader=r)
    finally:
        if own:
            r.close()
    if not mats and not partitions and not checks:
        known = _declared_partitions(ports, asset) is not None or _is_declared(ports, asset)
        if not known:
            raise NotFound(
                f"asset {asset} has no recorded history and is not in the deployed code; "
                "check the key (`servo validate` lists assets)"
            )
    counts = dict.fromkeys(PARTITION_STATUSES, 0)
    for p in partitions:
        counts[p["status"]] += 1
    return {
        "asset": asset,
        "materialization_count": int(total),
        "materializations": [
            {
                "id": m["id"],
                "partition": m["partition_user"],
                "run_id": m["run_id"],
                "task_id": m["task_id"],
                "attempt": m["attempt"],
                "time_ms": m["time_ms"],
                "output_path": m["output_path"],
                "size": m["size"],
                "code_version": m["code_version"],
                "metadata": _json(m["metadata"], {}),
                "upstream": upstream.get(m["id"], []),
            }
            for m in mats
        ],
        "partition_counts": counts,
        "partitions": partitions,
        "checks": [
            {
                "check": c["check_name"],
                "partition": c["partition"],
                "passed": c["passed"],
                "severity": c["severity"],
                "blocking": c["blocking"],
                "description": c["description"],
                "metadata": _json(c["metadata"], {}),
                "run_id": c["run_id"],
                "time_ms": c["time_ms"],
            }
            for c in checks
        ],
    }


def _is_declared(ports: Ports, asset: str) -> bool:
    from servo.control.deploy import current_code_version, load_manifest

    try:
        cv = current_code_version(ports)
        return cv is not None and asset in load_manifest(ports, cv).assets_by_key
    except ServoError:
        return False


def run_counts(ports: Ports, *, reader: ProjectionReader | None = None) -> dict[str, int]:
    """How many runs are in each state (for metrics)."""
    own = reader is None
    r = reader or ProjectionReader(ports)
    try:
        rows = r.rows(
            f"SELECT state, count(*) AS n FROM {r.relation('runs')} "
            "WHERE created_ms IS NOT NULL GROUP BY state ORDER BY state"
        )
    finally:
        if own:
            r.close()
    return {str(row["state"]): int(row["n"]) for row in rows}
