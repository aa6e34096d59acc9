"""The queue on Cloud Tasks: one HTTP task per message, POSTed to the topic's handler URL.

Every message of every topic goes through one Cloud Tasks queue; ``targets`` maps each topic
to the URL of the function that handles it. The task's body is the JSON document
``{"topic": ..., "payload": ...}`` with ``Content-Type: application/json``; Cloud Tasks
retries it, with the queue's backoff, until the handler answers 2xx.

A message ``name`` becomes a deterministic task id, so Cloud Tasks' own deduplication applies:
while a task of that id exists, and for about an hour after it ran or was deleted, creating it
again fails with ALREADY_EXISTS and :meth:`CloudTasksQueue.enqueue` returns False. Task ids
may only hold letters, digits, ``_`` and ``-``, and Cloud Tasks advises against ids that share
a long common prefix, so the id starts with a hash of the topic and the name and ends with a
readable, sanitized copy of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as google_errors
from google.cloud import tasks_v2

from servo.adapters.gcp.costs import TASKS_OPERATION, OperationCounter
from servo.adapters.gcp.errors import translate
from servo.core.errors import NotFound, ServoError
from servo.ports import Clock, Doc

MIN_DISPATCH_DEADLINE_S = 15.0
MAX_DISPATCH_DEADLINE_S = 1800.0
MAX_TASK_BYTES = 1_000_000  # Cloud Tasks rejects larger tasks
_QUEUE_PATH = re.compile(r"projects/[^/]+/locations/[^/]+/queues/[A-Za-z0-9-]{1,100}\Z")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_READABLE_CHARS = 120


def task_id(topic: str, name: str) -> str:
    """The Cloud Tasks task id that stands for message ``name`` of ``topic``.

    Deterministic, at most 160 characters of ``[A-Za-z0-9_-]``, and different for different
    ``(topic, name)`` pairs (the first 32 hex digits of a SHA-256 of both).
    """
    digest = hashlib.sha256(f"{topic}\x00{name}".encode()).hexdigest()[:32]
    readable = _UNSAFE.sub("_", f"{topic}-{name}")[:_READABLE_CHARS].strip("_")
    return f"{digest}-{readable}" if readable else digest


class _SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class CloudTasksQueue:
    """A :class:`~servo.ports.Queue` on one Cloud Tasks queue; see the module docstring.

    ``client`` is a ``google.cloud.tasks_v2.CloudTasksClient``; ``queue_path`` the queue's
    full name (``projects/P/locations/L/queues/Q``). With ``service_account_email`` every task
    carries an OIDC token of that account (audience ``oidc_audience``, or the task's URL when
    not given), which is what a private Cloud Run service or function needs. Each delivery may
    take ``dispatch_deadline_s`` (15 s to 30 min) before Cloud Tasks counts it as failed.
    """

    def __init__(
        self,
        client: Any,
        queue_path: str,
        targets: Mapping[str, str],
        service_account_email: str | None = None,
        *,
        oidc_audience: str | None = None,
        dispatch_deadline_s: float = 600.0,
        clock: Clock | None = None,
        counter: OperationCounter | None = None,
    ) -> None:
        if not isinstance(queue_path, str) or not _QUEUE_PATH.match(queue_path):
            raise ServoError(
                f"invalid Cloud Tasks queue path {queue_path!r}: expected "
                "projects/PROJECT/locations/LOCATION/queues/QUEUE"
            )
        for topic, url in targets.items():
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ServoError(
                    f"the target URL of queue topic {topic!r} must start with http:// or "
                    f"https://, got {url!r}"
                )
        if not MIN_DISPATCH_DEADLINE_S <= dispatch_deadline_s <= MAX_DISPATCH_DEADLINE_S:
            raise ServoError(
                f"dispatch_deadline_s must be between {MIN_DISPATCH_DEADLINE_S:g} and "
                f"{MAX_DISPATCH_DEADLINE_S:g} seconds (Cloud Tasks' limits), got "
                f"{dispatch_deadline_s!r}"
            )
        self.client = client
        self.queue_path = queue_path
        self.targets = dict(targets)
        self.service_account_email = service_account_email
        self.oidc_audience = oidc_audience
        self.dispatch_deadline = timedelta(seconds=dispatch_deadline_s)
        self.counter = counter if counter is not None else OperationCounter()
        self._clock: Clock = clock if clock is not None else _SystemClock()

    def task_name(self, topic: str, name: str) -> str:
        """The full Cloud Tasks name of the task for message ``name`` of ``topic``."""
        return f"{self.queue_path}/tasks/{task_id(topic, name)}"

    def build_task(
        self, topic: str, payload: Doc, *, name: str | None = None, delay_s: float = 0.0
    ) -> Any:
        """The ``tasks_v2.Task`` that :meth:`enqueue` creates for this message."""
        url = self.targets.get(topic)
        if url is None:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ServoError(
                f"queue topic {topic!r} has no target URL (configured topics: {known}); add "
                "it to the Cloud Tasks queue's targets"
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise ServoError(f"message name for topic {topic!r} must be a non-empty string")
        if (
            isinstance(delay_s, bool)
            or not isinstance(delay_s, (int, float))
            or not math.isfinite(delay_s)
            or delay_s < 0
        ):
            raise ServoError(f"delay_s for topic {topic!r} must be a number >= 0, got {delay_s!r}")
        if not isinstance(payload, Mapping):
            raise ServoError(f"payload for queue topic {topic!r} must be a dict")
        try:
            body = json.dumps(
                {"topic": topic, "payload": payload},
                ensure_ascii=False,
                separators=(",", ":"),
                allow_nan=False,
            ).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ServoError(
                f"payload for queue topic {topic!r} is not JSON-compatible ({exc}); send only "
                "str, int, bool, None, lists and dicts"
            ) from exc
        if len(body) > MAX_TASK_BYTES - 10_000:
            raise ServoError(
                f"payload for queue topic {topic!r} is {len(body)} bytes; Cloud Tasks takes "
                "tasks up to 1 MB, so store large data in blobs and send its path"
            )
        request = tasks_v2.HttpRequest(
            url=url,
            http_method=tasks_v2.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=body,
        )
        if self.service_account_email:
            token = tasks_v2.OidcToken(service_account_email=self.service_account_email)
            if self.oidc_audience:
                token.audience = self.oidc_audience
            request.oidc_token = token
        task = tasks_v2.Task(http_request=request, dispatch_deadline=self.dispatch_deadline)
        if name is not None:
            task.name = self.task_name(topic, name)
        if delay_s > 0:
            task.schedule_time = self._clock.now() + timedelta(seconds=delay_s)
        return task

    def enqueue(
        self,
        topic: str,
        payload: Doc,
        *,
        name: str | None = None,
        delay_s: float = 0.0,
    ) -> bool:
        task = self.build_task(topic, payload, name=name, delay_s=delay_s)
        try:
            self.client.create_task(parent=self.queue_path, task=task)
        except google_errors.AlreadyExists:
            return False
        except google_errors.NotFound as exc:
            raise NotFound(
                f"Cloud Tasks queue {self.queue_path} does not exist ({exc.message}); create "
                "it (terraform) or fix the queue path"
            ) from exc
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"enqueueing a message of topic {topic!r}") from exc
        finally:
            self.counter.add(TASKS_OPERATION)
        return True


__all__ = ["CloudTasksQueue", "task_id"]
