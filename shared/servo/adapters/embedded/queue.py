"""An in-process task queue with the delivery rules of Cloud Tasks.

Messages are delivered at or after their due time, at least once, to the one handler
subscribed to their topic. A handler that raises is retried with exponential backoff and,
after ``max_attempts`` failed attempts, the message is dead-lettered (kept for inspection). A
message ``name`` deduplicates: it is remembered while the message is pending and for
``tombstone_s`` after it finished, and a second ``enqueue`` with a remembered name (on the
same topic) returns False.

Delivery happens in one of two ways:

* :meth:`InProcessQueue.run_due` delivers everything due now in the caller's thread — the
  deterministic mode, for tests and for a single-process control loop;
* :meth:`InProcessQueue.start` runs worker threads that sleep on a condition until the next
  due time and wake at once when a message is enqueued (or when a clock that can jump, such
  as ``ManualClock``, is moved).

Due times are read from the injected clock, so with a ``ManualClock`` nothing becomes due
until the test advances it.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from servo.core.errors import ServoError
from servo.ports import Clock, Doc

logger = logging.getLogger(__name__)

Handler = Callable[[Doc], None]

# Longest uninterrupted sleep of a worker with work pending: bounds how late a delivery can
# be when the clock jumps without telling anyone (NTP on a SystemClock).
_MAX_SLEEP_S = 1.0


@dataclass
class QueuedMessage:
    """One message in the queue (attempts counts failed deliveries so far)."""

    id: int
    topic: str
    payload: Doc
    name: str | None
    due_at: datetime
    enqueued_at: datetime
    attempts: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A message whose handler kept failing, with the last error."""

    topic: str
    payload: Doc
    name: str | None
    attempts: int
    error: str
    dead_at: datetime


@dataclass(order=True)
class _Entry:
    due_at: datetime
    id: int
    message: QueuedMessage = field(compare=False)


def _copy_payload(topic: str, payload: Doc) -> Doc:
    try:
        copied = json.loads(json.dumps(payload, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ServoError(
            f"payload for queue topic {topic!r} is not JSON-compatible ({exc}); "
            "send only str, int, bool, None, lists and dicts"
        ) from exc
    if not isinstance(copied, dict):
        raise ServoError(f"payload for queue topic {topic!r} must be a dict")
    return copied


class InProcessQueue:
    """A thread-safe :class:`~servo.ports.Queue` held in memory; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        *,
        tombstone_s: float = 3600,
        max_attempts: int = 100,
        min_backoff_s: float = 0.1,
        max_backoff_s: float = 60,
    ) -> None:
        if max_attempts < 1:
            raise ServoError(f"max_attempts must be at least 1, got {max_attempts}")
        if min_backoff_s < 0 or max_backoff_s < min_backoff_s:
            raise ServoError(
                f"need 0 <= min_backoff_s <= max_backoff_s, got {min_backoff_s} and {max_backoff_s}"
            )
        self._clock = clock
        self._tombstone = timedelta(seconds=tombstone_s)
        self._max_attempts = max_attempts
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._cond = threading.Condition()
        self._heaps: dict[str, list[_Entry]] = {}
        self._handlers: dict[str, Handler] = {}
        # (topic, name) -> when the name may be reused; None while its message is pending.
        self._names: dict[tuple[str, str], datetime | None] = {}
        self._name_expiry: list[tuple[datetime, str, str]] = []
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._queued = 0
        self._dead: list[DeadLetter] = []
        self._delivered = 0
        self._workers: list[threading.Thread] = []
        self._stopping = False
        add_listener = getattr(clock, "add_listener", None)
        if callable(add_listener):
            add_listener(_waker(self))

    # -- the port ------------------------------------------------------------------------

    def enqueue(
        self,
        topic: str,
        payload: Doc,
        *,
        name: str | None = None,
        delay_s: float = 0.0,
    ) -> bool:
        """Queue ``payload`` for ``topic``; False if ``name`` is still remembered."""
        if not isinstance(topic, str) or not topic:
            raise ServoError(f"queue topic must be a non-empty string, got {topic!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ServoError(f"message name on topic {topic!r} must be a non-empty string")
        if delay_s < 0:
            raise ServoError(f"delay_s for topic {topic!r} must be >= 0, got {delay_s}")
        copied = _copy_payload(topic, payload)
        with self._cond:
            now = self._clock.now()
            self._forget_expired_names(now)
            if name is not None:
                if (topic, name) in self._names:
                    return False
                self._names[(topic, name)] = None
            message = QueuedMessage(
                id=next(self._ids),
                topic=topic,
                payload=copied,
                name=name,
                due_at=now + timedelta(seconds=delay_s),
                enqueued_at=now,
            )
            self._push(message)
            self._cond.notify_all()
        return True

    # -- subscription --------------------------------------------------------------------

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Make ``handler(payload)`` receive the messages of ``topic`` (one handler per topic)."""
        with self._cond:
            if topic in self._handlers:
                raise ServoError(
                    f"queue topic {topic!r} already has a handler; unsubscribe() it first"
                )
            self._handlers[topic] = handler
            self._cond.notify_all()

    def unsubscribe(self, topic: str) -> None:
        """Stop delivering ``topic``; its messages wait for the next subscriber."""
        with self._cond:
            self._handlers.pop(topic, None)

    # -- inspection ----------------------------------------------------------------------

    def pending(self) -> int:
        """Messages not yet delivered successfully nor dead-lettered (including in flight)."""
        with self._cond:
            return self._queued + self._in_flight

    def next_due(self) -> datetime | None:
        """The earliest due time among messages of subscribed topics, if any."""
        with self._cond:
            entry = self._earliest_deliverable()
            return None if entry is None else entry.due_at

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Messages given up on, oldest first."""
        with self._cond:
            return list(self._dead)

    @property
    def delivered(self) -> int:
        """How many messages their handlers have accepted so far."""
        with self._cond:
            return self._delivered

    def messages(self, topic: str | None = None) -> list[QueuedMessage]:
        """The queued (not in-flight) messages, optionally of one topic, by due time."""
        with self._cond:
            topics = [topic] if topic is not None else list(self._heaps)
            entries = [e for t in topics for e in self._heaps.get(t, [])]
        return [e.message for e in sorted(entries)]

    # -- synchronous delivery ------------------------------------------------------------

    def run_due(self, limit: int | None = None) -> int:
        """Deliver, in this thread, every message due now; return the number of deliveries.

        Messages that handlers enqueue with no delay are delivered in the same call. A failed
        delivery counts too; its retry waits for its backoff.
        """
        count = 0
        while limit is None or count < limit:
            with self._cond:
                message = self._take_due(self._clock.now())
            if message is None:
                break
            self._deliver(message)
            count += 1
        return count

    # -- background delivery -------------------------------------------------------------

    def start(self, workers: int = 1) -> None:
        """Start ``workers`` daemon threads that deliver messages as they become due."""
        if workers < 1:
            raise ServoError(f"workers must be at least 1, got {workers}")
        with self._cond:
            if self._workers:
                raise ServoError("the queue's workers are already running; stop() them first")
            self._stopping = False
            self._workers = [
                threading.Thread(target=self._work, name=f"servo-queue-{i}", daemon=True)
                for i in range(workers)
            ]
            threads = list(self._workers)
        for thread in threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the workers after their current delivery and wait for them to exit."""
        with self._cond:
            self._stopping = True
            threads, self._workers = self._workers, []
            self._cond.notify_all()
        for thread in threads:
            thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no message is being delivered and none is due; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._in_flight == 0 and not self._is_due(self._clock.now()):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))

    def wake(self) -> None:
        """Make waiting workers re-check due times (the clock changed)."""
        with self._cond:
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    now = self._clock.now()
                    message = self._take_due(now)
                    if message is not None:
                        break
                    entry = self._earliest_deliverable()
                    if entry is None:
                        self._cond.wait()
                    else:
                        seconds = (entry.due_at - now).total_seconds()
                        self._cond.wait(min(max(seconds, 0.001), _MAX_SLEEP_S))
            self._deliver(message)

    # -- internals (the caller holds self._cond unless noted) ----------------------------

    def _push(self, message: QueuedMessage) -> None:
        heapq.heappush(
            self._heaps.setdefault(message.topic, []),
            _Entry(message.due_at, message.id, message),
        )
        self._queued += 1

    def _earliest_deliverable(self) -> _Entry | None:
        tops = [heap[0] for topic, heap in self._heaps.items() if heap and topic in self._handlers]
        return min(tops) if tops else None

    def _is_due(self, now: datetime) -> bool:
        entry = self._earliest_deliverable()
        return entry is not None and entry.due_at <= now

    def _take_due(self, now: datetime) -> QueuedMessage | None:
        entry = self._earliest_deliverable()
        if entry is None or entry.due_at > now:
            return None
        heapq.heappop(self._heaps[entry.message.topic])
        self._queued -= 1
        self._in_flight += 1
        return entry.message

    def _forget_expired_names(self, now: datetime) -> None:
        while self._name_expiry and self._name_expiry[0][0] <= now:
            expiry, topic, name = heapq.heappop(self._name_expiry)
            if self._names.get((topic, name)) == expiry:
                del self._names[(topic, name)]

    def _finish_name(self, message: QueuedMessage, now: datetime) -> None:
        if message.name is not None:
            expiry = now + self._tombstone
            self._names[(message.topic, message.name)] = expiry
            heapq.heappush(self._name_expiry, (expiry, message.topic, message.name))

    def _backoff_s(self, failures: int) -> float:
        return float(min(self._max_backoff_s, self._min_backoff_s * 2 ** (failures - 1)))

    def _deliver(self, message: QueuedMessage) -> None:
        """Call the handler (without holding the lock) and record the outcome."""
        with self._cond:
            handler = self._handlers.get(message.topic)
        error: str | None = None
        if handler is None:
            error = f"no handler is subscribed to topic {message.topic!r}"
        else:
            try:
                handler(json.loads(json.dumps(message.payload)))
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "queue handler for %r failed on message %s (attempt %d): %s",
                    message.topic,
                    message.name or message.id,
                    message.attempts + 1,
                    error,
                    exc_info=True,
                )
        with self._cond:
            self._in_flight -= 1
            now = self._clock.now()
            if error is None:
                self._delivered += 1
                self._finish_name(message, now)
            else:
                message.attempts += 1
                message.last_error = error
                if message.attempts >= self._max_attempts:
                    self._dead.append(
                        DeadLetter(
                            topic=message.topic,
                            payload=message.payload,
                            name=message.name,
                            attempts=message.attempts,
                            error=error,
                            dead_at=now,
                        )
                    )
                    self._finish_name(message, now)
                    logger.error(
                        "queue gave up on message %s of topic %r after %d attempts: %s",
                        message.name or message.id,
                        message.topic,
                        message.attempts,
                        error,
                    )
                else:
                    message.due_at = now + timedelta(seconds=self._backoff_s(message.attempts))
                    self._push(message)
            self._cond.notify_all()


def _waker(queue: InProcessQueue) -> Callable[[], None]:
    # A weak reference, so that a long-lived clock does not keep dropped queues alive.
    ref = weakref.ref(queue)

    def wake() -> None:
        target = ref()
        if target is not None:
            target.wake()

    return wake
