"""The GCP adapters against the port contracts, on the emulators, plus what only they promise.

Every test isolates itself by name: its own Firestore database, its own GCS prefix, its own
Pub/Sub topic prefix and its own Cloud Tasks queue, all on one set of emulators per session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import itertools
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as google_errors
from google.cloud import pubsub_v1, tasks_v2

from servo.adapters.embedded import SqliteStateStore
from servo.adapters.gcp import (
    CloudTasksQueue,
    FirestoreStateStore,
    GcpConfig,
    GcsBlobs,
    GcsLedger,
    OperationCounter,
    PubSubBus,
    costs,
    firestore_client,
    open_gcp,
    publisher_client,
    storage_client,
    task_id,
    tasks_client,
)
from servo.core.errors import NotFound, ServoError, TransientError
from servo.ports import Blobs, Bus, Doc, Ledger, Queue, Segment, StateStore, StateTxn, Where
from servo.testing.clock import ManualClock
from servo.testing.contracts import (
    BlobsContract,
    BusContract,
    LedgerContract,
    QueueContract,
    ReceivedMessage,
    StateStoreContract,
)
from servo.testing.emulators import Emulators

pytestmark = pytest.mark.emulators

PROJECT = "demo-servo"
LOCATION = "projects/demo-servo/locations/local"
BUCKET = "servo-contracts"
CONTRACT_TOPICS = ("tick", "a", "b")
PATIENCE_S = 30.0  # upper bound for the emulators to deliver; tests never assert speed

_serial = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test of this session (or of a parallel worker) uses."""
    return f"{prefix}-{os.getpid()}-{next(_serial)}"


@pytest.fixture(scope="module", autouse=True)
def _emulators(gcp_emulators: dict[str, str]) -> dict[str, str]:
    # Start all four at once (in parallel) rather than one by one as tests need them.
    return gcp_emulators


@pytest.fixture(scope="module")
def bucket(_emulators: dict[str, str]) -> Any:
    client = storage_client(PROJECT)
    try:
        return client.create_bucket(BUCKET)
    except google_errors.Conflict:
        return client.bucket(BUCKET)


@pytest.fixture(scope="module")
def tasks(_emulators: dict[str, str]) -> Iterator[Any]:
    client = tasks_client()
    yield client
    client.transport.close()


@pytest.fixture(scope="module")
def publisher(_emulators: dict[str, str]) -> Iterator[Any]:
    client = publisher_client()
    yield client
    client.transport.close()


@pytest.fixture(scope="module")
def subscriber(_emulators: dict[str, str]) -> Iterator[Any]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


# -- drivers ----------------------------------------------------------------------------


class TaskReceiver:
    """A local HTTP server standing in for the functions Cloud Tasks calls.

    ``POST /tasks/<topic>`` calls the topic's handler with the body's payload: 200 when it
    returns, 500 when it raises, 404 when the topic has no handler.
    """

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Doc], None]] = {}
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._calls = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                status = receiver._handle(self.path, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, topic: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/tasks/{topic}"

    def _handle(self, path: str, body: bytes) -> int:
        topic = path.rsplit("/", 1)[-1]
        handler = self.handlers.get(topic)
        if handler is None:
            return 404
        with self._lock:
            self._calls += 1
        message = json.loads(body)
        assert message["topic"] == topic
        try:
            handler(message["payload"])
        except Exception:
            return 500
        return 200

    def take_calls(self) -> int:
        with self._lock:
            calls, self._calls = self._calls, 0
        return calls

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def create_queue(client: Any, *, max_backoff_s: float = 0.5) -> str:
    """A fresh Cloud Tasks queue that retries quickly."""
    name = f"{LOCATION}/queues/{unique('q')}"
    client.create_queue(
        parent=LOCATION,
        queue=tasks_v2.Queue(
            name=name,
            retry_config=tasks_v2.RetryConfig(
                max_attempts=50,
                min_backoff=timedelta(seconds=0.1),
                max_backoff=timedelta(seconds=max_backoff_s),
            ),
        ),
    )
    return name


class CloudTasksQueueDriver:
    """Drives a CloudTasksQueue on the Cloud Tasks fake, in real time.

    ``deliver_due`` waits until no task of the queue is due or being delivered — using only
    the public API: a task stays listed, with a schedule time in the past, until its attempt
    ends, and then it is either gone or rescheduled into the future.
    """

    def __init__(self, receiver: TaskReceiver, client: Any, queue_path: str) -> None:
        self.receiver = receiver
        self.client = client
        self.queue_path = queue_path

    def subscribe(self, topic: str, handler: Callable[[Doc], None]) -> None:
        self.receiver.handlers[topic] = handler

    def deliver_due(self) -> int:
        deadline = time.monotonic() + PATIENCE_S
        while True:
            now = datetime.now(UTC)
            due = [
                t.name
                for t in self.client.list_tasks(parent=self.queue_path)
                if t.schedule_time <= now
            ]
            if not due:
                return self.receiver.take_calls()
            assert time.monotonic() < deadline, f"tasks still due after {PATIENCE_S} s: {due}"
            time.sleep(0.02)

    def advance(self, seconds: float) -> None:
        time.sleep(seconds)


class PubSubBusDriver:
    """Collects what a PubSubBus publishes through pull subscriptions on the emulator."""

    def __init__(self, bus: PubSubBus, publisher: Any, subscriber: Any) -> None:
        self.bus = bus
        self.publisher = publisher
        self.subscriber = subscriber
        self.subscriptions: dict[str, str] = {}
        self.got: dict[str, list[ReceivedMessage]] = {}

    def subscribe(self, topic: str) -> None:
        topic_path = self.bus.topic_path(topic)
        with contextlib.suppress(google_errors.AlreadyExists):
            self.publisher.create_topic(name=topic_path)
        subscription = self.subscriber.subscription_path(PROJECT, unique("sub"))
        self.subscriber.create_subscription(name=subscription, topic=topic_path)
        self.subscriptions[topic] = subscription
        self.got[topic] = []

    def received(self, topic: str, count: int) -> list[ReceivedMessage]:
        subscription, inbox = self.subscriptions[topic], self.got[topic]
        seen = {m.id for m in inbox}
        deadline = time.monotonic() + PATIENCE_S
        while len(inbox) < count and time.monotonic() < deadline:
            try:
                response = self.subscriber.pull(
                    subscription=subscription, max_messages=100, timeout=5
                )
            except google_errors.DeadlineExceeded:
                continue
            if not response.received_messages:
                time.sleep(0.02)
                continue
            self.subscriber.acknowledge(
                subscription=subscription,
                ack_ids=[m.ack_id for m in response.received_messages],
            )
            for received in response.received_messages:
                message = received.message
                if message.message_id not in seen:
                    seen.add(message.message_id)
                    inbox.append(
                        ReceivedMessage(
                            message.message_id,
                            json.loads(message.data),
                            dict(message.attributes),
                        )
                    )
        return list(inbox)


# -- the contracts ----------------------------------------------------------------------


@pytest.fixture
def firestore_factory() -> Iterator[Callable[[str, str], FirestoreStateStore]]:
    """Stores on a Firestore database of the test's own (so it starts empty)."""
    client = firestore_client(PROJECT, database=unique("db"))

    def make(tenant: str, workspace: str) -> FirestoreStateStore:
        return FirestoreStateStore(client, tenant, workspace)

    yield make
    client.close()


class TestFirestoreStateStoreContract(StateStoreContract):
    @pytest.fixture
    def store_factory(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore]
    ) -> Callable[[str, str], StateStore]:
        return firestore_factory


class TestGcsLedgerContract(LedgerContract):
    @pytest.fixture
    def ledger(self, bucket: Any) -> Ledger:
        return GcsLedger(bucket, unique("ledger-contract"))


class TestGcsBlobsContract(BlobsContract):
    @pytest.fixture
    def blobs(self, bucket: Any) -> Blobs:
        return GcsBlobs(bucket, unique("blobs-contract"))


@pytest.fixture
def receiver() -> Iterator[TaskReceiver]:
    server = TaskReceiver()
    yield server
    server.close()


@pytest.fixture
def queue_path(tasks: Any) -> Iterator[str]:
    name = create_queue(tasks)
    yield name
    tasks.delete_queue(name=name)  # drops whatever a test left behind


class TestCloudTasksQueueContract(QueueContract):
    @pytest.fixture
    def queue(self, tasks: Any, queue_path: str, receiver: TaskReceiver) -> Queue:
        targets = {topic: receiver.url(topic) for topic in CONTRACT_TOPICS}
        return CloudTasksQueue(tasks, queue_path, targets)

    @pytest.fixture
    def queue_driver(
        self, tasks: Any, queue_path: str, receiver: TaskReceiver
    ) -> CloudTasksQueueDriver:
        return CloudTasksQueueDriver(receiver, tasks, queue_path)


class TestPubSubBusContract(BusContract):
    @pytest.fixture
    def bus(self, publisher: Any) -> Bus:
        return PubSubBus(publisher, PROJECT, topic_prefix=unique("t") + "-")

    @pytest.fixture
    def bus_driver(self, bus: PubSubBus, publisher: Any, subscriber: Any) -> PubSubBusDriver:
        return PubSubBusDriver(bus, publisher, subscriber)


# -- Firestore --------------------------------------------------------------------------


class TestFirestoreStateStore:
    def test_documents_live_under_the_tenant_and_workspace(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore]
    ) -> None:
        store = firestore_factory("acme", "dev")
        store.transact(lambda t: t.create("runs", "r1", {"state": "queued"}))
        raw = store.client.document("tenants/acme/workspaces/dev/runs/r1").get()
        assert raw.to_dict() == {"state": "queued"}

    def test_named_databases_are_separate(self) -> None:
        one = firestore_client(PROJECT, database=unique("db"))
        two = firestore_client(PROJECT, database=unique("db"))
        try:
            FirestoreStateStore(one, "t", "w").transact(lambda t: t.create("runs", "r", {"db": 1}))
            assert FirestoreStateStore(two, "t", "w").get("runs", "r") is None
            assert FirestoreStateStore(one, "t", "w").get("runs", "r") == {"db": 1}
        finally:
            one.close()
            two.close()

    def test_values_firestore_cannot_hold_directly_round_trip(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore]
    ) -> None:
        store = firestore_factory("t", "w")
        doc: Doc = {
            "grid": [[1, 2], [[3], []], []],
            "keys": {"": 1, "__name__": 2, "~tilde": 3, "~list": [4], "a.b": 5, "`x`": 6},
            "__reserved__": "top",
            "~": "tilde",
            "ratio": 0.25,
        }
        store.transact(lambda t: t.create("runs", "r1", doc))
        assert store.get("runs", "r1") == doc
        store.transact(lambda t: t.update("runs", "r1", {"a.b": [[7]], "__reserved__": None}))
        assert store.get("runs", "r1") == {**doc, "a.b": [[7]], "__reserved__": None}
        assert store.query("runs", [Where("__reserved__", "==", None)]) == [
            ("r1", {**doc, "a.b": [[7]], "__reserved__": None})
        ]

    def test_values_firestore_cannot_store_are_rejected(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore]
    ) -> None:
        store = firestore_factory("t", "w")
        for bad in ({"n": 2**63}, {"x": float("nan")}, {"b": b"bytes"}, {1: "int key"}):

            def write(t: StateTxn, doc: Any = bad) -> None:
                t.set("runs", "r", doc)

            with pytest.raises(ServoError):
                store.transact(write)
        assert store.get("runs", "r") is None

    def test_an_update_of_no_fields_only_checks_existence(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore]
    ) -> None:
        store = firestore_factory("t", "w")
        with pytest.raises(NotFound):
            store.transact(lambda t: t.update("runs", "missing", {}))
        store.transact(lambda t: t.create("runs", "r", {"v": 1}))
        store.transact(lambda t: t.update("runs", "r", {}))
        assert store.get("runs", "r") == {"v": 1}

    def test_nested_transactions_are_refused(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore]
    ) -> None:
        store = firestore_factory("t", "w")
        with pytest.raises(ServoError, match="inside another transaction"):
            store.transact(lambda t: store.transact(lambda inner: inner.get("runs", "r")))

    def test_a_younger_transaction_gives_way_and_runs_out_of_attempts(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore]
    ) -> None:
        store = firestore_factory("t", "w")
        store.transact(lambda t: t.create("counters", "c", {"n": 0}))
        holding, release = threading.Event(), threading.Event()

        def hold(t: StateTxn) -> None:
            doc = t.get("counters", "c")
            assert doc is not None
            holding.set()
            assert release.wait(PATIENCE_S)
            t.update("counters", "c", {"n": doc["n"] + 1})

        older = threading.Thread(target=store.transact, args=(hold,))
        older.start()
        try:
            assert holding.wait(PATIENCE_S)
            with pytest.raises(TransientError):
                store.transact(lambda t: t.get("counters", "c"), max_attempts=1)
        finally:
            release.set()
            older.join()
        assert store.get("counters", "c") == {"n": 1}

    def test_many_threads_increment_one_counter_without_losing_updates(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore]
    ) -> None:
        store = firestore_factory("t", "w")
        store.transact(lambda t: t.create("counters", "c", {"n": 0}))

        def increment(t: StateTxn) -> None:
            doc = t.get("counters", "c")
            assert doc is not None
            t.update("counters", "c", {"n": doc["n"] + 1})

        def work() -> None:
            for _ in range(10):
                store.transact(increment, max_attempts=100)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.get("counters", "c") == {"n": 80}

    def test_operations_are_counted_as_firestore_bills_them(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore]
    ) -> None:
        store = firestore_factory("t", "w")
        counter = store.counter

        def seed(t: StateTxn) -> None:
            for i in range(3):
                t.create("runs", f"r{i}", {"i": i})

        store.transact(seed)
        assert counter.snapshot() == {costs.FIRESTORE_WRITE: 3}
        counter.reset()
        assert len(store.query("runs")) == 3
        assert store.query("runs", [Where("i", ">", 10)]) == []
        store.get("runs", "missing")
        assert counter.snapshot() == {costs.FIRESTORE_READ: 5}
        counter.reset()

        def move(t: StateTxn) -> None:
            found = t.get_many("runs", ["r0", "r1", "nope"])
            t.delete("runs", "r0")
            t.update("runs", "r1", {"moved": True})
            assert len(found) == 2

        store.transact(move)
        assert counter.snapshot() == {
            costs.FIRESTORE_READ: 3,
            costs.FIRESTORE_WRITE: 1,
            costs.FIRESTORE_DELETE: 1,
        }

    def test_queries_match_the_embedded_store(
        self, firestore_factory: Callable[[str, str], FirestoreStateStore], tmp_path: Any
    ) -> None:
        docs: dict[str, Doc] = {
            f"d{i:02d}": doc
            for i, doc in enumerate(
                [
                    {"n": 3, "s": "b", "state": "queued", "tags": ["x", "y"]},
                    {"n": 1, "s": "a", "state": "running", "tags": ["y", None]},
                    {"n": 2, "s": "c", "state": "queued", "tags": []},
                    {"n": 2, "s": "a", "state": "done", "tags": ["x"]},
                    {"n": 5, "s": "e", "state": "failed"},
                    {"s": "d", "state": "queued"},
                    {"n": None, "s": None, "state": None},
                    {"n": True, "s": 1, "state": "queued"},
                    {"n": -1.5, "s": "", "state": "done", "tags": [1, True]},
                    {"n": 2**40, "s": "zz", "state": "running"},
                ]
            )
        }
        firestore = firestore_factory("t", "w")
        embedded = SqliteStateStore(tmp_path / "state.db", "t", "w")

        def seed(t: StateTxn) -> None:
            for doc_id, doc in docs.items():
                t.create("tasks", doc_id, doc)

        firestore.transact(seed)
        embedded.transact(seed)
        filters: list[list[Where]] = [
            [],
            [Where("state", "==", "queued")],
            [Where("state", "in", ["queued", "done", None])],
            [Where("n", "in", [*range(40), True])],
            [Where("n", ">=", 2)],
            [Where("n", "!=", 2)],
            [Where("s", "<", "c")],
            [Where("tags", "array_contains", "x")],
            [Where("tags", "array_contains", None)],
            [Where("state", "==", "queued"), Where("n", ">", 1)],
            [Where("n", ">", 0), Where("s", ">", "a")],
        ]
        try:
            for where in filters:
                for order_by in (None, "n", "-n", "s", "-state"):
                    for limit in (None, 0, 1, 3):
                        expected = embedded.query("tasks", where, order_by=order_by, limit=limit)
                        got = firestore.query("tasks", where, order_by=order_by, limit=limit)
                        assert got == expected, (where, order_by, limit)
        finally:
            embedded.close()


# -- Cloud Storage ----------------------------------------------------------------------


class TestGcsLedger:
    def test_segments_are_json_objects_under_the_prefix(self, bucket: Any) -> None:
        prefix = unique("layout")
        ledger = GcsLedger(bucket, prefix)
        ledger.append("runs/r 1", 7, [{"type": "started"}])
        name = f"{prefix}/ledger/runs/r%201/000000000007.json"
        raw = bucket.blob(name).download_as_bytes()
        assert raw[:2] == b"\x1f\x8b", "segments are gzip-compressed JSON"
        body = json.loads(gzip.decompress(raw))
        assert body == {"stream": "runs/r 1", "seq": 7, "events": [{"type": "started"}]}

    def test_another_writer_s_segments_are_seen(self, bucket: Any) -> None:
        prefix = unique("shared")
        one, two = GcsLedger(bucket, prefix), GcsLedger(bucket, prefix)
        one.append("s", 0, [])
        assert two.last_seq("s") == 0
        two.append("s", 1, [{"by": "two"}])
        assert one.last_seq("s") == 1
        assert one.read("s", after_seq=0) == [Segment("s", 1, ({"by": "two"},))]

    def test_oversized_segments_and_bad_numbers_are_refused(self, bucket: Any) -> None:
        ledger = GcsLedger(bucket, unique("limits"))
        with pytest.raises(ServoError, match="split its events"):
            # Random hex barely compresses: 10 MB of it is still over the 4 MiB limit.
            ledger.append("s", 0, [{"blob": secrets.token_hex(5 * 1024 * 1024)}])
        for bad in (-1, 10**12, True):
            with pytest.raises(ServoError):
                ledger.append("s", bad, [])
        assert ledger.last_seq("s") == -1

    def test_operations_are_counted(self, bucket: Any) -> None:
        counter = OperationCounter()
        ledger = GcsLedger(bucket, unique("costs"), counter=counter)
        ledger.append("s", 0, [])
        ledger.append("s", 1, [])
        assert counter.snapshot() == {costs.GCS_CLASS_A: 2}
        counter.reset()
        assert len(ledger.read("s")) == 2
        assert counter.snapshot() == {costs.GCS_CLASS_A: 1, costs.GCS_CLASS_B: 2}


class TestGcsBlobs:
    def test_objects_live_under_the_prefix_with_a_content_type(self, bucket: Any) -> None:
        prefix = unique("blob-layout")
        blobs = GcsBlobs(bucket, prefix)
        generation = blobs.put("runs/r1/out.json", b"{}")
        stored = bucket.get_blob(f"{prefix}/blobs/runs/r1/out.json")
        assert (stored.generation, stored.content_type) == (generation, "application/json")

    def test_invalid_paths_are_refused(self, bucket: Any) -> None:
        blobs = GcsBlobs(bucket, unique("bad-paths"))
        for bad in ("", "/abs", "a//b", "a/../b", ".", "line\nbreak"):
            with pytest.raises(ServoError):
                blobs.put(bad, b"x")
        assert blobs.list("") == []

    def test_operations_are_counted(self, bucket: Any) -> None:
        blobs = GcsBlobs(bucket, unique("blob-costs"))
        blobs.put("a", b"1")
        blobs.get("a")
        blobs.exists("a")
        blobs.list("")
        blobs.delete("a")
        assert blobs.counter.snapshot() == {
            costs.GCS_CLASS_A: 2,
            costs.GCS_CLASS_B: 2,
            costs.GCS_FREE: 1,
        }


# -- Cloud Tasks ------------------------------------------------------------------------


class TestCloudTasksQueue:
    def test_task_ids_are_deterministic_distinct_and_allowed(self) -> None:
        names = ["run/1", "run_1", "run-1", "é" * 300, "", "a" * 1000, "x:y@z"]
        ids = [task_id("dispatch", name) for name in names]
        assert ids == [task_id("dispatch", name) for name in names]
        assert len(set(ids)) == len(ids)
        assert task_id("other", "run/1") != ids[0]
        for made in ids:
            assert 32 <= len(made) <= 500
            assert set(made) <= set(
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
            )

    def test_a_task_carries_the_topic_payload_token_and_deadline(
        self, tasks: Any, queue_path: str, receiver: TaskReceiver
    ) -> None:
        clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
        queue = CloudTasksQueue(
            tasks,
            queue_path,
            {"dispatch": receiver.url("dispatch")},
            "servo@demo-servo.iam.gserviceaccount.com",
            dispatch_deadline_s=120,
            clock=clock,
        )
        assert queue.enqueue("dispatch", {"run_id": "r1"}, name="r1/0", delay_s=30)
        created = tasks.get_task(
            request={
                "name": queue.task_name("dispatch", "r1/0"),
                "response_view": tasks_v2.Task.View.FULL,
            }
        )
        assert created.schedule_time == clock.now() + timedelta(seconds=30)
        assert created.dispatch_deadline == timedelta(seconds=120)
        request = created.http_request
        assert request.url == receiver.url("dispatch")
        assert request.http_method == tasks_v2.HttpMethod.POST
        assert request.headers["Content-Type"] == "application/json"
        assert json.loads(request.body) == {"topic": "dispatch", "payload": {"run_id": "r1"}}
        assert (
            request.oidc_token.service_account_email == "servo@demo-servo.iam.gserviceaccount.com"
        )
        assert queue.counter.snapshot() == {costs.TASKS_OPERATION: 1}

    def test_delivery_carries_an_oidc_token(
        self, tasks: Any, queue_path: str, receiver: TaskReceiver
    ) -> None:
        queue = CloudTasksQueue(
            tasks,
            queue_path,
            {"tick": receiver.url("tick")},
            "sa@demo-servo.iam.gserviceaccount.com",
        )
        driver = CloudTasksQueueDriver(receiver, tasks, queue_path)
        driver.subscribe("tick", lambda payload: None)
        queue.enqueue("tick", {})
        driver.deliver_due()
        [(_, headers, _)] = receiver.requests
        assert headers["Authorization"].startswith("Bearer ")
        assert headers["X-CloudTasks-QueueName"] == queue_path.rsplit("/", 1)[1]

    def test_unknown_topics_and_queues_are_errors(self, tasks: Any, receiver: TaskReceiver) -> None:
        queue = CloudTasksQueue(
            tasks, f"{LOCATION}/queues/{unique('nope')}", {"t": receiver.url("t")}
        )
        with pytest.raises(ServoError, match="no target URL"):
            queue.enqueue("elsewhere", {})
        with pytest.raises(NotFound):
            queue.enqueue("t", {})
        with pytest.raises(ServoError):
            CloudTasksQueue(tasks, "queues/q", {})
        with pytest.raises(ServoError):
            CloudTasksQueue(tasks, f"{LOCATION}/queues/q", {}, dispatch_deadline_s=5)


# -- Pub/Sub ----------------------------------------------------------------------------


class TestPubSubBus:
    def test_a_missing_topic_is_not_found(self, publisher: Any) -> None:
        bus = PubSubBus(publisher, PROJECT, topic_prefix=unique("none") + "-")
        with pytest.raises(NotFound, match="does not exist"):
            bus.publish("runs", {})

    def test_messages_are_counted(self, publisher: Any, subscriber: Any) -> None:
        bus = PubSubBus(publisher, PROJECT, topic_prefix=unique("count") + "-")
        PubSubBusDriver(bus, publisher, subscriber).subscribe("runs")
        bus.publish("runs", {"v": 1}, {"k": "v"})
        assert bus.counter.count(costs.PUBSUB_MESSAGE) == 1
        assert bus.counter.count(costs.PUBSUB_BYTES) == len(b'{"v":1}') + 2

    def test_invalid_topics_and_attributes_are_refused(self, publisher: Any) -> None:
        bus = PubSubBus(publisher, PROJECT)
        for bad in ("", "x", "goog-topic", "has space"):
            with pytest.raises(ServoError):
                bus.publish(bad, {})
        with pytest.raises(ServoError):
            bus.publish("runs", {}, {"n": 1})  # type: ignore[dict-item]


# -- open_gcp ---------------------------------------------------------------------------


class TestOpenGcp:
    def test_wires_every_port_from_the_environment(
        self, bucket: Any, tasks: Any, publisher: Any, subscriber: Any, receiver: TaskReceiver
    ) -> None:
        queue_path = create_queue(tasks)
        config = GcpConfig(
            project=PROJECT,
            bucket=BUCKET,
            database=unique("db"),
            prefix=unique("open"),
            tasks_queue_path=queue_path,
            task_targets={"tick": receiver.url("tick")},
            tenant="acme",
            workspace="dev",
            topic_prefix=unique("open") + "-",
        )
        ports = open_gcp(config)
        try:
            counter = ports.settings["operation_counter"]
            assert all(
                adapter.counter is counter  # type: ignore[attr-defined]
                for adapter in (ports.state, ports.ledger, ports.blobs, ports.queue, ports.bus)
            )
            ports.state.transact(lambda t: t.create("runs", "r1", {"v": 1}))
            assert ports.state.get("runs", "r1") == {"v": 1}
            ports.ledger.append("runs/r1", 0, [{"e": 1}])
            ports.blobs.put("x", b"y")
            assert (
                bucket.get_blob(f"{config.prefix}/tenants/acme/workspaces/dev/blobs/x") is not None
            )
            assert (
                bucket.get_blob(
                    f"{config.prefix}/tenants/acme/workspaces/dev/ledger/runs/r1/000000000000.json"
                )
                is not None
            )
            driver = CloudTasksQueueDriver(receiver, tasks, queue_path)
            got: list[Doc] = []
            driver.subscribe("tick", got.append)
            assert ports.queue.enqueue("tick", {"n": 1}, name="once")
            assert not ports.queue.enqueue("tick", {"n": 2}, name="once")
            driver.deliver_due()
            assert got == [{"n": 1}]
            assert isinstance(ports.bus, PubSubBus)
            bus_driver = PubSubBusDriver(ports.bus, publisher, subscriber)
            bus_driver.subscribe("events")
            message_id = ports.bus.publish("events", {"e": 1})
            assert bus_driver.received("events", 1) == [ReceivedMessage(message_id, {"e": 1})]
            assert set(counter.snapshot()) == {
                costs.FIRESTORE_READ,
                costs.FIRESTORE_WRITE,
                costs.GCS_CLASS_A,
                costs.TASKS_OPERATION,
                costs.PUBSUB_MESSAGE,
                costs.PUBSUB_BYTES,
            }
        finally:
            tasks.delete_queue(name=queue_path)

    def test_invalid_scopes_are_refused(self) -> None:
        config = GcpConfig(project=PROJECT, bucket=BUCKET, tasks_queue_path=f"{LOCATION}/queues/q")
        for scope in ({"tenant": "../x"}, {"workspace": ""}):
            with pytest.raises(ServoError):
                open_gcp(dataclasses.replace(config, **scope))


# -- emulator tooling -------------------------------------------------------------------


class TestEmulatorTooling:
    def test_reset_firestore_empties_a_database(self, emulators: Emulators) -> None:
        database = unique("db")
        client = firestore_client(PROJECT, database)
        try:
            store = FirestoreStateStore(client, "t", "w")
            store.transact(lambda t: t.create("runs", "r", {"v": 1}))
            emulators.reset_firestore(database)
            assert store.get("runs", "r") is None
        finally:
            client.close()

    def test_the_command_line_starts_reports_and_stops(self, tmp_path: Path) -> None:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "servo.testing.emulators", *args]
            return subprocess.run(
                [*command, "--state-dir", str(tmp_path)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        assert cli("status").returncode == 1
        started = cli("start", "storage")
        assert started.returncode == 0, started.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines()
        )
        url = exports["STORAGE_EMULATOR_HOST"]
        assert exports["NO_GCE_CHECK"] == "true"
        with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=10) as response:
            assert response.status == 200
        assert cli("status", "storage").returncode == 0
        assert f"STORAGE_EMULATOR_HOST={url}" in cli("env").stdout
        assert "storage" in cli("stop").stderr
        assert cli("status", "storage").returncode == 1
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=10)
        assert cli("start", "nonsense").returncode != 0
