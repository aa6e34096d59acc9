"""Contract suites: the behaviour every backend of a port must show.

Each class below is a set of pytest tests written only against a port of
:mod:`servo.ports` (plus, where the port cannot express it, a small *driver*). A backend
passes the contract by subclassing the class in a test module and providing its fixtures::

    class TestSqliteStateStore(StateStoreContract):
        @pytest.fixture
        def store_factory(self, tmp_path): ...

Fixtures a subclass must provide:

``StateStoreContract``
    ``store_factory`` — a callable ``(tenant, workspace) -> StateStore``. All stores it returns
    share one fresh, empty backend (so that scoping can be tested) and are usable from several
    threads. ``store`` defaults to ``store_factory("tenant-a", "workspace-a")``.
``LedgerContract``
    ``ledger`` — a fresh, empty, isolated ``Ledger``.
``BlobsContract``
    ``blobs`` — a fresh, empty, isolated ``Blobs`` (``list("")`` starts empty).
``QueueContract``
    ``queue`` — a fresh ``Queue``; ``queue_driver`` — a :class:`QueueDriver` for it.
``BusContract``
    ``bus`` — a fresh ``Bus``; ``bus_driver`` — a :class:`BusDriver` for it.

Tests use small thread and iteration counts so that a backend needing ~0.1 s per contended
transaction (an emulator) still passes in seconds, and they never assert on timings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from servo.core.errors import AlreadyExists, Conflict, NotFound, ServoError
from servo.ports import Blobs, Bus, Doc, Ledger, Queue, Segment, StateStore, StateTxn, Where

StoreFactory = Callable[[str, str], StateStore]

# Attempts allowed to a contended transaction: generous, because optimistic backends abort
# and retry a transaction whenever another commits first.
CONTENDED_ATTEMPTS = 100
THREADS = 4


class QueueDriver(Protocol):
    """What the queue contract needs beyond ``Queue.enqueue``."""

    def subscribe(self, topic: str, handler: Callable[[Doc], None]) -> None:
        """Route messages of ``topic`` to ``handler(payload)``; a raising handler means failure."""
        ...

    def deliver_due(self) -> int:
        """Deliver every message due now, wait for the handlers, return how many ran."""
        ...

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of queue time pass (move a manual clock, or sleep)."""
        ...


@dataclass(frozen=True)
class ReceivedMessage:
    """A bus message as a subscriber received it."""

    id: str
    data: Doc
    attributes: dict[str, str] = field(default_factory=dict)


class BusDriver(Protocol):
    """What the bus contract needs beyond ``Bus.publish``."""

    def subscribe(self, topic: str) -> None:
        """Start collecting the messages published to ``topic`` from now on."""
        ...

    def received(self, topic: str, count: int) -> list[ReceivedMessage]:
        """Every message collected for ``topic``, once at least ``count`` have arrived (or the
        driver's own patience ran out)."""
        ...


def _run_threads(workers: list[Callable[[], None]]) -> list[BaseException]:
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(len(workers))

    def run(work: Callable[[], None]) -> None:
        try:
            start.wait()
            work()
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


# -- state store ------------------------------------------------------------------------


def _ids(rows: list[tuple[str, Doc]]) -> list[str]:
    return [doc_id for doc_id, _ in rows]


# The documents of the ``tasks`` fixture each filter should match, by id.
_OPERATOR_CASES: list[tuple[Where, list[str]]] = [
    (Where("n", "==", 2), ["t3", "t4"]),
    (Where("n", "!=", 2), ["t1", "t2", "t5"]),
    (Where("n", "<", 3), ["t2", "t3", "t4"]),
    (Where("n", "<=", 3), ["t1", "t2", "t3", "t4"]),
    (Where("n", ">", 2), ["t1", "t5"]),
    (Where("n", ">=", 2), ["t1", "t3", "t4", "t5"]),
    (Where("n", "in", [1, 5, 7]), ["t2", "t5"]),
    (Where("s", "==", "a"), ["t2", "t4"]),
    (Where("s", "!=", "a"), ["t1", "t3", "t5", "t6"]),
    (Where("s", "<", "c"), ["t1", "t2", "t4"]),
    (Where("s", "<=", "c"), ["t1", "t2", "t3", "t4"]),
    (Where("s", ">", "c"), ["t5", "t6"]),
    (Where("s", ">=", "c"), ["t3", "t5", "t6"]),
    (Where("state", "in", ["queued", "done"]), ["t1", "t3", "t4", "t6"]),
    (Where("run_id", "==", "r2"), ["t3", "t4"]),
    (Where("run_id", "==", "r9"), []),
]


class StateStoreContract:
    """Documents, transactions and queries of a :class:`~servo.ports.StateStore`."""

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> StateStore:
        return store_factory("tenant-a", "workspace-a")

    # documents

    def test_get_of_a_missing_document_is_none(self, store: StateStore) -> None:
        assert store.get("runs", "nope") is None
        assert store.transact(lambda t: t.get("runs", "nope")) is None

    def test_create_then_get_round_trips_json_values(self, store: StateStore) -> None:
        doc = {
            "text": "héllo ✓",
            "n": -42,
            "big": 2**53 + 1,
            "flag": True,
            "off": False,
            "nothing": None,
            "items": [1, "two", None, {"three": 3}],
            "nested": {"a": {"b": []}, "empty": {}},
        }
        store.transact(lambda t: t.create("runs", "r1", doc))
        assert store.get("runs", "r1") == doc
        assert store.transact(lambda t: t.get("runs", "r1")) == doc

    def test_create_of_an_existing_document_raises_already_exists(self, store: StateStore) -> None:
        store.transact(lambda t: t.create("runs", "r1", {"v": 1}))
        with pytest.raises(AlreadyExists):
            store.transact(lambda t: t.create("runs", "r1", {"v": 2}))
        assert store.get("runs", "r1") == {"v": 1}

    def test_set_creates_and_replaces_the_whole_document(self, store: StateStore) -> None:
        store.transact(lambda t: t.set("runs", "r1", {"a": 1, "b": 2}))
        assert store.get("runs", "r1") == {"a": 1, "b": 2}
        store.transact(lambda t: t.set("runs", "r1", {"c": 3}))
        assert store.get("runs", "r1") == {"c": 3}

    def test_update_replaces_only_the_given_fields(self, store: StateStore) -> None:
        store.transact(lambda t: t.create("runs", "r1", {"a": 1, "b": {"x": 1}, "c": "keep"}))
        store.transact(lambda t: t.update("runs", "r1", {"a": 2, "b": {"y": 2}, "d": None}))
        assert store.get("runs", "r1") == {"a": 2, "b": {"y": 2}, "c": "keep", "d": None}

    def test_update_of_a_missing_document_raises_not_found(self, store: StateStore) -> None:
        with pytest.raises(NotFound):
            store.transact(lambda t: t.update("runs", "nope", {"a": 1}))
        assert store.get("runs", "nope") is None

    def test_delete_removes_and_is_idempotent(self, store: StateStore) -> None:
        store.transact(lambda t: t.create("runs", "r1", {"a": 1}))
        store.transact(lambda t: t.delete("runs", "r1"))
        assert store.get("runs", "r1") is None
        store.transact(lambda t: t.delete("runs", "r1"))
        store.transact(lambda t: t.create("runs", "r1", {"a": 2}))
        assert store.get("runs", "r1") == {"a": 2}

    def test_returned_documents_are_independent_copies(self, store: StateStore) -> None:
        store.transact(lambda t: t.create("runs", "r1", {"items": [1], "m": {"k": 1}}))
        first = store.get("runs", "r1")
        assert first is not None
        first["items"].append(2)
        first["m"]["k"] = 99
        first["new"] = True
        assert store.get("runs", "r1") == {"items": [1], "m": {"k": 1}}

    def test_written_documents_are_copied(self, store: StateStore) -> None:
        doc: Doc = {"items": [1]}
        store.transact(lambda t: t.create("runs", "r1", doc))
        doc["items"].append(2)
        assert store.get("runs", "r1") == {"items": [1]}

    def test_get_many_returns_the_existing_documents_by_id(self, store: StateStore) -> None:
        def seed(t: StateTxn) -> None:
            t.create("runs", "a", {"v": "a"})
            t.create("runs", "b", {"v": "b"})

        store.transact(seed)
        found = store.transact(lambda t: t.get_many("runs", ["a", "missing", "b"]))
        assert found == {"a": {"v": "a"}, "b": {"v": "b"}}
        assert store.transact(lambda t: t.get_many("runs", [])) == {}

    def test_invalid_document_ids_are_rejected(self, store: StateStore) -> None:
        for bad in ("", "a/b"):

            def write(t: StateTxn, doc_id: str = bad) -> None:
                t.set("runs", doc_id, {"v": 1})

            with pytest.raises(ServoError):
                store.transact(write)

    # transactions

    def test_transact_returns_the_result_of_fn(self, store: StateStore) -> None:
        def create_and_report(t: StateTxn) -> str:
            t.create("runs", "r1", {"v": 1})
            return "done"

        assert store.transact(create_and_report) == "done"

    def test_reads_in_a_transaction_see_committed_writes(self, store: StateStore) -> None:
        store.transact(lambda t: t.create("counters", "c", {"n": 5}))

        def double(t: StateTxn) -> int:
            doc = t.get("counters", "c")
            assert doc is not None
            t.update("counters", "c", {"n": doc["n"] * 2})
            return int(doc["n"])

        assert store.transact(double) == 5
        assert store.get("counters", "c") == {"n": 10}

    @pytest.mark.parametrize("read", ["get", "get_many", "query"])
    def test_a_read_after_a_write_is_rejected(self, store: StateStore, read: str) -> None:
        store.transact(lambda t: t.create("runs", "old", {"v": 0}))

        def write_then_read(t: StateTxn) -> None:
            t.set("runs", "new", {"v": 1})
            if read == "get":
                t.get("runs", "old")
            elif read == "get_many":
                t.get_many("runs", ["old"])
            else:
                t.query("runs")

        with pytest.raises(ServoError):
            store.transact(write_then_read)
        assert store.get("runs", "new") is None

    def test_an_exception_in_fn_leaves_nothing_written(self, store: StateStore) -> None:
        store.transact(lambda t: t.create("runs", "kept", {"v": 0}))
        boom = RuntimeError("boom")

        def write_then_fail(t: StateTxn) -> None:
            t.create("runs", "a", {"v": 1})
            t.set("runs", "b", {"v": 2})
            t.update("runs", "kept", {"v": 99})
            t.delete("runs", "kept")
            raise boom

        with pytest.raises(RuntimeError) as caught:
            store.transact(write_then_fail)
        assert caught.value is boom
        assert store.get("runs", "a") is None
        assert store.get("runs", "b") is None
        assert store.get("runs", "kept") == {"v": 0}

    def test_a_domain_error_propagates_and_aborts_the_transaction(self, store: StateStore) -> None:
        def write_then_update_missing(t: StateTxn) -> None:
            t.set("runs", "a", {"v": 1})
            t.update("runs", "missing", {"v": 2})

        with pytest.raises(NotFound):
            store.transact(write_then_update_missing)
        assert store.get("runs", "a") is None

    def test_a_failed_create_aborts_the_whole_transaction(self, store: StateStore) -> None:
        store.transact(lambda t: t.create("runs", "taken", {"v": 0}))

        def write_then_create_taken(t: StateTxn) -> None:
            t.set("runs", "a", {"v": 1})
            t.create("runs", "taken", {"v": 2})

        with pytest.raises(AlreadyExists):
            store.transact(write_then_create_taken)
        assert store.get("runs", "a") is None
        assert store.get("runs", "taken") == {"v": 0}

    def test_concurrent_read_increment_write_loses_no_update(self, store: StateStore) -> None:
        per_thread = 20
        store.transact(lambda t: t.create("counters", "c", {"n": 0}))

        def increment(t: StateTxn) -> None:
            doc = t.get("counters", "c")
            assert doc is not None
            t.update("counters", "c", {"n": doc["n"] + 1})

        def work() -> None:
            for _ in range(per_thread):
                store.transact(increment, max_attempts=CONTENDED_ATTEMPTS)

        errors = _run_threads([work] * THREADS)
        assert errors == []
        assert store.get("counters", "c") == {"n": THREADS * per_thread}

    def test_concurrent_creates_of_one_document_have_one_winner(self, store: StateStore) -> None:
        outcomes: list[str] = []
        lock = threading.Lock()

        def work(n: int) -> Callable[[], None]:
            def attempt() -> None:
                try:
                    store.transact(
                        lambda t: t.create("locks", "the-lock", {"owner": n}),
                        max_attempts=CONTENDED_ATTEMPTS,
                    )
                    result = "won"
                except AlreadyExists:
                    result = "lost"
                with lock:
                    outcomes.append(result)

            return attempt

        assert _run_threads([work(n) for n in range(THREADS)]) == []
        assert sorted(outcomes) == ["lost"] * (THREADS - 1) + ["won"]

    # scoping

    def test_workspaces_and_tenants_are_isolated(self, store_factory: StoreFactory) -> None:
        stores = {
            scope: store_factory(*scope) for scope in [("t1", "w1"), ("t1", "w2"), ("t2", "w1")]
        }
        for (tenant, workspace), store in stores.items():

            def create(t: StateTxn, owner: str = f"{tenant}/{workspace}") -> None:
                t.create("runs", "r1", {"state": "queued", "owner": owner})

            store.transact(create)
        for (tenant, workspace), store in stores.items():
            expected = {"state": "queued", "owner": f"{tenant}/{workspace}"}
            assert store.get("runs", "r1") == expected
            assert store.query("runs", [Where("state", "==", "queued")]) == [("r1", expected)]
        stores[("t1", "w1")].transact(lambda t: t.delete("runs", "r1"))
        assert stores[("t1", "w2")].get("runs", "r1") is not None
        assert stores[("t2", "w1")].get("runs", "r1") is not None

    def test_collections_are_isolated(self, store: StateStore) -> None:
        def seed(t: StateTxn) -> None:
            t.create("runs", "x", {"kind": "run"})
            t.create("tasks", "x", {"kind": "task"})

        store.transact(seed)
        assert store.get("runs", "x") == {"kind": "run"}
        assert store.query("tasks") == [("x", {"kind": "task"})]

    # queries

    @pytest.fixture
    def tasks(self, store: StateStore) -> StateStore:
        """``store`` seeded with six documents in ``tasks``."""
        docs: dict[str, Doc] = {
            "t1": {"n": 3, "s": "b", "state": "queued", "run_id": "r1"},
            "t2": {"n": 1, "s": "a", "state": "running", "run_id": "r1"},
            "t3": {"n": 2, "s": "c", "state": "queued", "run_id": "r2"},
            "t4": {"n": 2, "s": "a", "state": "done", "run_id": "r2"},
            "t5": {"n": 5, "s": "e", "state": "failed", "run_id": "r3"},
            "t6": {"s": "d", "state": "queued"},  # no n, no run_id
        }

        def seed(t: StateTxn) -> None:
            for doc_id, doc in docs.items():
                t.create("tasks", doc_id, doc)

        store.transact(seed)
        return store

    def test_query_without_filters_returns_everything_by_id(self, tasks: StateStore) -> None:
        rows = tasks.query("tasks")
        assert _ids(rows) == ["t1", "t2", "t3", "t4", "t5", "t6"]
        assert rows[0] == ("t1", {"n": 3, "s": "b", "state": "queued", "run_id": "r1"})

    @pytest.mark.parametrize(
        ("where", "expected"),
        _OPERATOR_CASES,
        ids=[f"{w.field} {w.op} {w.value}" for w, _ in _OPERATOR_CASES],
    )
    def test_query_operators(self, tasks: StateStore, where: Where, expected: list[str]) -> None:
        assert _ids(tasks.query("tasks", [where])) == expected

    def test_query_with_several_filters_matches_all_of_them(self, tasks: StateStore) -> None:
        rows = tasks.query("tasks", [Where("state", "==", "queued"), Where("n", ">=", 3)])
        assert _ids(rows) == ["t1"]
        rows = tasks.query("tasks", [Where("run_id", "==", "r2"), Where("state", "==", "queued")])
        assert _ids(rows) == ["t3"]

    def test_filters_never_match_documents_without_the_field(self, tasks: StateStore) -> None:
        assert "t6" not in _ids(tasks.query("tasks", [Where("n", "!=", 100)]))
        assert "t6" not in _ids(tasks.query("tasks", [Where("run_id", ">", "")]))
        assert _ids(tasks.query("tasks", [Where("n", "==", None)])) == []

    def test_order_by_sorts_by_the_field_then_by_id(self, tasks: StateStore) -> None:
        rows = tasks.query("tasks", order_by="n")
        assert [(doc_id, doc["n"]) for doc_id, doc in rows] == [
            ("t2", 1),
            ("t3", 2),
            ("t4", 2),
            ("t1", 3),
            ("t5", 5),
        ]
        rows = tasks.query("tasks", [Where("s", ">=", "b")], order_by="s")
        assert _ids(rows) == ["t1", "t3", "t6", "t5"]

    def test_order_by_skips_documents_without_the_field(self, tasks: StateStore) -> None:
        assert "t6" not in _ids(tasks.query("tasks", order_by="n"))

    def test_limit_applies_after_filtering_and_ordering(self, tasks: StateStore) -> None:
        rows = tasks.query("tasks", [Where("state", "==", "queued")], order_by="s", limit=2)
        assert _ids(rows) == ["t1", "t3"]
        assert _ids(tasks.query("tasks", limit=3)) == ["t1", "t2", "t3"]
        assert tasks.query("tasks", [Where("n", ">", 1)], order_by="n", limit=0) == []

    def test_equality_distinguishes_types(self, store: StateStore) -> None:
        values: dict[str, Any] = {
            "int1": 1,
            "str1": "1",
            "true": True,
            "false": False,
            "int0": 0,
            "null": None,
        }

        def seed(t: StateTxn) -> None:
            for doc_id, value in values.items():
                t.create("values", doc_id, {"v": value})
            t.create("values", "missing", {"other": 1})

        store.transact(seed)

        def matching(op: Any, value: Any) -> list[str]:
            return _ids(store.query("values", [Where("v", op, value)]))

        assert matching("==", 1) == ["int1"]
        assert matching("==", "1") == ["str1"]
        assert matching("==", True) == ["true"]
        assert matching("==", False) == ["false"]
        assert matching("==", 0) == ["int0"]
        assert matching("==", None) == ["null"]
        assert matching(">=", 0) == ["int0", "int1"]
        assert matching(">", "") == ["str1"]
        assert matching("in", [1, "1"]) == ["int1", "str1"]
        rows = store.query("values", [Where("v", "in", [0, 1, "1", False, True, None])])
        assert _ids(rows) == ["false", "int0", "int1", "null", "str1", "true"]

    def test_array_contains_finds_an_element_of_the_same_type(self, store: StateStore) -> None:
        docs: dict[str, Doc] = {
            "strs": {"tags": ["a", "b"]},
            "mixed": {"tags": ["b", 1, None]},
            "scalar": {"tags": "b"},
            "nested": {"tags": [["b"]]},
            "bools": {"tags": [True]},
            "empty": {"tags": []},
            "none": {"other": ["b"]},
        }

        def seed(t: StateTxn) -> None:
            for doc_id, doc in docs.items():
                t.create("tagged", doc_id, doc)

        store.transact(seed)

        def containing(value: Any) -> list[str]:
            return _ids(store.query("tagged", [Where("tags", "array_contains", value)]))

        assert containing("b") == ["mixed", "strs"]
        assert containing(1) == ["mixed"]
        assert containing(True) == ["bools"]
        assert containing("z") == []

    def test_order_by_sorts_across_types_like_firestore(self, store: StateStore) -> None:
        values: dict[str, Any] = {"a": "x", "b": 2, "c": True, "d": None, "e": False, "f": -1}

        def seed(t: StateTxn) -> None:
            for doc_id, value in values.items():
                t.create("values", doc_id, {"v": value})

        store.transact(seed)
        # null < false < true < numbers < strings
        assert _ids(store.query("values", order_by="v")) == ["d", "e", "c", "f", "b", "a"]

    def test_query_inside_a_transaction(self, tasks: StateStore) -> None:
        def claim_queued(t: StateTxn) -> list[str]:
            queued = t.query("tasks", [Where("state", "==", "queued")], order_by="s")
            for doc_id, _ in queued:
                t.update("tasks", doc_id, {"state": "claimed"})
            return _ids(queued)

        assert tasks.transact(claim_queued) == ["t1", "t3", "t6"]
        assert _ids(tasks.query("tasks", [Where("state", "==", "claimed")])) == ["t1", "t3", "t6"]
        assert tasks.query("tasks", [Where("state", "==", "queued")]) == []


# -- ledger -----------------------------------------------------------------------------


class LedgerContract:
    """Append-only, create-only segments of a :class:`~servo.ports.Ledger`."""

    def test_an_empty_stream_has_no_segments(self, ledger: Ledger) -> None:
        assert ledger.read("runs/r1") == []
        assert ledger.last_seq("runs/r1") == -1

    def test_append_then_read_round_trips_events(self, ledger: Ledger) -> None:
        events: list[Doc] = [{"type": "started", "n": 1, "tags": ["a"]}, {"type": "é", "x": None}]
        ledger.append("runs/r1", 0, events)
        assert ledger.read("runs/r1") == [Segment("runs/r1", 0, tuple(events))]
        assert ledger.last_seq("runs/r1") == 0

    def test_a_segment_may_hold_no_events(self, ledger: Ledger) -> None:
        ledger.append("s", 0, [])
        assert ledger.read("s") == [Segment("s", 0, ())]

    def test_appending_an_existing_segment_raises_already_exists(self, ledger: Ledger) -> None:
        ledger.append("s", 0, [{"v": "first"}])
        with pytest.raises(AlreadyExists):
            ledger.append("s", 0, [{"v": "second"}])
        assert ledger.read("s") == [Segment("s", 0, ({"v": "first"},))]

    def test_segments_are_read_in_numeric_order(self, ledger: Ledger) -> None:
        for seq in (10, 2, 0, 1_000_000, 1):
            ledger.append("s", seq, [{"seq": seq}])
        assert [s.seq for s in ledger.read("s")] == [0, 1, 2, 10, 1_000_000]
        assert [s.events for s in ledger.read("s")][3] == ({"seq": 10},)
        assert ledger.last_seq("s") == 1_000_000

    def test_read_after_seq_and_limit(self, ledger: Ledger) -> None:
        for seq in range(6):
            ledger.append("s", seq, [{"seq": seq}])
        assert [s.seq for s in ledger.read("s", after_seq=2)] == [3, 4, 5]
        assert [s.seq for s in ledger.read("s", after_seq=-1, limit=2)] == [0, 1]
        assert [s.seq for s in ledger.read("s", after_seq=3, limit=10)] == [4, 5]
        assert ledger.read("s", after_seq=5) == []
        assert ledger.read("s", limit=0) == []

    def test_streams_are_isolated(self, ledger: Ledger) -> None:
        ledger.append("runs/r1", 0, [{"in": "r1"}])
        ledger.append("runs/r10", 0, [{"in": "r10"}])
        ledger.append("runs/r10", 1, [{"in": "r10"}])
        ledger.append("runs", 0, [{"in": "runs"}])
        assert [s.events for s in ledger.read("runs/r1")] == [({"in": "r1"},)]
        assert ledger.last_seq("runs/r1") == 0
        assert ledger.last_seq("runs/r10") == 1
        assert [s.events for s in ledger.read("runs")] == [({"in": "runs"},)]
        assert ledger.last_seq("runs/r2") == -1

    def test_concurrent_appends_of_one_segment_have_one_winner(self, ledger: Ledger) -> None:
        outcomes: list[int] = []
        lock = threading.Lock()

        def work(n: int) -> Callable[[], None]:
            def attempt() -> None:
                try:
                    ledger.append("race", 0, [{"writer": n}])
                except AlreadyExists:
                    return
                with lock:
                    outcomes.append(n)

            return attempt

        assert _run_threads([work(n) for n in range(THREADS * 2)]) == []
        assert len(outcomes) == 1
        assert ledger.read("race") == [Segment("race", 0, ({"writer": outcomes[0]},))]


# -- blobs ------------------------------------------------------------------------------


class BlobsContract:
    """Objects with generations and compare-and-set in a :class:`~servo.ports.Blobs`."""

    def test_put_then_get_round_trips_bytes(self, blobs: Blobs) -> None:
        data = bytes(range(256)) * 4
        generation = blobs.put("runs/r1/out.bin", data)
        assert isinstance(generation, int)
        assert generation > 0
        assert blobs.get("runs/r1/out.bin") == data
        assert blobs.get_with_generation("runs/r1/out.bin") == (data, generation)
        assert blobs.exists("runs/r1/out.bin")

    def test_an_empty_object_exists(self, blobs: Blobs) -> None:
        blobs.put("empty", b"")
        assert blobs.get("empty") == b""
        assert blobs.exists("empty")

    def test_a_missing_object_raises_not_found(self, blobs: Blobs) -> None:
        with pytest.raises(NotFound):
            blobs.get("missing/object")
        with pytest.raises(NotFound):
            blobs.get_with_generation("missing/object")
        assert not blobs.exists("missing/object")

    def test_every_write_changes_the_generation(self, blobs: Blobs) -> None:
        generations = [blobs.put("obj", b"same") for _ in range(3)]
        assert len(set(generations)) == 3
        assert blobs.get_with_generation("obj") == (b"same", generations[-1])
        blobs.put("obj", b"new")
        data, generation = blobs.get_with_generation("obj")
        assert data == b"new"
        assert generation not in generations

    def test_generation_zero_means_only_if_absent(self, blobs: Blobs) -> None:
        generation = blobs.put("obj", b"first", if_generation=0)
        with pytest.raises(AlreadyExists):
            blobs.put("obj", b"second", if_generation=0)
        assert blobs.get_with_generation("obj") == (b"first", generation)

    def test_compare_and_set_on_the_generation(self, blobs: Blobs) -> None:
        first = blobs.put("obj", b"v1")
        second = blobs.put("obj", b"v2", if_generation=first)
        assert second != first
        with pytest.raises(Conflict):
            blobs.put("obj", b"stale", if_generation=first)
        assert blobs.get_with_generation("obj") == (b"v2", second)

    def test_a_generation_precondition_on_a_missing_object_conflicts(self, blobs: Blobs) -> None:
        generation = blobs.put("other", b"x")
        with pytest.raises(Conflict):
            blobs.put("missing", b"x", if_generation=generation)
        assert not blobs.exists("missing")

    def test_list_returns_the_paths_under_a_prefix_sorted(self, blobs: Blobs) -> None:
        for path in ("b/2", "a/x/1", "b/1", "a/2", "ab/1", "b/sub/deep/3"):
            blobs.put(path, path.encode())
        assert blobs.list("b/") == ["b/1", "b/2", "b/sub/deep/3"]
        assert blobs.list("a/") == ["a/2", "a/x/1"]
        assert blobs.list("") == ["a/2", "a/x/1", "ab/1", "b/1", "b/2", "b/sub/deep/3"]
        assert blobs.list("zzz/") == []

    def test_delete_removes_and_is_idempotent(self, blobs: Blobs) -> None:
        blobs.put("d/obj", b"x")
        blobs.put("d/keep", b"y")
        blobs.delete("d/obj")
        assert not blobs.exists("d/obj")
        with pytest.raises(NotFound):
            blobs.get("d/obj")
        assert blobs.list("d/") == ["d/keep"]
        blobs.delete("d/obj")
        blobs.delete("never/existed")
        blobs.put("d/obj", b"again", if_generation=0)
        assert blobs.get("d/obj") == b"again"

    def test_concurrent_compare_and_set_loses_no_update(self, blobs: Blobs) -> None:
        per_thread = 5
        blobs.put("counter", b"0")

        def work() -> None:
            done = 0
            while done < per_thread:
                data, generation = blobs.get_with_generation("counter")
                try:
                    blobs.put("counter", str(int(data) + 1).encode(), if_generation=generation)
                except Conflict:
                    continue
                done += 1

        assert _run_threads([work] * THREADS) == []
        assert blobs.get("counter") == str(THREADS * per_thread).encode()


# -- queue ------------------------------------------------------------------------------


class _Recorder:
    """A queue handler that records payloads and fails a set number of times first."""

    def __init__(self, failures: int = 0) -> None:
        self.failures_left = failures
        self.calls: list[Doc] = []
        self.accepted: list[Doc] = []
        self._lock = threading.Lock()

    def __call__(self, payload: Doc) -> None:
        with self._lock:
            self.calls.append(payload)
            if self.failures_left > 0:
                self.failures_left -= 1
                raise RuntimeError("handler failure requested by the test")
            self.accepted.append(payload)


class QueueContract:
    """Delivery, delay, deduplication and retries of a :class:`~servo.ports.Queue`."""

    def test_a_message_is_delivered_with_its_payload(
        self, queue: Queue, queue_driver: QueueDriver
    ) -> None:
        handler = _Recorder()
        queue_driver.subscribe("tick", handler)
        payload: Doc = {"run_id": "r1", "n": 1, "items": ["a", None], "ok": True}
        assert queue.enqueue("tick", payload) is True
        queue_driver.deliver_due()
        assert handler.accepted == [payload]

    def test_messages_go_to_their_topic_only(self, queue: Queue, queue_driver: QueueDriver) -> None:
        a, b = _Recorder(), _Recorder()
        queue_driver.subscribe("a", a)
        queue_driver.subscribe("b", b)
        queue.enqueue("a", {"to": "a"})
        queue.enqueue("b", {"to": "b"})
        queue_driver.deliver_due()
        assert a.accepted == [{"to": "a"}]
        assert b.accepted == [{"to": "b"}]

    def test_a_name_deduplicates(self, queue: Queue, queue_driver: QueueDriver) -> None:
        handler = _Recorder()
        queue_driver.subscribe("tick", handler)
        assert queue.enqueue("tick", {"v": 1}, name="once") is True
        assert queue.enqueue("tick", {"v": 2}, name="once") is False
        assert queue.enqueue("tick", {"v": 3}, name="other") is True
        queue_driver.deliver_due()
        assert sorted(p["v"] for p in handler.accepted) == [1, 3]

    def test_a_name_stays_taken_after_delivery(
        self, queue: Queue, queue_driver: QueueDriver
    ) -> None:
        handler = _Recorder()
        queue_driver.subscribe("tick", handler)
        assert queue.enqueue("tick", {"v": 1}, name="once") is True
        queue_driver.deliver_due()
        assert handler.accepted == [{"v": 1}]
        assert queue.enqueue("tick", {"v": 2}, name="once") is False
        queue_driver.deliver_due()
        assert handler.accepted == [{"v": 1}]

    def test_unnamed_messages_are_never_deduplicated(
        self, queue: Queue, queue_driver: QueueDriver
    ) -> None:
        handler = _Recorder()
        queue_driver.subscribe("tick", handler)
        assert queue.enqueue("tick", {"v": 1}) is True
        assert queue.enqueue("tick", {"v": 1}) is True
        queue_driver.deliver_due()
        assert handler.accepted == [{"v": 1}, {"v": 1}]

    def test_a_delay_is_honoured(self, queue: Queue, queue_driver: QueueDriver) -> None:
        handler = _Recorder()
        queue_driver.subscribe("tick", handler)
        queue.enqueue("tick", {"when": "later"}, delay_s=2.0)
        queue.enqueue("tick", {"when": "now"})
        queue_driver.deliver_due()
        assert handler.accepted == [{"when": "now"}]
        queue_driver.advance(2.5)
        queue_driver.deliver_due()
        assert handler.accepted == [{"when": "now"}, {"when": "later"}]

    def test_a_failed_delivery_is_retried(self, queue: Queue, queue_driver: QueueDriver) -> None:
        handler = _Recorder(failures=2)
        queue_driver.subscribe("tick", handler)
        queue.enqueue("tick", {"v": 1}, name="retried")
        queue_driver.deliver_due()
        for _ in range(60):
            if handler.accepted:
                break
            queue_driver.advance(1.0)
            queue_driver.deliver_due()
        assert handler.accepted == [{"v": 1}]
        assert len(handler.calls) == 3


# -- bus --------------------------------------------------------------------------------


class BusContract:
    """Publish/subscribe through a :class:`~servo.ports.Bus`."""

    def test_a_subscriber_receives_data_and_attributes(
        self, bus: Bus, bus_driver: BusDriver
    ) -> None:
        bus_driver.subscribe("runs")
        message_id = bus.publish("runs", {"run_id": "r1", "n": [1, 2]}, {"kind": "started"})
        assert isinstance(message_id, str)
        assert message_id
        assert bus_driver.received("runs", 1) == [
            ReceivedMessage(message_id, {"run_id": "r1", "n": [1, 2]}, {"kind": "started"})
        ]

    def test_missing_attributes_arrive_empty(self, bus: Bus, bus_driver: BusDriver) -> None:
        bus_driver.subscribe("runs")
        message_id = bus.publish("runs", {"v": 1})
        assert bus_driver.received("runs", 1) == [ReceivedMessage(message_id, {"v": 1}, {})]

    def test_every_message_arrives_with_a_unique_id(self, bus: Bus, bus_driver: BusDriver) -> None:
        bus_driver.subscribe("runs")
        ids = [bus.publish("runs", {"i": i}, {"i": str(i)}) for i in range(5)]
        assert len(set(ids)) == 5
        received = bus_driver.received("runs", 5)
        assert sorted((m.id, m.data["i"], m.attributes["i"]) for m in received) == sorted(
            (message_id, i, str(i)) for i, message_id in enumerate(ids)
        )

    def test_topics_are_isolated(self, bus: Bus, bus_driver: BusDriver) -> None:
        bus_driver.subscribe("a")
        bus_driver.subscribe("b")
        to_a = bus.publish("a", {"to": "a"})
        to_b = bus.publish("b", {"to": "b"})
        assert bus_driver.received("a", 1) == [ReceivedMessage(to_a, {"to": "a"}, {})]
        assert bus_driver.received("b", 1) == [ReceivedMessage(to_b, {"to": "b"}, {})]
