"""The Cloud Functions entry points in-process: functions/<step>/main.py loaded by
functions-framework and served through its test client, on the embedded ports (the same
control services; the GCP wiring runs in test_serverless_e2e.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import functions_framework
import pytest
from serverless_support import write_project

from servo.adapters.embedded import InProcessQueue, SystemClock, open_embedded
from servo.api import functions
from servo.api.functions import Incoming, handle, notification_of
from servo.cli.workspace import project_record
from servo.cloud import CloudConfig, ConfigurationError, TopicQueues
from servo.control.common import RUNS, TASKS, attempt_token, task_doc_id
from servo.control.deploy import deploy
from servo.core.errors import InvalidRequest, TransientError
from servo.ports import Doc, Ports, StateStore, StateTxn, Where
from servo.project import build_bundle, find_project, load_and_build
from servo.testing.serverless import FUNCTIONS, checkout_root

T = TypeVar("T")
SECRET = "functions-test-secret"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, bytes, dict[str, Any]]:
    base = tmp_path_factory.mktemp("functions-project")
    root = write_project(base / "project", base / "effects")
    ref = find_project(root)
    _, manifest = load_and_build(ref)
    return manifest, build_bundle(ref.root), project_record(ref)


@pytest.fixture
def ports(tmp_path: Path, project: tuple[Any, bytes, dict[str, Any]]) -> Iterator[Ports]:
    ports = open_embedded(tmp_path / "home")
    ports.settings = {"callback_secret": SECRET}
    manifest, bundle, record = project
    deploy(ports, manifest, bundle, record)
    functions.use_ports(ports)
    yield ports
    functions.use_ports(None)


def client(step: str) -> Any:
    source = checkout_root() / "functions" / step / "main.py"
    app = functions_framework.create_app(target=step, source=str(source))
    return app.test_client()


def trigger(selection: str, **fields: Any) -> Any:
    return client("trigger").post("/", json={"selection": selection, **fields})


@pytest.mark.parametrize("step", FUNCTIONS)
def test_every_entry_point_loads_and_answers_a_health_check(step: str) -> None:
    path = "/healthz" if step == "api" else "/"
    response = client(step).get(path)
    assert response.status_code == 200
    assert response.get_json()["ok"] is True


def test_trigger_creates_finds_and_refuses_runs(ports: Ports) -> None:
    first = trigger("source", run_key="nightly-1")
    assert first.status_code == 201
    body = first.get_json()
    assert body["created"] is True
    assert body["task_count"] == 1
    again = trigger("source", run_key="nightly-1")
    assert again.status_code == 200
    assert again.get_json()["run_id"] == body["run_id"]
    assert again.get_json()["created"] is False
    conflict = trigger("middle", run_key="nightly-1")
    assert conflict.status_code == 409
    assert "nightly-1" in conflict.get_json()["error"]
    assert trigger("").status_code == 400
    unknown = trigger("no_such_asset")
    assert unknown.status_code == 400
    assert "no_such_asset" in unknown.get_json()["error"]
    assert client("trigger").post("/", data=b"{not json").status_code == 400
    assert client("trigger").put("/", json={}).status_code == 405
    assert ports.state.get(RUNS, body["run_id"]) is not None


def test_api_serves_run_status_and_cancel(ports: Ports) -> None:
    run_id = trigger("source+").get_json()["run_id"]
    api = client("api")
    for path in (f"/api/runs/{run_id}", f"/runs/{run_id}"):
        response = api.get(path)
        assert response.status_code == 200
        assert response.get_json()["run_id"] == run_id
    cancelled = api.post(f"/api/runs/{run_id}/cancel", json={"actor": "user:ana"})
    assert cancelled.status_code == 200
    assert cancelled.get_json()["state"] == "CANCELLED"
    assert api.get("/api/runs/r-missing").status_code == 404


def test_dispatch_serves_the_control_topics(ports: Ports) -> None:
    run_id = trigger("source").get_json()["run_id"]
    dispatch = client("dispatch")
    response = dispatch.post("/", json={"topic": "dispatch", "payload": {"run_id": run_id}})
    assert response.status_code == 200
    assert response.get_json() == {"topic": "dispatch", "dispatched": 1}
    (_, task), *_ = ports.state.query(TASKS, [Where("run_id", "==", run_id)])
    assert task["state"] == "DISPATCHED"
    finalize = dispatch.post("/", json={"topic": "finalize", "payload": {"run_id": run_id}})
    assert finalize.get_json() == {"topic": "finalize", "state": None}
    retry = {"run_id": run_id, "task_id": task["task_id"], "attempt": 1}
    not_due = dispatch.post("/", json={"topic": "retry", "payload": retry})
    assert not_due.get_json() == {"topic": "retry", "dispatched": 0}
    waiting = dispatch.post("/", json={"topic": "dispatch", "payload": {}})
    assert waiting.get_json() == {"topic": "dispatch", "dispatched": 0}


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        json.dumps([1, 2]).encode(),
        json.dumps({"payload": {}}).encode(),
        json.dumps({"topic": "execute", "payload": {}}).encode(),
        json.dumps({"topic": "retry", "payload": {"run_id": "r", "task_id": "t"}}).encode(),
        json.dumps({"topic": "dispatch", "payload": {"run_id": 7}}).encode(),
        json.dumps({"topic": "finalize", "payload": "r1"}).encode(),
    ],
)
def test_dispatch_acknowledges_messages_that_can_never_succeed(ports: Ports, body: bytes) -> None:
    # Cloud Tasks redelivers any non-2xx answer: a message that cannot succeed is dropped.
    response = client("dispatch").post("/", data=body, content_type="application/json")
    assert response.status_code == 200
    assert response.get_json()["dropped"] is True
    assert response.get_json()["error"]


def _report(ports: Ports, run_id: str, task: Doc, kind: str, **extra: Any) -> Doc:
    attempt = int(extra.pop("attempt", task["attempt"]))
    token = attempt_token(SECRET, ports.tenant, ports.workspace, run_id, task["task_id"], attempt)
    return {
        "kind": kind,
        "run_id": run_id,
        "task_id": task["task_id"],
        "attempt": attempt,
        "token": extra.pop("token", token),
        **extra,
    }


def test_callback_applies_reports_and_answers(ports: Ports) -> None:
    run_id = trigger("source").get_json()["run_id"]
    client("dispatch").post("/", json={"topic": "dispatch", "payload": {"run_id": run_id}})
    (_, task), *_ = ports.state.query(TASKS, [Where("run_id", "==", run_id)])
    callback = client("callback")
    started = callback.post("/", json=_report(ports, run_id, task, "started"))
    assert started.status_code == 200
    assert started.get_json()["accepted"] is True
    assert started.get_json()["cancel"] is False
    outcome = {"status": "succeeded", "duration_ms": 5}
    done = callback.post("/", json=_report(ports, run_id, task, "completed", outcome=outcome))
    assert done.status_code == 200
    assert done.get_json()["accepted"] is True
    again = callback.post("/", json=_report(ports, run_id, task, "completed", outcome=outcome))
    assert again.status_code == 200
    doc = ports.state.get(TASKS, task_doc_id(run_id, task["task_id"]))
    assert doc is not None
    assert doc["state"] == "SUCCEEDED"
    assert doc["attempt"] == 1
    stale = callback.post("/", json=_report(ports, run_id, task, "heartbeat", attempt=2))
    assert stale.status_code == 200
    assert stale.get_json()["accepted"] is False
    forged = callback.post("/", json=_report(ports, run_id, task, "started", token="0" * 40))
    assert forged.status_code == 400
    assert "token" in forged.get_json()["error"]
    assert callback.post("/", json={"kind": "finished"}).status_code == 400
    assert callback.post("/", data=b"nope").status_code == 400


class FailingState:
    """A state store whose transactions fail with ``error`` (reads work)."""

    def __init__(self, inner: StateStore, error: Exception) -> None:
        self.inner = inner
        self.error = error

    def transact(self, fn: Callable[[StateTxn], T], *, max_attempts: int = 8) -> T:
        raise self.error

    def get(self, collection: str, doc_id: str) -> Doc | None:
        return self.inner.get(collection, doc_id)

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        return self.inner.query(collection, where, order_by=order_by, limit=limit)


@pytest.mark.parametrize(
    ("error", "status"),
    [(TransientError("contention, try again"), 503), (RuntimeError("a bug"), 500)],
)
def test_failures_worth_retrying_are_5xx(ports: Ports, error: Exception, status: int) -> None:
    run_id = trigger("source").get_json()["run_id"]
    (_, task), *_ = ports.state.query(TASKS, [Where("run_id", "==", run_id)])
    ports.state = FailingState(ports.state, error)
    dispatched = client("dispatch").post(
        "/", json={"topic": "dispatch", "payload": {"run_id": run_id}}
    )
    assert dispatched.status_code == status
    report = _report(ports, run_id, task, "started", attempt=1)
    assert client("callback").post("/", json=report).status_code == status
    assert trigger("middle").status_code == status
    assert client("sweep").post("/").status_code == status


def test_scheduled_steps_answer_with_what_they_did(ports: Ports) -> None:
    swept = client("sweep").post("/")
    assert swept.status_code == 200
    assert "drained" in swept.get_json()
    ticked = client("tick").post("/", json={"now": "2024-05-01T10:00:00Z"})
    assert ticked.status_code == 200
    assert ticked.get_json()["run_ids"] == []
    bad_time = client("tick").post("/", json={"now": "yesterday"})
    assert bad_time.status_code == 200
    assert bad_time.get_json()["dropped"] is True
    sensors = client("sensor_evaluate").post("/", data=b"")
    assert sensors.status_code == 200
    assert sensors.get_json()["run_ids"] == []
    compacted = client("compaction").post("/")
    assert compacted.status_code == 200
    assert "published" in compacted.get_json()


def _push(data: Any, attributes: dict[str, str] | None = None) -> bytes:
    message = {
        "data": base64.b64encode(json.dumps(data).encode()).decode(),
        "attributes": attributes or {},
        "messageId": "m-1",
        "publishTime": "2024-05-01T10:00:00Z",
    }
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/s"}).encode()


def test_push_deliveries_are_decoded_into_notifications() -> None:
    pushed = notification_of(Incoming("POST", body=_push({"file": "a.csv"}, {"kind": "new"})))
    assert pushed.id == "m-1"
    assert pushed.data == {"file": "a.csv"}
    assert pushed.attributes == {"kind": "new"}
    gcs_object = {"bucket": "landing", "name": "2024-05-01/orders.csv", "generation": "17"}
    binary = notification_of(
        Incoming(
            "POST",
            headers={"ce-type": "google.cloud.storage.object.v1.finalized", "ce-id": "e-9"},
            body=json.dumps(gcs_object).encode(),
        )
    )
    assert binary.id == "e-9"
    assert binary.attributes == {
        "bucketId": "landing",
        "objectId": "2024-05-01/orders.csv",
        "objectGeneration": "17",
        "eventType": "OBJECT_FINALIZE",
    }
    structured = notification_of(
        Incoming(
            "POST",
            headers={"content-type": "application/cloudevents+json"},
            body=json.dumps(
                {
                    "specversion": "1.0",
                    "type": "google.cloud.pubsub.topic.v1.messagePublished",
                    "id": "ce-1",
                    "data": json.loads(_push({"n": 1})),
                }
            ).encode(),
        )
    )
    assert structured.data == {"n": 1}
    assert notification_of(Incoming("POST", body=b"")) is None
    assert notification_of(Incoming("POST", body=b'{"force": true}')) is None
    with pytest.raises(InvalidRequest):
        notification_of(Incoming("POST", headers={"ce-type": "com.example.other"}, body=b"{}"))


def test_sensor_notifications_are_acknowledged_after_handling(ports: Ports) -> None:
    sensor = client("sensor_evaluate")
    # The project has no event sensors: nothing listens on the topic, nothing is recorded.
    handled = sensor.post("/?topic=landing", data=_push({"x": 1}))
    assert handled.status_code == 200
    assert handled.get_json() == {"message_id": "m-1", "results": []}
    named = sensor.post("/?sensor=nobody", data=_push({"x": 1}))
    assert named.get_json()["results"][0]["status"] == "IGNORED"
    unaddressed = sensor.post("/", data=_push({"x": 1}))
    assert unaddressed.status_code == 200
    assert "?topic=" in unaddressed.get_json()["error"]


def test_handle_names_unknown_entry_points() -> None:
    with pytest.raises(Exception, match="unknown entry point"):
        handle("nope", Incoming("POST"))


def test_missing_configuration_is_a_500_that_names_the_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SERVO_GCP_PROJECT", "GOOGLE_CLOUD_PROJECT", "SERVO_BUCKET", "SERVO_TASKS_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    functions.use_ports(None)
    response = client("dispatch").post("/", json={"topic": "dispatch", "payload": {}})
    assert response.status_code == 500
    error = response.get_json()["error"]
    for name in ("SERVO_GCP_PROJECT", "SERVO_BUCKET", "SERVO_TASKS_QUEUE"):
        assert name in error


def test_cloud_config_reads_the_environment() -> None:
    env = {
        "SERVO_GCP_PROJECT": "acme",
        "SERVO_BUCKET": "acme-servo",
        "SERVO_TASKS_QUEUE": "projects/acme/locations/eu/queues/control",
        "SERVO_TARGET_DISPATCH": "https://dispatch.example",
        "SERVO_TARGET_EXECUTE": "https://worker.example/execute",
        "SERVO_HEARTBEAT_TIMEOUT_MS": "9000",
        "SERVO_CALLBACK_SECRET": "s3cret",
    }
    config = CloudConfig.from_env(env)
    assert config.targets == {
        "dispatch": "https://dispatch.example",
        "retry": "https://dispatch.example",
        "finalize": "https://dispatch.example",
        "execute": "https://worker.example/execute",
    }
    assert config.execute_queue == config.tasks_queue
    assert config.settings == {"heartbeat_timeout_ms": 9000}
    assert (config.tenant, config.workspace) == ("default", "default")
    with pytest.raises(ConfigurationError) as caught:
        CloudConfig.from_env({**env, "SERVO_MAX_CONCURRENT_TASKS": "many", "SERVO_BUCKET": ""})
    assert "SERVO_MAX_CONCURRENT_TASKS" in str(caught.value)
    assert "SERVO_BUCKET" in str(caught.value)


def test_topic_queues_send_execute_messages_to_their_own_queue() -> None:
    control, execute = InProcessQueue(SystemClock()), InProcessQueue(SystemClock())
    queues = TopicQueues(control, {"execute": execute})
    assert queues.enqueue("execute", {"n": 1}, name="x")
    assert not queues.enqueue("execute", {"n": 1}, name="x")
    assert queues.enqueue("dispatch", {"run_id": "r"}, name="x")
    assert [m.topic for m in execute.messages()] == ["execute"]
    assert [m.topic for m in control.messages()] == ["dispatch"]
