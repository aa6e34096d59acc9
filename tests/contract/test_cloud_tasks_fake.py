"""Servo's Cloud Tasks fake (emulators/cloud_tasks_fake.py), through the real client.

The fake runs in this process on a manual clock, so schedules, backoffs and tombstones are
checked exactly and without waiting; deliveries go over real HTTP to a tiny local server.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as google_errors
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

import cloud_tasks_fake as fake_module
from cloud_tasks_fake import CloudTasksFake, RetryPolicy
from servo.testing.clock import ManualClock

START = datetime(2024, 1, 1, tzinfo=UTC)
PARENT = "projects/demo/locations/here"
WAIT_S = 10.0  # generous bound for real-time work (HTTP, threads); never asserted on


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Endpoint:
    """A tiny HTTP server: records every request and answers with ``statuses`` in turn."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    block: threading.Event | None = None

    def __post_init__(self) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                endpoint.requests.append(Request(self.path, dict(self.headers), body))
                if endpoint.block is not None:
                    endpoint.block.wait(WAIT_S)
                status = endpoint.statuses.pop(0) if endpoint.statuses else 200
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the fake gave up waiting and hung up

            do_POST = do_PUT = do_GET = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def url(self, path: str = "/work") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def close(self) -> None:
        if self.block is not None:
            self.block.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@dataclass
class Service:
    fake: CloudTasksFake
    client: Any
    clock: ManualClock

    def queue(self, name: str = "q", **retry: Any) -> str:
        path = f"{PARENT}/queues/{name}"
        config = tasks_v2.RetryConfig(**retry) if retry else None
        self.client.create_queue(
            parent=PARENT, queue=tasks_v2.Queue(name=path, retry_config=config)
        )
        return path

    def settle(self) -> None:
        """Wait until nothing is due at the current (manual) time or in flight."""
        assert self.fake.wait_idle(WAIT_S)

    def get(self, name: str) -> Any:
        return self.client.get_task(
            request={"name": name, "response_view": tasks_v2.Task.View.FULL}
        )


@pytest.fixture
def service() -> Iterator[Service]:
    clock = ManualClock(START)
    fake = CloudTasksFake(clock=clock, min_dispatch_deadline=timedelta(seconds=0.1))
    fake.start()
    server, port = fake_module.serve(fake)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    yield Service(fake, client, clock)
    client.transport.close()
    server.stop(grace=None).wait()
    fake.stop()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


def http_task(url: str, *, name: str = "", body: bytes = b'{"v": 1}', **fields: Any) -> Any:
    request = tasks_v2.HttpRequest(
        url=url, body=body, headers={"Content-Type": "application/json", "X-Mine": "yes"}
    )
    return tasks_v2.Task(name=name, http_request=request, **fields)


# -- retry policy -----------------------------------------------------------------------


def test_backoff_follows_cloud_tasks_documented_example() -> None:
    # "min_backoff 10s, max_backoff 300s, max_doublings 3: retries at 10s, 20s, 40s, 80s,
    # 160s, 240s, 300s, 300s, ..."
    policy = RetryPolicy(
        min_backoff=timedelta(seconds=10), max_backoff=timedelta(seconds=300), max_doublings=3
    )
    delays = [policy.backoff(n).total_seconds() for n in range(1, 9)]
    assert delays == [10, 20, 40, 80, 160, 240, 300, 300]


def test_retries_stop_when_every_set_limit_is_reached() -> None:
    first = START
    by_attempts = RetryPolicy(max_attempts=3)
    assert not by_attempts.gives_up(2, first, first + timedelta(days=9))
    assert by_attempts.gives_up(3, first, first)
    both = RetryPolicy(max_attempts=3, max_retry_duration=timedelta(seconds=60))
    assert not both.gives_up(5, first, first + timedelta(seconds=59))
    assert not both.gives_up(2, first, first + timedelta(seconds=61))
    assert both.gives_up(3, first, first + timedelta(seconds=60))
    by_time = RetryPolicy(max_attempts=-1, max_retry_duration=timedelta(seconds=60))
    assert not by_time.gives_up(10_000, first, first + timedelta(seconds=59))
    assert by_time.gives_up(1, first, first + timedelta(seconds=60))
    assert not RetryPolicy(max_attempts=-1).gives_up(10**6, first, first + timedelta(days=99))


# -- queues -----------------------------------------------------------------------------


def test_queues_get_cloud_tasks_defaults(service: Service) -> None:
    path = service.queue()
    queue = service.client.get_queue(name=path)
    assert queue.state == tasks_v2.Queue.State.RUNNING
    assert queue.retry_config.max_attempts == 100
    assert queue.retry_config.min_backoff == timedelta(seconds=0.1)
    assert queue.retry_config.max_backoff == timedelta(seconds=3600)
    assert queue.retry_config.max_doublings == 16
    assert queue.rate_limits.max_concurrent_dispatches == 1000
    with pytest.raises(google_errors.AlreadyExists):
        service.queue()
    with pytest.raises(google_errors.NotFound):
        service.client.get_queue(name=f"{PARENT}/queues/missing")
    with pytest.raises(google_errors.InvalidArgument):
        service.queue("bad_name")
    assert [q.name for q in service.client.list_queues(parent=PARENT)] == [path]


# -- delivery ---------------------------------------------------------------------------


def test_a_task_is_posted_with_its_headers_and_body(service: Service, endpoint: Endpoint) -> None:
    queue = service.queue()
    created = service.client.create_task(
        parent=queue, task=http_task(endpoint.url("/work?x=1"), name=f"{queue}/tasks/t1")
    )
    assert created.schedule_time == START
    assert created.http_request.body == b""  # the BASIC view leaves the body out
    service.settle()
    [request] = endpoint.requests
    assert request.path == "/work?x=1"
    assert request.body == b'{"v": 1}'
    headers = request.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Mine"] == "yes"
    assert headers["User-Agent"] == "Google-Cloud-Tasks"
    assert headers["X-CloudTasks-QueueName"] == "q"
    assert headers["X-CloudTasks-TaskName"] == "t1"
    assert headers["X-CloudTasks-TaskRetryCount"] == "0"
    assert headers["X-CloudTasks-TaskExecutionCount"] == "0"
    assert float(headers["X-CloudTasks-TaskETA"]) == START.timestamp()
    assert "Authorization" not in headers
    with pytest.raises(google_errors.NotFound):
        service.get(created.name)  # done: deleted
    assert list(service.client.list_tasks(parent=queue)) == []


def test_a_task_waits_for_its_schedule_time(service: Service, endpoint: Endpoint) -> None:
    queue = service.queue()
    task = http_task(endpoint.url(), schedule_time=START + timedelta(minutes=5))
    created = service.client.create_task(parent=queue, task=task)
    service.settle()
    service.clock.advance(299)
    service.settle()
    assert endpoint.requests == []
    assert service.get(created.name).dispatch_count == 0
    service.clock.advance(1)
    service.settle()
    assert len(endpoint.requests) == 1


def test_names_stay_taken_for_the_tombstone_window(service: Service, endpoint: Endpoint) -> None:
    queue = service.queue()
    name = f"{queue}/tasks/once"
    service.client.create_task(parent=queue, task=http_task(endpoint.url(), name=name))
    with pytest.raises(google_errors.AlreadyExists):
        service.client.create_task(parent=queue, task=http_task(endpoint.url(), name=name))
    service.settle()
    assert len(endpoint.requests) == 1
    service.clock.advance(3599)
    with pytest.raises(google_errors.AlreadyExists):
        service.client.create_task(parent=queue, task=http_task(endpoint.url(), name=name))
    service.clock.advance(2)
    service.client.create_task(parent=queue, task=http_task(endpoint.url(), name=name))
    service.settle()
    assert len(endpoint.requests) == 2


def test_a_deleted_task_s_name_stays_taken(service: Service, endpoint: Endpoint) -> None:
    queue = service.queue()
    later = START + timedelta(hours=1)
    created = service.client.create_task(
        parent=queue,
        task=http_task(endpoint.url(), name=f"{queue}/tasks/gone", schedule_time=later),
    )
    service.client.delete_task(name=created.name)
    with pytest.raises(google_errors.NotFound):
        service.client.delete_task(name=created.name)
    with pytest.raises(google_errors.AlreadyExists):
        service.client.create_task(parent=queue, task=http_task(endpoint.url(), name=created.name))
    service.clock.advance(7200)
    service.settle()
    assert endpoint.requests == []


def test_failures_back_off_exponentially_then_linearly_then_give_up(
    service: Service, endpoint: Endpoint
) -> None:
    queue = service.queue(
        min_backoff=timedelta(seconds=1),
        max_backoff=timedelta(seconds=10),
        max_doublings=2,
        max_attempts=7,
    )
    endpoint.statuses = [503, 500, 404, 429, 500, 500, 500]
    created = service.client.create_task(parent=queue, task=http_task(endpoint.url()))
    waits = []
    for attempt in range(1, 7):
        service.settle()
        task = service.get(created.name)
        assert (task.dispatch_count, task.response_count) == (attempt, attempt)
        assert task.last_attempt.dispatch_time == service.clock.now()
        assert task.last_attempt.response_status.code != 0
        waits.append((task.schedule_time - service.clock.now()).total_seconds())
        service.clock.set(task.schedule_time)
    service.settle()
    assert waits == [1, 2, 4, 8, 10, 10]
    with pytest.raises(google_errors.NotFound):
        service.get(created.name)  # gave up after max_attempts
    retry_counts = [r.headers["X-CloudTasks-TaskRetryCount"] for r in endpoint.requests]
    assert retry_counts == ["0", "1", "2", "3", "4", "5", "6"]
    previous = [r.headers.get("X-CloudTasks-TaskPreviousResponse") for r in endpoint.requests]
    assert previous == [None, "503", "500", "404", "429", "500", "500"]
    with pytest.raises(google_errors.AlreadyExists):
        service.client.create_task(parent=queue, task=http_task(endpoint.url(), name=created.name))


def test_a_task_s_own_retry_config_wins(service: Service, endpoint: Endpoint) -> None:
    queue = service.queue(min_backoff=timedelta(seconds=1))
    endpoint.statuses = [500]
    task = http_task(
        endpoint.url(), retry_config=tasks_v2.RetryConfig(min_backoff=timedelta(seconds=30))
    )
    created = service.client.create_task(parent=queue, task=task)
    service.settle()
    assert service.get(created.name).schedule_time == START + timedelta(seconds=30)


def test_no_answer_within_the_dispatch_deadline_is_a_failure(
    service: Service, endpoint: Endpoint
) -> None:
    queue = service.queue(min_backoff=timedelta(seconds=60))
    endpoint.block = threading.Event()
    task = http_task(endpoint.url(), dispatch_deadline=timedelta(seconds=0.3))
    created = service.client.create_task(parent=queue, task=task)
    service.settle()
    endpoint.block.set()
    stored = service.get(created.name)
    assert stored.dispatch_count == 1
    assert stored.response_count == 0
    assert stored.last_attempt.response_status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert stored.schedule_time == START + timedelta(seconds=60)


def test_an_unreachable_target_is_a_failure(service: Service) -> None:
    queue = service.queue(min_backoff=timedelta(seconds=5))
    created = service.client.create_task(parent=queue, task=http_task("http://127.0.0.1:9/"))
    service.settle()
    stored = service.get(created.name)
    assert (stored.dispatch_count, stored.response_count) == (1, 0)
    assert stored.last_attempt.response_status.code == grpc.StatusCode.UNAVAILABLE.value[0]


def test_an_oidc_token_becomes_a_bearer_token(service: Service, endpoint: Endpoint) -> None:
    queue = service.queue()
    for audience in ("", "https://my-service.run.app"):
        request = tasks_v2.HttpRequest(
            url=endpoint.url(),
            oidc_token=tasks_v2.OidcToken(
                service_account_email="sa@demo.iam.gserviceaccount.com", audience=audience
            ),
        )
        service.client.create_task(parent=queue, task=tasks_v2.Task(http_request=request))
        service.settle()
    audiences = []
    for request in endpoint.requests:
        scheme, token = request.headers["Authorization"].split(" ")
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert scheme == "Bearer"
        assert claims["email"] == "sa@demo.iam.gserviceaccount.com"
        assert claims["iss"] == "https://accounts.google.com"
        audiences.append(claims["aud"])
    assert audiences == [endpoint.url(), "https://my-service.run.app"]


# -- managing tasks ---------------------------------------------------------------------


def test_list_get_run_and_views(service: Service, endpoint: Endpoint) -> None:
    queue = service.queue()
    for minutes, name in ((20, "b"), (10, "a"), (30, "c")):
        task = http_task(
            endpoint.url(),
            name=f"{queue}/tasks/{name}",
            schedule_time=START + timedelta(minutes=minutes),
        )
        service.client.create_task(parent=queue, task=task)
    listed = list(service.client.list_tasks(parent=queue))
    assert [t.name.rsplit("/", 1)[1] for t in listed] == ["a", "b", "c"]
    assert all(t.http_request.body == b"" for t in listed)
    full = service.client.list_tasks(
        request={"parent": queue, "response_view": tasks_v2.Task.View.FULL, "page_size": 2}
    )
    assert [t.http_request.body for t in full] == [b'{"v": 1}'] * 3  # across two pages
    service.client.run_task(name=f"{queue}/tasks/c")
    service.settle()
    assert len(endpoint.requests) == 1
    assert [t.name.rsplit("/", 1)[1] for t in service.client.list_tasks(parent=queue)] == ["a", "b"]


def test_a_paused_queue_holds_its_tasks(service: Service, endpoint: Endpoint) -> None:
    queue = service.queue()
    service.client.pause_queue(name=queue)
    service.client.create_task(parent=queue, task=http_task(endpoint.url()))
    service.settle()
    assert endpoint.requests == []
    service.client.resume_queue(name=queue)
    service.settle()
    assert len(endpoint.requests) == 1


def test_invalid_tasks_are_refused(service: Service, endpoint: Endpoint) -> None:
    queue = service.queue()
    strict = CloudTasksFake(clock=service.clock)  # the real 15 s minimum deadline
    invalid = [
        http_task(endpoint.url(), name=f"{queue}/tasks/bad.name"),
        http_task(endpoint.url(), name=f"{PARENT}/queues/other/tasks/x"),
        http_task("ftp://example.com/x"),
        http_task(endpoint.url(), schedule_time=START + timedelta(days=31)),
        http_task(endpoint.url(), body=b"x" * 1_000_001),
        tasks_v2.Task(
            http_request=tasks_v2.HttpRequest(
                url=endpoint.url(), http_method=tasks_v2.HttpMethod.GET, body=b"x"
            )
        ),
    ]
    for task in invalid:
        with pytest.raises(google_errors.InvalidArgument):
            service.client.create_task(parent=queue, task=task)
    with pytest.raises(google_errors.NotFound):
        service.client.create_task(
            parent=f"{PARENT}/queues/missing", task=http_task(endpoint.url())
        )
    strict.create_queue(PARENT, tasks_v2.Queue(name=queue))
    with pytest.raises(fake_module.FakeError) as refused:
        strict.create_task(queue, http_task(endpoint.url(), dispatch_deadline=timedelta(seconds=5)))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(service.client.list_tasks(parent=queue)) == []


# -- as a process -----------------------------------------------------------------------


@pytest.mark.emulators
def test_the_fake_runs_as_a_process(tasks_emulator: str, endpoint: Endpoint) -> None:
    channel = grpc.insecure_channel(tasks_emulator)
    client = tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
    try:
        queue = f"{PARENT}/queues/process-test"
        client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=queue))
        client.create_task(parent=queue, task=http_task(endpoint.url(), name=f"{queue}/tasks/p"))
        for _ in range(int(WAIT_S / 0.02)):
            if endpoint.requests:
                break
            time.sleep(0.02)
        assert [r.body for r in endpoint.requests] == [b'{"v": 1}']
        client.delete_queue(name=queue)
    finally:
        client.transport.close()
