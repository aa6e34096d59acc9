"""Compaction: fold new ledger segments into the Parquet projections and publish them.

One step reads the pointer, folds the segments after its watermark into one small delta file
per table, merges files when a level fills up, and publishes a new pointer with a generation
precondition. The cost of a step is proportional to the new events; merging is size-tiered
(``fanout`` files of a level become one file of the next level), so every row is rewritten
O(log_fanout(history)) times in total and a table is at most ``fanout - 1`` files per level.

Safety:

* files are immutable and written before the pointer that names them; the pointer is replaced
  only if it is still the generation the step started from, so two compactors racing publish
  one after the other, each on top of the other's view — never a torn or regressed one (the
  watermark and epoch of a published pointer only grow);
* a loser deletes what it wrote and tries again from the winner's pointer;
* files a merge replaces are kept for ``gc_grace_ms`` (a reader may still hold the old
  pointer) and then deleted; files nobody references (a crashed compactor's) are collected by
  the same rule;
* the ledger is only ever read.

Retention: events older than ``events_retention_ms`` leave the ``events`` table (every other
table keeps its summarized history: runs, tasks, attempts, materializations, partitions,
checks), and task logs of attempts that ended before ``logs_retention_ms`` are deleted.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from servo.control.drain import EVENTS_STREAM
from servo.core.errors import ServoError
from servo.core.events import to_ms
from servo.ports import Doc, Ledger, Ports
from servo.projections.fold import (
    EventBatch,
    FoldStats,
    connect,
    fold_batch,
    fold_batches,
    merge_sql,
)
from servo.projections.schema import TABLE_SPECS, TableSpec
from servo.projections.store import FileRef, Pointer, ProjectionStore, TableFiles

DAY_MS = 86_400_000


@dataclass(frozen=True)
class CompactionSettings:
    """How compaction batches, merges and retains (``Ports.settings`` keys in brackets).

    * ``max_segments`` [``compaction_max_segments``]: segments folded per published step;
    * ``fanout`` [``projection_fanout``]: files of one level merged into one of the next;
    * ``gc_grace_ms`` [``projection_gc_grace_s``]: how long a replaced file stays readable;
    * ``events_retention_ms`` [``events_retention_days``]: age after which events leave the
      ``events`` table (None keeps them all);
    * ``logs_retention_ms`` [``logs_retention_days``]: age after which task logs are deleted;
    * ``interval_s`` [``compaction_interval_s``] and ``trigger_segments``
      [``compaction_trigger_segments``]: the local control plane compacts when this much time
      has passed and something is waiting, or at once when this many segments are waiting.
    """

    max_segments: int = 2_000
    fanout: int = 4
    gc_grace_ms: int = 10 * 60_000
    events_retention_ms: int | None = None
    logs_retention_ms: int | None = None
    interval_s: float = 5.0
    trigger_segments: int = 50

    @classmethod
    def of(cls, ports: Ports) -> CompactionSettings:
        s = ports.settings

        def days(key: str) -> int | None:
            value = s.get(key)
            if value is None:
                return None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ServoError(
                    f"setting {key} must be a positive number of days, got {value!r}; "
                    "remove it to keep everything"
                )
            return int(float(value) * DAY_MS)

        defaults = cls()
        return cls(
            max_segments=int(s.get("compaction_max_segments", defaults.max_segments)),
            fanout=max(2, int(s.get("projection_fanout", defaults.fanout))),
            gc_grace_ms=int(
                float(s.get("projection_gc_grace_s", defaults.gc_grace_ms / 1000)) * 1000
            ),
            events_retention_ms=days("events_retention_days"),
            logs_retention_ms=days("logs_retention_days"),
            interval_s=float(s.get("compaction_interval_s", defaults.interval_s)),
            trigger_segments=int(s.get("compaction_trigger_segments", defaults.trigger_segments)),
        )


@dataclass
class CompactionResult:
    """What :func:`compact` did."""

    published: int = 0
    conflicts: int = 0
    segments: int = 0
    merges: int = 0
    collected: int = 0
    logs_deleted: int = 0
    rebuilt: bool = False
    epoch: int = 0
    watermark: int = -1
    lag_segments: int = 0
    stats: FoldStats = field(default_factory=FoldStats)

    def to_json(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "conflicts": self.conflicts,
            "segments": self.segments,
            "merges": self.merges,
            "collected": self.collected,
            "logs_deleted": self.logs_deleted,
            "rebuilt": self.rebuilt,
            "epoch": self.epoch,
            "watermark": self.watermark,
            "lag_segments": self.lag_segments,
            **{f"fold_{k}": v for k, v in self.stats.to_json().items()},
        }


@runtime_checkable
class EncodedLedger(Protocol):
    """A ledger that can hand out its segments as stored (the bytes ``encode_segment``
    wrote), which the fold reads without decoding them in Python."""

    def read_encoded(
        self, stream: str, after_seq: int = -1, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        """``(seq, bytes)`` of the segments after ``after_seq``, in order (as ``read``)."""
        ...


def read_segments(
    ledger: Ledger,
    stream: str,
    batch: EventBatch,
    after_seq: int,
    limit: int | None = None,
    upto_seq: int | None = None,
) -> list[int]:
    """Append the segments of ``stream`` after ``after_seq`` (at most ``limit``, none past
    ``upto_seq``) to ``batch``; returns their sequence numbers. Segments are passed on as
    stored when the ledger can hand them out so, and as events otherwise."""
    last = math.inf if upto_seq is None else upto_seq
    if isinstance(ledger, EncodedLedger):
        encoded = [
            (seq, body)
            for seq, body in ledger.read_encoded(stream, after_seq=after_seq, limit=limit)
            if seq <= last
        ]
        for _, body in encoded:
            batch.add_segment(body)
        return [seq for seq, _ in encoded]
    segments = [s for s in ledger.read(stream, after_seq=after_seq, limit=limit) if s.seq <= last]
    batch.add_events(e for s in segments for e in s.events)
    return [s.seq for s in segments]


def _unique(now_ms: int) -> str:
    return f"{now_ms}-{os.getpid()}-{secrets.token_hex(4)}"


def _created_ms(path: str) -> int | None:
    # <epoch>-L<level>-<ms>-<pid>-<random>.parquet
    parts = path.rsplit("/", 1)[-1].split("-")
    if len(parts) >= 3 and parts[2].isdigit():
        return int(parts[2])
    return None


class Compactor:
    """Compaction of one workspace's ledger into its projections."""

    def __init__(
        self,
        ports: Ports,
        settings: CompactionSettings | None = None,
        *,
        stream: str = EVENTS_STREAM,
    ) -> None:
        self.ports = ports
        self.settings = settings or CompactionSettings.of(ports)
        self.stream = stream
        self.store = ProjectionStore(ports.blobs)

    def _now_ms(self) -> int:
        return to_ms(self.ports.clock.now())

    # -- public ---------------------------------------------------------------------------

    def compact(
        self, *, max_steps: int = 1_000, stop: threading.Event | None = None
    ) -> CompactionResult:
        """Fold everything waiting in the ledger (in steps of ``max_segments``), merge, collect.

        ``stop`` ends the work between two steps (each step is published on its own)."""
        result = CompactionResult()
        con = connect()
        try:
            for _ in range(max_steps):
                if (stop is not None and stop.is_set()) or not self._step(con, result):
                    break
        finally:
            con.close()
        pointer, _ = self.store.load_pointer()
        if pointer is not None:
            result.epoch = pointer.epoch
            result.watermark = pointer.watermark
        result.lag_segments = max(0, self.ports.ledger.last_seq(self.stream) - result.watermark)
        return result

    def lag_segments(self) -> int:
        """Ledger segments written but not yet folded into the published projections."""
        pointer, _ = self.store.load_pointer()
        watermark = pointer.watermark if pointer is not None else -1
        return max(0, self.ports.ledger.last_seq(self.stream) - watermark)

    # -- one step -------------------------------------------------------------------------

    def _cutoffs(self, pointer: Pointer, now_ms: int) -> tuple[int | None, int | None]:
        def advance(previous: int | None, retention: int | None) -> int | None:
            if retention is None:
                return previous
            wanted = now_ms - retention
            # Move in coarse steps so an idle workspace does not publish on every call.
            granule = max(1, min(3_600_000, retention // 10))
            if previous is not None and wanted - previous < granule:
                return previous
            return max(previous or 0, wanted)

        return (
            advance(pointer.events_before_ms, self.settings.events_retention_ms),
            advance(pointer.logs_before_ms, self.settings.logs_retention_ms),
        )

    def _step(self, con: duckdb.DuckDBPyConnection, result: CompactionResult) -> bool:
        """Try to publish one step; True if there may be more to do."""
        pointer, generation = self.store.load_pointer()
        if pointer is None and self.ports.ledger.last_seq(self.stream) < 0:
            return False  # nothing recorded yet
        if pointer is None or not pointer.current():
            published = self._publish_rebuild(con, pointer, generation, result)
            return not published  # a lost race: try again on the winner's pointer
        now_ms = self._now_ms()
        with EventBatch() as batch:
            segments = read_segments(
                self.ports.ledger,
                self.stream,
                batch,
                after_seq=pointer.watermark,
                limit=self.settings.max_segments,
            )
            return self._publish_step(con, result, pointer, generation, segments, batch, now_ms)

    def _publish_step(
        self,
        con: duckdb.DuckDBPyConnection,
        result: CompactionResult,
        pointer: Pointer,
        generation: int,
        segments: list[int],
        batch: EventBatch,
        now_ms: int,
    ) -> bool:
        events_before, logs_before = self._cutoffs(pointer, now_ms)
        due_garbage = [
            g for g in pointer.garbage if int(g["retired_ms"]) <= now_ms - self.settings.gc_grace_ms
        ]
        retention_moved = (events_before, logs_before) != (
            pointer.events_before_ms,
            pointer.logs_before_ms,
        )
        if not segments and not retention_moved and not due_garbage:
            return False

        new = Pointer(
            epoch=pointer.epoch + 1,
            watermark=segments[-1] if segments else pointer.watermark,
            tables={n: TableFiles(t.version, list(t.files)) for n, t in pointer.tables.items()},
            events_before_ms=events_before,
            logs_before_ms=logs_before,
            garbage=[g for g in pointer.garbage if g not in due_garbage],
            stats=dict(pointer.stats),
            published_ms=now_ms,
            writer=f"pid{os.getpid()}",
        )
        written: list[str] = []
        try:
            delta, stats = fold_batch(con, batch)
            for name, table in delta.items():
                if table.num_rows == 0:
                    continue
                spec = TABLE_SPECS[name]
                path = self.store.new_path(spec, new.epoch, 0, _unique(now_ms))
                new.tables[name].files.append(self.store.write(spec, table, path, 0))
                written.append(path)
            merges = self._merge_levels(con, new, now_ms, written)
            logs_deleted = self._expire_logs(con, pointer, new, delta)
        except BaseException:
            self._delete_quietly(written)
            raise
        _add_stats(new.stats, stats)
        if not self.store.publish(new, generation):
            self._delete_quietly(written)
            result.conflicts += 1
            return True
        result.published += 1
        result.segments += len(segments)
        result.merges += merges
        result.logs_deleted += logs_deleted
        result.stats.add(stats)
        for g in due_garbage:
            self.store.delete(str(g["path"]))
            result.collected += 1
        if new.epoch % 50 == 0:
            result.collected += self.collect_orphans(new, now_ms)
        return bool(segments) and len(segments) >= self.settings.max_segments

    def _merge_levels(
        self, con: duckdb.DuckDBPyConnection, pointer: Pointer, now_ms: int, written: list[str]
    ) -> int:
        merges = 0
        fanout = self.settings.fanout
        for name, spec in TABLE_SPECS.items():
            files = pointer.tables[name].files
            while True:
                by_level: dict[int, list[FileRef]] = {}
                for f in files:
                    by_level.setdefault(f.level, []).append(f)
                full = sorted(level for level, fs in by_level.items() if len(fs) >= fanout)
                if not full:
                    break
                level = full[0]
                group = by_level[level]
                table = self._merge_files(con, spec, [f.path for f in group], pointer)
                keep = [f for f in files if f not in group]
                if table.num_rows:
                    path = self.store.new_path(spec, pointer.epoch, level + 1, _unique(now_ms))
                    keep.append(self.store.write(spec, table, path, level + 1))
                    written.append(path)
                for f in group:
                    if f.path in written:
                        # Written in this step and never published: nobody can be reading it.
                        written.remove(f.path)
                        self.store.delete(f.path)
                    else:
                        pointer.garbage.append({"path": f.path, "retired_ms": now_ms})
                files = keep
                merges += 1
            pointer.tables[name].files = files
        return merges

    def _merge_files(
        self,
        con: duckdb.DuckDBPyConnection,
        spec: TableSpec,
        paths: list[str],
        pointer: Pointer,
    ) -> pa.Table:
        source, registered = self.store.source(con, spec, paths)
        try:
            if spec.name == "events" and pointer.events_before_ms is not None:
                source = (
                    f"(SELECT * FROM {source} WHERE time_ms >= {int(pointer.events_before_ms)})"
                )
            return con.sql(merge_sql(spec, source)).to_arrow_table().cast(spec.schema)
        finally:
            for name in registered:
                con.unregister(name)

    def _expire_logs(
        self,
        con: duckdb.DuckDBPyConnection,
        old: Pointer,
        new: Pointer,
        delta: Mapping[str, pa.Table],
    ) -> int:
        cutoff = new.logs_before_ms
        if cutoff is None:
            return 0
        from servo.control.dispatch import log_path

        expired: set[tuple[str, str, int]] = set()
        attempts = delta["attempts"]
        for row in attempts.filter(pc.less(attempts["ended_ms"], cutoff)).to_pylist():
            expired.add((row["run_id"], row["task_id"], int(row["attempt"])))
        previous = old.logs_before_ms or 0
        if cutoff > previous:
            spec = TABLE_SPECS["attempts"]
            paths = [f.path for f in old.table_files("attempts")]
            if paths:
                source, registered = self.store.source(con, spec, paths)
                try:
                    rows = con.sql(
                        f"SELECT DISTINCT run_id, task_id, attempt FROM {source} "
                        f"WHERE ended_ms < {int(cutoff)} AND ended_ms >= {int(previous)}"
                    ).fetchall()
                finally:
                    for name in registered:
                        con.unregister(name)
                expired.update((str(r), str(t), int(a)) for r, t, a in rows)
        for run_id, task_id, attempt in sorted(expired):
            self.ports.blobs.delete(log_path(run_id, task_id, attempt))
        return len(expired)

    def _delete_quietly(self, paths: Iterable[str]) -> None:
        for path in paths:
            with contextlib.suppress(ServoError):
                self.store.delete(path)

    def collect_orphans(self, pointer: Pointer | None = None, now_ms: int | None = None) -> int:
        """Delete projection files that no pointer references any more (a crashed or losing
        compactor's), once they are older than the grace period; returns how many."""
        if pointer is None:
            pointer, _ = self.store.load_pointer()
            if pointer is None:
                return 0
        now_ms = self._now_ms() if now_ms is None else now_ms
        keep = pointer.referenced() | {str(g["path"]) for g in pointer.garbage}
        deleted = 0
        for path in self.store.list_files():
            created = _created_ms(path)
            if path in keep or created is None or created > now_ms - self.settings.gc_grace_ms:
                continue
            self.store.delete(path)
            deleted += 1
        return deleted

    # -- rebuilding -----------------------------------------------------------------------

    def fold_ledger(
        self, upto_seq: int, events_before_ms: int | None
    ) -> tuple[dict[str, pa.Table], FoldStats]:
        """Every table computed from the ledger alone, up to segment ``upto_seq`` (events
        before ``events_before_ms`` left out of the events table)."""

        def batches() -> Iterator[EventBatch]:
            after = -1
            while after < upto_seq:
                batch = EventBatch()
                try:
                    seqs = read_segments(
                        self.ports.ledger,
                        self.stream,
                        batch,
                        after,
                        limit=self.settings.max_segments,
                        upto_seq=upto_seq,
                    )
                except BaseException:
                    batch.close()
                    raise
                if not seqs:
                    batch.close()
                    return
                yield batch
                after = seqs[-1]

        return fold_batches(batches(), events_before_ms=events_before_ms)

    def _publish_rebuild(
        self,
        con: duckdb.DuckDBPyConnection,
        previous: Pointer | None,
        generation: int,
        result: CompactionResult,
    ) -> bool:
        now_ms = self._now_ms()
        upto = self.ports.ledger.last_seq(self.stream)
        base = previous or Pointer()
        events_before, logs_before = self._cutoffs(base, now_ms)
        tables, stats = self.fold_ledger(upto, events_before)
        if logs_before is not None:
            expiring = Pointer(logs_before_ms=logs_before)
            result.logs_deleted += self._expire_logs(con, Pointer(), expiring, tables)
        published = self.publish_tables(
            tables, previous, generation, upto, events_before, logs_before, stats, now_ms
        )
        if published:
            result.published += 1
            result.rebuilt = True
            result.stats.add(stats)
        else:
            result.conflicts += 1
        return published

    def publish_tables(
        self,
        tables: Mapping[str, pa.Table],
        previous: Pointer | None,
        generation: int,
        watermark: int,
        events_before_ms: int | None,
        logs_before_ms: int | None,
        stats: FoldStats,
        now_ms: int,
    ) -> bool:
        """Publish ``tables`` (complete, merged) as the whole view at ``watermark``."""
        epoch = (previous.epoch if previous is not None else 0) + 1
        top = _top_level(sum(t.num_rows for t in tables.values()), self.settings.fanout)
        pointer = Pointer(
            epoch=epoch,
            watermark=watermark,
            events_before_ms=events_before_ms,
            logs_before_ms=logs_before_ms,
            garbage=list(previous.garbage) if previous is not None else [],
            stats={"events": stats.events, "duplicates": stats.duplicates},
            published_ms=now_ms,
            writer=f"pid{os.getpid()}",
        )
        if previous is not None:
            for path in sorted(previous.referenced()):
                pointer.garbage.append({"path": path, "retired_ms": now_ms})
        written: list[str] = []
        try:
            for name, spec in TABLE_SPECS.items():
                files: list[FileRef] = []
                table = tables[name]
                if table.num_rows:
                    path = self.store.new_path(spec, epoch, top, _unique(now_ms))
                    files.append(self.store.write(spec, table, path, top))
                    written.append(path)
                pointer.tables[name] = TableFiles(spec.version, files)
        except BaseException:
            self._delete_quietly(written)
            raise
        if not self.store.publish(pointer, generation):
            self._delete_quietly(written)
            return False
        return True


def _top_level(rows: int, fanout: int) -> int:
    # A rebuilt table is one file holding everything: give it a level above the deltas that
    # will follow, so it is merged only once that many deltas have accumulated.
    return max(1, math.ceil(math.log(max(rows, 2), fanout)))


def _add_stats(stats: dict[str, Any], folded: FoldStats) -> None:
    stats["events"] = int(stats.get("events", 0)) + folded.events
    stats["duplicates"] = int(stats.get("duplicates", 0)) + folded.duplicates


def compact(ports: Ports, *, settings: CompactionSettings | None = None) -> CompactionResult:
    """Fold everything waiting in the ledger into the projections (see :class:`Compactor`)."""
    return Compactor(ports, settings).compact()


class CompactionSchedule:
    """When the local control plane should compact: every ``interval_s`` while something is
    waiting, and at once when ``trigger_segments`` segments are waiting."""

    def __init__(self, ports: Ports, settings: CompactionSettings | None = None) -> None:
        self.compactor = Compactor(ports, settings)
        self._last = 0.0

    def maybe_compact(self, stop: threading.Event | None = None) -> CompactionResult | None:
        """Compact if it is due; returns what was done, or None."""
        settings = self.compactor.settings
        lag = self.compactor.lag_segments()
        now = time.monotonic()
        due = now - self._last >= settings.interval_s
        if lag == 0 and not due:
            return None
        if lag < settings.trigger_segments and not due:
            return None
        self._last = now
        return self.compactor.compact(stop=stop)


def outbox_events(ports: Ports) -> list[Doc]:
    """Events committed but not yet drained into the ledger (the freshest part of the tail)."""
    from servo.control.uow import OUTBOX

    return [e for _, doc in ports.state.query(OUTBOX, order_by="created_ms") for e in doc["events"]]


class BackgroundCompaction:
    """Compaction on its own thread, so a long first fold never delays the sweep or drain."""

    def __init__(
        self, ports: Ports, settings: CompactionSettings | None = None, *, poll_s: float = 0.5
    ) -> None:
        self.schedule = CompactionSchedule(ports, settings)
        self.poll_s = poll_s
        self.last_result: CompactionResult | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundCompaction:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="servo-compaction", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _loop(self) -> None:
        import logging

        log = logging.getLogger("servo.projections")
        while not self._stop.is_set():
            try:
                result = self.schedule.maybe_compact(self._stop)
                if result is not None:
                    self.last_result = result
                    self.last_error = None
            except Exception as exc:
                self.last_error = str(exc)
                log.exception("compaction failed; retrying")
            self._stop.wait(self.poll_s)
