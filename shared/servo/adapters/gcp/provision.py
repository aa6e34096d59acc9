"""Creating the infrastructure a control plane needs, where it does not exist yet.

On Google Cloud the bucket, the Cloud Tasks queues and the Pub/Sub topics are created with
the deployment (terraform). Against the emulators nothing exists until someone creates it,
so local stacks, tests and benchmarks call these helpers. Each is idempotent: an existing
resource is left as it is.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from google.api_core import exceptions as google_errors
from google.cloud import pubsub_v1, tasks_v2

from servo.adapters.gcp.config import publisher_client, storage_client, tasks_client
from servo.adapters.gcp.errors import translate


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
    project: str, topic_id: str, subscription_id: str, push_url: str
) -> str:
    """Create a push subscription of ``topic_id`` that POSTs to ``push_url``, unless one
    of that name exists; returns its full name."""
    subscriber = pubsub_v1.SubscriberClient()
    path = f"projects/{project}/subscriptions/{subscription_id}"
    try:
        subscriber.create_subscription(
            request={
                "name": path,
                "topic": f"projects/{project}/topics/{topic_id}",
                "push_config": {"push_endpoint": push_url},
                "ack_deadline_seconds": 60,
            }
        )
    except google_errors.AlreadyExists:
        pass
    except google_errors.GoogleAPICallError as exc:
        raise translate(exc, f"creating Pub/Sub subscription {path}") from exc
    finally:
        subscriber.close()
    return path


__all__ = ["ensure_bucket", "ensure_push_subscription", "ensure_queue", "ensure_topic"]
