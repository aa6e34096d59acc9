"""The worker's HTTP control channel and the HTTP evaluator, against a scripted local server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from servo.testing.emulators import free_port
from servo.worker.envelope import Outcome, TaskEnvelope
from servo.worker.evaluate import EvaluationRequest, EvaluationResult
from servo.worker.http_channel import (
    CallbackRejected,
    CallbackUnavailable,
    HttpControlChannel,
    HttpEvaluator,
    metadata_id_token,
)


class Scripted:
    """A local HTTP server answering each POST with the next scripted (status, body)."""

    def __init__(self, script: list[tuple[int, Any]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.requests.append(
                    (self.path, dict(self.headers), json.loads(raw) if raw else None)
                )
                status, body = owner.script.pop(0) if owner.script else (500, {"error": "end"})
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = _answer
            do_GET = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[Scripted] = []

    def make(*script: tuple[int, Any]) -> Scripted:
        server = Scripted(list(script))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


ENVELOPE = TaskEnvelope(
    run_id="r1",
    task_id="t1",
    attempt=2,
    asset="a",
    code_version="cv",
    output_path="outputs/a",
    log_path="logs/a",
    token="tok",
)


def no_sleep(seconds: float) -> None:
    pass


def test_reports_are_posted_and_answered(scripted: Any) -> None:
    server = scripted((200, {"accepted": True, "cancel": False}), (200, {"accepted": False}))
    channel = HttpControlChannel(server.url, sleep=no_sleep)
    assert channel.started(ENVELOPE).accepted is True
    outcome = Outcome(status="succeeded", duration_ms=3)
    assert channel.completed(ENVELOPE, outcome).accepted is False
    (_, _, started), (_, _, completed) = server.requests
    assert started == {
        "kind": "started",
        "run_id": "r1",
        "task_id": "t1",
        "attempt": 2,
        "token": "tok",
        "outcome": None,
    }
    assert completed["kind"] == "completed"
    assert completed["outcome"]["status"] == "succeeded"
    channel.close()


def test_retryable_answers_are_retried_with_backoff(scripted: Any) -> None:
    server = scripted(
        (503, {"error": "contention"}),
        (429, "slow down"),
        (500, "oops"),
        (200, {"accepted": True}),
    )
    delays: list[float] = []
    channel = HttpControlChannel(server.url, sleep=delays.append, backoff_s=0.1, max_backoff_s=0.3)
    assert channel.started(ENVELOPE).accepted is True
    assert delays == [0.1, 0.2, 0.3]
    assert len(server.requests) == 4


def test_a_refusal_is_not_retried(scripted: Any) -> None:
    server = scripted((400, {"error": "the token does not authorize reports"}))
    channel = HttpControlChannel(server.url, sleep=no_sleep)
    with pytest.raises(CallbackRejected, match="does not authorize") as caught:
        channel.completed(ENVELOPE, Outcome(status="failed"))
    assert caught.value.status == 400
    assert len(server.requests) == 1


def test_an_unreachable_callback_gives_up_after_its_attempts() -> None:
    channel = HttpControlChannel(
        f"http://127.0.0.1:{free_port()}", sleep=no_sleep, attempts=3, heartbeat_attempts=1
    )
    with pytest.raises(CallbackUnavailable, match="after 3 tries"):
        channel.started(ENVELOPE)
    with pytest.raises(CallbackUnavailable, match="after 1 tries"):
        channel.heartbeat(ENVELOPE)


def test_an_answer_that_is_not_an_answer_is_unavailable(scripted: Any) -> None:
    server = scripted((200, "not json"), (200, {"accepted": "perhaps"}))
    channel = HttpControlChannel(server.url, sleep=no_sleep, attempts=1)
    with pytest.raises(CallbackUnavailable, match="not JSON"):
        channel.started(ENVELOPE)
    with pytest.raises(CallbackUnavailable, match="not an Answer"):
        channel.started(ENVELOPE)


def test_id_tokens_come_from_the_metadata_server(
    scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    metadata = scripted((200, "id-token-1"))
    monkeypatch.setenv("GCE_METADATA_HOST", metadata.url.removeprefix("http://"))
    callback = scripted((200, {"accepted": True}), (200, {"accepted": True}))
    channel = HttpControlChannel(
        callback.url, sleep=no_sleep, id_token=metadata_id_token("https://callback")
    )
    channel.started(ENVELOPE)
    channel.heartbeat(ENVELOPE)
    assert [h["Authorization"] for _, h, _ in callback.requests] == ["Bearer id-token-1"] * 2
    ((path, headers, _),) = metadata.requests  # cached: asked once
    assert path.startswith("/computeMetadata/v1/instance/service-accounts/default/identity?")
    assert "audience=https%3A%2F%2Fcallback" in path
    assert headers["Metadata-Flavor"] == "Google"


def test_the_evaluator_posts_requests_to_the_worker_service(scripted: Any) -> None:
    result = EvaluationResult(cursor="c2", cursor_updated=True)
    server = scripted((200, result.model_dump(mode="json")), (404, {"error": "no route"}))
    evaluator = HttpEvaluator(server.url, "acme", "prod")
    request = EvaluationRequest(kind="sensor", code_version="cv", name="landing", cursor="c1")
    assert evaluator.evaluate(request, timeout_s=5) == result
    ((_, _, body),) = server.requests
    assert body["tenant"] == "acme"
    assert body["workspace"] == "prod"
    assert body["request"]["name"] == "landing"
    with pytest.raises(CallbackRejected):
        evaluator.evaluate(request)
    evaluator.close()
