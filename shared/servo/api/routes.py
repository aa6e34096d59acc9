"""The HTTP surface of the control plane, independent of any web framework.

``route(ports, method, path, query, body) -> (status, json)`` serves ``servo dev`` and is the
shape the Cloud Functions entry points reuse. Bad input is a 4xx with a message that names the
problem; only a bug is a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from servo.core.errors import (
    AlreadyExists,
    Conflict,
    InvalidRequest,
    NotFound,
    ServoError,
    TransientError,
)
from servo.ports import Ports

Response = tuple[int, Any]


class TextResponse(str):
    """A plain-text body (``GET /metrics``), sent as is instead of as JSON."""

    content_type = "text/plain; version=0.0.4; charset=utf-8"


def error(status: int, message: str) -> Response:
    return status, {"error": message, "status": status}


def status_for(exc: ServoError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, (Conflict, AlreadyExists)):
        return 409
    if isinstance(exc, TransientError):
        return 503
    return 400


def decode_json(body: bytes) -> Any:
    if not body:
        return {}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None


def route(
    ports: Ports,
    method: str,
    path: str,
    query: Mapping[str, str],
    body: bytes,
    *,
    on_run_started: Callable[[str], None] | None = None,
) -> Response:
    """Serve one request."""
    parts = [p for p in path.split("/") if p]
    try:
        if parts == ["healthz"]:
            return 200, {"ok": True}
        if parts == ["metrics"] and method == "GET":
            from servo.telemetry.metrics import collect, prometheus_text

            return 200, TextResponse(prometheus_text(collect(ports)))
        if parts[:1] != ["api"]:
            return error(404, f"no route for {method} {path}")
        rest = parts[1:]
        if rest == ["runs"] and method == "POST":
            return _start_run(ports, decode_json(body), on_run_started)
        if rest == ["runs"] and method == "GET":
            return 200, _list_runs(ports, query)
        if len(rest) == 2 and rest[0] == "runs" and method == "GET":
            from servo.projections.query import run_view

            return 200, run_view(ports, rest[1])
        if len(rest) == 3 and rest[0] == "runs" and rest[2] == "cancel" and method == "POST":
            from servo.control.cancel import cancel_run

            data = decode_json(body)
            actor = data.get("actor", "api:unknown") if isinstance(data, dict) else "api:unknown"
            r = cancel_run(ports, rest[1], actor=str(actor))
            return 200, {
                "run_id": r.run_id,
                "state": r.state,
                "cancelled": r.cancelled,
                "signalled": r.signalled,
            }
        if len(rest) == 3 and rest[0] == "runs" and rest[2] == "events" and method == "GET":
            from servo.projections.query import run_events

            return 200, run_events(ports, rest[1])
        if len(rest) == 3 and rest[0] == "runs" and rest[2] == "rerun" and method == "POST":
            return _rerun(ports, rest[1], decode_json(body), on_run_started)
        if rest == ["assets"] and method == "GET":
            return 200, _assets(ports)
        if len(rest) >= 2 and rest[0] == "assets" and method == "GET":
            from servo.projections.query import asset_view

            return 200, asset_view(ports, "/".join(rest[1:]))
        if method not in ("GET", "POST"):
            return error(405, f"method {method} is not allowed on {path}")
        return error(404, f"no route for {method} {path}")
    except ServoError as exc:
        return error(status_for(exc), str(exc))


def _start_run(ports: Ports, data: Any, started: Callable[[str], None] | None) -> Response:
    from servo.control.trigger import TriggerRequest, trigger

    req = TriggerRequest.from_json(data)
    result = trigger(ports, req)
    if started is not None:
        started(result.run_id)
    return (201 if result.created else 200), {
        "run_id": result.run_id,
        "created": result.created,
        "state": result.state,
        "task_count": result.task_count,
        "fingerprint": result.fingerprint,
    }


def _rerun(ports: Ports, run_id: str, data: Any, started: Callable[[str], None] | None) -> Response:
    from servo.control.rerun import rerun

    if not isinstance(data, dict):
        raise InvalidRequest("a rerun request must be a JSON object")
    result = rerun(
        ports,
        run_id,
        from_failure=bool(data.get("from_failure")),
        select=data.get("select"),
        actor=str(data.get("actor", "api:unknown")),
        request_id=data.get("request_id"),
    )
    if started is not None:
        started(result.run_id)
    return (201 if result.created else 200), {"run_id": result.run_id, "created": result.created}


def _list_runs(ports: Ports, query: Mapping[str, str]) -> list[dict[str, Any]]:
    """``GET /api/runs?state=&asset=&tag=k=v,k2=v2&since_ms=&until_ms=&limit=``"""
    from servo.projections.query import list_runs

    def integer(name: str) -> int | None:
        try:
            return int(query[name]) if query.get(name) else None
        except ValueError:
            raise InvalidRequest(f"query parameter `{name}` must be an integer") from None

    tags: dict[str, str] = {}
    for item in filter(None, (query.get("tag") or "").split(",")):
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InvalidRequest(f"query parameter `tag` item {item!r} must be key=value")
        tags[k] = v
    return list_runs(
        ports,
        state=query.get("state") or None,
        asset=query.get("asset") or None,
        tags=tags,
        since_ms=integer("since_ms"),
        until_ms=integer("until_ms"),
        limit=max(1, min(500, integer("limit") or 50)),
    )


def _assets(ports: Ports) -> dict[str, Any]:
    from servo.control.deploy import current_code_version, load_manifest

    cv = current_code_version(ports)
    if cv is None:
        raise NotFound("nothing is deployed in this workspace; run `servo deploy`")
    manifest = load_manifest(ports, cv)
    return {
        "code_version": cv,
        "assets": [
            {
                "key": a.key,
                "group": a.group,
                "deps": [d.asset for d in a.deps],
                "partitions": a.partitions,
                "description": a.description,
            }
            for a in manifest.assets
        ],
    }
