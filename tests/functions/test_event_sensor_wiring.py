"""What the event sensors of a deployment need outside Servo (topics, push subscriptions,
bucket notifications), and fake-gcs-server's notification flags — computed, not started."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from servo import Definitions, asset, gcs_sensor, pubsub_sensor, run_status_sensor, sensor
from servo.adapters.gcp.provision import (
    SUBSCRIPTION_PREFIX,
    event_sensor_wiring,
    sensor_push_endpoint,
    sensor_subscription_id,
)
from servo.core.errors import DefinitionError
from servo.core.manifest import Manifest
from servo.project import build_manifest
from servo.testing.emulators import (
    EmulatorError,
    Emulators,
    StorageNotifications,
    main,
)

URL = "https://europe-west1-acme.cloudfunctions.net/servo-sensor-evaluate"


@asset
def orders() -> int:
    return 1


@sensor(target="orders")
def poller(context: object) -> None:
    return None


def manifest() -> Manifest:
    defs = Definitions(
        assets=[orders],
        sensors=[
            gcs_sensor(
                name="daily_csv", bucket="landing", prefix="landing/daily/", target="orders"
            ),
            gcs_sensor(
                name="hourly_csv",
                bucket="landing",
                prefix="landing/hourly/",
                event_types=["OBJECT_FINALIZE", "OBJECT_DELETE"],
                target="orders",
            ),
            gcs_sensor(name="anything", bucket="raw", target="orders", topic="raw-objects"),
            pubsub_sensor(name="orders_a", topic="orders", target="orders"),
            pubsub_sensor(
                name="orders_b", topic="orders", attributes={"kind": "refund"}, target="orders"
            ),
            run_status_sensor(name="on_failure", statuses=["FAILED"], target="orders"),
            poller,
        ],
    )
    built, _ = build_manifest(defs, project="wiring", code_version="v1")
    assert built is not None
    return built


def test_every_topic_gets_one_push_subscription_to_sensor_evaluate() -> None:
    wiring = event_sensor_wiring(manifest(), URL)
    assert wiring.topics == ("orders", "raw-objects", "servo-gcs-landing")
    subs = {s.topic: s for s in wiring.subscriptions}
    assert sorted(subs) == list(wiring.topics)
    assert subs["orders"].sensors == ("orders_a", "orders_b")
    assert subs["servo-gcs-landing"].sensors == ("daily_csv", "hourly_csv")
    for topic, sub in subs.items():
        assert sub.subscription == f"{SUBSCRIPTION_PREFIX}{topic}"
        parts = urlsplit(sub.endpoint)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == URL
        assert parse_qs(parts.query) == {"topic": [topic]}


def test_each_watched_bucket_needs_a_notification_config() -> None:
    notes = {n.bucket: n for n in event_sensor_wiring(manifest(), URL).notifications}
    assert sorted(notes) == ["landing", "raw"]
    landing = notes["landing"]
    assert landing.topic == "servo-gcs-landing"
    assert landing.event_types == ("OBJECT_DELETE", "OBJECT_FINALIZE")
    assert landing.object_prefix == "landing/"  # what both sensors' prefixes share
    assert landing.sensors == ("daily_csv", "hourly_csv")
    raw = notes["raw"]
    assert (raw.topic, raw.event_types, raw.object_prefix) == (
        "raw-objects",
        ("OBJECT_FINALIZE",),
        None,
    )


def test_the_wiring_gives_the_terraform_module_its_inputs() -> None:
    variables = event_sensor_wiring(manifest(), URL).terraform_variables()
    assert variables == {
        "gcs_sensor_buckets": {
            "landing": {
                "topic": "servo-gcs-landing",
                "event_types": ["OBJECT_DELETE", "OBJECT_FINALIZE"],
                "object_name_prefix": "landing/",
            },
            "raw": {
                "topic": "raw-objects",
                "event_types": ["OBJECT_FINALIZE"],
                "object_name_prefix": None,
            },
        },
        "pubsub_sensor_topics": {"orders": {}},
    }
    two_topics, _ = build_manifest(
        Definitions(
            assets=[orders],
            sensors=[
                gcs_sensor(name="a", bucket="landing", target="orders"),
                gcs_sensor(name="b", bucket="landing", target="orders", topic="other"),
            ],
        ),
        project="two",
        code_version="v1",
    )
    assert two_topics is not None
    with pytest.raises(DefinitionError, match="several topics"):
        event_sensor_wiring(two_topics, URL).terraform_variables()


def test_a_project_without_event_sensors_needs_nothing() -> None:
    built, _ = build_manifest(
        Definitions(assets=[orders], sensors=[poller]), project="none", code_version="v1"
    )
    assert built is not None
    wiring = event_sensor_wiring(built, URL)
    assert (wiring.topics, wiring.subscriptions, wiring.notifications) == ((), (), ())


def test_push_endpoints_and_subscription_ids_stay_valid() -> None:
    assert sensor_push_endpoint("http://127.0.0.1:8080", "a b/c") == (
        "http://127.0.0.1:8080?topic=a%20b%2Fc"
    )
    assert sensor_push_endpoint(f"{URL}?x=1", "t") == f"{URL}?x=1&topic=t"
    long_topic = "t" * 250
    one, two = sensor_subscription_id(long_topic), sensor_subscription_id(long_topic + "x")
    assert len(one) == len(two) == 255
    assert one != two
    assert sensor_subscription_id("orders", "servo-w1-") == "servo-w1-orders"


def test_storage_notifications_become_fake_gcs_server_flags() -> None:
    flags = StorageNotifications(
        topic="servo-gcs-landing",
        project="demo",
        events=("OBJECT_FINALIZE", "OBJECT_DELETE"),
        bucket="landing",
        object_prefix="landing/",
    ).flags()
    assert flags == [
        *("-event.pubsub-project-id", "demo"),
        *("-event.pubsub-topic", "servo-gcs-landing"),
        *("-event.list", "finalize,delete"),
        *("-event.bucket", "landing"),
        *("-event.object-prefix", "landing/"),
    ]
    with pytest.raises(EmulatorError, match="OBJECT_ARCHIVE"):
        StorageNotifications(topic="t", events=("OBJECT_ARCHIVE",))
    with pytest.raises(EmulatorError, match="topic id"):
        StorageNotifications(topic="projects/p/topics/t")
    with pytest.raises(SystemExit):
        main(["start", "storage", "--gcs-events-topic", "t", "--gcs-events", "OBJECT_ARCHIVE"])


def test_storage_notifications_need_a_pubsub_emulator(tmp_path: Path) -> None:
    emulators = Emulators(tmp_path, storage_notifications=StorageNotifications(topic="t"))
    with pytest.raises(EmulatorError, match="Pub/Sub emulator"):
        emulators.start(["storage"])
    assert emulators.status()["storage"] is None
