"""An in-process publish/subscribe bus standing in for Pub/Sub."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from servo.core.errors import ServoError
from servo.ports import Doc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BusMessage:
    """One published message as subscribers and the log see it."""

    id: str
    topic: str
    data: Doc
    attributes: Mapping[str, str]


@dataclass(frozen=True)
class HandlerError:
    """A subscriber that raised, and what it raised."""

    message_id: str
    topic: str
    error: str


BusHandler = Callable[[BusMessage], None]


class InProcessBus:
    """A :class:`~servo.ports.Bus` that calls subscribers synchronously, in publish order.

    Handlers of a topic run in subscription order inside :meth:`publish`. A message published
    by a handler is delivered after the current one has reached all its handlers, so every
    handler sees messages in the order they were published. As with Pub/Sub, publishing
    succeeds whatever the subscribers do: a handler's exception is logged and recorded in
    :attr:`handler_errors`. Messages to a topic without subscribers are dropped, but every
    message is kept in :attr:`messages` (the last ``max_log`` of them).
    """

    def __init__(self, *, max_log: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[str, list[BusHandler]] = {}
        self._log: deque[BusMessage] = deque(maxlen=max_log)
        self._errors: deque[HandlerError] = deque(maxlen=max_log)
        self._ids = itertools.count(1)
        self._local = threading.local()

    def subscribe(self, topic: str, handler: BusHandler) -> None:
        """Call ``handler(message)`` for every later message published to ``topic``."""
        with self._lock:
            self._handlers.setdefault(topic, []).append(handler)

    def unsubscribe(self, topic: str, handler: BusHandler) -> None:
        """Remove one subscription made with :meth:`subscribe`, if present."""
        with self._lock:
            handlers = self._handlers.get(topic, [])
            if handler in handlers:
                handlers.remove(handler)

    def publish(self, topic: str, data: Doc, attributes: Mapping[str, str] | None = None) -> str:
        if not isinstance(topic, str) or not topic:
            raise ServoError(f"bus topic must be a non-empty string, got {topic!r}")
        attrs = dict(attributes or {})
        for key, value in attrs.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ServoError(
                    f"attribute {key!r} of a message to {topic!r} must map a string to a "
                    f"string (Pub/Sub attributes are strings), got {value!r}"
                )
        if not isinstance(data, Mapping):
            raise ServoError(f"data of a message to bus topic {topic!r} must be a dict")
        try:
            text = json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ServoError(
                f"data of a message to bus topic {topic!r} is not JSON-compatible ({exc})"
            ) from exc
        with self._lock:
            message = BusMessage(
                id=str(next(self._ids)), topic=topic, data=json.loads(text), attributes=attrs
            )
            self._log.append(message)
        backlog: deque[BusMessage] | None = getattr(self._local, "backlog", None)
        if backlog is not None:
            backlog.append(message)  # an outer publish() in this thread delivers it next
            return message.id
        self._local.backlog = backlog = deque([message])
        try:
            while backlog:
                self._dispatch(backlog.popleft())
        finally:
            self._local.backlog = None
        return message.id

    def _dispatch(self, message: BusMessage) -> None:
        with self._lock:
            handlers = list(self._handlers.get(message.topic, ()))
        for handler in handlers:
            # Each handler gets its own copy, so none can alter what the next one sees.
            copy = BusMessage(
                id=message.id,
                topic=message.topic,
                data=json.loads(json.dumps(message.data)),
                attributes=dict(message.attributes),
            )
            try:
                handler(copy)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "bus handler for %r failed on message %s: %s",
                    message.topic,
                    message.id,
                    error,
                    exc_info=True,
                )
                with self._lock:
                    self._errors.append(HandlerError(message.id, message.topic, error))

    @property
    def messages(self) -> list[BusMessage]:
        """Every message published (the most recent ``max_log``), oldest first."""
        with self._lock:
            return list(self._log)

    def messages_for(self, topic: str) -> list[BusMessage]:
        """The logged messages of one topic, oldest first."""
        with self._lock:
            return [m for m in self._log if m.topic == topic]

    @property
    def handler_errors(self) -> list[HandlerError]:
        """Exceptions raised by handlers (the most recent ``max_log``), oldest first."""
        with self._lock:
            return list(self._errors)
