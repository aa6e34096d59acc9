"""The worker service for Cloud Run: runs ``execute`` deliveries and evaluation requests.

An HTTP server (``worker_image/entrypoint.py`` starts it) with three routes:

``POST /execute``
    A Cloud Tasks delivery of an ``execute`` message (``{"topic": "execute", "payload":
    <TaskEnvelope>}``, or the bare envelope). The attempt runs to its end inside the request,
    reporting ``started``, heartbeats and ``completed`` to the callback function through an
    :class:`~servo.worker.http_channel.HttpControlChannel`; then the request is answered. The
    answer tells Cloud Tasks whether to deliver again: 200 when the attempt ran (whatever its
    outcome: the outcome went to the callback), was stale, or cannot ever run (a malformed
    envelope, a refused report); 503 when a report could not reach the callback function, so
    that the delivery is retried; 429 when every process is busy.
``POST /evaluate``
    ``{"tenant", "workspace", "request": <EvaluationRequest>, "timeout_s"}`` from the tick and
    sensor functions; answers the :class:`~servo.worker.evaluate.EvaluationResult`.
``GET /healthz``
    200 while the service runs.

User code never runs in the server process. Each request is handed to one of
``SERVO_WORKER_PROCESSES`` warm child processes (``spawn``), which runs it on its main thread —
so timeouts and cancellation can interrupt blocking calls, and output capture owns the
process's descriptors — and loads deployed code from the bucket with a
:class:`~servo.worker.code.CodeCache`. A child that dies is replaced; the attempt it was running
is not reported, and the control plane's heartbeat timeout retries it. Children die with the
server (``PR_SET_PDEATHSIG`` on Linux).

Environment: ``PORT`` (default 8080), ``SERVO_GCP_PROJECT`` (or ``GOOGLE_CLOUD_PROJECT``),
``SERVO_BUCKET``, ``SERVO_STORAGE_PREFIX``, ``SERVO_CALLBACK_URL`` (the callback function),
``SERVO_WORKER_PROCESSES`` (default: the CPU count), ``SERVO_CODE_CACHE`` (where code versions
are unpacked), ``SERVO_WORKER_BUSY_WAIT_S`` (how long a request waits for a free process before
429, default 10), ``SERVO_CALLBACK_ATTEMPTS`` (tries of a ``started`` or ``completed`` report,
default 15: about a minute), ``SERVO_ID_TOKEN_SOURCE`` (``metadata`` to call a private callback function
with the service account's ID token) and ``SERVO_CALLBACK_AUDIENCE`` (default: the callback
URL), plus the emulator variables. Set Cloud Run's request concurrency to the number of
processes and its request timeout to the longest task.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from servo.core.errors import ServoError
from servo.ports import Blobs, Doc

log = logging.getLogger("servo.worker.service")

MAX_BODY = 2_000_000
_PR_SET_PDEATHSIG = 1


class WorkerConfigError(ServoError):
    """The environment does not describe a usable worker service."""


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker service needs to know (see the module docstring)."""

    project: str
    bucket: str
    callback_url: str
    storage_prefix: str = ""
    processes: int = 1
    cache_dir: str = ""
    busy_wait_s: float = 10.0
    id_token_source: str = "none"
    callback_audience: str | None = None
    callback_attempts: int = 15

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """Read the configuration; raises WorkerConfigError naming every problem."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        project = env.get("SERVO_GCP_PROJECT") or env.get("GOOGLE_CLOUD_PROJECT") or ""
        bucket = env.get("SERVO_BUCKET", "")
        callback = env.get("SERVO_CALLBACK_URL", "")
        if not project:
            problems.append("SERVO_GCP_PROJECT is not set")
        if not bucket:
            problems.append("SERVO_BUCKET is not set")
        if not callback.startswith(("http://", "https://")):
            problems.append("SERVO_CALLBACK_URL must be the callback function's http(s) URL")
        processes = os.cpu_count() or 1
        raw = env.get("SERVO_WORKER_PROCESSES")
        if raw:
            try:
                processes = int(raw)
                if processes < 1:
                    raise ValueError
            except ValueError:
                problems.append(f"SERVO_WORKER_PROCESSES={raw!r} must be a positive integer")
        busy_wait = 10.0
        raw = env.get("SERVO_WORKER_BUSY_WAIT_S")
        if raw:
            try:
                busy_wait = float(raw)
            except ValueError:
                problems.append(f"SERVO_WORKER_BUSY_WAIT_S={raw!r} must be a number")
        attempts = 15
        raw = env.get("SERVO_CALLBACK_ATTEMPTS")
        if raw:
            try:
                attempts = int(raw)
                if attempts < 1:
                    raise ValueError
            except ValueError:
                problems.append(f"SERVO_CALLBACK_ATTEMPTS={raw!r} must be a positive integer")
        source = env.get("SERVO_ID_TOKEN_SOURCE") or "none"
        if source not in ("none", "metadata"):
            problems.append(f"SERVO_ID_TOKEN_SOURCE={source!r} must be 'none' or 'metadata'")
        if problems:
            raise WorkerConfigError("the worker service is not configured: " + "; ".join(problems))
        cache = env.get("SERVO_CODE_CACHE") or str(
            Path(tempfile.gettempdir()) / f"servo-worker-code-{os.getuid()}"
        )
        return cls(
            project=project,
            bucket=bucket,
            callback_url=callback,
            storage_prefix=env.get("SERVO_STORAGE_PREFIX", ""),
            processes=processes,
            cache_dir=cache,
            busy_wait_s=busy_wait,
            id_token_source=source,
            callback_audience=env.get("SERVO_CALLBACK_AUDIENCE") or None,
            callback_attempts=attempts,
        )


# ---------------------------------------------------------------------------------------------
# The child processes


class _WorkspaceBlobs:
    """The blobs of whichever workspace the current request belongs to.

    Code versions are content hashes, so one code cache serves every workspace; only where
    the bundle is read from changes.
    """

    def __init__(self) -> None:
        self.current: Blobs | None = None

    def _target(self) -> Blobs:
        if self.current is None:
            raise ServoError("no workspace is selected for this request")
        return self.current

    def put(self, path: str, data: bytes, *, if_generation: int | None = None) -> int:
        return self._target().put(path, data, if_generation=if_generation)

    def get(self, path: str) -> bytes:
        return self._target().get(path)

    def get_with_generation(self, path: str) -> tuple[bytes, int]:
        return self._target().get_with_generation(path)

    def exists(self, path: str) -> bool:
        return self._target().exists(path)

    def list(self, prefix: str) -> list[str]:
        return self._target().list(prefix)

    def delete(self, path: str) -> None:
        self._target().delete(path)


class _ChildState:
    def __init__(self, config: WorkerConfig) -> None:
        from servo.adapters.gcp import storage_client
        from servo.worker.code import CodeCache
        from servo.worker.http_channel import HttpControlChannel, metadata_id_token

        self.config = config
        self._bucket = storage_client(config.project).bucket(config.bucket)
        self._blobs: dict[tuple[str, str], Blobs] = {}
        self.switch = _WorkspaceBlobs()
        self.cache = CodeCache(self.switch, Path(config.cache_dir))
        token = (
            metadata_id_token(config.callback_audience or config.callback_url)
            if config.id_token_source == "metadata"
            else None
        )
        self.channel = HttpControlChannel(
            config.callback_url, id_token=token, attempts=config.callback_attempts
        )

    def blobs_for(self, tenant: str, workspace: str) -> Blobs:
        from servo.adapters.gcp import GcpConfig, GcsBlobs

        key = (tenant, workspace)
        found = self._blobs.get(key)
        if found is None:
            prefix = GcpConfig(
                project=self.config.project,
                bucket=self.config.bucket,
                tasks_queue_path="",
                prefix=self.config.storage_prefix,
                tenant=tenant,
                workspace=workspace,
            ).storage_prefix()
            found = self._blobs[key] = GcsBlobs(self._bucket, prefix)
        self.switch.current = found
        return found

    def execute(self, payload: Any) -> tuple[str, Doc]:
        from servo.worker.envelope import TaskEnvelope
        from servo.worker.http_channel import CallbackRejected, CallbackUnavailable
        from servo.worker.runtime import execute

        try:
            envelope = TaskEnvelope.model_validate(payload)
        except ValueError as exc:
            return "rejected", {"error": f"the execute message is not a task envelope: {exc}"}
        blobs = self.blobs_for(envelope.tenant, envelope.workspace)
        try:
            outcome = execute(
                envelope,
                self.channel,
                blobs,
                lambda: self.cache.definitions(envelope.code_version),
            )
        except CallbackRejected as exc:
            return "rejected", {"error": str(exc)}
        except CallbackUnavailable as exc:
            return "unavailable", {"error": str(exc)}
        return "done", {
            "run_id": envelope.run_id,
            "task_id": envelope.task_id,
            "attempt": envelope.attempt,
            "status": outcome.status,
        }

    def evaluate(self, tenant: str, workspace: str, payload: Any) -> tuple[str, Doc]:
        from servo.worker.evaluate import EvaluationRequest, EvaluationResult, evaluate

        try:
            request = EvaluationRequest.model_validate(payload)
        except ValueError as exc:
            return "rejected", {"error": f"not an evaluation request: {exc}"}
        self.blobs_for(tenant, workspace)
        try:
            defs = self.cache.definitions(request.code_version)
        except Exception as exc:
            result = EvaluationResult.failure(
                f"loading code version {request.code_version} failed: {exc}"
            )
        else:
            result = evaluate(defs, request)
        return "result", result.model_dump(mode="json")


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_main(conn: Connection, config: dict[str, Any]) -> None:
    """Entry point of a child process: run the requests the server hands over."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when children stop
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    state = _ChildState(WorkerConfig(**config))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        kind = message[0]
        try:
            if kind == "execute":
                reply = state.execute(message[1])
            elif kind == "evaluate":
                reply = state.evaluate(message[1], message[2], message[3])
            else:
                break
        except Exception as exc:
            log.exception("a %s request failed inside the worker", kind)
            reply = ("error", {"error": f"{type(exc).__name__}: {exc}"})
        try:
            conn.send(reply)
        except (OSError, ValueError):
            break
    with contextlib.suppress(OSError):
        conn.close()


# ---------------------------------------------------------------------------------------------
# The server side


@dataclass(eq=False)
class _Child:
    process: BaseProcess
    conn: Connection
    busy: bool = False
    code_version: str | None = None


class _Busy(Exception):
    pass


class WorkerService:
    """The pool of child processes behind the HTTP routes (see the module docstring)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._context = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._children: list[_Child] = []
        self._closed = False

    def start(self) -> WorkerService:
        """Start every child now, so that the first requests find them warm."""
        with self._cond:
            while len(self._children) < self.config.processes:
                self._children.append(self._spawn())
        return self

    def close(self) -> None:
        """Stop the children."""
        with self._cond:
            self._closed = True
            children, self._children = self._children, []
            self._cond.notify_all()
        for child in children:
            with contextlib.suppress(OSError, ValueError):
                child.conn.send(("stop",))
        for child in children:
            child.process.join(2)
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join(2)

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main,
            args=(child_end, asdict(self.config)),
            name="servo-worker",
            daemon=True,
        )
        process.start()
        child_end.close()
        return _Child(process=process, conn=parent_end)

    def _acquire(self, code_version: str | None) -> _Child:
        deadline = time.monotonic() + self.config.busy_wait_s
        with self._cond:
            while True:
                if self._closed:
                    raise _Busy
                self._children = [c for c in self._children if c.busy or c.process.is_alive()]
                idle = [c for c in self._children if not c.busy]
                chosen = next((c for c in idle if c.code_version == code_version), None)
                if chosen is None and idle:
                    chosen = idle[0]
                if chosen is None and len(self._children) < self.config.processes:
                    chosen = self._spawn()
                    self._children.append(chosen)
                if chosen is not None:
                    chosen.busy = True
                    return chosen
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Busy
                self._cond.wait(remaining)

    def _release(self, child: _Child, alive: bool) -> None:
        if not alive:
            with contextlib.suppress(OSError):
                child.process.kill()
            child.process.join(5)
            with contextlib.suppress(OSError):
                child.conn.close()
        with self._cond:
            child.busy = False
            if not alive and child in self._children:
                self._children.remove(child)
            self._cond.notify_all()

    def _call(
        self, child: _Child, message: tuple[Any, ...], timeout_s: float | None
    ) -> tuple[str, Doc] | None:
        """Send ``message`` to ``child``; its reply, or None if it died or timed out."""
        try:
            child.conn.send(message)
            if not child.conn.poll(timeout_s):
                return None
            reply = child.conn.recv()
        except (EOFError, OSError):
            return None
        return str(reply[0]), dict(reply[1])

    def execute(self, body: Any) -> tuple[int, Doc]:
        """Run one ``execute`` delivery; returns the HTTP status and answer."""
        payload = body
        if isinstance(body, dict) and "payload" in body and "topic" in body:
            if body.get("topic") != "execute":
                return _dropped(f"topic {body.get('topic')!r} is not served by the worker")
            payload = body["payload"]
        if not isinstance(payload, dict):
            return _dropped("the execute message must be a JSON object holding a task envelope")
        version = payload.get("code_version")
        try:
            child = self._acquire(version if isinstance(version, str) else None)
        except _Busy:
            return 429, {"error": "every worker process is busy; retry later", "status": 429}
        reply = self._call(child, ("execute", payload), None)
        if reply is not None and reply[0] == "done":
            child.code_version = version if isinstance(version, str) else None
        self._release(child, reply is not None)
        if reply is None:
            log.error(
                "the worker process running attempt %s of task %s/%s died; the control plane's "
                "heartbeat timeout will retry it",
                payload.get("attempt"),
                payload.get("run_id"),
                payload.get("task_id"),
            )
            return 200, {"lost": True}
        kind, data = reply
        if kind == "done":
            return 200, data
        if kind == "rejected":
            return _dropped(str(data.get("error")))
        if kind == "unavailable":
            log.warning("reporting failed, the delivery will be retried: %s", data.get("error"))
            return 503, {"error": data.get("error"), "status": 503}
        return 500, {"error": data.get("error"), "status": 500}

    def evaluate(self, body: Any) -> tuple[int, Doc]:
        """Evaluate one schedule or sensor request; returns the HTTP status and answer."""
        from servo.worker.evaluate import DEFAULT_TIMEOUT_S, EvaluationResult

        if not isinstance(body, dict) or not isinstance(body.get("request"), dict):
            return 400, {"error": "the body must be {tenant, workspace, request}", "status": 400}
        tenant = body.get("tenant") or "default"
        workspace = body.get("workspace") or "default"
        timeout = body.get("timeout_s")
        limit = float(timeout) if isinstance(timeout, (int, float)) else DEFAULT_TIMEOUT_S
        request = body["request"]
        version = request.get("code_version")
        try:
            child = self._acquire(version if isinstance(version, str) else None)
        except _Busy:
            return 429, {"error": "every worker process is busy; retry later", "status": 429}
        reply = self._call(child, ("evaluate", tenant, workspace, request), limit)
        if reply is not None and reply[0] == "result":
            child.code_version = version if isinstance(version, str) else None
        self._release(child, reply is not None)
        if reply is None:
            result = EvaluationResult.failure(
                f"evaluating `{request.get('name')}` took longer than {limit:g} s or crashed its "
                "process; it was stopped"
            )
            return 200, result.model_dump(mode="json")
        kind, data = reply
        if kind == "result":
            return 200, data
        if kind == "rejected":
            return 400, {"error": data.get("error"), "status": 400}
        return 500, {"error": data.get("error"), "status": 500}

    def processes(self) -> int:
        """How many child processes are alive."""
        with self._cond:
            return sum(1 for c in self._children if c.process.is_alive())


def _dropped(reason: str) -> tuple[int, Doc]:
    # Cloud Tasks redelivers every non-2xx answer, so a message that can never succeed is
    # acknowledged (and logged) instead of being refused.
    log.error("dropping an execute delivery that cannot succeed: %s", reason)
    return 200, {"dropped": True, "error": reason}


def make_handler(service: WorkerService) -> type[BaseHTTPRequestHandler]:
    """The request handler class of the HTTP server."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "servo-worker"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, data: Any) -> None:
            raw = json.dumps(data, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            if status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path.split("?")[0] in ("/", "/healthz"):
                self._send(200, {"ok": True, "processes": service.processes()})
            else:
                self._send(404, {"error": f"no route for GET {self.path}", "status": 404})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"error": "request body too large", "status": 413})
                return
            raw = self.rfile.read(length) if length else b""
            route = self.path.split("?")[0].rstrip("/")
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                if route == "/execute":
                    self._send(*_dropped("the body is not JSON"))
                else:
                    self._send(400, {"error": "the body is not JSON", "status": 400})
                return
            if route == "/execute":
                self._send(*service.execute(body))
            elif route == "/evaluate":
                self._send(*service.evaluate(body))
            else:
                self._send(404, {"error": f"no route for POST {self.path}", "status": 404})

    return Handler


def serve(
    config: WorkerConfig, host: str = "0.0.0.0", port: int = 8080
) -> tuple[ThreadingHTTPServer, WorkerService]:
    """Start the children and bind the HTTP server (call ``serve_forever`` on it)."""
    service = WorkerService(config).start()
    server = ThreadingHTTPServer((host, port), make_handler(service))
    server.daemon_threads = True
    return server, service


def main() -> int:
    """Run the worker service until SIGTERM or SIGINT (Cloud Run sends SIGTERM)."""
    logging.basicConfig(
        level=os.environ.get("SERVO_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = WorkerConfig.from_env()
    except WorkerConfigError as exc:
        print(f"servo worker: {exc}", file=sys.stderr)
        return 2
    host = os.environ.get("HOST", "0.0.0.0")
    port = int(os.environ.get("PORT", "8080"))
    server, service = serve(config, host, port)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"servo worker listening on http://{host}:{server.server_address[1]} "
        f"({config.processes} processes)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        service.close()
    return 0


__all__ = ["WorkerConfig", "WorkerConfigError", "WorkerService", "main", "make_handler", "serve"]
