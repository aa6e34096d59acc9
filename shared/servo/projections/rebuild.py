"""Rebuild: recompute every projection table from the ledger alone and compare it with the
published one (and replace the published one when they differ or cannot be read)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from servo.core.errors import ServoError
from servo.core.events import to_ms
from servo.ports import Ports
from servo.projections.compaction import CompactionSettings, Compactor
from servo.projections.fold import connect, merge_sql
from servo.projections.schema import TABLE_SPECS, TableSpec
from servo.projections.store import Pointer, ProjectionStore


@dataclass
class TableCheck:
    """One table: its published and rebuilt row counts, and whether they are equal."""

    name: str
    version: int
    published_rows: int | None
    rebuilt_rows: int
    equal: bool
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.name,
            "version": self.version,
            "published_rows": self.published_rows,
            "rebuilt_rows": self.rebuilt_rows,
            "equal": self.equal,
            "problem": self.problem,
        }


@dataclass
class RebuildReport:
    """The outcome of :func:`rebuild_projections`."""

    watermark: int
    events: int
    tables: list[TableCheck] = field(default_factory=list)
    repaired: bool = False
    had_pointer: bool = True

    @property
    def equal(self) -> bool:
        return self.had_pointer and all(t.equal for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "events": self.events,
            "equal": self.equal,
            "repaired": self.repaired,
            "had_pointer": self.had_pointer,
            "tables": [t.to_json() for t in self.tables],
        }


def published_table(
    con: duckdb.DuckDBPyConnection, store: ProjectionStore, pointer: Pointer, spec: TableSpec
) -> pa.Table:
    """The merged rows of one table of ``pointer`` (retention applied), in canonical order."""
    paths = [f.path for f in pointer.table_files(spec.name)]
    source, registered = store.source(con, spec, paths)
    try:
        if spec.name == "events" and pointer.events_before_ms is not None:
            source = f"(SELECT * FROM {source} WHERE time_ms >= {int(pointer.events_before_ms)})"
        return con.sql(merge_sql(spec, source)).to_arrow_table().cast(spec.schema)
    finally:
        for name in registered:
            con.unregister(name)


def _canonical(con: duckdb.DuckDBPyConnection, spec: TableSpec, table: pa.Table) -> pa.Table:
    name = f"__canon_{spec.name}"
    con.register(name, table)
    try:
        return con.sql(merge_sql(spec, name)).to_arrow_table().cast(spec.schema)
    finally:
        con.unregister(name)


def rebuild_projections(
    ports: Ports, *, repair: bool = True, settings: CompactionSettings | None = None
) -> RebuildReport:
    """Fold the ledger up to the published watermark, compare table by table, and (with
    ``repair``) publish the rebuilt tables when anything differs or cannot be read."""
    compactor = Compactor(ports, settings)
    store = compactor.store
    con = connect()
    try:
        for _ in range(5):
            pointer, generation = store.load_pointer()
            upto = (
                pointer.watermark
                if pointer is not None
                else ports.ledger.last_seq(compactor.stream)
            )
            events_before = pointer.events_before_ms if pointer is not None else None
            rebuilt, stats = compactor.fold_ledger(upto, events_before)
            report = RebuildReport(
                watermark=upto, events=stats.events, had_pointer=pointer is not None
            )
            for name, spec in TABLE_SPECS.items():
                mine = _canonical(con, spec, rebuilt[name])
                check = TableCheck(name, spec.version, None, mine.num_rows, False)
                if pointer is None:
                    check.problem = "nothing is published yet"
                elif (
                    pointer.tables.get(name) is None or pointer.tables[name].version != spec.version
                ):
                    check.problem = f"the published table is not at version {spec.version}"
                else:
                    try:
                        theirs = published_table(con, store, pointer, spec)
                    except (duckdb.Error, OSError, ServoError, pa.ArrowException) as exc:
                        check.problem = f"the published files cannot be read: {exc}"
                    else:
                        check.published_rows = theirs.num_rows
                        check.equal = theirs.equals(mine)
                        if not check.equal:
                            check.problem = "the published rows differ from the ledger's"
                report.tables.append(check)
            if report.equal or not repair:
                return report
            now_ms = to_ms(ports.clock.now())
            if compactor.publish_tables(
                rebuilt,
                pointer,
                generation,
                upto,
                events_before,
                pointer.logs_before_ms if pointer is not None else None,
                stats,
                now_ms,
            ):
                report.repaired = True
                return report
        raise ServoError(
            "rebuilding the projections kept losing the race with another compaction; stop "
            "the other control plane (or wait for it to finish) and run the rebuild again"
        )
    finally:
        con.close()
