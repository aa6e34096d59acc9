"""The bus on Pub/Sub: each Servo topic is a Pub/Sub topic, each message a JSON document."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from google.api_core import exceptions as google_errors

from servo.adapters.gcp.costs import PUBSUB_BYTES, PUBSUB_MESSAGE, OperationCounter
from servo.adapters.gcp.errors import RETRYABLE, translate
from servo.core.errors import NotFound, ServoError, TransientError
from servo.ports import Doc

MAX_MESSAGE_BYTES = 10_000_000  # Pub/Sub's limit on a message's data
_TOPIC_ID = re.compile(r"[A-Za-z][A-Za-z0-9._~+%-]{2,254}\Z")


class PubSubBus:
    """A :class:`~servo.ports.Bus` publishing to Pub/Sub topics of ``project``.

    Servo topic ``t`` is the Pub/Sub topic ``projects/{project}/topics/{topic_prefix}{t}``,
    which must exist (it is infrastructure, created with the rest of the deployment). The data
    is the document as compact UTF-8 JSON; attributes are passed as Pub/Sub attributes.
    ``publish`` waits for Pub/Sub's acknowledgement (at most ``timeout_s``) and returns the
    message id it assigned.
    """

    def __init__(
        self,
        publisher: Any,
        project: str,
        *,
        topic_prefix: str = "",
        timeout_s: float = 60.0,
        counter: OperationCounter | None = None,
    ) -> None:
        if not isinstance(project, str) or not project:
            raise ServoError(f"Pub/Sub project must be a non-empty string, got {project!r}")
        self.publisher = publisher
        self.project = project
        self.topic_prefix = topic_prefix
        self.timeout_s = timeout_s
        self.counter = counter if counter is not None else OperationCounter()

    def topic_path(self, topic: str) -> str:
        """The full Pub/Sub name of Servo topic ``topic``."""
        topic_id = f"{self.topic_prefix}{topic}"
        if (
            not isinstance(topic, str)
            or not _TOPIC_ID.match(topic_id)
            or topic_id.startswith("goog")
        ):
            raise ServoError(
                f"bus topic {topic!r} does not make a valid Pub/Sub topic id ({topic_id!r}): use "
                "3-255 letters, digits or - _ . ~ + %, starting with a letter and not with 'goog'"
            )
        return f"projects/{self.project}/topics/{topic_id}"

    def publish(self, topic: str, data: Doc, attributes: Mapping[str, str] | None = None) -> str:
        path = self.topic_path(topic)
        attrs = dict(attributes or {})
        for key, value in attrs.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key:
                raise ServoError(
                    f"attributes of a message to bus topic {topic!r} must map non-empty strings "
                    f"to strings, got {key!r}: {value!r}"
                )
        if not isinstance(data, Mapping):
            raise ServoError(f"data for bus topic {topic!r} must be a dict")
        try:
            body = json.dumps(
                data, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ServoError(
                f"data for bus topic {topic!r} is not JSON-compatible ({exc}); send only str, "
                "int, bool, None, lists and dicts"
            ) from exc
        if len(body) > MAX_MESSAGE_BYTES:
            raise ServoError(
                f"message to bus topic {topic!r} is {len(body)} bytes, over Pub/Sub's 10 MB; "
                "store large data in blobs and publish its path"
            )
        try:
            future = self.publisher.publish(path, body, **attrs)
            message_id = future.result(timeout=self.timeout_s)
        except google_errors.NotFound as exc:
            raise NotFound(
                f"Pub/Sub topic {path} does not exist ({exc.message}); create it with the "
                "deployment, or check the project and topic prefix"
            ) from exc
        except google_errors.GoogleAPICallError as exc:
            raise translate(exc, f"publishing to bus topic {topic!r}") from exc
        except RETRYABLE as exc:
            raise TransientError(f"publishing to bus topic {topic!r} failed: {exc}") from exc
        self.counter.add(PUBSUB_MESSAGE)
        self.counter.add(PUBSUB_BYTES, len(body) + sum(len(k) + len(v) for k, v in attrs.items()))
        return str(message_id)


__all__ = ["PubSubBus"]
