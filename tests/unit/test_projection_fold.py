"""projection = fold(ledger) (E10, G8): the fold depends only on the set of events.

Random histories are folded whole, shuffled with duplicates, split into pieces merged later,
and compacted incrementally through a real ledger; every way gives the same tables, and they
agree with a direct model of what each row should say.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servo.adapters.embedded import open_embedded
from servo.adapters.embedded.ledger import stream_directory
from servo.adapters.segments import encode_segment
from servo.core import events as ev
from servo.projections import compaction
from servo.projections.compaction import CompactionSettings, Compactor
from servo.projections.fold import (
    EventBatch,
    event_batch,
    fold,
    fold_batch,
    fold_batches,
    fold_with_stats,
    reduce_tables,
)
from servo.projections.rebuild import published_table, rebuild_projections
from servo.projections.schema import TABLE_SPECS
from servo.projections.synthetic import synthetic_runs

RUNS = ["r1", "r2", "r3"]
TASKS = ["ta", "tb", "tc"]
ASSETS = ["x", "y"]
PARTS = [None, "2024-01-01", "2024-01-02"]
TASK_STATES = ["READY", "DISPATCHED", "RUNNING", "RETRY_WAIT", "SUCCEEDED", "FAILED", "SKIPPED"]
RUN_STATES = ["STARTING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED"]


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=0, max_value=40))
    out: list[dict[str, Any]] = []
    for i in range(n):
        kind = draw(st.sampled_from(["created", "run", "task", "task", "mat", "check"]))
        run = draw(st.sampled_from(RUNS))
        task = draw(st.sampled_from(TASKS))
        asset = draw(st.sampled_from(ASSETS))
        part = draw(st.sampled_from(PARTS))
        base = {
            "id": f"e{i:04d}",
            "specversion": 1,
            "source": "test",
            "time_ms": draw(st.integers(min_value=0, max_value=50)),
            "tenant": "default",
            "workspace": "default",
            "run_id": run,
            "task_id": None,
            "attempt": None,
            "correlation_id": run,
            "causation_id": None,
            "actor": "system",
            # Small ranges make ties in lc and time (broken by id) common.
            "lc": draw(st.integers(min_value=0, max_value=6)),
            "seq": 0,
        }
        if kind == "created":
            out.append(
                {
                    **base,
                    "type": ev.RUN_CREATED,
                    "data": {"selection": asset, "task_count": 3, "tags": {"k": run}},
                }
            )
        elif kind == "run":
            out.append(
                {
                    **base,
                    "type": ev.RUN_STATE,
                    "data": {"from": "QUEUED", "to": draw(st.sampled_from(RUN_STATES))},
                }
            )
        elif kind == "task":
            to = draw(st.sampled_from(TASK_STATES))
            out.append(
                {
                    **base,
                    "type": ev.TASK_STATE,
                    "task_id": task,
                    "attempt": draw(st.integers(min_value=1, max_value=3)),
                    "data": {
                        "asset": asset,
                        "partition": part,
                        "from": draw(st.sampled_from(TASK_STATES)),
                        "to": to,
                        "event": "FAIL" if to in ("FAILED", "RETRY_WAIT") else "X",
                        "reason": f"r{i}",
                    },
                }
            )
        elif kind == "mat":
            out.append(
                {
                    **base,
                    "type": ev.MATERIALIZATION,
                    "task_id": task,
                    "attempt": 1,
                    "data": {
                        "asset": asset,
                        "partition": part,
                        "output_path": f"o/{i}",
                        "inputs": [{"asset": "u", "partition": part, "output_path": f"u/{i}"}],
                    },
                }
            )
        else:
            out.append(
                {
                    **base,
                    "type": ev.CHECK_EVALUATED,
                    "task_id": task,
                    "data": {
                        "asset": asset,
                        "partition": part,
                        "name": "c",
                        "passed": draw(st.booleans()),
                    },
                }
            )
    return out


def _delivered(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The events shuffled, some delivered twice or three times (at-least-once)."""
    rng = random.Random(seed)
    copies = [e for e in events for _ in range(rng.choice([1, 1, 2, 3]))]
    rng.shuffle(copies)
    return copies


def _key(e: dict[str, Any]) -> tuple[int, int, str]:
    return (e["lc"], e["time_ms"], e["id"])


def _same(a: dict[str, pa.Table], b: dict[str, pa.Table]) -> None:
    for name in TABLE_SPECS:
        assert a[name].equals(b[name]), f"table {name} differs"


@given(histories(), st.integers(min_value=0, max_value=10_000))
@settings(max_examples=30, deadline=None)
def test_fold_ignores_order_and_duplicates(events: list[dict[str, Any]], seed: int) -> None:
    _same(fold(events), fold(_delivered(events, seed)))


@given(histories(), st.integers(min_value=0, max_value=10_000), st.integers(1, 5))
@settings(max_examples=30, deadline=None)
def test_merging_folded_pieces_equals_folding_everything(
    events: list[dict[str, Any]], seed: int, pieces: int
) -> None:
    delivered = _delivered(events, seed)
    rng = random.Random(seed)
    cuts = sorted(rng.randrange(len(delivered) + 1) for _ in range(pieces - 1))
    chunks = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)], strict=True)]
    con = duckdb.connect()
    # Each piece folded on its own (its own dedupe), then merged as compaction merges files.
    folded = [fold(chunk) for chunk in chunks]
    merged = {
        name: reduce_tables(con, spec, [f[name] for f in folded])
        for name, spec in TABLE_SPECS.items()
    }
    whole = fold(events)
    for name in TABLE_SPECS:
        assert merged[name].equals(whole[name]), f"table {name} differs"


@given(histories())
@settings(max_examples=40, deadline=None)
def test_fold_agrees_with_a_direct_model(events: list[dict[str, Any]]) -> None:
    tables = fold(events)
    runs = {r["run_id"]: r for r in tables["runs"].to_pylist()}
    for run_id in RUNS:
        mine = [
            e
            for e in events
            if e["run_id"] == run_id and e["type"] in (ev.RUN_CREATED, ev.RUN_STATE)
        ]
        if not mine:
            assert run_id not in runs
            continue
        last = max(mine, key=_key)
        expected = "QUEUED" if last["type"] == ev.RUN_CREATED else last["data"]["to"]
        assert runs[run_id]["state"] == expected
        created = [e for e in mine if e["type"] == ev.RUN_CREATED]
        assert runs[run_id]["created_ms"] == (
            max(created, key=_key)["time_ms"] if created else None
        )

    tasks = {(t["run_id"], t["task_id"]): t for t in tables["tasks"].to_pylist()}
    task_events = [e for e in events if e["type"] == ev.TASK_STATE]
    assert set(tasks) == {(e["run_id"], e["task_id"]) for e in task_events}
    for key, row in tasks.items():
        mine = [e for e in task_events if (e["run_id"], e["task_id"]) == key]
        last = max(mine, key=_key)
        assert row["state"] == last["data"]["to"]
        assert row["reason"] == last["data"]["reason"]
        assert row["attempt"] == max(e["attempt"] for e in mine)

    mats = [e for e in events if e["type"] == ev.MATERIALIZATION]
    assert tables["materializations"].num_rows == len(mats)
    parts = {(p["asset"], p["partition"]): p for p in tables["partitions"].to_pylist()}
    for (asset, part), row in parts.items():
        mine = [e for e in mats if (e["data"]["asset"], e["data"]["partition"]) == (asset, part)]
        assert row["mat_id"] == (max(mine, key=_key)["id"] if mine else None)
        failed = [
            e
            for e in task_events
            if (e["data"]["asset"], e["data"]["partition"]) == (asset, part)
            and e["data"]["to"] == "FAILED"
        ]
        assert row["fail_run_id"] == (max(failed, key=_key)["run_id"] if failed else None)

    checks = {(c["asset"], c["partition"]): c for c in tables["checks"].to_pylist()}
    for (asset, part), row in checks.items():
        mine = [
            e
            for e in events
            if e["type"] == ev.CHECK_EVALUATED
            and (e["data"]["asset"], e["data"]["partition"]) == (asset, part)
        ]
        assert row["passed"] == max(mine, key=_key)["data"]["passed"]
    assert tables["events"].num_rows == len(events)
    assert tables["events"]["id"].to_pylist() == [
        e["id"] for e in sorted(events, key=lambda e: (e["run_id"] or "", *_key(e)))
    ]


@given(
    histories(),
    st.integers(min_value=0, max_value=10_000),
    st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=8),
)
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_incremental_compaction_publishes_the_fold_of_the_ledger(
    events: list[dict[str, Any]], seed: int, steps: list[int]
) -> None:
    """Segments (with duplicates across them) compacted a few at a time, with merges at every
    second file, publish the same tables as folding the whole ledger at once."""
    delivered = _delivered(events, seed)
    with tempfile.TemporaryDirectory() as tmp:
        ports = open_embedded(Path(tmp))
        compactor = Compactor(ports, CompactionSettings(max_segments=2, fanout=2, gc_grace_ms=0))
        seq = 0
        position = 0
        for size in steps:
            for _ in range(size):
                batch = delivered[position : position + 3]
                position += 3
                ports.ledger.append("events", seq, batch)
                seq += 1
            compactor.compact()
        ports.ledger.append("events", seq, delivered[position:])
        compactor.compact()
        report = rebuild_projections(ports, repair=False)
        assert report.equal, [t.to_json() for t in report.tables if not t.equal]
        pointer, _ = compactor.store.load_pointer()
        assert pointer is not None and pointer.watermark == seq
        con = duckdb.connect()
        whole = fold(events)
        for name, spec in TABLE_SPECS.items():
            assert published_table(con, compactor.store, pointer, spec).equals(whole[name]), name
        # Every file the pointer names exists; nothing unreferenced is left after collection.
        compactor.collect_orphans()
        on_disk = set(compactor.store.list_files())
        assert pointer.referenced() <= on_disk


class EncodedLedger:
    """A file ledger that also hands out its segments as stored (``read_encoded``), which
    compaction then reads without decoding them in Python."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def read_encoded(
        self, stream: str, after_seq: int = -1, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        seqs = [s.seq for s in self.inner.read(stream, after_seq=after_seq, limit=limit)]
        directory = stream_directory(self.inner.root, stream)
        return [(seq, (directory / f"{seq:012d}.json").read_bytes()) for seq in seqs]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _odd(events: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Some events with values of the wrong type, as an older or buggy writer might leave."""
    odd: list[Any] = [
        {"lc": "7"},
        {"lc": 2.5, "time_ms": 9.75},
        {"time_ms": "soon", "time": "2026-01-01T00:00:01.500Z"},
        {"attempt": True, "seq": "3"},
        {"run_id": 17, "actor": {"user": "x"}},
        {"specversion": "1", "dataversion": "1"},
        {"dataversion": 99},
        {"data": None},
        {"data": [1, "two"]},
        {"data": {"asset": "x", "partition": "d=2024-01-01,r=eu", "to": "FAILED", "é": "☃"}},
        {"id": 5},
        {"type": None},
    ]
    return [{**e, **rng.choice(odd)} if rng.random() < 0.3 else e for e in events]


@given(histories(), st.integers(min_value=0, max_value=10_000))
@settings(max_examples=25, deadline=None)
def test_segments_as_stored_fold_like_their_events_as_dicts(
    events: list[dict[str, Any]], seed: int
) -> None:
    """Events read by Arrow from dicts, and the same events read by DuckDB from a segment's
    bytes (gzip-compressed JSON), odd values included, give the same tables, byte for byte."""
    rng = random.Random(seed)
    delivered = _odd(_delivered(events, seed), rng)
    con = duckdb.connect()
    with EventBatch() as batch:
        # One event at a time: each odd one goes the JSON way, the others the Arrow way.
        for event in delivered:
            batch.add_events([event])
        assert batch.tables or not any(e in events for e in delivered)
        as_dicts, dict_stats = fold_batch(con, batch)
    with EventBatch() as batch:
        for start in range(0, len(delivered), 5):
            batch.add_segment(encode_segment("events", start, delivered[start : start + 5]))
        as_segments, segment_stats = fold_batch(con, batch)
    _same(as_dicts, as_segments)
    assert dict_stats == segment_stats


def test_compaction_reads_segments_as_stored_when_the_ledger_hands_them_out(
    tmp_path: Path,
) -> None:
    events = _delivered(list(synthetic_runs(3, 20, seed=11)), 3)
    homes = {}
    for kind in ("decoded", "encoded"):
        ports = open_embedded(tmp_path / kind)
        if kind == "encoded":
            ports.ledger = EncodedLedger(ports.ledger)  # type: ignore[assignment]
            assert isinstance(ports.ledger, compaction.EncodedLedger)
        for seq, start in enumerate(range(0, len(events), 40)):
            ports.ledger.append("events", seq, events[start : start + 40])
        settings_ = CompactionSettings(max_segments=2, fanout=2, gc_grace_ms=0)
        Compactor(ports, settings_).compact()  # the first publication folds everything
        ports.ledger.append("events", seq + 1, events[:7])  # delivered again
        result = Compactor(ports, settings_).compact()
        assert result.stats.events == 7
        homes[kind] = ports
    whole = fold(events)
    con = duckdb.connect()
    for ports in homes.values():
        store = Compactor(ports).store
        pointer, _ = store.load_pointer()
        assert pointer is not None
        for name, spec in TABLE_SPECS.items():
            assert published_table(con, store, pointer, spec).equals(whole[name]), name
        assert rebuild_projections(ports, repair=False).equal


def test_events_read_in_several_batches_are_counted_and_kept_once() -> None:
    events = list(synthetic_runs(2, 10, seed=12))
    repeated = events + events[:9] + [{"id": "no-type"}]
    batches = [repeated[i : i + 11] for i in range(0, len(repeated), 11)]
    # A part derived every few events: parts merge, and an event read in two parts is one.
    tables, stats = fold_batches((event_batch(b) for b in batches), max_staged_events=20)
    _same(tables, fold(events))
    assert (stats.events, stats.duplicates, stats.malformed) == (len(repeated), 9, 1)
    whole, whole_stats = fold_batches(event_batch(b) for b in batches)
    _same(whole, tables)
    assert whole_stats == stats


def test_events_that_are_not_json_are_counted_not_fatal() -> None:
    event = next(iter(synthetic_runs(1, 1, seed=13)))
    odd: list[Any] = [
        {**event, "id": "nan", "data": {"x": float("nan")}},
        {**event, "id": "set", "data": {"x": {1, 2}}},
        "not an event",
        event,
    ]
    tables, stats = fold_with_stats(odd)
    assert (stats.events, stats.malformed) == (4, 3)
    assert tables["events"]["id"].to_pylist() == [event["id"]]
