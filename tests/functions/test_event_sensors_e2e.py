"""Event-driven sensors and the tick through the serverless stack, on the emulators only.

Objects written to a fake-gcs-server make it publish real-shaped Cloud Storage notifications
to the Pub/Sub emulator; the emulator pushes them, and messages published to a sensor's topic,
to the ``sensor_evaluate`` function, which starts runs through the other functions and the
worker service. Every topic has a second push subscription to the same endpoint, so every
message is delivered twice (concurrently), and a pull subscription on the GCS topic captures
the notifications so the test can deliver them once more, later. ``tick`` is driven over HTTP,
as Cloud Scheduler would.

Nothing here asserts a duration: the waits are generous, and "this message was handled" is
read from the function's log (one line per delivery), not guessed from the clock.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.cloud import pubsub_v1
from serverless_support import wait_until

from servo.adapters.gcp.provision import (
    delete_subscriptions,
    ensure_push_subscription,
    sensor_push_endpoint,
)
from servo.control.common import RUNS
from servo.control.sensors import sensor_ticks
from servo.control.tick import schedule_ticks
from servo.ports import Doc
from servo.testing.serverless import EventSensorPlumbing, ServerlessStack, StackOptions

pytestmark = [pytest.mark.emulators, pytest.mark.slow]

SETTINGS = {"heartbeat_interval_ms": 500, "heartbeat_timeout_ms": 8_000}

DEFS = '''\
"""Assets and automation of the event sensor tests."""

import json
import os
from pathlib import Path

from servo import (
    DailyPartitionsDefinition,
    Definitions,
    ScheduleDefinition,
    asset,
    gcs_sensor,
    pubsub_sensor,
)

EFFECTS = Path({effects!r})
daily = DailyPartitionsDefinition(start_date="2024-01-01")


def record(context):
    entry = {{"run_id": context.run_id, "partition": context.partition_key, "pid": os.getpid()}}
    with open(EFFECTS / (context.asset_key.to_string() + ".jsonl"), "a") as handle:
        handle.write(json.dumps(entry) + "\\n")


@asset(partitions=daily)
def orders(context):
    record(context)
    return context.partition_key


@asset(partitions=daily)
def order_events(context):
    record(context)
    return context.partition_key


landing = gcs_sensor(
    name="landing",
    bucket={bucket!r},
    prefix="landing/",
    glob="landing/*/*.csv",
    partition_key=r"landing/(\\d{{4}}-\\d{{2}}-\\d{{2}})/",
    target="orders",
)
order_messages = pubsub_sensor(
    name="order_messages",
    topic={topic!r},
    target="order_events",
    attributes={{"kind": ["order", "refund"]}},
    partition_attribute="day",
)
nightly = ScheduleDefinition(name="nightly", cron_schedule="0 1 * * *", target="orders")

defs = Definitions(
    assets=[orders, order_events], sensors=[landing, order_messages], schedules=[nightly]
)
'''


@dataclass
class EventStack:
    """The running stack, its event plumbing and the test's own subscriptions."""

    stack: ServerlessStack
    plumbing: EventSensorPlumbing
    effects: Path
    bucket: str
    gcs_topic: str
    topic: str
    capture: str
    """Full name of the pull subscription that sees every GCS notification."""


@pytest.fixture(scope="module")
def events(
    gcp_emulators: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EventStack]:
    base = tmp_path_factory.mktemp("event-sensors")
    suffix = secrets.token_hex(3)
    bucket, topic = f"landing-{suffix}", f"orders-{suffix}"
    effects = base / "effects"
    effects.mkdir()
    root = base / "project"
    (root / "evsensors").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "evsensors"\nversion = "0.1.0"\n\n'
        '[tool.servo]\nmodule = "evsensors.defs"\n'
    )
    (root / "evsensors" / "__init__.py").write_text("")
    (root / "evsensors" / "defs.py").write_text(
        DEFS.format(effects=str(effects), bucket=bucket, topic=topic)
    )
    # No minute ticks from the stand-in scheduler: the test drives `tick` itself.
    options = StackOptions(settings=SETTINGS, sweep_interval_s=1.0, tick_every_minute=False)
    with ServerlessStack(base / "stack", options) as stack:
        stack.deploy(root)
        plumbing = stack.wire_event_sensors()
        project = options.project
        gcs_topic = next(n.topic for n in plumbing.wiring.notifications if n.bucket == bucket)
        extra = [f"servo-{options.workspace}-again-{t}" for t in (gcs_topic, topic)]
        for sub_id, sub_topic in zip(extra, (gcs_topic, topic), strict=True):
            endpoint = sensor_push_endpoint(stack.urls["sensor_evaluate"], sub_topic)
            ensure_push_subscription(project, sub_topic, sub_id, endpoint)
        capture_id = f"servo-{options.workspace}-capture"
        capture = f"projects/{project}/subscriptions/{capture_id}"
        subscriber = pubsub_v1.SubscriberClient()
        try:
            subscriber.create_subscription(
                request={"name": capture, "topic": f"projects/{project}/topics/{gcs_topic}"}
            )
        finally:
            subscriber.close()
        try:
            yield EventStack(stack, plumbing, effects, bucket, gcs_topic, topic, capture)
        finally:
            delete_subscriptions(project, [*extra, capture_id])


# ---------------------------------------------------------------------------------------------
# Helpers


def wait_handled(stack: ServerlessStack, message_ids: list[str], times: int = 2) -> None:
    """Wait until each message was delivered ``times`` times (once per push subscription)."""
    wait_until(
        lambda: all(stack.notifications_handled()[m] >= times for m in message_ids),
        f"{times} deliveries of messages {message_ids}",
    )


def runs_of(stack: ServerlessStack, sensor: str) -> list[Doc]:
    return [
        d
        for _, d in stack.ports().state.query(RUNS)
        if (d.get("tags") or {}).get("servo/sensor") == sensor
    ]


def partition_of(run: Doc) -> list[str]:
    return list(run["partitions"]["keys"])


def pull(capture: str, count: int) -> list[Any]:
    """Pull (and acknowledge) ``count`` messages from ``capture``."""
    subscriber = pubsub_v1.SubscriberClient()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + 120
        while len(got) < count:
            assert time.monotonic() < deadline, f"only {len(got)} of {count} notifications came"
            answer = subscriber.pull(
                request={"subscription": capture, "max_messages": 10}, timeout=30
            )
            if answer.received_messages:
                subscriber.acknowledge(
                    request={
                        "subscription": capture,
                        "ack_ids": [m.ack_id for m in answer.received_messages],
                    }
                )
            got.extend(m.message for m in answer.received_messages)
    finally:
        subscriber.close()
    return got


def push_body(message_id: str, data: bytes, attributes: Mapping[str, str]) -> Doc:
    """What a Pub/Sub push subscription POSTs for one message."""
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": dict(attributes),
            "messageId": message_id,
            "publishTime": "2024-01-05T00:00:00Z",
        },
        "subscription": "projects/demo-servo/subscriptions/replayed",
    }


def redeliver(stack: ServerlessStack, topic: str, body: Doc) -> Doc:
    """Deliver a push body again, as Pub/Sub does after a lost acknowledgement."""
    status, answer = stack.post("sensor_evaluate", body, f"?topic={topic}")
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


# ---------------------------------------------------------------------------------------------
# GCS object sensor


def test_each_object_written_starts_one_run_for_its_partition(events: EventStack) -> None:
    stack, bucket = events.stack, events.bucket
    generations = {
        name: stack.upload(bucket, name, b"id,amount\n1,10\n")
        for name in (
            "landing/2024-01-05/orders.csv",
            "landing/2024-01-06/orders.csv",
            "landing/2024-01-07/readme.txt",  # outside the glob: ignored by the sensor
            "landing/latest/orders.csv",  # no date in the name: the tick is SKIPPED
            "archive/2024-01-08/orders.csv",  # outside the prefix: the bucket does not notify
        )
    }
    notified = {m.attributes["objectId"]: m for m in pull(events.capture, 4)}
    assert sorted(notified) == sorted(n for n in generations if n.startswith("landing/"))
    for name, message in notified.items():  # the shape Cloud Storage publishes
        assert message.attributes["eventType"] == "OBJECT_FINALIZE"
        assert message.attributes["bucketId"] == bucket
        assert message.attributes["objectGeneration"] == str(generations[name])
        assert message.attributes["payloadFormat"] == "JSON_API_V1"
        assert json.loads(message.data)["name"] == name

    # Both push subscriptions delivered every notification, concurrently.
    wait_handled(stack, [m.message_id for m in notified.values()])
    runs = runs_of(stack, "landing")
    assert sorted(partition_of(r)[0] for r in runs) == ["2024-01-05", "2024-01-06"]
    for run in runs:
        name = f"landing/{partition_of(run)[0]}/orders.csv"
        assert run["run_key"] == f"gcs:landing:{bucket}/{name}#{generations[name]}"
        assert run["trigger"]["object"] == f"gs://{bucket}/{name}"
        assert stack.wait_for_run(run["run_id"])["state"] == "SUCCEEDED"
    ran = [json.loads(x) for x in (events.effects / "orders.jsonl").read_text().splitlines()]
    by_run = {e["run_id"]: e["partition"] for e in ran}
    assert {by_run[r["run_id"]] for r in runs} == {"2024-01-05", "2024-01-06"}

    # A late redelivery of each notification starts nothing new.
    first_runs = {r["run_key"]: r["run_id"] for r in runs}
    for name, message in notified.items():
        answer = redeliver(
            stack,
            events.gcs_topic,
            push_body(message.message_id, message.data, message.attributes),
        )
        (result,) = answer["results"]
        if name.endswith("readme.txt"):
            assert result["status"] == "IGNORED"
            assert "landing/*/*.csv" in result["reason"]
        else:
            assert result["status"] == "DUPLICATE"
    assert {r["run_key"]: r["run_id"] for r in runs_of(stack, "landing")} == first_runs
    ticks = sensor_ticks(stack.ports(), "landing")
    assert sorted(t["status"] for t in ticks) == ["SKIPPED", "SUCCESS", "SUCCESS"]
    skipped = next(t for t in ticks if t["status"] == "SKIPPED")
    assert "landing/latest/orders.csv" in skipped["reason"]

    # Writing an object again is a new generation: a new run for the same partition.
    again = stack.upload(bucket, "landing/2024-01-05/orders.csv", b"id,amount\n1,11\n")
    (rewritten,) = pull(events.capture, 1)
    wait_handled(stack, [rewritten.message_id])
    runs = runs_of(stack, "landing")
    assert len(runs) == 3
    newest = next(r for r in runs if r["run_key"].endswith(f"#{again}"))
    assert partition_of(newest) == ["2024-01-05"]
    assert stack.wait_for_run(newest["run_id"])["state"] == "SUCCEEDED"


# ---------------------------------------------------------------------------------------------
# Pub/Sub message sensor


def test_messages_start_runs_only_when_their_attributes_match(events: EventStack) -> None:
    stack, topic = events.stack, events.topic
    sent = {
        "order": ("{}", {"kind": "order", "day": "2024-01-10"}),
        "refund": ("{}", {"kind": "refund", "day": "2024-01-11"}),
        "test": ("{}", {"kind": "test", "day": "2024-01-12"}),  # filtered out
        "no_day": ("{}", {"kind": "order"}),  # matches, but names no partition: SKIPPED
    }
    ids = {label: stack.publish(topic, data, attrs) for label, (data, attrs) in sent.items()}
    wait_handled(stack, list(ids.values()))
    runs = {r["trigger"]["message_id"]: r for r in runs_of(stack, "order_messages")}
    assert sorted(runs) == sorted([ids["order"], ids["refund"]])
    assert partition_of(runs[ids["order"]]) == ["2024-01-10"]
    assert partition_of(runs[ids["refund"]]) == ["2024-01-11"]
    for run in runs.values():
        assert run["run_key"] == f"pubsub:order_messages:{run['trigger']['message_id']}"
        assert stack.wait_for_run(run["run_id"])["state"] == "SUCCEEDED"

    for label, (data, attrs) in sent.items():
        answer = redeliver(stack, topic, push_body(ids[label], data.encode(), attrs))
        (result,) = answer["results"]
        expected = {"test": "IGNORED"}.get(label, "DUPLICATE")
        assert result["status"] == expected, (label, result)
    assert len(runs_of(stack, "order_messages")) == 2
    ticks = sensor_ticks(stack.ports(), "order_messages")
    assert sorted(t["status"] for t in ticks) == ["SKIPPED", "SUCCESS", "SUCCESS"]


def test_a_message_pushed_while_the_function_is_down_arrives_later(events: EventStack) -> None:
    stack, topic = events.stack, events.topic
    stack.stop_processes(["sensor_evaluate"])
    try:
        message_id = stack.publish(topic, "{}", {"kind": "order", "day": "2024-01-20"})
        # Let the emulator find the endpoint unreachable at least once (not a timing check:
        # the test passes however the deliveries and the restart interleave).
        time.sleep(2.0)
        assert not [r for r in runs_of(stack, "order_messages") if _for(r, message_id)]
    finally:
        stack.start_processes(["sensor_evaluate"])
    wait_handled(stack, [message_id])
    (run,) = [r for r in runs_of(stack, "order_messages") if _for(r, message_id)]
    assert partition_of(run) == ["2024-01-20"]
    assert stack.wait_for_run(run["run_id"])["state"] == "SUCCEEDED"


def _for(run: Doc, message_id: str) -> bool:
    return bool(run["trigger"].get("message_id") == message_id)


# ---------------------------------------------------------------------------------------------
# Schedules: Cloud Scheduler's minute tick, over HTTP


def test_the_tick_function_starts_a_schedule_run_once_for_its_minute(
    events: EventStack,
) -> None:
    stack = events.stack
    answers: list[tuple[int, Any]] = []

    def call(now: str) -> None:
        answers.append(stack.post("tick", {"now": now, "names": ["nightly"]}))

    # Two deliveries of the same minute at once (Cloud Scheduler retries, overlapping
    # instances), then a third later in that minute.
    both = [threading.Thread(target=call, args=("2024-01-05T01:00:20Z",)) for _ in range(2)]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join(timeout=180)
    call("2024-01-05T01:00:50Z")
    assert [status for status, _ in answers] == [200, 200, 200], answers
    run_ids = {r for _, answer in answers for r in answer["run_ids"]}
    assert len(run_ids) == 1
    (run_id,) = run_ids
    runs = [d for _, d in stack.ports().state.query(RUNS)]
    scheduled = [r for r in runs if str(r.get("run_key") or "").startswith("schedule:nightly:")]
    assert [r["run_id"] for r in scheduled] == [run_id]
    (run,) = scheduled
    assert run["run_key"] == "schedule:nightly:2024-01-05T01:00:00Z"
    assert partition_of(run) == ["2024-01-04"]  # the daily partition that closed
    ticks = schedule_ticks(stack.ports(), "nightly")
    assert [(t["scheduled_time"], t["status"]) for t in ticks] == [
        ("2024-01-05T01:00:00Z", "SUCCESS")
    ]
    assert stack.wait_for_run(run_id)["state"] == "SUCCEEDED"
