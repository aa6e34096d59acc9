"""Sensors on the embedded control plane: custom sensors evaluated in worker processes with a
cursor committed with their run requests (B2, B3), crash safety of that commit, run-status
sensors that see every status change exactly once, and GCS / Pub/Sub sensors fed by the
embedded bus."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conftest import CrashOnce, wait_until
from servo.adapters.embedded import FileBlobs
from servo.control.automation_common import TICKS, run_key_doc_id
from servo.control.cancel import cancel_run
from servo.control.common import RUN_KEYS, RUNS
from servo.control.deploy import deploy
from servo.control.drain import drain_outbox
from servo.control.sensors import (
    handle_notification,
    sensor_evaluate,
    sensor_statuses,
    sensor_ticks,
    set_sensor_cursor,
    set_sensor_running,
)
from servo.control.trigger import TriggerRequest, trigger
from servo.core.errors import NotFound
from servo.local_automation import LocalAutomation
from servo.ports import Doc, Ports
from servo.sdk.event_sensors import gcs_object_notification
from servo.worker.evaluate import EvaluatorPool

if TYPE_CHECKING:
    from conftest import Scenario, ScenarioFactory

SENSOR_HEADER = '''
import json as _json

from servo import RunRequest, SkipReason, sensor
from servo.sdk.event_sensors import gcs_sensor, pubsub_sensor, run_status_sensor


def note(name, **fields):
    """What a sensor function saw, with the process it ran in."""
    with open(EFFECTS / f"sensor-{name}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(_json.dumps({"pid": os.getpid(), **fields}) + "\\n")


@asset
def a(context):
    return 1

'''

Evaluators = Callable[["Scenario"], EvaluatorPool]


@pytest.fixture
def evaluators() -> Iterator[Evaluators]:
    """Evaluation process pools for scenarios, closed at the end of the test."""
    pools: list[EvaluatorPool] = []

    def make(s: Scenario) -> EvaluatorPool:
        blobs = s.ports.blobs
        assert isinstance(blobs, FileBlobs)
        pool = EvaluatorPool(blobs.root, s.workspace.home / "code", size=2)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def notes(s: Scenario, name: str) -> list[dict[str, Any]]:
    path = s.effects / f"sensor-{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def runs_of(ports: Ports, sensor: str) -> list[Doc]:
    rows = ports.state.query(RUNS, order_by="created_ms")
    return [d for _, d in rows if (d.get("trigger") or {}).get("sensor") == sensor]


def ticks_of(ports: Ports, name: str) -> list[Doc]:
    return list(reversed(sensor_ticks(ports, name, limit=10_000)))


T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ---------------------------------------------------------------------------------------------
# Custom sensors

FILES_DEFS = (
    SENSOR_HEADER
    + '''
@sensor(target="a", minimum_interval_seconds=30)
def files(context):
    """Request one run per new file in the inbox, in name order."""
    inbox = EFFECTS / "inbox"
    names = sorted(p.name for p in inbox.glob("*.csv")) if inbox.exists() else []
    new = [n for n in names if context.cursor is None or n > context.cursor]
    note("files", cursor=context.cursor, new=new)
    if not new:
        return SkipReason(f"no file after {context.cursor}")
    context.update_cursor(new[-1])
    return [RunRequest(run_key=n, tags={"file": n}) for n in new]


@sensor(target="a", minimum_interval_seconds=30)
def broken(context):
    raise ValueError("the landing bucket is unreachable")


defs = Definitions(assets=[a], sensors=[files, broken])
'''
)


def test_custom_sensor_requests_runs_by_run_key_and_resumes_from_its_cursor(
    scenario: ScenarioFactory, evaluators: Evaluators
) -> None:
    s = scenario(FILES_DEFS)
    pool = evaluators(s)
    inbox = s.effects / "inbox"
    inbox.mkdir()
    for name in ("2024-06-01.csv", "2024-06-02.csv"):
        (inbox / name).write_text("x")

    report = sensor_evaluate(s.ports, at(0), evaluator=pool, names=["files"])
    [first] = report.evaluated
    assert first.status == "SUCCESS"
    assert first.cursor == "2024-06-02.csv"
    assert first.run_keys == ("sensor:files:2024-06-01.csv", "sensor:files:2024-06-02.csv")
    runs = runs_of(s.ports, "files")
    assert [r["run_key"] for r in runs] == list(first.run_keys)
    assert {r["tags"]["file"] for r in runs} == {"2024-06-01.csv", "2024-06-02.csv"}
    assert all(r["trigger"]["type"] == "sensor" for r in runs)

    # Within the minimum interval nothing is evaluated.
    assert sensor_evaluate(s.ports, at(10), evaluator=pool, names=["files"]).evaluated == []

    # B3: nothing new is a recorded skip with the function's reason.
    [skipped] = sensor_evaluate(s.ports, at(30), evaluator=pool, names=["files"]).evaluated
    assert skipped.status == "SKIPPED"
    assert skipped.reason == "no file after 2024-06-02.csv"

    # B2: the next evaluation starts from the stored cursor; only the new file runs.
    (inbox / "2024-06-03.csv").write_text("x")
    [third] = sensor_evaluate(s.ports, at(61), evaluator=pool, names=["files"]).evaluated
    assert third.run_keys == ("sensor:files:2024-06-03.csv",)
    assert [n["cursor"] for n in notes(s, "files")] == [None, "2024-06-02.csv", "2024-06-02.csv"]
    assert len(runs_of(s.ports, "files")) == 3
    # The function ran in a worker process, never in this (the control plane's) process.
    assert {n["pid"] for n in notes(s, "files")} and os.getpid() not in {
        n["pid"] for n in notes(s, "files")
    }
    [status] = [st for st in sensor_statuses(s.ports) if st.name == "files"]
    assert status.cursor == "2024-06-03.csv"
    assert [t["status"] for t in ticks_of(s.ports, "files")] == ["SUCCESS", "SKIPPED", "SUCCESS"]
    for run in runs_of(s.ports, "files"):
        assert s.wait(run["run_id"])["state"] == "SUCCEEDED"


def test_an_exception_in_a_sensor_is_a_failed_tick_with_its_traceback(
    scenario: ScenarioFactory, evaluators: Evaluators
) -> None:
    s = scenario(FILES_DEFS)
    pool = evaluators(s)
    report = sensor_evaluate(s.ports, at(0), evaluator=pool)
    by_name = {o.sensor: o for o in report.evaluated}
    assert by_name["broken"].status == "FAILED"
    assert by_name["broken"].error == (
        "sensor `broken` raised ValueError: the landing bucket is unreachable"
    )
    assert by_name["files"].status == "SKIPPED"  # the other sensor was still evaluated
    [tick] = ticks_of(s.ports, "broken")
    assert "defs.py" in tick["error"]["traceback"]
    assert 'raise ValueError("the landing bucket is unreachable")' in tick["error"]["traceback"]
    assert "servo/worker" not in tick["error"]["traceback"]
    # A failure leaves the cursor alone, and the next evaluation comes at the interval.
    assert [st.cursor for st in sensor_statuses(s.ports) if st.name == "broken"] == [None]
    assert sensor_evaluate(s.ports, at(5), evaluator=pool).evaluated == []
    assert len(sensor_evaluate(s.ports, at(30), evaluator=pool).evaluated) == 2


ONCE_DEFS = (
    SENSOR_HEADER
    + '''
@sensor(target="a", minimum_interval_seconds=1)
def once(context):
    """Two runs without run_keys, requested the first time only."""
    note("once", cursor=context.cursor)
    if context.cursor is not None:
        return SkipReason("already requested")
    context.update_cursor("requested")
    return [RunRequest(tags={"n": "1"}), RunRequest(tags={"n": "2"})]


defs = Definitions(assets=[a], sensors=[once])
'''
)


@pytest.mark.parametrize(
    "point", ["sensor.before_commit", "sensor.after_commit", "sensor.after_run"]
)
def test_a_crash_at_any_point_neither_loses_nor_doubles_runs(
    scenario: ScenarioFactory, evaluators: Evaluators, point: str
) -> None:
    crash = CrashOnce(point)
    s = scenario(ONCE_DEFS, crash=crash)
    pool = evaluators(s)
    sensor_evaluate(s.ports, at(0), evaluator=pool)  # the crash is caught and logged
    assert crash.fired
    if point == "sensor.before_commit":
        assert runs_of(s.ports, "once") == []
        assert [st.cursor for st in sensor_statuses(s.ports)] == [None]
    if point == "sensor.after_commit":
        # The requests and the cursor were committed together; no run exists yet.
        assert runs_of(s.ports, "once") == []
        assert [st.cursor for st in sensor_statuses(s.ports)] == ["requested"]
        [tick] = ticks_of(s.ports, "once")
        assert tick["status"] == "REQUESTED"
        assert len(tick["requests"]) == 2
    # Recovery: the next evaluations complete what was committed, or start over from the
    # unchanged cursor.
    sensor_evaluate(s.ports, at(2), evaluator=pool)
    sensor_evaluate(s.ports, at(4), evaluator=pool)
    runs = runs_of(s.ports, "once")
    assert sorted(r["tags"]["n"] for r in runs) == ["1", "2"]
    assert len({r["run_key"] for r in runs}) == 2
    statuses = [t["status"] for t in ticks_of(s.ports, "once")]
    assert statuses.count("SUCCESS") == 1
    assert statuses[-1] == "SKIPPED"
    assert [st.cursor for st in sensor_statuses(s.ports)] == ["requested"]
    if point == "sensor.before_commit":
        assert statuses[0] == "FAILED"  # the interrupted evaluation
        assert [n["cursor"] for n in notes(s, "once")] == [None, None, "requested"]
    else:
        assert [n["cursor"] for n in notes(s, "once")] == [None, "requested", "requested"]


def test_overlapping_evaluations_commit_once(
    scenario: ScenarioFactory, evaluators: Evaluators
) -> None:
    s = scenario(ONCE_DEFS)
    pool = evaluators(s)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def evaluate() -> None:
        try:
            barrier.wait()
            sensor_evaluate(s.ports, at(0), evaluator=pool, force=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(runs_of(s.ports, "once")) == 2
    statuses = collections.Counter(t["status"] for t in ticks_of(s.ports, "once"))
    assert statuses["SUCCESS"] == 1
    superseded = [t for t in ticks_of(s.ports, "once") if t["status"] == "SKIPPED"]
    assert all("superseded" in t["reason"] for t in superseded)


def test_setting_the_cursor_by_hand(scenario: ScenarioFactory, evaluators: Evaluators) -> None:
    s = scenario(FILES_DEFS)
    pool = evaluators(s)
    inbox = s.effects / "inbox"
    inbox.mkdir()
    for name in ("a.csv", "b.csv", "c.csv"):
        (inbox / name).write_text("x")
    set_sensor_cursor(s.ports, "files", "b.csv")
    [outcome] = sensor_evaluate(s.ports, at(0), evaluator=pool, names=["files"]).evaluated
    assert outcome.run_keys == ("sensor:files:c.csv",)
    with pytest.raises(NotFound, match="sensor `nope` is not defined"):
        set_sensor_cursor(s.ports, "nope", "x")


# ---------------------------------------------------------------------------------------------
# Run-status sensors

WATCH_DEFS = (
    SENSOR_HEADER
    + """
def seen(context):
    note("watch", run_id=context.run_id, status=context.status)


watch = run_status_sensor(
    name="watch", statuses=["SUCCEEDED"], fn=seen, monitored_selection="a", minimum_interval_seconds=1
)

defs = Definitions(assets=[a], sensors=[watch])
"""
)


def test_a_run_status_sensor_sees_each_of_200_finishing_runs_exactly_once(
    scenario: ScenarioFactory, evaluators: Evaluators
) -> None:
    s = scenario(WATCH_DEFS, workers=4)
    pool = evaluators(s)
    clock = [0.0]

    def evaluate() -> None:
        clock[0] += 1.0
        sensor_evaluate(s.ports, at(clock[0]), evaluator=pool)

    evaluate()  # the sensor starts at the end of the ledger
    run_ids = [s.trigger("a").run_id for _ in range(200)]

    def all_done() -> bool:
        evaluate()  # evaluated while the runs finish, concurrently with the drains
        return all(s.get_run(r)["state"] == "SUCCEEDED" for r in run_ids)

    wait_until(all_done, "200 runs to succeed")
    drain_outbox(s.ports)
    for _ in range(5):
        evaluate()
    seen = collections.Counter(n["run_id"] for n in notes(s, "watch"))
    assert set(seen) == set(run_ids)
    assert set(seen.values()) == {1}
    observed = [o["run_id"] for t in ticks_of(s.ports, "watch") for o in t.get("observed") or []]
    assert sorted(observed) == sorted(run_ids)


REACT_DEFS = (
    SENSOR_HEADER
    + """
@asset
def b(context):
    raise Failure("b fails")


@asset
def c(context):
    return 3


react = run_status_sensor(
    name="react",
    statuses=["FAILED"],
    target="c",
    monitored_selection="b",
    run_tags={"team": "x"},
    minimum_interval_seconds=1,
)

defs = Definitions(assets=[a, b, c], sensors=[react])
"""
)


def test_a_run_status_sensor_requests_its_target_for_matching_runs_only(
    scenario: ScenarioFactory,
) -> None:
    s = scenario(REACT_DEFS)
    sensor_evaluate(s.ports, at(0))  # no function: no evaluator needed
    watched = s.run("b", tags={"team": "x"})
    other_team = s.run("b", tags={"team": "y"})
    unmonitored = s.run("a", tags={"team": "x"})
    assert [watched["state"], other_team["state"], unmonitored["state"]] == [
        "FAILED",
        "FAILED",
        "SUCCEEDED",
    ]
    drain_outbox(s.ports)
    sensor_evaluate(s.ports, at(2))
    [reaction] = runs_of(s.ports, "react")
    assert reaction["run_key"] == f"run_status:react:{watched['run_id']}:FAILED"
    assert reaction["selection"] == "c"
    assert reaction["tags"]["servo/monitored_run"] == watched["run_id"]
    assert s.wait(reaction["run_id"])["state"] == "SUCCEEDED"
    drain_outbox(s.ports)
    sensor_evaluate(s.ports, at(4))
    assert len(runs_of(s.ports, "react")) == 1


def test_200_runs_cancelled_at_the_same_moment_are_each_seen_once(tmp_path: Path) -> None:
    # No worker processes: the runs are created and cancelled through the control services
    # from 8 threads at once, so their status changes land in the ledger together.
    from servo import Definitions, asset
    from servo.project import build_manifest
    from servo.sdk.event_sensors import run_status_sensor

    @asset
    def job() -> int:
        return 1

    @asset
    def alert() -> int:
        return 1

    defs = Definitions(
        assets=[job, alert],
        sensors=[
            run_status_sensor(
                name="on_cancel", statuses=["CANCELLED"], target="alert", monitored_selection="job"
            )
        ],
    )
    manifest, _ = build_manifest(defs, project="cancel", code_version="c1-" + tmp_path.name[-8:])
    assert manifest is not None
    from servo.adapters.embedded import open_embedded

    ports = open_embedded(tmp_path / "home")
    deploy(ports, manifest, b"", {"module": "unused", "file": None, "name": "cancel"})
    sensor_evaluate(ports, at(0))
    run_ids = [
        trigger(ports, TriggerRequest(selection="job", request_id=f"q{i}")).run_id
        for i in range(200)
    ]
    chunks = [run_ids[i::8] for i in range(8)]
    barrier = threading.Barrier(8)

    def cancel(ids: list[str]) -> None:
        barrier.wait()
        for rid in ids:
            cancel_run(ports, rid, actor="user:test")

    threads = [threading.Thread(target=cancel, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drain_outbox(ports)
    for i in range(1, 4):
        sensor_evaluate(ports, at(i * 10))
    reactions = runs_of(ports, "on_cancel")
    monitored = collections.Counter(r["tags"]["servo/monitored_run"] for r in reactions)
    assert set(monitored) == set(run_ids)
    assert set(monitored.values()) == {1}
    assert {r["run_key"] for r in reactions} == {
        f"run_status:on_cancel:{rid}:CANCELLED" for rid in run_ids
    }


# ---------------------------------------------------------------------------------------------
# Event-driven sensors

EVENT_DEFS = (
    SENSOR_HEADER
    + """
daily = DailyPartitionsDefinition(start_date="2024-01-01")


@asset(partitions=daily)
def orders(context):
    record(context)
    return context.partition_key


def key_of(name):
    note("key_of", obj=name)
    parts = name.split("/")
    return parts[1] if len(parts) > 2 else None


landing = gcs_sensor(
    name="landing",
    bucket="shop-landing",
    prefix="landing/",
    glob="landing/*/orders.csv",
    partition_key=r"landing/(?P<partition>\\d{4}-\\d{2}-\\d{2})/",
    target="orders",
)
landing_fn = gcs_sensor(
    name="landing_fn", bucket="shop-raw", partition_key=key_of, target="orders", topic="raw-files"
)


def on_message(context):
    note("on_message", id=context.message.id, data=context.message.data)
    if context.message.attributes.get("day") == "skip":
        return SkipReason("told to skip")
    return context.message.attributes["day"]


orders_ready = pubsub_sensor(
    name="orders_ready",
    topic="orders-events",
    attributes={"type": ["ready", "late"]},
    partition_attribute="day",
    target="orders",
)
orders_fn = pubsub_sensor(name="orders_fn", topic="orders-fn", fn=on_message, target="orders")

defs = Definitions(assets=[a, orders], sensors=[landing, landing_fn, orders_ready, orders_fn])
"""
).replace("from servo import RunRequest", "from servo import DailyPartitionsDefinition, RunRequest")


def run_for_key(ports: Ports, run_key: str) -> Doc | None:
    doc = ports.state.get(RUN_KEYS, run_key_doc_id(run_key))
    return ports.state.get(RUNS, doc["run_id"]) if doc else None


def test_gcs_notifications_on_the_embedded_bus_start_partition_runs_once(
    scenario: ScenarioFactory,
) -> None:
    s = scenario(EVENT_DEFS)
    with LocalAutomation(s.ports, s.workspace.home, poll_s=0.2):
        data, attrs = gcs_object_notification("shop-landing", "landing/2024-01-05/orders.csv", 17)
        sent = time.monotonic()
        s.ports.bus.publish("servo-gcs-shop-landing", data, attrs)
        key = "gcs:landing:shop-landing/landing/2024-01-05/orders.csv#17"
        wait_until(lambda: run_for_key(s.ports, key) is not None, "the run of the notification")
        latency = time.monotonic() - sent
        run = run_for_key(s.ports, key)
        assert run is not None
        assert run["partitions"]["keys"] == ["2024-01-05"]
        assert run["tags"]["servo/object"] == "gs://shop-landing/landing/2024-01-05/orders.csv"
        assert s.wait(run["run_id"])["state"] == "SUCCEEDED"
        # Redelivered: no second run. Another generation of the object: a new run.
        s.ports.bus.publish("servo-gcs-shop-landing", data, attrs)
        data2, attrs2 = gcs_object_notification("shop-landing", "landing/2024-01-05/orders.csv", 18)
        s.ports.bus.publish("servo-gcs-shop-landing", data2, attrs2)
        # Filtered out: wrong prefix, wrong file name, another event type.
        for obj, event in (
            ("other/2024-01-05/orders.csv", "OBJECT_FINALIZE"),
            ("landing/2024-01-05/customers.csv", "OBJECT_FINALIZE"),
            ("landing/2024-01-06/orders.csv", "OBJECT_DELETE"),
        ):
            d, a = gcs_object_notification("shop-landing", obj, 1, event)
            s.ports.bus.publish("servo-gcs-shop-landing", d, a)
        key2 = "gcs:landing:shop-landing/landing/2024-01-05/orders.csv#18"
        wait_until(lambda: run_for_key(s.ports, key2) is not None, "the second generation's run")
        wait_until(lambda: s.ports.queue.pending() == 0, "the notifications to be handled")  # type: ignore[attr-defined]
    assert len(runs_of(s.ports, "landing")) == 2
    assert [t["status"] for t in ticks_of(s.ports, "landing")] == ["SUCCESS", "SUCCESS"]
    assert latency < 120  # informative only; bench/automation.py measures it


def test_a_gcs_partition_function_runs_in_the_worker_runtime(
    scenario: ScenarioFactory, evaluators: Evaluators
) -> None:
    s = scenario(EVENT_DEFS)
    pool = evaluators(s)
    data, attrs = gcs_object_notification("shop-raw", "raw/2024-02-03/x.json", 5)
    result = handle_notification(
        s.ports, "landing_fn", {"id": "m1", "data": data, "attributes": attrs}, evaluator=pool
    )
    assert result.status == "SUCCESS", result
    run = run_for_key(s.ports, "gcs:landing_fn:shop-raw/raw/2024-02-03/x.json#5")
    assert run is not None and run["partitions"]["keys"] == ["2024-02-03"]
    data, attrs = gcs_object_notification("shop-raw", "flat.json", 1)
    skipped = handle_notification(
        s.ports, "landing_fn", {"id": "m2", "data": data, "attributes": attrs}, evaluator=pool
    )
    assert skipped.status == "SKIPPED"
    assert "flat.json" in (skipped.reason or "")
    pids = {n["pid"] for n in notes(s, "key_of")}
    assert pids and os.getpid() not in pids


def test_pubsub_messages_are_filtered_by_attribute_in_code(
    scenario: ScenarioFactory, evaluators: Evaluators
) -> None:
    s = scenario(EVENT_DEFS)
    pool = evaluators(s)

    def send(sensor: str, mid: str, **attributes: str) -> Any:
        message = {"id": mid, "data": {"n": 1}, "attributes": attributes}
        return handle_notification(s.ports, sensor, message, evaluator=pool)

    ok = send("orders_ready", "1", type="ready", day="2024-03-01")
    assert ok.status == "SUCCESS"
    assert ok.run_keys == ("pubsub:orders_ready:1",)
    assert send("orders_ready", "1", type="ready", day="2024-03-01").status == "DUPLICATE"
    ignored = send("orders_ready", "2", type="deleted", day="2024-03-01")
    assert ignored.status == "IGNORED"
    assert "type" in (ignored.reason or "")
    assert send("orders_ready", "3", type="late").status == "SKIPPED"  # no day attribute
    assert send("orders_fn", "4", day="2024-03-02").status == "SUCCESS"
    assert send("orders_fn", "5", day="skip").reason == "told to skip"
    keys = sorted(
        r["partitions"]["keys"][0]
        for r in (*runs_of(s.ports, "orders_ready"), *runs_of(s.ports, "orders_fn"))
    )
    assert keys == ["2024-03-01", "2024-03-02"]
    set_sensor_running(s.ports, "orders_ready", False)
    assert send("orders_ready", "6", type="ready", day="2024-03-05").status == "IGNORED"
    assert len(s.ports.state.query(TICKS)) == 4  # duplicates and ignored messages leave none
