"""The embedded adapters against the port contracts, plus what only they promise."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servo.adapters.embedded import (
    FileBlobs,
    FileLedger,
    InProcessBus,
    InProcessQueue,
    SqliteStateStore,
    SystemClock,
    UlidIds,
    open_embedded,
)
from servo.adapters.embedded.bus import BusMessage
from servo.adapters.embedded.clock import ULID_LENGTH
from servo.core.errors import Conflict, NotFound, ServoError, TransientError
from servo.ports import Blobs, Bus, Doc, Ledger, Op, Queue, StateStore, StateTxn, Where
from servo.testing.clock import ManualClock, SequentialIds
from servo.testing.contracts import (
    BlobsContract,
    BusContract,
    LedgerContract,
    QueueContract,
    ReceivedMessage,
    StateStoreContract,
)

START = datetime(2024, 1, 1, tzinfo=UTC)
WAIT_S = 10.0  # generous upper bound for background threads; tests never assert speed


# -- drivers ----------------------------------------------------------------------------


class EmbeddedQueueDriver:
    """Drives an InProcessQueue on a ManualClock for the queue contract."""

    def __init__(self, queue: InProcessQueue, clock: ManualClock) -> None:
        self.queue = queue
        self.clock = clock

    def subscribe(self, topic: str, handler: Callable[[Doc], None]) -> None:
        self.queue.subscribe(topic, handler)

    def deliver_due(self) -> int:
        return self.queue.run_due()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


class EmbeddedBusDriver:
    """Collects what an InProcessBus delivers, for the bus contract."""

    def __init__(self, bus: InProcessBus) -> None:
        self.bus = bus
        self.got: dict[str, list[ReceivedMessage]] = {}

    def subscribe(self, topic: str) -> None:
        inbox = self.got.setdefault(topic, [])

        def collect(message: BusMessage) -> None:
            inbox.append(ReceivedMessage(message.id, message.data, dict(message.attributes)))

        self.bus.subscribe(topic, collect)

    def received(self, topic: str, count: int) -> list[ReceivedMessage]:
        return list(self.got.get(topic, []))  # delivery is synchronous: all have arrived


# -- the contracts ----------------------------------------------------------------------


class TestSqliteStateStoreContract(StateStoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Iterator[Callable[[str, str], StateStore]]:
        stores: list[SqliteStateStore] = []

        def make(tenant: str, workspace: str) -> StateStore:
            store = SqliteStateStore(tmp_path / "state.db", tenant, workspace)
            stores.append(store)
            return store

        yield make
        for store in stores:
            store.close()


class TestFileLedgerContract(LedgerContract):
    @pytest.fixture
    def ledger(self, tmp_path: Path) -> Ledger:
        return FileLedger(tmp_path / "ledger")


class TestFileBlobsContract(BlobsContract):
    @pytest.fixture
    def blobs(self, tmp_path: Path) -> Blobs:
        return FileBlobs(tmp_path / "blobs")


class TestInProcessQueueContract(QueueContract):
    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(START)

    @pytest.fixture
    def queue(self, clock: ManualClock) -> Queue:
        return InProcessQueue(clock)

    @pytest.fixture
    def queue_driver(self, queue: InProcessQueue, clock: ManualClock) -> EmbeddedQueueDriver:
        return EmbeddedQueueDriver(queue, clock)


class TestInProcessBusContract(BusContract):
    @pytest.fixture
    def bus(self) -> Bus:
        return InProcessBus()

    @pytest.fixture
    def bus_driver(self, bus: InProcessBus) -> EmbeddedBusDriver:
        return EmbeddedBusDriver(bus)


# -- SQLite state store -----------------------------------------------------------------


def _increment_in_process(path: str, times: int) -> None:
    """Run in a child process: increment the shared counter ``times`` times."""
    store = SqliteStateStore(Path(path))

    def increment(t: StateTxn) -> None:
        doc = t.get("counters", "c")
        assert doc is not None
        t.update("counters", "c", {"n": doc["n"] + 1, "last": os.getpid()})

    try:
        for _ in range(times):
            store.transact(increment, max_attempts=100)
    finally:
        store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStateStore]:
    store = SqliteStateStore(tmp_path / "state.db")
    yield store
    store.close()


class TestSqliteStateStore:
    def test_processes_incrementing_one_counter_lose_no_update(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        with SqliteStateStore(path) as store:
            store.transact(lambda t: t.create("counters", "c", {"n": 0}))
            context = multiprocessing.get_context("spawn")
            children = [
                context.Process(target=_increment_in_process, args=(str(path), 50))
                for _ in range(2)
            ]
            for child in children:
                child.start()
            _increment_in_process(str(path), 50)  # the parent competes too
            for child in children:
                child.join(120)
            assert [child.exitcode for child in children] == [0, 0]
            counter = store.get("counters", "c")
        assert counter is not None
        assert counter["n"] == 150

    @pytest.mark.parametrize("field", ["run_id", "state", "status", "due_at"])
    def test_control_plane_filters_are_index_backed(
        self, sqlite_store: SqliteStateStore, field: str
    ) -> None:
        for where in (
            [Where(field, "==", "x")],
            [Where(field, "in", ["x", "y"])],
            [Where(field, "<=", "2024-01-01T00:00:00Z")],
            [Where(field, "<=", 1_700_000_000_000)],
            [Where("other", "==", 1), Where(field, "==", "x")],
            [Where("tags", "array_contains", "a"), Where(field, "==", "x")],
        ):
            plan = " ".join(sqlite_store.query_plan("tasks", where, order_by=field, limit=10))
            assert f"USING INDEX docs_by_{field}" in plan, (where, plan)
            assert "SCAN docs" not in plan, (where, plan)

    def test_due_time_queries_need_no_sort(self, sqlite_store: SqliteStateStore) -> None:
        plan = sqlite_store.query_plan(
            "timers", [Where("due_at", "<=", "2024-01-01T00:00:00Z")], order_by="due_at", limit=5
        )
        assert not any("TEMP B-TREE" in step for step in plan), plan

    def test_uses_write_ahead_logging(self, sqlite_store: SqliteStateStore) -> None:
        db = sqlite3.connect(sqlite_store.path)
        try:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            db.close()

    def test_documents_survive_reopening(self, tmp_path: Path) -> None:
        with SqliteStateStore(tmp_path / "state.db", "t", "w") as store:
            store.transact(lambda t: t.create("runs", "r1", {"v": 1}))
        with SqliteStateStore(tmp_path / "state.db", "t", "w") as store:
            assert store.get("runs", "r1") == {"v": 1}

    def test_a_held_write_lock_ends_in_a_transient_error(self, tmp_path: Path) -> None:
        path = tmp_path / "state.db"
        with SqliteStateStore(path, busy_timeout_s=0.01) as store:
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # another process's long transaction
                with pytest.raises(TransientError, match="locked"):
                    store.transact(lambda t: t.set("runs", "r1", {"v": 1}), max_attempts=2)
                other.execute("ROLLBACK")
            finally:
                other.close()
            store.transact(lambda t: t.set("runs", "r1", {"v": 1}))
            assert store.get("runs", "r1") == {"v": 1}

    def test_nested_transactions_are_rejected(self, sqlite_store: SqliteStateStore) -> None:
        def nested(t: StateTxn) -> None:
            t.set("runs", "outer", {})
            sqlite_store.transact(lambda inner: inner.set("runs", "inner", {}))

        with pytest.raises(ServoError, match="nested"):
            sqlite_store.transact(nested)
        assert sqlite_store.get("runs", "outer") is None

    def test_a_transaction_cannot_be_used_after_it_ended(
        self, sqlite_store: SqliteStateStore
    ) -> None:
        leaked: list[StateTxn] = []
        sqlite_store.transact(leaked.append)
        with pytest.raises(ServoError, match="already finished"):
            leaked[0].set("runs", "r1", {})

    def test_unsupported_queries_are_rejected(self, sqlite_store: SqliteStateStore) -> None:
        for where in (
            Where("a.b", "==", 1),
            Where("a", "<", None),
            Where("a", "in", []),
            Where("a", "==", [1]),
        ):
            with pytest.raises(ServoError):
                sqlite_store.query("tasks", [where])

    def test_a_closed_store_refuses_work(self, tmp_path: Path) -> None:
        store = SqliteStateStore(tmp_path / "state.db")
        store.close()
        with pytest.raises(ServoError, match="closed"):
            store.get("runs", "r1")

    def test_each_thread_gets_its_own_connection(self, sqlite_store: SqliteStateStore) -> None:
        sqlite_store.transact(lambda t: t.create("counters", "c", {"n": 0}))
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(10):
                    sqlite_store.transact(_increment)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sqlite_store.get("counters", "c") == {"n": 30}


def _increment(t: StateTxn) -> None:
    doc = t.get("counters", "c")
    assert doc is not None
    t.update("counters", "c", {"n": doc["n"] + 1})


# A reference model of the query semantics (Firestore's, for the types Servo stores).

_KIND_ORDER = {type(None): 0, bool: 1, int: 2, str: 3}


def _same_kind(a: Any, b: Any) -> bool:
    return type(a) is type(b)


def _matches(doc: Doc, where: Where) -> bool:
    if where.field not in doc:
        return False
    value = doc[where.field]
    if where.op == "==":
        return _same_kind(value, where.value) and value == where.value
    if where.op == "!=":
        return value is not None and not (_same_kind(value, where.value) and value == where.value)
    if where.op == "in":
        return any(_same_kind(value, v) and value == v for v in where.value)
    if where.op == "array_contains":
        return isinstance(value, list) and any(
            _same_kind(element, where.value) and element == where.value for element in value
        )
    if not _same_kind(value, where.value):
        return False
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    return compare[where.op](value, where.value)


def _reference_query(
    docs: dict[str, Doc], where: list[Where], order_by: str | None, limit: int | None
) -> list[str]:
    hits = [doc_id for doc_id, doc in docs.items() if all(_matches(doc, w) for w in where)]
    if order_by is None:
        hits.sort()
    else:
        hits = [doc_id for doc_id in hits if order_by in docs[doc_id]]
        hits.sort(
            key=lambda doc_id: (
                _KIND_ORDER[type(docs[doc_id][order_by])],
                docs[doc_id][order_by],
                doc_id,
            )
        )
    return hits if limit is None else hits[:limit]


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.text(alphabet="abé✓", max_size=2)
)
_fields = st.sampled_from(["state", "n", "other"])  # "state" has an index, the others not
# "tags" also holds lists; the model does not order lists, so it is never an order_by.
_docs = st.dictionaries(
    st.sampled_from([f"d{i}" for i in range(8)]),
    st.fixed_dictionaries(
        {},
        optional={
            "state": _values,
            "n": _values,
            "other": _values,
            "tags": st.one_of(_values, st.lists(_values, max_size=3)),
        },
    ),
    max_size=8,
)


_OPS: list[Op] = ["==", "!=", "<", "<=", ">", ">=", "in", "array_contains"]


@st.composite
def _conditions(draw: st.DrawFn) -> Where:
    field = draw(st.one_of(_fields, st.just("tags")))
    op = draw(st.sampled_from(_OPS))
    if op == "in":
        return Where(field, op, draw(st.lists(_values, min_size=1, max_size=3)))
    if op in ("<", "<=", ">", ">="):
        return Where(field, op, draw(_values.filter(lambda v: v is not None)))
    return Where(field, op, draw(_values))


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStateStore]:
    """One store for many hypothesis examples; each example uses a fresh collection."""
    store = SqliteStateStore(tmp_path_factory.mktemp("model") / "state.db")
    yield store
    store.close()


class TestQueryMatchesTheReferenceModel:
    @settings(max_examples=150, deadline=None)
    @given(
        docs=_docs,
        where=st.lists(_conditions(), max_size=2),
        order_by=st.one_of(st.none(), _fields),
        limit=st.one_of(st.none(), st.integers(0, 5)),
    )
    def test_query_agrees_with_the_model(
        self,
        shared_store: SqliteStateStore,
        docs: dict[str, Doc],
        where: list[Where],
        order_by: str | None,
        limit: int | None,
    ) -> None:
        collection = "c" + UlidIds().new_id()  # a fresh collection per example

        def seed(t: StateTxn) -> None:
            for doc_id, doc in docs.items():
                t.create(collection, doc_id, doc)

        shared_store.transact(seed)
        rows = shared_store.query(collection, where, order_by=order_by, limit=limit)
        assert [doc_id for doc_id, _ in rows] == _reference_query(docs, where, order_by, limit)
        assert all(doc == docs[doc_id] for doc_id, doc in rows)


# -- file ledger ------------------------------------------------------------------------


class TestFileLedger:
    def test_readers_never_see_a_partial_segment(self, tmp_path: Path) -> None:
        ledger = FileLedger(tmp_path, fsync=False)
        segments, events_per_segment = 40, 2000
        bad: list[str] = []
        done = threading.Event()

        def read_continuously() -> None:
            while not done.is_set():
                try:
                    for segment in ledger.read("big"):
                        if len(segment.events) != events_per_segment:
                            bad.append(f"segment {segment.seq}: {len(segment.events)} events")
                except Exception as exc:
                    bad.append(repr(exc))

        reader = threading.Thread(target=read_continuously)
        reader.start()
        try:
            for seq in range(segments):
                ledger.append(
                    "big", seq, [{"i": i, "pad": "x" * 50} for i in range(events_per_segment)]
                )
        finally:
            done.set()
            reader.join()
        assert bad == []
        assert len(ledger.read("big")) == segments

    def test_segments_are_compressed_json_files_and_no_temp_file_remains(
        self, tmp_path: Path
    ) -> None:
        ledger = FileLedger(tmp_path)
        ledger.append("runs/r1", 3, [{"type": "started"}])
        with pytest.raises(Exception, match="already exists"):
            ledger.append("runs/r1", 3, [{"type": "again"}])
        files = sorted(
            p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
        )
        assert files == ["runs/r1/000000000003.json"]
        raw = (tmp_path / files[0]).read_bytes()
        assert raw[:2] == b"\x1f\x8b", "segments are gzip-compressed"
        body = json.loads(gzip.decompress(raw))
        assert body["events"] == [{"type": "started"}]

    def test_read_encoded_gives_the_stored_segments(self, tmp_path: Path) -> None:
        from servo.adapters.segments import decode_segment

        ledger = FileLedger(tmp_path)
        ledger.append("s", 0, [{"id": "e1"}])
        ledger.append("s", 1, [{"id": "e2"}])
        encoded = ledger.read_encoded("s", after_seq=0)
        assert [seq for seq, _ in encoded] == [1]
        assert decode_segment(encoded[0][1])["events"] == [{"id": "e2"}]

    def test_uncompressed_segments_of_earlier_versions_are_read(self, tmp_path: Path) -> None:
        (tmp_path / "events").mkdir()
        old = {"stream": "events", "seq": 0, "events": [{"id": "e1"}]}
        (tmp_path / "events" / "000000000000.json").write_text(json.dumps(old))
        (segment,) = FileLedger(tmp_path).read("events")
        assert segment.events == ({"id": "e1"},)

    def test_stream_names_cannot_escape_the_root(self, tmp_path: Path) -> None:
        ledger = FileLedger(tmp_path / "ledger")
        for stream in ("..", "../x", "a/../../b", "."):
            ledger.append(stream, 0, [{"stream": stream}])
            assert ledger.read(stream)[0].events == ({"stream": stream},)
        outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "ledger")]
        assert outside == []
        for bad in ("", "/abs", "a//b", "a/"):
            with pytest.raises(ServoError):
                ledger.append(bad, 0, [])

    def test_invalid_sequence_numbers_and_events_are_rejected(self, tmp_path: Path) -> None:
        ledger = FileLedger(tmp_path)
        with pytest.raises(ServoError):
            ledger.append("s", -1, [])
        with pytest.raises(ServoError):
            ledger.append("s", 0, [{"bad": object()}])
        assert ledger.last_seq("s") == -1


# -- file blobs -------------------------------------------------------------------------


def _cas_increment_in_process(root: str, times: int) -> None:
    """Run in a child process: increment the counter object ``times`` times by CAS."""
    blobs = FileBlobs(Path(root), fsync=False)
    done = 0
    while done < times:
        data, generation = blobs.get_with_generation("counter")
        try:
            blobs.put("counter", str(int(data) + 1).encode(), if_generation=generation)
        except Conflict:
            continue
        done += 1


class TestFileBlobs:
    def test_objects_are_plain_files_under_the_root(self, tmp_path: Path) -> None:
        blobs = FileBlobs(tmp_path)
        blobs.put("runs/r1/log.txt", b"hello")
        assert (tmp_path / "runs" / "r1" / "log.txt").read_bytes() == b"hello"

    def test_paths_that_escape_the_root_are_rejected(self, tmp_path: Path) -> None:
        blobs = FileBlobs(tmp_path / "blobs")
        for bad in ("../x", "a/../../x", "/etc/passwd", "a//b", "", ".", "a/./b", ".blobmeta/lock"):
            with pytest.raises(ServoError):
                blobs.put(bad, b"x")
            with pytest.raises(ServoError):
                blobs.get(bad)
        with pytest.raises(ServoError):
            blobs.list("../")
        assert not (tmp_path / "x").exists()

    def test_bookkeeping_is_never_listed(self, tmp_path: Path) -> None:
        blobs = FileBlobs(tmp_path)
        blobs.put("a", b"1")
        assert blobs.list("") == ["a"]
        assert blobs.list(".blobmeta/") == []

    def test_an_object_cannot_also_be_a_folder(self, tmp_path: Path) -> None:
        blobs = FileBlobs(tmp_path)
        blobs.put("a/b", b"1")
        with pytest.raises(Conflict):
            blobs.put("a", b"2")
        with pytest.raises(Conflict):
            blobs.put("a/b/c", b"3")
        assert blobs.list("") == ["a/b"]

    def test_delete_leaves_no_empty_folders(self, tmp_path: Path) -> None:
        blobs = FileBlobs(tmp_path)
        blobs.put("x/y/z", b"1")
        blobs.delete("x/y/z")
        assert not (tmp_path / "x").exists()
        with pytest.raises(NotFound):
            blobs.get("x/y/z")

    def test_generations_keep_growing_across_a_delete(self, tmp_path: Path) -> None:
        blobs = FileBlobs(tmp_path)
        first = blobs.put("obj", b"1")
        blobs.delete("obj")
        assert blobs.put("obj", b"2") > first

    def test_processes_compare_and_set_without_losing_updates(self, tmp_path: Path) -> None:
        blobs = FileBlobs(tmp_path, fsync=False)
        blobs.put("counter", b"0")
        context = multiprocessing.get_context("spawn")
        children = [
            context.Process(target=_cas_increment_in_process, args=(str(tmp_path), 30))
            for _ in range(2)
        ]
        for child in children:
            child.start()
        _cas_increment_in_process(str(tmp_path), 30)
        for child in children:
            child.join(120)
        assert [child.exitcode for child in children] == [0, 0]
        assert blobs.get("counter") == b"90"


# -- in-process queue -------------------------------------------------------------------


class TestInProcessQueue:
    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(START)

    def test_backoff_doubles_up_to_the_maximum_then_dead_letters(self, clock: ManualClock) -> None:
        queue = InProcessQueue(clock, max_attempts=5, min_backoff_s=1, max_backoff_s=4)
        calls: list[Doc] = []

        def fail(payload: Doc) -> None:
            calls.append(payload)
            raise ValueError("always")

        queue.subscribe("t", fail)
        queue.enqueue("t", {"v": 1}, name="doomed")
        delays = []
        for _ in range(5):
            assert queue.run_due() == 1
            due = queue.next_due()
            if due is not None:
                delays.append((due - clock.now()).total_seconds())
                clock.set(due)
        assert delays == [1, 2, 4, 4]
        assert len(calls) == 5
        assert queue.pending() == 0
        [dead] = queue.dead_letters
        assert (dead.topic, dead.payload, dead.name, dead.attempts) == ("t", {"v": 1}, "doomed", 5)
        assert "ValueError: always" in dead.error
        assert queue.enqueue("t", {"v": 2}, name="doomed") is False

    def test_a_name_is_reusable_after_the_tombstone_window(self, clock: ManualClock) -> None:
        queue = InProcessQueue(clock, tombstone_s=60)
        queue.subscribe("t", lambda payload: None)
        assert queue.enqueue("t", {}, name="n")
        queue.run_due()
        clock.advance(59)
        assert not queue.enqueue("t", {}, name="n")
        clock.advance(2)
        assert queue.enqueue("t", {}, name="n")
        assert queue.enqueue("other-topic", {}, name="n")  # names are per topic

    def test_pending_next_due_and_limit(self, clock: ManualClock) -> None:
        queue = InProcessQueue(clock)
        got: list[int] = []
        queue.enqueue("t", {"i": 0})
        assert queue.next_due() is None  # nobody subscribed yet
        queue.subscribe("t", lambda payload: got.append(payload["i"]))
        assert queue.next_due() == START
        queue.enqueue("t", {"i": 1})
        queue.enqueue("t", {"i": 2}, delay_s=30)
        assert queue.pending() == 3
        assert queue.run_due(limit=1) == 1
        assert queue.run_due() == 1
        assert got == [0, 1]
        assert queue.next_due() == START + timedelta(seconds=30)
        assert queue.run_due() == 0
        clock.advance(30)
        assert queue.run_due() == 1
        assert got == [0, 1, 2]
        assert queue.pending() == 0
        assert queue.next_due() is None

    def test_messages_enqueued_by_a_handler_are_delivered_in_the_same_run(
        self, clock: ManualClock
    ) -> None:
        queue = InProcessQueue(clock)
        got: list[int] = []

        def chain(payload: Doc) -> None:
            got.append(payload["i"])
            if payload["i"] < 3:
                queue.enqueue("t", {"i": payload["i"] + 1})

        queue.subscribe("t", chain)
        queue.enqueue("t", {"i": 0})
        assert queue.run_due() == 4
        assert got == [0, 1, 2, 3]

    def test_handlers_get_a_copy_of_the_payload(self, clock: ManualClock) -> None:
        queue = InProcessQueue(clock, min_backoff_s=0)
        seen: list[Doc] = []

        def mutate_then_fail(payload: Doc) -> None:
            seen.append(dict(payload))
            payload["v"] = "changed"
            if len(seen) == 1:
                raise RuntimeError("first attempt fails")

        payload: Doc = {"v": "original"}
        queue.subscribe("t", mutate_then_fail)
        queue.enqueue("t", payload)
        payload["v"] = "changed by the caller"
        queue.run_due()
        queue.run_due()
        assert seen == [{"v": "original"}, {"v": "original"}]

    def test_a_topic_has_one_handler(self, clock: ManualClock) -> None:
        queue = InProcessQueue(clock)
        queue.subscribe("t", lambda payload: None)
        with pytest.raises(ServoError):
            queue.subscribe("t", lambda payload: None)
        queue.unsubscribe("t")
        queue.subscribe("t", lambda payload: None)

    def test_background_workers_wake_at_once_on_enqueue(self) -> None:
        # Real clock: with nothing queued a worker sleeps without a timeout, so only the
        # wake-up from enqueue can get this message delivered.
        queue = InProcessQueue(SystemClock())
        delivered = threading.Event()
        queue.subscribe("t", lambda payload: delivered.set())
        queue.start(workers=2)
        try:
            assert queue.wait_idle(WAIT_S)
            queue.enqueue("t", {})
            assert delivered.wait(WAIT_S)
            assert queue.wait_idle(WAIT_S)
            assert queue.pending() == 0
        finally:
            queue.stop()

    def test_background_workers_follow_a_manual_clock(self, clock: ManualClock) -> None:
        queue = InProcessQueue(clock)
        got: list[str] = []
        delivered = threading.Event()

        def handle(payload: Doc) -> None:
            got.append(payload["when"])
            if payload["when"] == "later":
                delivered.set()

        queue.subscribe("t", handle)
        queue.start()
        try:
            queue.enqueue("t", {"when": "later"}, delay_s=3600)
            queue.enqueue("t", {"when": "now"})
            assert queue.wait_idle(WAIT_S)
            assert got == ["now"]
            clock.advance(3600)
            assert delivered.wait(WAIT_S)
            assert got == ["now", "later"]
        finally:
            queue.stop()

    def test_background_workers_retry_failures(self, clock: ManualClock) -> None:
        queue = InProcessQueue(clock)
        attempts: list[int] = []
        succeeded = threading.Event()

        def flaky(payload: Doc) -> None:
            attempts.append(1)
            if len(attempts) < 3:
                raise RuntimeError("not yet")
            succeeded.set()

        queue.subscribe("t", flaky)
        queue.start(workers=3)
        try:
            queue.enqueue("t", {})
            for _ in range(10):
                if succeeded.is_set():
                    break
                assert queue.wait_idle(WAIT_S)
                clock.advance(60)
            assert succeeded.wait(WAIT_S)
        finally:
            queue.stop()
        assert len(attempts) == 3
        assert queue.dead_letters == []

    def test_stop_then_start_again(self, clock: ManualClock) -> None:
        queue = InProcessQueue(clock)
        got = threading.Event()
        queue.subscribe("t", lambda payload: got.set())
        queue.start()
        queue.stop()
        queue.enqueue("t", {})
        assert queue.pending() == 1
        queue.start()
        try:
            assert got.wait(WAIT_S)
        finally:
            queue.stop()


# -- in-process bus ---------------------------------------------------------------------


class TestInProcessBus:
    def test_handlers_run_synchronously_in_publish_order(self) -> None:
        bus = InProcessBus()
        seen: list[tuple[str, Any]] = []
        bus.subscribe("t", lambda m: seen.append(("first", m.data["i"])))
        bus.subscribe("t", lambda m: seen.append(("second", m.data["i"])))
        for i in range(3):
            bus.publish("t", {"i": i})
        assert seen == [
            ("first", 0),
            ("second", 0),
            ("first", 1),
            ("second", 1),
            ("first", 2),
            ("second", 2),
        ]

    def test_a_message_published_by_a_handler_comes_after_the_current_one(self) -> None:
        bus = InProcessBus()
        seen: list[str] = []

        def echo(message: BusMessage) -> None:
            seen.append(f"echo:{message.data['v']}")
            if message.data["v"] == "a":
                bus.publish("t", {"v": "b"})

        bus.subscribe("t", echo)
        bus.subscribe("t", lambda m: seen.append(f"log:{m.data['v']}"))
        bus.publish("t", {"v": "a"})
        assert seen == ["echo:a", "log:a", "echo:b", "log:b"]

    def test_a_failing_handler_does_not_stop_the_others(self) -> None:
        bus = InProcessBus()
        seen: list[str] = []

        def broken(message: BusMessage) -> None:
            raise KeyError("broken")

        bus.subscribe("t", broken)
        bus.subscribe("t", lambda m: seen.append(m.id))
        message_id = bus.publish("t", {})
        assert seen == [message_id]
        [error] = bus.handler_errors
        assert (error.message_id, error.topic) == (message_id, "t")

    def test_the_log_keeps_every_message(self) -> None:
        bus = InProcessBus(max_log=3)
        for i in range(4):
            bus.publish("a" if i % 2 else "b", {"i": i}, {"k": "v"})
        assert [m.data["i"] for m in bus.messages] == [1, 2, 3]
        assert [m.data["i"] for m in bus.messages_for("a")] == [1, 3]
        assert bus.messages[0].attributes == {"k": "v"}

    def test_attributes_must_be_strings(self) -> None:
        with pytest.raises(ServoError):
            InProcessBus().publish("t", {}, {"n": 1})  # type: ignore[dict-item]


# -- clocks and ids ---------------------------------------------------------------------


class TestClocksAndIds:
    def test_system_clock_is_aware_utc(self) -> None:
        now = SystemClock().now()
        assert now.tzinfo is not None
        assert now.utcoffset() == timedelta(0)

    def test_ulids_are_crockford_and_strictly_increasing(self) -> None:
        ids = UlidIds()
        made = [ids.new_id() for _ in range(5000)]
        assert all(len(i) == ULID_LENGTH for i in made)
        assert all(set(i) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for i in made)
        assert made == sorted(made)
        assert len(set(made)) == len(made)
        assert ids.new_id("r").startswith("r")
        assert len(ids.new_id("run-")) == 4 + ULID_LENGTH

    def test_ulids_carry_the_clock_time(self) -> None:
        clock = ManualClock(datetime(2030, 5, 6, tzinfo=UTC))
        first, second = UlidIds(clock).new_id(), UlidIds(clock).new_id()
        assert first[:10] == second[:10]  # same millisecond, same time part
        clock.advance(1)
        assert UlidIds(clock).new_id()[:10] > first[:10]

    def test_manual_clock(self) -> None:
        clock = ManualClock(datetime(2024, 1, 1, 12, tzinfo=UTC))
        assert clock.advance(90) == datetime(2024, 1, 1, 12, 1, 30, tzinfo=UTC)
        clock.set(datetime(2023, 1, 1, tzinfo=UTC))
        assert clock.now() == datetime(2023, 1, 1, tzinfo=UTC)
        with pytest.raises(ValueError, match="timezone-aware"):
            ManualClock(datetime(2024, 1, 1))
        with pytest.raises(ValueError):
            clock.advance(-1)

    def test_sequential_ids(self) -> None:
        ids = SequentialIds("x-")
        assert [ids.new_id("r"), ids.new_id(), ids.new_id("t")] == [
            "rx-00000001",
            "x-00000002",
            "tx-00000003",
        ]


# -- open_embedded ----------------------------------------------------------------------


class TestOpenEmbedded:
    def test_creates_the_layout_and_wires_the_ports(self, tmp_path: Path) -> None:
        home = tmp_path / ".servo"
        ports = open_embedded(home, tenant="acme", workspace="dev")
        try:
            assert (home / "state.db").is_file()
            assert (home / "ledger" / "acme" / "dev").is_dir()
            assert (home / "blobs" / "acme" / "dev").is_dir()
            assert isinstance(ports.state, SqliteStateStore)
            assert isinstance(ports.queue, InProcessQueue)
            assert isinstance(ports.bus, InProcessBus)
            assert (ports.tenant, ports.workspace) == ("acme", "dev")
            assert ports.clock.now().tzinfo is not None
            assert ports.ids.new_id("r").startswith("r")
        finally:
            assert isinstance(ports.state, SqliteStateStore)
            ports.state.close()

    def test_workspaces_sharing_a_home_are_isolated(self, tmp_path: Path) -> None:
        one = open_embedded(tmp_path, workspace="one")
        two = open_embedded(tmp_path, workspace="two")
        try:
            one.blobs.put("obj", b"one")
            one.ledger.append("s", 0, [{"w": "one"}])
            one.state.transact(lambda t: t.create("runs", "r1", {"w": "one"}))
            assert not two.blobs.exists("obj")
            assert two.ledger.last_seq("s") == -1
            assert two.state.get("runs", "r1") is None
        finally:
            for ports in (one, two):
                assert isinstance(ports.state, SqliteStateStore)
                ports.state.close()

    def test_invalid_scope_names_are_rejected(self, tmp_path: Path) -> None:
        with pytest.raises(ServoError):
            open_embedded(tmp_path, tenant="../evil")
