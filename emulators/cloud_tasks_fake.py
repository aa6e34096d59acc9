#!/usr/bin/env python3
"""A local Cloud Tasks (v2) service, because Google ships no Cloud Tasks emulator.

It speaks the real gRPC API, with the request and response messages of the installed
``google-cloud-tasks`` package, so the real client talks to it unchanged::

    python emulators/cloud_tasks_fake.py --port 8123 --queue projects/demo/locations/here/queues/q

    client = tasks_v2.CloudTasksClient(
        transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel("127.0.0.1:8123")))

Methods: ListQueues, GetQueue, CreateQueue, DeleteQueue, PurgeQueue, PauseQueue, ResumeQueue,
ListTasks, GetTask, CreateTask, DeleteTask, RunTask. Every other method answers UNIMPLEMENTED.

What it keeps from Cloud Tasks, because Servo depends on it:

* **Names deduplicate.** Creating a task whose name exists fails with ALREADY_EXISTS, and so
  does reusing the name for an hour (``--tombstone-s``) after the task succeeded, gave up or
  was deleted.
* **HTTP delivery.** At its ``schedule_time`` a task is sent to its URL with its method,
  headers and body, plus the ``X-CloudTasks-*`` headers and, when the task has an OIDC token,
  ``Authorization: Bearer <token>``. A 2xx answer completes the task; anything else, a
  connection failure or no answer within the dispatch deadline is a failed attempt.
* **Retries with backoff**, following the queue's (or the task's) retry config: after the
  n-th failed attempt the task waits ``min_backoff * 2**(n-1)`` while n-1 <= max_doublings,
  then grows linearly by ``min_backoff * 2**max_doublings`` per attempt, never more than
  ``max_backoff``; it is dropped once both max_attempts (-1: unlimited) and
  max_retry_duration (0: unlimited) are used up.
* Limits that catch mistakes early: dispatch deadlines from 15 s to 30 min, schedule times at
  most 30 days ahead, tasks up to 1 MB, valid task and queue names.

Not modelled: App Engine targets, dispatch rate limits, queue-level HTTP target overrides,
IAM, CMEK, batch methods, UpdateQueue, the special throttling on 429 and 503 answers, and
the days a deleted queue's name stays reserved. OIDC tokens are unsigned JWTs (``alg:
none``) carrying the usual claims: enough for a handler that reads them, not for one that
verifies their signature. Tasks live in memory.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import heapq
import itertools
import json
import logging
import re
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.client import HTTPConnection, HTTPSConnection
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped]
from google.cloud import tasks_v2
from google.rpc import status_pb2

logger = logging.getLogger("cloud_tasks_fake")

SERVICE = "google.cloud.tasks.v2.CloudTasks"

DEFAULT_MAX_ATTEMPTS = 100
DEFAULT_MIN_BACKOFF = timedelta(seconds=0.1)
DEFAULT_MAX_BACKOFF = timedelta(seconds=3600)
DEFAULT_MAX_DOUBLINGS = 16
DEFAULT_DISPATCH_DEADLINE = timedelta(minutes=10)
MAX_DISPATCH_DEADLINE = timedelta(minutes=30)
MAX_SCHEDULE_AHEAD = timedelta(days=30)
MAX_TASK_BYTES = 1_000_000
DEFAULT_TOMBSTONE = timedelta(hours=1)

_PARENT = re.compile(r"projects/[^/]+/locations/[^/]+\Z")
_QUEUE_NAME = re.compile(r"(projects/[^/]+/locations/[^/]+)/queues/([A-Za-z0-9-]{1,100})\Z")
_TASK_NAME = re.compile(
    r"(projects/[^/]+/locations/[^/]+/queues/[^/]+)/tasks/([A-Za-z0-9_-]{1,500})\Z"
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_MAX_SLEEP_S = 1.0  # longest wait of the dispatcher: bounds lateness if a clock jumps unnoticed


class Clock(Protocol):
    """The fake's idea of now (tests pass a manual clock)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The machine's clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeError(Exception):
    """A request the fake refuses, with the gRPC status Cloud Tasks would answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- retries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """A resolved retry config (every field set)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_duration: timedelta = timedelta(0)
    min_backoff: timedelta = DEFAULT_MIN_BACKOFF
    max_backoff: timedelta = DEFAULT_MAX_BACKOFF
    max_doublings: int = DEFAULT_MAX_DOUBLINGS

    @classmethod
    def resolve(cls, config: Any, fallback: RetryPolicy | None = None) -> RetryPolicy:
        """The policy of a ``tasks_v2.RetryConfig``, taking unset fields from ``fallback``."""
        base = fallback or cls()
        if config is None:
            return base
        return cls(
            max_attempts=config.max_attempts or base.max_attempts,
            max_retry_duration=(
                config.max_retry_duration
                if "max_retry_duration" in config
                else base.max_retry_duration
            ),
            min_backoff=config.min_backoff if "min_backoff" in config else base.min_backoff,
            max_backoff=config.max_backoff if "max_backoff" in config else base.max_backoff,
            max_doublings=config.max_doublings or base.max_doublings,
        )

    def backoff(self, failures: int) -> timedelta:
        """How long a task waits after its ``failures``-th failed attempt (1 for the first)."""
        retry = max(failures, 1) - 1
        unit = self.min_backoff.total_seconds()
        if retry <= self.max_doublings:
            seconds = unit * 2.0**retry
        else:
            seconds = unit * 2.0**self.max_doublings * (retry - self.max_doublings + 1)
        return min(timedelta(seconds=seconds), self.max_backoff)

    def gives_up(self, attempts: int, first_attempt: datetime, now: datetime) -> bool:
        """Whether a task that failed ``attempts`` times is dropped instead of retried."""
        reached: list[bool] = []
        if self.max_attempts > 0:
            reached.append(attempts >= self.max_attempts)
        if self.max_retry_duration > timedelta(0):
            reached.append(now - first_attempt >= self.max_retry_duration)
        return bool(reached) and all(reached)

    def to_config(self) -> Any:
        """This policy as a ``tasks_v2.RetryConfig``."""
        return tasks_v2.RetryConfig(
            max_attempts=self.max_attempts,
            max_retry_duration=self.max_retry_duration,
            min_backoff=self.min_backoff,
            max_backoff=self.max_backoff,
            max_doublings=self.max_doublings,
        )


# -- HTTP delivery ----------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One HTTP request the fake sends for a task attempt."""

    url: str
    method: str
    headers: dict[str, str]
    body: bytes
    timeout_s: float


@dataclass(frozen=True)
class Outcome:
    """What came of a delivery: an HTTP status, or ``status=None`` and a transport error."""

    status: int | None
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def send_http(delivery: Delivery) -> Outcome:
    """Send ``delivery`` (without following redirects, as Cloud Tasks does not)."""
    parts = urlsplit(delivery.url)
    connection_class = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    connection = connection_class(parts.hostname or "", parts.port, timeout=delivery.timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(delivery.method, target, body=delivery.body, headers=delivery.headers)
        response = connection.getresponse()
        response.read()
        return Outcome(response.status)
    except TimeoutError:
        return Outcome(None, "DEADLINE_EXCEEDED: no answer within the dispatch deadline")
    except OSError as exc:
        return Outcome(None, f"UNAVAILABLE: {exc}")
    finally:
        connection.close()


_HTTP_TO_RPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 499: 1, 501: 12, 503: 14, 504: 4}


def _rpc_status(outcome: Outcome) -> Any:
    if outcome.status is None:
        code = 4 if outcome.error.startswith("DEADLINE_EXCEEDED") else 14
        return status_pb2.Status(code=code, message=outcome.error)
    if outcome.succeeded:
        return status_pb2.Status(code=0)
    fallback = 13 if outcome.status >= 500 else 9 if outcome.status >= 400 else 2
    mapped = _HTTP_TO_RPC.get(outcome.status, fallback)
    return status_pb2.Status(code=mapped, message=f"HTTP status code {outcome.status}")


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_id_token(email: str, audience: str, now: datetime) -> str:
    """An unsigned JWT with the claims of a Google-signed OIDC token for ``email``."""
    issued = int(now.timestamp())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": audience,
        "azp": email,
        "sub": str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16)),
        "email": email,
        "email_verified": True,
        "iat": issued,
        "exp": issued + 3600,
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


# -- the service ------------------------------------------------------------------------


def _copy_task(task: Any) -> Any:
    return tasks_v2.Task.deserialize(tasks_v2.Task.serialize(task))


def _copy_queue(queue: Any) -> Any:
    return tasks_v2.Queue.deserialize(tasks_v2.Queue.serialize(queue))


@dataclass(eq=False)
class _Entry:
    """A live task and what the fake tracks about it."""

    task: Any  # tasks_v2.Task, full view
    queue: str
    version: int = 0  # bumped on every reschedule; older heap items are stale
    running: bool = False
    first_attempt_at: datetime | None = None
    last_status: int | None = None


@dataclass
class _Queue:
    queue: Any  # tasks_v2.Queue with every default filled in
    policy: RetryPolicy
    entries: dict[str, _Entry] = field(default_factory=dict)
    running: int = 0
    parked: list[_Entry] = field(default_factory=list)


class CloudTasksFake:
    """The in-memory service behind the gRPC server (usable directly in tests).

    ``clock`` decides when tasks are due (a manual clock with ``add_listener`` makes the
    dispatcher re-check whenever it moves); ``sender`` delivers HTTP requests. Call
    :meth:`start` to dispatch in the background and :meth:`stop` to end.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        tombstone: timedelta = DEFAULT_TOMBSTONE,
        min_dispatch_deadline: timedelta = timedelta(seconds=15),
        workers: int = 32,
        sender: Callable[[Delivery], Outcome] = send_http,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.tombstone = tombstone
        self.min_dispatch_deadline = min_dispatch_deadline
        self._sender = sender
        self._workers = workers
        self._cond = threading.Condition()
        self._queues: dict[str, _Queue] = {}
        self._tombstones: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, int, str, int]] = []
        self._order = itertools.count()
        self._running = 0
        self._stopping = False
        self._dispatcher: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        add_listener = getattr(self.clock, "add_listener", None)
        if callable(add_listener):
            add_listener(self._wake)

    # -- lifecycle

    def start(self) -> None:
        """Start dispatching due tasks in background threads."""
        with self._cond:
            if self._dispatcher is not None:
                return
            self._stopping = False
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="tasks-fake")
            self._dispatcher = threading.Thread(
                target=self._dispatch_loop, name="tasks-fake-dispatcher", daemon=True
            )
            self._dispatcher.start()

    def stop(self, wait: bool = True) -> None:
        """Stop dispatching; with ``wait``, let attempts in flight finish first."""
        with self._cond:
            self._stopping = True
            dispatcher, executor = self._dispatcher, self._executor
            self._dispatcher = self._executor = None
            self._cond.notify_all()
        if dispatcher is not None:
            dispatcher.join()
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no attempt is in flight and no task is due; False on timeout."""
        with self._cond:
            return self._cond.wait_for(self._idle, timeout_s)

    def _idle(self) -> bool:
        if self._running:
            return False
        now = self.clock.now()
        while self._heap:
            due, _, name, version = self._heap[0]
            entry = self._live(name)
            if entry is None or entry.version != version or entry.running:
                heapq.heappop(self._heap)
                continue
            return due > now
        return True

    # -- queues

    def create_queue(self, parent: str, queue: Any) -> Any:
        if not _PARENT.match(parent or ""):
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid parent {parent!r}")
        match = _QUEUE_NAME.match(queue.name or "")
        if not match or match.group(1) != parent:
            raise FakeError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"queue name {queue.name!r} must be {parent}/queues/ID with an ID of 1-100 "
                "letters, digits or hyphens",
            )
        stored = _copy_queue(queue)
        policy = RetryPolicy.resolve(stored.retry_config if "retry_config" in stored else None)
        stored.retry_config = policy.to_config()
        limits = stored.rate_limits
        stored.rate_limits = tasks_v2.RateLimits(
            max_dispatches_per_second=limits.max_dispatches_per_second or 500.0,
            max_burst_size=limits.max_burst_size or 100,
            max_concurrent_dispatches=limits.max_concurrent_dispatches or 1000,
        )
        stored.state = tasks_v2.Queue.State.RUNNING
        with self._cond:
            if stored.name in self._queues:
                raise FakeError(grpc.StatusCode.ALREADY_EXISTS, f"queue {stored.name} exists")
            self._queues[stored.name] = _Queue(stored, policy)
            return _copy_queue(stored)

    def _queue(self, name: str) -> _Queue:
        found = self._queues.get(name)
        if found is None:
            raise FakeError(grpc.StatusCode.NOT_FOUND, f"queue {name} does not exist")
        return found

    def get_queue(self, name: str) -> Any:
        with self._cond:
            return _copy_queue(self._queue(name).queue)

    def list_queues(self, parent: str) -> list[Any]:
        with self._cond:
            return [
                _copy_queue(q.queue)
                for name, q in sorted(self._queues.items())
                if name.startswith(parent + "/queues/")
            ]

    def delete_queue(self, name: str) -> None:
        with self._cond:
            self._queue(name)
            del self._queues[name]
            self._cond.notify_all()

    def purge_queue(self, name: str) -> Any:
        with self._cond:
            state = self._queue(name)
            now = self.clock.now()
            for task_name in list(state.entries):
                self._retire(state, task_name, now)
            state.parked.clear()
            state.queue.purge_time = now
            self._cond.notify_all()
            return _copy_queue(state.queue)

    def pause_queue(self, name: str) -> Any:
        with self._cond:
            state = self._queue(name)
            state.queue.state = tasks_v2.Queue.State.PAUSED
            return _copy_queue(state.queue)

    def resume_queue(self, name: str) -> Any:
        with self._cond:
            state = self._queue(name)
            state.queue.state = tasks_v2.Queue.State.RUNNING
            self._unpark(state)
            return _copy_queue(state.queue)

    # -- tasks

    def _live(self, name: str) -> _Entry | None:
        match = _TASK_NAME.match(name)
        if not match:
            return None
        state = self._queues.get(match.group(1))
        return None if state is None else state.entries.get(name)

    def _name_taken(self, name: str, now: datetime) -> bool:
        if self._live(name) is not None:
            return True
        until = self._tombstones.get(name)
        if until is None:
            return False
        if until <= now:
            del self._tombstones[name]
            return False
        return True

    def create_task(self, parent: str, task: Any, view: int = 0) -> Any:
        now = self.clock.now()
        created = _copy_task(task)
        if "app_engine_http_request" in created:
            raise FakeError(grpc.StatusCode.UNIMPLEMENTED, "this fake delivers HTTP targets only")
        if "http_request" not in created or not created.http_request.url:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, "the task needs an http_request.url")
        request = created.http_request
        parts = urlsplit(request.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid task URL {request.url!r}")
        if request.http_method == tasks_v2.HttpMethod.HTTP_METHOD_UNSPECIFIED:
            request.http_method = tasks_v2.HttpMethod.POST
        method = tasks_v2.HttpMethod(request.http_method).name
        if request.body and method not in _BODY_METHODS:
            raise FakeError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a body is only allowed with POST, PUT or PATCH, not {method}",
            )
        if request.body and not any(k.lower() == "content-type" for k in request.headers):
            request.headers["Content-Type"] = "application/octet-stream"
        if "schedule_time" not in created:
            created.schedule_time = now
        elif created.schedule_time > now + MAX_SCHEDULE_AHEAD:
            raise FakeError(
                grpc.StatusCode.INVALID_ARGUMENT, "schedule_time is more than 30 days ahead"
            )
        if "dispatch_deadline" not in created:
            created.dispatch_deadline = DEFAULT_DISPATCH_DEADLINE
        elif not self.min_dispatch_deadline <= created.dispatch_deadline <= MAX_DISPATCH_DEADLINE:
            raise FakeError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"dispatch_deadline must be between {self.min_dispatch_deadline} and "
                f"{MAX_DISPATCH_DEADLINE}",
            )
        if len(tasks_v2.Task.serialize(created)) > MAX_TASK_BYTES:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, "the task is larger than 1 MB")
        for field_name in ("first_attempt", "last_attempt"):
            if field_name in created:
                delattr(created, field_name)
        created.dispatch_count = 0
        created.response_count = 0
        created.create_time = now
        with self._cond:
            state = self._queue(parent)
            if created.name:
                match = _TASK_NAME.match(created.name)
                if not match or match.group(1) != parent:
                    raise FakeError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"task name {created.name!r} must be {parent}/tasks/ID with an ID of "
                        "1-500 letters, digits, '_' or '-'",
                    )
                if self._name_taken(created.name, now):
                    raise FakeError(
                        grpc.StatusCode.ALREADY_EXISTS,
                        f"task {created.name} exists or existed too recently",
                    )
            else:
                created.name = f"{parent}/tasks/{secrets.randbelow(10**19):019d}"
            entry = _Entry(created, parent)
            state.entries[created.name] = entry
            self._push(entry)
            return self._view(entry.task, view)

    def _push(self, entry: _Entry) -> None:
        entry.version += 1
        heapq.heappush(
            self._heap,
            (entry.task.schedule_time, next(self._order), entry.task.name, entry.version),
        )
        self._cond.notify_all()

    def _entry(self, name: str) -> tuple[_Queue, _Entry]:
        match = _TASK_NAME.match(name or "")
        if not match:
            raise FakeError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid task name {name!r}")
        state = self._queue(match.group(1))
        entry = state.entries.get(name)
        if entry is None:
            raise FakeError(grpc.StatusCode.NOT_FOUND, f"task {name} does not exist")
        return state, entry

    @staticmethod
    def _view(task: Any, view: int) -> Any:
        shown = _copy_task(task)
        full = view == tasks_v2.Task.View.FULL
        shown.view = tasks_v2.Task.View.FULL if full else tasks_v2.Task.View.BASIC
        if not full and "http_request" in shown:
            shown.http_request.body = b""
        return shown

    def get_task(self, name: str, view: int = 0) -> Any:
        with self._cond:
            return self._view(self._entry(name)[1].task, view)

    def list_tasks(
        self, parent: str, view: int = 0, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Any], str]:
        with self._cond:
            state = self._queue(parent)
            entries = sorted(
                state.entries.values(), key=lambda e: (e.task.schedule_time, e.task.name)
            )
            start = int(page_token) if page_token.isdigit() else 0
            size = page_size if 0 < page_size <= 1000 else 1000
            page = entries[start : start + size]
            following = str(start + size) if start + size < len(entries) else ""
            return [self._view(e.task, view) for e in page], following

    def delete_task(self, name: str) -> None:
        with self._cond:
            state, _ = self._entry(name)
            self._retire(state, name, self.clock.now())
            self._cond.notify_all()

    def run_task(self, name: str, view: int = 0) -> Any:
        with self._cond:
            _, entry = self._entry(name)
            if entry.running:
                raise FakeError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"task {name} is being dispatched"
                )
            entry.task.schedule_time = self.clock.now()
            self._push(entry)
            return self._view(entry.task, view)

    def _retire(self, state: _Queue, name: str, now: datetime) -> None:
        entry = state.entries.pop(name, None)
        if entry is not None and entry in state.parked:
            state.parked.remove(entry)
        self._tombstones[name] = now + self.tombstone

    # -- dispatch

    def _unpark(self, state: _Queue) -> None:
        parked, state.parked = state.parked, []
        for entry in parked:
            if state.entries.get(entry.task.name) is entry:
                self._push(entry)

    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                ready = self._take_due()
                if not ready:
                    timeout = _MAX_SLEEP_S
                    if self._heap:
                        ahead = (self._heap[0][0] - self.clock.now()).total_seconds()
                        timeout = min(max(ahead, 0.0), _MAX_SLEEP_S)
                    self._cond.wait(timeout)
                    continue
                executor = self._executor
            assert executor is not None
            for entry, delivery in ready:
                executor.submit(self._finish_attempt, entry, delivery)

    def _take_due(self) -> list[tuple[_Entry, Delivery]]:
        now = self.clock.now()
        ready: list[tuple[_Entry, Delivery]] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, name, version = heapq.heappop(self._heap)
            entry = self._live(name)
            if entry is None or entry.version != version or entry.running:
                continue
            state = self._queues[entry.queue]
            limit = state.queue.rate_limits.max_concurrent_dispatches
            if state.queue.state != tasks_v2.Queue.State.RUNNING or state.running >= limit:
                state.parked.append(entry)
                continue
            entry.running = True
            state.running += 1
            self._running += 1
            ready.append((entry, self._begin_attempt(entry, now)))
        return ready

    def _begin_attempt(self, entry: _Entry, now: datetime) -> Delivery:
        task = entry.task
        attempt = tasks_v2.Attempt(schedule_time=task.schedule_time, dispatch_time=now)
        if entry.first_attempt_at is None:
            entry.first_attempt_at = now
            task.first_attempt = attempt
        task.last_attempt = attempt
        task.dispatch_count += 1
        request = task.http_request
        queue_id = entry.queue.rsplit("/", 1)[1]
        headers = dict(request.headers)
        headers.update(
            {
                "User-Agent": "Google-Cloud-Tasks",
                "X-CloudTasks-QueueName": queue_id,
                "X-CloudTasks-TaskName": task.name.rsplit("/", 1)[1],
                "X-CloudTasks-TaskRetryCount": str(task.dispatch_count - 1),
                "X-CloudTasks-TaskExecutionCount": str(task.response_count),
                "X-CloudTasks-TaskETA": f"{task.schedule_time.timestamp():.6f}",
            }
        )
        if entry.last_status is not None:
            headers["X-CloudTasks-TaskPreviousResponse"] = str(entry.last_status)
        if "oidc_token" in request:
            audience = request.oidc_token.audience or request.url
            token = unsigned_id_token(request.oidc_token.service_account_email, audience, now)
            headers["Authorization"] = f"Bearer {token}"
        elif "oauth_token" in request:
            headers["Authorization"] = (
                f"Bearer fake-oauth-{request.oauth_token.service_account_email}"
            )
        return Delivery(
            url=request.url,
            method=tasks_v2.HttpMethod(request.http_method).name,
            headers=headers,
            body=bytes(request.body),
            timeout_s=task.dispatch_deadline.total_seconds(),
        )

    def _finish_attempt(self, entry: _Entry, delivery: Delivery) -> None:
        try:
            outcome = self._sender(delivery)
        except Exception as exc:  # a broken sender must not kill the worker
            outcome = Outcome(None, f"UNAVAILABLE: {exc}")
        with self._cond:
            try:
                self._record(entry, outcome)
            finally:
                entry.running = False
                self._running -= 1
                state = self._queues.get(entry.queue)
                if state is not None:
                    state.running -= 1
                    self._unpark(state)
                self._cond.notify_all()

    def _record(self, entry: _Entry, outcome: Outcome) -> None:
        now = self.clock.now()
        task = entry.task
        name = task.name
        logger.info(
            "task %s attempt %d -> %s",
            name,
            task.dispatch_count,
            outcome.status if outcome.status is not None else outcome.error,
        )
        state = self._queues.get(entry.queue)
        if state is None or state.entries.get(name) is not entry:
            return  # deleted (or its queue purged) while in flight
        if outcome.status is not None:
            task.response_count += 1
            entry.last_status = outcome.status
        task.last_attempt.response_time = now
        task.last_attempt.response_status = _rpc_status(outcome)
        if outcome.succeeded:
            self._retire(state, name, now)
            return
        policy = RetryPolicy.resolve(
            task.retry_config if "retry_config" in task else None, state.policy
        )
        assert entry.first_attempt_at is not None
        if policy.gives_up(task.dispatch_count, entry.first_attempt_at, now):
            logger.info("task %s gave up after %d attempts", name, task.dispatch_count)
            self._retire(state, name, now)
            return
        task.schedule_time = now + policy.backoff(task.dispatch_count)
        self._push(entry)


# -- gRPC -------------------------------------------------------------------------------


def _handlers(fake: CloudTasksFake) -> dict[str, tuple[Callable[[Any], Any], Any, Any]]:
    def list_tasks(request: Any) -> Any:
        tasks, token = fake.list_tasks(
            request.parent, request.response_view, request.page_size, request.page_token
        )
        return tasks_v2.ListTasksResponse(tasks=tasks, next_page_token=token)

    def list_queues(request: Any) -> Any:
        return tasks_v2.ListQueuesResponse(queues=fake.list_queues(request.parent))

    def delete_queue(request: Any) -> None:
        fake.delete_queue(request.name)

    def delete_task(request: Any) -> None:
        fake.delete_task(request.name)

    empty = None
    return {
        "ListQueues": (list_queues, tasks_v2.ListQueuesRequest, tasks_v2.ListQueuesResponse),
        "GetQueue": (lambda r: fake.get_queue(r.name), tasks_v2.GetQueueRequest, tasks_v2.Queue),
        "CreateQueue": (
            lambda r: fake.create_queue(r.parent, r.queue),
            tasks_v2.CreateQueueRequest,
            tasks_v2.Queue,
        ),
        "DeleteQueue": (delete_queue, tasks_v2.DeleteQueueRequest, empty),
        "PurgeQueue": (
            lambda r: fake.purge_queue(r.name),
            tasks_v2.PurgeQueueRequest,
            tasks_v2.Queue,
        ),
        "PauseQueue": (
            lambda r: fake.pause_queue(r.name),
            tasks_v2.PauseQueueRequest,
            tasks_v2.Queue,
        ),
        "ResumeQueue": (
            lambda r: fake.resume_queue(r.name),
            tasks_v2.ResumeQueueRequest,
            tasks_v2.Queue,
        ),
        "ListTasks": (list_tasks, tasks_v2.ListTasksRequest, tasks_v2.ListTasksResponse),
        "GetTask": (
            lambda r: fake.get_task(r.name, r.response_view),
            tasks_v2.GetTaskRequest,
            tasks_v2.Task,
        ),
        "CreateTask": (
            lambda r: fake.create_task(r.parent, r.task, r.response_view),
            tasks_v2.CreateTaskRequest,
            tasks_v2.Task,
        ),
        "DeleteTask": (delete_task, tasks_v2.DeleteTaskRequest, empty),
        "RunTask": (
            lambda r: fake.run_task(r.name, r.response_view),
            tasks_v2.RunTaskRequest,
            tasks_v2.Task,
        ),
    }


def rpc_handler(fake: CloudTasksFake) -> Any:
    """A gRPC generic handler serving ``fake`` under the Cloud Tasks v2 service name."""

    def wrap(method: str, call: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        def handle(request: Any, context: Any) -> Any:
            try:
                return call(request)
            except FakeError as exc:
                context.abort(exc.code, exc.message)
            except Exception:
                logger.exception("%s failed", method)
                context.abort(grpc.StatusCode.INTERNAL, f"{method} failed inside the fake")

        return handle

    method_handlers = {}
    for method, (call, request_type, response_type) in _handlers(fake).items():
        serialize = response_type.serialize if response_type is not None else _empty
        method_handlers[method] = grpc.unary_unary_rpc_method_handler(
            wrap(method, call),
            request_deserializer=request_type.deserialize,
            response_serializer=serialize,
        )
    return grpc.method_handlers_generic_handler(SERVICE, method_handlers)


def _empty(_: Any) -> bytes:
    return b""  # google.protobuf.Empty


def serve(fake: CloudTasksFake, host: str = "127.0.0.1", port: int = 0) -> tuple[Any, int]:
    """Start a gRPC server for ``fake``; return it and the port it listens on."""
    server = grpc.server(ThreadPoolExecutor(16, thread_name_prefix="tasks-fake-rpc"))
    server.add_generic_rpc_handlers((rpc_handler(fake),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server, bound


def _parse_queue(name: str) -> Any:
    match = _QUEUE_NAME.match(name)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{name!r} is not projects/PROJECT/locations/LOCATION/queues/QUEUE"
        )
    return tasks_v2.Queue(name=name)


def main(argv: list[str] | None = None) -> int:
    """Run the fake until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0 picks a free port")
    parser.add_argument(
        "--queue", action="append", type=_parse_queue, default=[], help="create this queue"
    )
    parser.add_argument("--tombstone-s", type=float, default=DEFAULT_TOMBSTONE.total_seconds())
    parser.add_argument("--min-dispatch-deadline-s", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    fake = CloudTasksFake(
        tombstone=timedelta(seconds=args.tombstone_s),
        min_dispatch_deadline=timedelta(seconds=args.min_dispatch_deadline_s),
        workers=args.workers,
    )
    for queue in args.queue:
        fake.create_queue(queue.name.rsplit("/queues/", 1)[0], queue)
    fake.start()
    server, port = serve(fake, args.host, args.port)
    stopped = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"Cloud Tasks fake listening on {args.host}:{port}", flush=True)
    while not stopped.wait(0.5):
        pass
    server.stop(grace=1).wait()
    fake.stop(wait=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
