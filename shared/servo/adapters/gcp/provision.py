"""Creating the infrastructure a control plane needs, where it does not exist yet.

On Google Cloud the bucket, the Cloud Tasks queues and the Pub/Sub topics are created with
the deployment (terraform). Against the emulators nothing exists until someone creates it,
so local stacks, tests and benchmarks call these helpers. Each is idempotent: an existing
resource is left as it is (a push subscription gets the endpoint it is asked for).

Event sensors need plumbing of their own, derived from the deployed manifest by
:func:`event_sensor_wiring`: one Pub/Sub topic per topic a GCS or Pub/Sub sensor listens on,
a push subscription on each that POSTs to ``sensor_evaluate?topic=<topic>``, and, for GCS
sensors, a notification config on each watched bucket publishing to the sensor's topic.
:func:`ensure_event_sensor_wiring` creates the topics and subscriptions; the bucket
notifications are terraform's (``google_storage_notification``) on Google Cloud and
fake-gcs-server's start-up flags on the emulators
(:class:`servo.testing.emulators.StorageNotifications`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from google.api_core import exceptions as google_errors
from google.cloud import pubsub_v1, tasks_v2

from servo.adapters.gcp.config import publisher_client, storage_client, tasks_client
from servo.adapters.gcp.errors import translate
from servo.core.errors import DefinitionError
from servo.core.manifest import Manifest
from servo.sdk.event_sensors import KIND_GCS, KIND_PUBSUB


def ensure_bucket(project: str, name: str) -> None:
    """Create bucket ``name`` in ``project`` unless it exists."""
    client = storage_client(project)
    try:
        client.create_bucket(name)
    except google_errors.Conflict:
        return
    except google_errors.GoogleAPICallError as exc:
        raise translate(exc, f"creating bucket {name!r}") from exc


def ensure_queue(
    queue_path: str,
    *,
    max_concurrent_dispatches: int | None = None,
    min_backoff_s: float = 0.1,
    max_backoff_s: float = 10.0,
    max_attempts: int = 100,
    client: Any = None,
) -> None:
    """Create the Cloud Tasks queue ``projects/P/locations/L/queues/Q`` unless it exists.

    ``max_concurrent_dispatches`` bounds how many of its tasks are delivered at once (the
    worker capacity, for the queue of ``execute`` messages); the backoff and attempt limits
    are the queue's retry config.
    """
    parent = queue_path.rsplit("/queues/", 1)[0]
    tasks = client if client is not None else tasks_client()
    queue = tasks_v2.Queue(
        name=queue_path,
        retry_config=tasks_v2.RetryConfig(
            max_attempts=max_attempts,
            min_backoff=timedelta(seconds=min_backoff_s),
            max_backoff=timedelta(seconds=max_backoff_s),
        ),
    )
    if max_concurrent_dispatches is not None:
        queue.rate_limits = tasks_v2.RateLimits(max_concurrent_dispatches=max_concurrent_dispatches)
    try:
        tasks.create_queue(parent=parent, queue=queue)
    except google_errors.AlreadyExists:
        return
    except google_errors.GoogleAPICallError as exc:
        raise translate(exc, f"creating Cloud Tasks queue {queue_path}") from exc
    finally:
        if client is None:
            tasks.transport.close()


def ensure_topic(project: str, topic_id: str) -> str:
    """Create Pub/Sub topic ``topic_id`` unless it exists; returns its full name."""
    publisher = publisher_client()
    path = f"projects/{project}/topics/{topic_id}"
    try:
        publisher.create_topic(name=path)
    except google_errors.AlreadyExists:
        pass
    except google_errors.GoogleAPICallError as exc:
        raise translate(exc, f"creating Pub/Sub topic {path}") from exc
    finally:
        publisher.transport.close()
    return path


def ensure_push_subscription(
    project: str,
    topic_id: str,
    subscription_id: str,
    push_url: str,
    *,
    ack_deadline_s: int = 60,
) -> str:
    """Create a push subscription of ``topic_id`` that POSTs to ``push_url``; if one of that
    name exists, point it at ``push_url`` (a restarted local stack has new ports). Returns
    its full name.

    Pub/Sub acknowledges a pushed message when the endpoint answers 2xx within
    ``ack_deadline_s`` and delivers it again otherwise.
    """
    subscriber = pubsub_v1.SubscriberClient()
    path = f"projects/{project}/subscriptions/{subscription_id}"
    try:
        subscriber.create_subscription(
            request={
                "name": path,
                "topic": f"projects/{project}/topics/{topic_id}",
                "push_config": {"push_endpoint": push_url},
                "ack_deadline_seconds": ack_deadline_s,
            }
        )
    except google_errors.AlreadyExists:
        try:
            subscriber.modify_push_config(
                request={"subscription": path, "push_config": {"push_endpoint": push_url}}
            )
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"updating Pub/Sub subscription {path}") from exc
    except google_errors.GoogleAPICallError as exc:
        raise translate(exc, f"creating Pub/Sub subscription {path}") from exc
    finally:
        subscriber.close()
    return path


def delete_subscriptions(project: str, subscription_ids: Iterable[str]) -> None:
    """Delete the named subscriptions of ``project``; missing ones are ignored."""
    ids = list(subscription_ids)
    if not ids:
        return
    subscriber = pubsub_v1.SubscriberClient()
    try:
        for subscription_id in ids:
            path = f"projects/{project}/subscriptions/{subscription_id}"
            try:
                subscriber.delete_subscription(request={"subscription": path})
            except google_errors.NotFound:
                continue
            except google_errors.GoogleAPICallError as exc:
                raise translate(exc, f"deleting Pub/Sub subscription {path}") from exc
    finally:
        subscriber.close()


# ---------------------------------------------------------------------------------------------
# Event sensors

SUBSCRIPTION_PREFIX = "servo-sensor-"
"""As terraform names them (``<name_prefix>-sensor-<topic>``, with the default prefix)."""
_MAX_SUBSCRIPTION_ID = 255


@dataclass(frozen=True)
class SensorPushSubscription:
    """A push subscription feeding one topic's messages to ``sensor_evaluate``."""

    subscription: str
    """Subscription id (``<prefix><topic>``)."""
    topic: str
    """Topic id."""
    endpoint: str
    """``<sensor_evaluate URL>?topic=<topic>``: the function serves the sensors on it."""
    sensors: tuple[str, ...]


@dataclass(frozen=True)
class BucketNotification:
    """A Cloud Storage notification config GCS sensors need: objects of ``bucket`` published
    to ``topic`` (payload format ``JSON_API_V1``)."""

    bucket: str
    topic: str
    event_types: tuple[str, ...]
    object_prefix: str | None
    """The prefix every sensor on it requires (None when one watches the whole bucket); an
    optional narrowing, since each sensor filters the objects it is sent anyway."""
    sensors: tuple[str, ...]


@dataclass(frozen=True)
class EventSensorWiring:
    """Everything the GCS and Pub/Sub sensors of one deployment need outside Servo."""

    topics: tuple[str, ...]
    subscriptions: tuple[SensorPushSubscription, ...]
    notifications: tuple[BucketNotification, ...]

    def terraform_variables(self) -> dict[str, Any]:
        """The ``gcs_sensor_buckets`` and ``pubsub_sensor_topics`` inputs of the terraform
        module (``terraform/modules/servo_stack``) for these sensors, as JSON-ready values.

        The module gives a bucket one notification topic: raises ``DefinitionError`` when
        GCS sensors watch one bucket through several topics.
        """
        buckets: dict[str, Any] = {}
        for note in self.notifications:
            if note.bucket in buckets:
                raise DefinitionError(
                    f"GCS sensors watch bucket {note.bucket!r} through several topics "
                    f"({buckets[note.bucket]['topic']}, {note.topic}); give them one topic"
                )
            buckets[note.bucket] = {
                "topic": note.topic,
                "event_types": list(note.event_types),
                "object_name_prefix": note.object_prefix,
            }
        gcs_topics = {n.topic for n in self.notifications}
        return {
            "gcs_sensor_buckets": buckets,
            "pubsub_sensor_topics": {t: {} for t in self.topics if t not in gcs_topics},
        }


def sensor_subscription_id(topic: str, prefix: str = SUBSCRIPTION_PREFIX) -> str:
    """The id of the push subscription of ``topic`` (a valid id however long the topic)."""
    found = f"{prefix}{topic}"
    if len(found) <= _MAX_SUBSCRIPTION_ID:
        return found
    digest = hashlib.sha256(found.encode()).hexdigest()[:16]
    return f"{found[: _MAX_SUBSCRIPTION_ID - 17]}-{digest}"


def sensor_push_endpoint(sensor_evaluate_url: str, topic: str) -> str:
    """The push endpoint of ``topic``: the ``sensor_evaluate`` URL with ``?topic=``."""
    separator = "&" if "?" in sensor_evaluate_url else "?"
    return f"{sensor_evaluate_url}{separator}topic={quote(topic, safe='')}"


def _common_prefix(texts: list[str]) -> str:
    """The longest string every one of ``texts`` starts with (object names, not paths)."""
    if not texts:
        return ""
    first, last = min(texts), max(texts)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size]


def event_sensor_wiring(
    manifest: Manifest,
    sensor_evaluate_url: str,
    *,
    subscription_prefix: str = SUBSCRIPTION_PREFIX,
) -> EventSensorWiring:
    """The topics, push subscriptions and bucket notifications the GCS and Pub/Sub sensors
    of ``manifest`` need (stopped sensors included: starting one must not need new
    infrastructure)."""
    by_topic: dict[str, list[str]] = {}
    buckets: dict[tuple[str, str], list[Any]] = {}
    for spec in manifest.sensors:
        if spec.kind not in (KIND_GCS, KIND_PUBSUB) or not spec.config.get("topic"):
            continue
        topic = str(spec.config["topic"])
        by_topic.setdefault(topic, []).append(spec.name)
        if spec.kind == KIND_GCS:
            buckets.setdefault((str(spec.config["bucket"]), topic), []).append(spec)
    subscriptions = tuple(
        SensorPushSubscription(
            subscription=sensor_subscription_id(topic, subscription_prefix),
            topic=topic,
            endpoint=sensor_push_endpoint(sensor_evaluate_url, topic),
            sensors=tuple(names),
        )
        for topic, names in sorted(by_topic.items())
    )
    notifications = []
    for (bucket, topic), specs in sorted(buckets.items()):
        events = sorted({str(e) for s in specs for e in s.config.get("event_types") or ()})
        prefixes = [s.config.get("prefix") for s in specs]
        common = _common_prefix([str(p) for p in prefixes]) if all(prefixes) else ""
        notifications.append(
            BucketNotification(
                bucket=bucket,
                topic=topic,
                event_types=tuple(events or ["OBJECT_FINALIZE"]),
                object_prefix=common or None,
                sensors=tuple(s.name for s in specs),
            )
        )
    return EventSensorWiring(
        topics=tuple(sorted(by_topic)),
        subscriptions=subscriptions,
        notifications=tuple(notifications),
    )


def ensure_event_sensor_wiring(
    project: str, wiring: EventSensorWiring, *, ack_deadline_s: int = 60
) -> None:
    """Create the topics and push subscriptions of ``wiring`` (not the bucket
    notifications: see the module docstring)."""
    for topic in wiring.topics:
        ensure_topic(project, topic)
    for sub in wiring.subscriptions:
        ensure_push_subscription(
            project, sub.topic, sub.subscription, sub.endpoint, ack_deadline_s=ack_deadline_s
        )


__all__ = [
    "SUBSCRIPTION_PREFIX",
    "BucketNotification",
    "EventSensorWiring",
    "SensorPushSubscription",
    "delete_subscriptions",
    "ensure_bucket",
    "ensure_event_sensor_wiring",
    "ensure_push_subscription",
    "ensure_queue",
    "ensure_topic",
    "event_sensor_wiring",
    "sensor_push_endpoint",
    "sensor_subscription_id",
]
