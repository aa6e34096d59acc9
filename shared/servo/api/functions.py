"""The Cloud Functions entry points: one thin adapter per step of the control plane.

Each entry point decodes its request, calls one control service and answers. The steps:

==================  ==================================  =====================================
entry point         called by                           service
==================  ==================================  =====================================
``trigger``         clients (HTTPS, a TriggerRequest)   :func:`servo.control.trigger.trigger`
``api``             clients (HTTPS: status, cancel,     :func:`servo.api.routes.route`
                    rerun, assets, events)
``dispatch``        Cloud Tasks (``dispatch``,          :func:`servo.cloud.handle_control_message`
                    ``retry`` and ``finalize``
                    messages: ``{topic, payload}``)
``callback``        the worker service (HTTPS, a        :func:`servo.control.callback.handle_report`
                    Report; answers an Answer)
``sweep``           Cloud Scheduler (every minute)      :func:`servo.control.sweep.sweep`, then
                                                        :func:`servo.control.drain.drain_outbox`
``tick``            Cloud Scheduler (every minute)      :func:`servo.control.tick.tick` and the
                                                        asset automation evaluations
``sensor_evaluate`` Pub/Sub push or Eventarc            :func:`servo.control.sensors.handle_notification`;
                    (CloudEvents) for GCS and Pub/Sub   a plain POST (Cloud Scheduler) runs
                    sensors; Cloud Scheduler            :func:`servo.control.sensors.sensor_evaluate`
``compaction``      Cloud Scheduler                     :func:`servo.projections.compaction.compact`
==================  ==================================  =====================================

``dispatch`` serves the three control topics because they are small transactions on the same
documents: one function keeps one pool of warm instances for all control traffic, and every
message names its topic, so ``SERVO_TARGET_RETRY`` and ``SERVO_TARGET_FINALIZE`` default to the
dispatch URL (:mod:`servo.cloud`). A ``GET`` on any entry point but ``api`` (and ``GET
/healthz`` on ``api``) is a health check that touches nothing.

Status codes drive redelivery. Clients of ``trigger``, ``api`` and ``callback`` get 2xx when
done, 4xx for what retrying cannot fix (400 bad input, 404 unknown, 409 conflict) and 503 for
what is worth retrying (:class:`~servo.core.errors.TransientError`); an unexpected failure is a
500. Cloud Tasks, Pub/Sub push and Cloud Scheduler, however, redeliver *every* non-2xx answer,
4xx included, so the delivered entry points acknowledge a message that can never succeed (a
malformed one, a topic served elsewhere) with 200 and ``{"dropped": true, "error": ...}`` and
log it at ERROR; only failures worth retrying get 503 (or 500). Push deliveries are
acknowledged only once the service has committed its effect.

The ports are built once per process, on the first request, from the environment (see
:mod:`servo.cloud`); :func:`use_ports` replaces them (tests, other embeddings).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Request, Response

from servo.api.routes import TextResponse, decode_json, route, status_for
from servo.cloud import ConfigurationError, handle_control_message
from servo.core.errors import (
    AlreadyExists,
    Conflict,
    DefinitionError,
    InvalidRequest,
    PartitionError,
    SelectionError,
    ServoError,
    TransientError,
)
from servo.ports import Doc, Ports
from servo.worker.evaluate import Evaluator

log = logging.getLogger("servo.functions")


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line with a ``severity``: what Cloud Logging reads from the
    output of Cloud Functions and Cloud Run as a structured entry."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging() -> None:
    """Send Servo's log records to stderr as structured entries, unless the process has
    configured logging already (level ``SERVO_LOG_LEVEL``, default INFO)."""
    root = logging.getLogger()
    servo_logger = logging.getLogger("servo")
    if root.handlers or servo_logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(CloudLoggingFormatter())
    servo_logger.addHandler(handler)
    servo_logger.setLevel(os.environ.get("SERVO_LOG_LEVEL", "INFO").upper())


Reply = tuple[int, Any]

CLIENT_STEPS = ("trigger", "api", "callback")
"""Entry points whose callers read 4xx as "do not retry"."""

DELIVERED_STEPS = ("dispatch", "sweep", "tick", "sensor_evaluate", "compaction")
"""Entry points called by Cloud Tasks, Pub/Sub or Cloud Scheduler, which retry any non-2xx."""

PERMANENT_ERRORS: tuple[type[ServoError], ...] = (
    InvalidRequest,
    Conflict,
    AlreadyExists,
    SelectionError,
    PartitionError,
    DefinitionError,
)
"""Errors that a redelivery of the same message would only repeat."""

GCS_EVENT_TYPES = {
    "google.cloud.storage.object.v1.finalized": "OBJECT_FINALIZE",
    "google.cloud.storage.object.v1.deleted": "OBJECT_DELETE",
    "google.cloud.storage.object.v1.archived": "OBJECT_ARCHIVE",
    "google.cloud.storage.object.v1.metadataUpdated": "OBJECT_METADATA_UPDATE",
}
"""Eventarc's CloudEvent types for Cloud Storage, and the notification event type of each."""


@dataclass(frozen=True)
class Incoming:
    """One HTTP request, independent of the web framework (header names in lower case)."""

    method: str
    path: str = "/"
    query: Mapping[str, str] = dataclasses.field(default_factory=dict)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""


# ---------------------------------------------------------------------------------------------
# Ports and the evaluator, once per process

_lock = threading.Lock()
_ports: Ports | None = None
_ports_pid: int | None = None
_evaluators: dict[int, Evaluator | None] = {}


def use_ports(ports: Ports | None) -> None:
    """Serve with ``ports`` instead of building them from the environment (None: rebuild)."""
    global _ports, _ports_pid
    with _lock:
        _ports = ports
        _ports_pid = os.getpid() if ports is not None else None
        _evaluators.clear()


def current_ports() -> Ports:
    """The ports of this process, built from the environment on first use.

    Built again in a forked child: the gRPC channels of the clients do not survive a fork.
    """
    global _ports, _ports_pid
    with _lock:
        if _ports is None or _ports_pid != os.getpid():
            from servo.cloud import open_from_env

            _ports = open_from_env(require_secret=True)
            _ports_pid = os.getpid()
            _evaluators.clear()
        return _ports


def evaluator_for(ports: Ports) -> Evaluator | None:
    """The worker service's evaluator (``SERVO_EVALUATOR_URL``), or None if not configured."""
    key = id(ports)
    with _lock:
        if key in _evaluators:
            return _evaluators[key]
    url = os.environ.get("SERVO_EVALUATOR_URL", "").strip()
    found: Evaluator | None = None
    if url:
        from servo.worker.http_channel import HttpEvaluator, metadata_id_token

        source = os.environ.get("SERVO_ID_TOKEN_SOURCE", "none")
        token = metadata_id_token(url) if source == "metadata" else None
        found = HttpEvaluator(url, ports.tenant, ports.workspace, id_token=token)
    with _lock:
        _evaluators[key] = found
    return found


# ---------------------------------------------------------------------------------------------
# Helpers


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _json_object(req: Incoming, what: str) -> Doc:
    data = decode_json(req.body)
    if not isinstance(data, dict):
        raise InvalidRequest(f"the body of {what} must be a JSON object")
    return data


def _optional_time(data: Doc) -> datetime | None:
    raw = data.get("now")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise InvalidRequest("field `now` must be an ISO-8601 time such as 2024-01-02T03:04:00Z")
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"field `now` ({raw!r}) is not an ISO-8601 time such as 2024-01-02T03:04:00Z"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _optional_names(data: Doc) -> list[str] | None:
    names = data.get("names")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidRequest("field `names` must be a list of names")
    return list(names)


# ---------------------------------------------------------------------------------------------
# The steps: (ports, request) -> (status, body)


def serve_trigger(ports: Ports, req: Incoming) -> Reply:
    """Create (or find, by its run_key or request_id) the run a TriggerRequest asks for."""
    if req.method != "POST":
        return 405, {"error": "POST a run request (JSON) to trigger a run", "status": 405}
    return route(ports, "POST", "/api/runs", {}, req.body)


def serve_api(ports: Ports, req: Incoming) -> Reply:
    """The HTTP API of :mod:`servo.api.routes` (paths with or without the ``/api`` prefix)."""
    path = req.path or "/"
    if not path.startswith(("/api/", "/healthz", "/metrics")) and path != "/api":
        path = "/api" + (path if path.startswith("/") else "/" + path)
    return route(ports, req.method, path, req.query, req.body)


def serve_dispatch(ports: Ports, req: Incoming) -> Reply:
    """A Cloud Tasks delivery of a ``dispatch``, ``retry`` or ``finalize`` message."""
    data = _json_object(req, "a queue message")
    topic = data.get("topic")
    if not isinstance(topic, str) or "payload" not in data:
        raise InvalidRequest('a queue message must be {"topic": ..., "payload": {...}}')
    result = handle_control_message(ports, topic, data["payload"])
    return 200, {"topic": topic, **_jsonable(result)}


def serve_callback(ports: Ports, req: Incoming) -> Reply:
    """A worker's report about one attempt; answers with the control plane's Answer."""
    from servo.control.callback import Report, handle_report

    if req.method != "POST":
        return 405, {"error": "POST a worker report (JSON)", "status": 405}
    report = Report.from_json(decode_json(req.body))
    answer = handle_report(ports, report)
    return 200, answer.model_dump(mode="json")


def serve_sweep(ports: Ports, req: Incoming) -> Reply:
    """The safety net (re-dispatch, zombies, timeouts, lost follow-ups), then the outbox
    drained into the ledger — what the embedded control plane's housekeeping does."""
    from servo.control.drain import drain_outbox
    from servo.control.sweep import sweep

    report = sweep(ports)
    drained = drain_outbox(ports)
    return 200, {"sweep": _jsonable(report), "drained": drained}


def serve_tick(ports: Ports, req: Incoming) -> Reply:
    """The minute's schedules, then asset automation (as the embedded automation loop).

    The body may hold ``{"now": ISO time, "names": [schedule, ...]}``.
    """
    from servo.control.automation import automation_on_materializations, evaluate_automation
    from servo.control.tick import tick

    data = _json_object(req, "a tick") if req.body.strip() else {}
    at = _optional_time(data)
    report = tick(ports, at, evaluator=evaluator_for(ports), names=_optional_names(data))
    automation = [evaluate_automation(ports, at), automation_on_materializations(ports, at)]
    return 200, {
        "tick": _jsonable(report),
        "run_ids": report.run_ids() + [r for a in automation for r in a.run_ids()],
        "automation": _jsonable(automation),
    }


def serve_compaction(ports: Ports, req: Incoming) -> Reply:
    """Fold new ledger segments into the Parquet projections."""
    from servo.projections.compaction import compact

    return 200, compact(ports).to_json()


def serve_sensor_evaluate(ports: Ports, req: Incoming) -> Reply:
    """A GCS or Pub/Sub notification for event sensors, or a scheduled evaluation of the
    interval sensors (a POST that carries no notification).

    The sensors a notification is for: ``?sensor=a,b``, else those listening on ``?topic=T``
    (put it in the push subscription's endpoint URL), else — for a Cloud Storage event —
    every GCS sensor (each ignores objects outside its bucket and filters).
    """
    from servo.control.sensors import handle_notification, sensor_evaluate

    note = notification_of(req)
    if note is None:
        data = _json_object(req, "a sensor evaluation") if req.body.strip() else {}
        report = sensor_evaluate(
            ports,
            _optional_time(data),
            names=_optional_names(data),
            evaluator=evaluator_for(ports),
            force=bool(data.get("force", False)),
        )
        return 200, {"sensors": _jsonable(report), "run_ids": report.run_ids()}
    sensors = _sensors_for(ports, req, note)
    results = [
        handle_notification(ports, name, note, evaluator=evaluator_for(ports)) for name in sensors
    ]
    # One line per delivery: what a notification did (or why it started nothing) is otherwise
    # only visible for the ones that leave a tick record.
    log.info(
        "notification %s handled: %s",
        note.id,
        ", ".join(f"{r.sensor}={r.status}" for r in results) or "no sensor listens",
    )
    return 200, {"message_id": note.id, "results": _jsonable(results)}


def notification_of(req: Incoming) -> Any:
    """The :class:`~servo.control.sensors.Notification` a push delivery carries, or None.

    Understands a Pub/Sub push body (``{"message": {...}, "subscription": ...}``), CloudEvents
    in binary mode (``ce-*`` headers) or structured mode, carrying a Pub/Sub message or a Cloud
    Storage object.
    """
    from servo.control.sensors import Notification

    headers = req.headers
    body = decode_json(req.body) if req.body.strip() else {}
    ce_type = headers.get("ce-type")
    ce_id = headers.get("ce-id")
    payload: Any = body
    if headers.get("content-type", "").startswith("application/cloudevents+json"):
        if not isinstance(body, dict):
            raise InvalidRequest("a structured CloudEvent must be a JSON object")
        ce_type, ce_id, payload = body.get("type"), body.get("id"), body.get("data")
    if isinstance(payload, dict) and isinstance(payload.get("message"), dict):
        message = payload["message"]
        raw = message.get("data")
        data: Any = None
        if isinstance(raw, str):
            try:
                data = base64.b64decode(raw, validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                raise InvalidRequest("the Pub/Sub message data is not base64") from None
        mid = message.get("messageId") or message.get("message_id") or ce_id
        return Notification.from_json(
            {
                "id": mid,
                "data": data,
                "attributes": message.get("attributes") or {},
                "publish_time": message.get("publishTime") or message.get("publish_time"),
            }
        )
    if isinstance(ce_type, str) and ce_type in GCS_EVENT_TYPES:
        if not isinstance(payload, dict) or not payload.get("bucket") or not payload.get("name"):
            raise InvalidRequest(f"a {ce_type} event must carry the object (bucket and name)")
        if not isinstance(ce_id, str) or not ce_id:
            raise InvalidRequest("the CloudEvent has no id")
        attributes = {
            "bucketId": str(payload["bucket"]),
            "objectId": str(payload["name"]),
            "objectGeneration": str(payload.get("generation") or "0"),
            "eventType": GCS_EVENT_TYPES[ce_type],
        }
        return Notification(id=ce_id, data=payload, attributes=attributes)
    if ce_type:
        raise InvalidRequest(f"CloudEvents of type {ce_type!r} are not sensor notifications")
    return None


def _sensors_for(ports: Ports, req: Incoming, note: Any) -> list[str]:
    from servo.control.automation_common import current_manifest
    from servo.control.sensors import event_sensor_topics

    named = req.query.get("sensor")
    if named:
        return [n for n in named.split(",") if n]
    manifest = current_manifest(ports)
    if manifest is None:
        return []
    topic = req.query.get("topic")
    if topic:
        return list(event_sensor_topics(manifest).get(topic, []))
    if "bucketId" in note.attributes:
        return [s.name for s in manifest.sensors if s.kind == "gcs"]
    raise InvalidRequest(
        "cannot tell which sensor this Pub/Sub message is for: add ?topic=<topic> (or "
        "?sensor=<name>) to the push subscription's endpoint URL"
    )


STEPS: dict[str, Callable[[Ports, Incoming], Reply]] = {
    "trigger": serve_trigger,
    "api": serve_api,
    "dispatch": serve_dispatch,
    "callback": serve_callback,
    "sweep": serve_sweep,
    "tick": serve_tick,
    "sensor_evaluate": serve_sensor_evaluate,
    "compaction": serve_compaction,
}


def handle(step: str, req: Incoming, ports: Ports | None = None) -> Reply:
    """Serve ``req`` with entry point ``step``, turning errors into the status codes of the
    module docstring. ``ports`` defaults to this process's ports."""
    serve = STEPS.get(step)
    if serve is None:
        raise ServoError(f"unknown entry point {step!r}; choose from {', '.join(STEPS)}")
    delivered = step in DELIVERED_STEPS
    if req.method == "GET" and (step != "api" or req.path.rstrip("/") == "/healthz"):
        return 200, {"ok": True, "function": step}
    try:
        return serve(ports if ports is not None else current_ports(), req)
    except ConfigurationError as exc:
        log.error("%s cannot serve: %s", step, exc)
        return 500, {"error": str(exc), "status": 500}
    except TransientError as exc:
        log.warning("%s: transient failure, to be retried: %s", step, exc)
        return 503, {"error": str(exc), "status": 503}
    except PERMANENT_ERRORS as exc:
        if delivered:
            log.error("%s: dropping a message that cannot succeed: %s", step, exc)
            return 200, {"dropped": True, "error": str(exc)}
        return status_for(exc), {"error": str(exc), "status": status_for(exc)}
    except ServoError as exc:
        if delivered:
            log.exception("%s failed; the message will be redelivered", step)
            return 500, {"error": str(exc), "status": 500}
        return status_for(exc), {"error": str(exc), "status": status_for(exc)}
    except Exception as exc:
        log.exception("%s failed unexpectedly", step)
        return 500, {"error": f"internal error: {type(exc).__name__}: {exc}", "status": 500}


# ---------------------------------------------------------------------------------------------
# functions-framework adapters


def incoming(request: Request) -> Incoming:
    """The framework-independent view of a Flask request."""
    return Incoming(
        method=request.method,
        path=request.path,
        query=dict(request.args.items()),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=request.get_data(cache=False),
    )


def respond(status: int, data: Any) -> Response:
    """A Flask response for ``(status, data)``: JSON, or text for a TextResponse."""
    if isinstance(data, TextResponse):
        return Response(str(data), status=status, content_type=data.content_type)
    raw = json.dumps(data, default=str)
    return Response(raw, status=status, mimetype="application/json")


def _entry(step: str) -> Callable[[Request], Response]:
    def entry(request: Request) -> Response:
        return respond(*handle(step, incoming(request)))

    entry.__name__ = step
    entry.__doc__ = f"The ``{step}`` entry point (see :mod:`servo.api.functions`)."
    return entry


trigger = _entry("trigger")
api = _entry("api")
dispatch = _entry("dispatch")
callback = _entry("callback")
sweep = _entry("sweep")
tick = _entry("tick")
sensor_evaluate = _entry("sensor_evaluate")
compaction = _entry("compaction")

__all__ = [
    "CLIENT_STEPS",
    "DELIVERED_STEPS",
    "STEPS",
    "CloudLoggingFormatter",
    "Incoming",
    "api",
    "callback",
    "compaction",
    "configure_logging",
    "current_ports",
    "dispatch",
    "evaluator_for",
    "handle",
    "incoming",
    "notification_of",
    "respond",
    "sensor_evaluate",
    "sweep",
    "tick",
    "trigger",
    "use_ports",
]
