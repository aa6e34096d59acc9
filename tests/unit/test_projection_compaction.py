"""Compaction publishes consistent views (fencing), rebuild repairs damaged projections
(E10, G8), retention trims events and logs but never the ledger."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from servo.adapters.embedded import open_embedded
from servo.core.errors import NotFound
from servo.ports import Ports
from servo.projections.compaction import CompactionSettings, Compactor
from servo.projections.fold import fold
from servo.projections.query import ProjectionReader, run_events
from servo.projections.rebuild import published_table, rebuild_projections
from servo.projections.schema import TABLE_SPECS
from servo.projections.store import POINTER_PATH
from servo.projections.synthetic import synthetic_runs
from servo.testing.clock import ManualClock


def _ports(tmp_path: Path, clock: Any = None) -> Ports:
    ports = open_embedded(tmp_path / "home")
    if clock is not None:
        ports.clock = clock
    return ports


def _record(ports: Ports, events: list[dict[str, Any]], per_segment: int = 50) -> None:
    start = ports.ledger.last_seq("events") + 1
    for i in range(0, len(events), per_segment):
        ports.ledger.append("events", start + i // per_segment, events[i : i + per_segment])


def _published(ports: Ports) -> dict[str, Any]:
    compactor = Compactor(ports)
    pointer, _ = compactor.store.load_pointer()
    assert pointer is not None
    con = duckdb.connect()
    return {n: published_table(con, compactor.store, pointer, s) for n, s in TABLE_SPECS.items()}


class PausingBlobs:
    """Blobs that stop one chosen thread just before it replaces the projection pointer, so a
    test can make two compactions overlap exactly there."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.root = inner.root
        self.paused_thread: int | None = None
        self.reached = threading.Event()
        self.release = threading.Event()

    def put(self, path: str, data: bytes, *, if_generation: int | None = None) -> int:
        if path == POINTER_PATH and threading.get_ident() == self.paused_thread:
            self.reached.set()
            assert self.release.wait(60)
        return int(self.inner.put(path, data, if_generation=if_generation))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_two_racing_compactions_publish_one_consistent_view(tmp_path: Path) -> None:
    ports = _ports(tmp_path)
    blobs = PausingBlobs(ports.blobs)
    ports.blobs = blobs  # type: ignore[assignment]
    events = list(synthetic_runs(4, 30, seed=1))
    _record(ports, events[: len(events) // 2])
    Compactor(ports).compact()  # the first publication (a full fold)
    _record(ports, events[len(events) // 2 :])

    results: dict[str, Any] = {}

    def slow() -> None:
        blobs.paused_thread = threading.get_ident()
        results["slow"] = Compactor(ports, CompactionSettings(fanout=2)).compact()

    thread = threading.Thread(target=slow)
    thread.start()
    assert blobs.reached.wait(60), "the slow compaction never got to publishing"
    before, _ = Compactor(ports).store.load_pointer()
    results["fast"] = Compactor(ports, CompactionSettings(fanout=2)).compact()
    after, _ = Compactor(ports).store.load_pointer()
    blobs.release.set()
    thread.join(60)

    assert results["fast"].published == 1
    assert results["slow"].conflicts == 1, "the slow one lost the pointer race"
    assert results["slow"].published == 0, "…and found nothing left to publish"
    final, _ = Compactor(ports).store.load_pointer()
    assert before is not None and after is not None and final is not None
    assert final.epoch == after.epoch == before.epoch + 1
    assert final.watermark == ports.ledger.last_seq("events")
    whole = fold(events)
    for name, table in _published(ports).items():
        assert table.equals(whole[name]), name
    # The loser removed what it wrote: every file left is referenced (or awaiting collection).
    store = Compactor(ports).store
    keep = final.referenced() | {g["path"] for g in final.garbage}
    assert set(store.list_files()) == keep


def test_concurrent_compactors_never_regress_the_published_view(tmp_path: Path) -> None:
    ports = _ports(tmp_path)
    events = list(synthetic_runs(6, 20, seed=2))
    _record(ports, events, per_segment=10)
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def watch() -> None:
        store = Compactor(ports).store
        while not stop.is_set():
            pointer, _ = store.load_pointer()
            if pointer is not None:
                seen.append((pointer.epoch, pointer.watermark))

    def work() -> None:
        Compactor(ports, CompactionSettings(max_segments=3, fanout=2)).compact()

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=work) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    stop.set()
    watcher.join(10)
    assert seen == sorted(seen), "epochs and watermarks only grow"
    assert rebuild_projections(ports, repair=False).equal


def test_rebuild_detects_and_repairs_a_deleted_or_corrupted_file(tmp_path: Path) -> None:
    ports = _ports(tmp_path)
    events = list(synthetic_runs(3, 25, seed=3))
    _record(ports, events)
    Compactor(ports).compact()
    report = rebuild_projections(ports, repair=False)
    assert report.equal and report.events == len(events)

    store = Compactor(ports).store
    pointer, _ = store.load_pointer()
    assert pointer is not None
    tasks_file = pointer.tables["tasks"].files[0].path
    runs_file = pointer.tables["runs"].files[0].path
    store.delete(tasks_file)
    (store.local_root / runs_file).write_bytes(b"PAR1 not really parquet")  # type: ignore[operator]

    damaged = rebuild_projections(ports, repair=False)
    problems = {t.name: t.problem for t in damaged.tables if not t.equal}
    assert set(problems) == {"tasks", "runs"}
    assert all("cannot be read" in (p or "") for p in problems.values())

    repaired = rebuild_projections(ports)
    assert repaired.repaired and not repaired.equal
    assert rebuild_projections(ports, repair=False).equal
    whole = fold(events)
    for name, table in _published(ports).items():
        assert table.equals(whole[name]), name


def test_rebuild_detects_rows_that_differ_from_the_ledger(tmp_path: Path) -> None:
    ports = _ports(tmp_path)
    _record(ports, list(synthetic_runs(2, 10, seed=4)))
    Compactor(ports).compact()
    store = Compactor(ports).store
    pointer, generation = store.load_pointer()
    assert pointer is not None
    # A projection that lost a run (as if written by a buggy or older compactor).
    con = duckdb.connect()
    spec = TABLE_SPECS["runs"]
    runs = published_table(con, store, pointer, spec)
    path = store.new_path(spec, pointer.epoch + 1, 0, "tampered-0-0")
    pointer.tables["runs"].files = [store.write(spec, runs.slice(0, 1), path, 0)]
    pointer.epoch += 1
    assert store.publish(pointer, generation)
    report = rebuild_projections(ports, repair=False)
    (bad,) = [t for t in report.tables if not t.equal]
    assert (bad.name, bad.published_rows, bad.rebuilt_rows) == ("runs", 1, 2)
    assert rebuild_projections(ports).repaired
    assert rebuild_projections(ports, repair=False).equal


def test_a_table_version_change_rebuilds_from_the_ledger(tmp_path: Path) -> None:
    ports = _ports(tmp_path)
    _record(ports, list(synthetic_runs(2, 10, seed=5)))
    Compactor(ports).compact()
    store = Compactor(ports).store
    pointer, generation = store.load_pointer()
    assert pointer is not None
    pointer.tables["tasks"].version = 0  # as written by an older Servo
    pointer.epoch += 1
    assert store.publish(pointer, generation)
    result = Compactor(ports).compact()
    assert result.rebuilt
    assert rebuild_projections(ports, repair=False).equal


def test_retention_trims_events_and_logs_but_keeps_history_and_ledger(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 1, tzinfo=UTC))
    ports = _ports(tmp_path, clock)
    now_ms = int(clock.now().timestamp() * 1000)
    old = list(synthetic_runs(2, 5, seed=6, start_ms=now_ms - 40 * 86_400_000))
    recent = list(synthetic_runs(1, 5, seed=7, start_ms=now_ms - 3_600_000))
    for e in recent:
        e["id"] = "n" + e["id"]
        e["run_id"] = "new-" + e["run_id"]
    _record(ports, old + recent)
    for e in old + recent:
        if e["type"] == "servo.task.state_changed" and e["data"]["to"] == "SUCCEEDED":
            ports.blobs.put(f"logs/{e['run_id']}/{e['task_id']}/{e['attempt']}.log", b"log")
    ports.settings = {"events_retention_days": 30, "logs_retention_days": 7}
    segments_before = ports.ledger.read("events")
    Compactor(ports).compact()

    with ProjectionReader(ports) as reader:
        kept = reader.rows(f"SELECT DISTINCT run_id FROM {reader.relation('events')}")
        runs = reader.rows(f"SELECT run_id, state FROM {reader.relation('runs')}")
    assert {r["run_id"] for r in kept} == {"new-r00000000"}, "old events left the events table"
    assert len(runs) == 3, "…but every run is still summarized"
    assert run_events(ports, "r00000000") == []
    logs = ports.blobs.list("logs/")
    assert logs and all(p.startswith("logs/new-") for p in logs), "only recent logs remain"
    assert ports.ledger.read("events") == segments_before, "the ledger is never touched"
    assert rebuild_projections(ports, repair=False).equal


def test_garbage_is_collected_only_after_the_grace_period(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 1, tzinfo=UTC))
    ports = _ports(tmp_path, clock)
    settings = CompactionSettings(max_segments=1, fanout=2, gc_grace_ms=60_000)
    events = list(synthetic_runs(4, 5, seed=8))
    _record(ports, events[:20], per_segment=20)
    Compactor(ports, settings).compact()  # the first publication folds everything at once
    _record(ports, events[20:], per_segment=20)
    Compactor(ports, settings).compact()  # then one delta per segment, merged in pairs
    store = Compactor(ports).store
    pointer, _ = store.load_pointer()
    assert pointer is not None and pointer.garbage, "merges retired files"
    retired = [g["path"] for g in pointer.garbage]
    assert all(store.blobs.exists(p) for p in retired), "still readable during the grace period"
    clock.advance(120)
    later = list(synthetic_runs(1, 2, seed=9, start_ms=2_000_000_000_000))
    for e in later:
        e["id"] = "later-" + e["id"]
    _record(ports, later)
    Compactor(ports, settings).compact()
    assert not any(store.blobs.exists(p) for p in retired)
    with pytest.raises(NotFound):
        store.blobs.get(retired[0])
    assert rebuild_projections(ports, repair=False).equal
