"""sensors: turn what happens outside (and inside) Servo into runs.

Two entry points:

* :func:`sensor_evaluate` — evaluates the interval sensors that are due: custom ``@sensor``
  functions (in the worker runtime, never here) and run-status sensors (from the event
  ledger). Called every few seconds by the local automation loop, or by a scheduled function.
* :func:`handle_notification` — turns one GCS object notification or Pub/Sub message into a
  run for the GCS or Pub/Sub sensor it is addressed to (Pub/Sub push on Google Cloud, the
  embedded bus locally).

Every evaluation leaves a tick record (collection ``ticks``). The writes of an interval
sensor's evaluation are ordered so that a crash at any point neither loses nor doubles a run:

1. *claim* — one transaction records the tick as EVALUATING with the cursor it starts from
   and stamps the sensor's last evaluation time (so the minimum interval holds even across
   processes);
2. *evaluate* — the function runs in the worker runtime and returns run requests, a skip
   reason or an error;
3. *commit* — one transaction stores the new cursor **and** the run requests (each with its
   final run_key) in the tick, now REQUESTED. It only commits if nobody moved the cursor
   since the claim (a compare-and-set on ``cursor_seq``), so two overlapping evaluations
   from the same cursor cannot both commit;
4. *create runs* — each request goes through the trigger service; its run_key makes this
   idempotent;
5. *finish* — the tick becomes SUCCESS (or FAILED) with the run ids.

A crash before 3 leaves the cursor unchanged and nothing requested: the next evaluation
starts again from the same cursor. A crash after 3 leaves a REQUESTED tick, which the next
:func:`sensor_evaluate` completes (steps 4-5 again): the runs are neither lost (the requests
were committed with the cursor) nor doubled (their run_keys were fixed at commit).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from servo.control.automation_common import (
    EVALUATING,
    FAILED,
    FINAL_TICK_STATUSES,
    REQUESTED,
    SENSOR_STATE,
    SENSOR_TICKED,
    SKIPPED,
    SUCCESS,
    TICKS,
    AutomationSettings,
    current_manifest,
    error_doc,
    is_running,
    iso_utc,
    keyed,
    ledger_head,
    read_many,
    request_run,
    resolve_evaluator,
    state_id,
    to_ms,
)
from servo.control.common import RUNS
from servo.control.drain import EVENTS_STREAM
from servo.control.uow import Cause, UnitOfWork, in_uow
from servo.core import events as ev
from servo.core.canonical import sha256_hex
from servo.core.errors import InvalidRequest, NotFound, SelectionError, TransientError
from servo.core.manifest import Manifest, SensorSpec
from servo.core.selection import parse_selection, resolve_selection
from servo.ports import Doc, Ports, Where
from servo.sdk.event_sensors import KIND_GCS, KIND_PUBSUB, KIND_RUN_STATUS
from servo.worker.evaluate import (
    EvaluationRequest,
    EvaluationResult,
    Evaluator,
    ItemOutcome,
    RequestedRun,
)

log = logging.getLogger("servo.sensors")

KIND_CUSTOM = "custom"
INTERVAL_KINDS = (KIND_CUSTOM, KIND_RUN_STATUS)
EVENT_KINDS = (KIND_GCS, KIND_PUBSUB)
IGNORED = "IGNORED"
DUPLICATE = "DUPLICATE"


@dataclass(frozen=True)
class SensorTickOutcome:
    """What became of one sensor tick (or one notification)."""

    sensor: str
    tick_id: str | None
    status: str
    run_ids: tuple[str, ...] = ()
    run_keys: tuple[str, ...] = ()
    reason: str | None = None
    error: str | None = None
    cursor: str | None = None

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> SensorTickOutcome:
        err = doc.get("error") or {}
        requests = doc.get("requests") or []
        return cls(
            sensor=str(doc["name"]),
            tick_id=str(doc["tick_id"]),
            status=str(doc["status"]),
            run_ids=tuple(r["run_id"] for r in requests if r.get("run_id")),
            run_keys=tuple(r["run_key"] for r in requests),
            reason=doc.get("reason"),
            error=err.get("message") if err else None,
            cursor=doc.get("cursor_after"),
        )


@dataclass
class SensorReport:
    """The result of one :func:`sensor_evaluate` call."""

    now: str
    evaluated: list[SensorTickOutcome] = field(default_factory=list)
    resumed: list[SensorTickOutcome] = field(default_factory=list)

    def run_ids(self) -> list[str]:
        return [r for o in (*self.resumed, *self.evaluated) for r in o.run_ids]


@dataclass
class _Evaluated:
    """What an evaluation produced, before it is committed."""

    requests: list[Doc] = field(default_factory=list)
    reason: str | None = None
    error: Doc | None = None
    cursor: str | None = None
    cursor_updated: bool = False
    observed: list[Doc] = field(default_factory=list)
    skip_record: bool = False  # nothing happened: do not keep a tick for it


# ---------------------------------------------------------------------------------------------
# Interval sensors


def sensor_evaluate(
    ports: Ports,
    now: datetime | None = None,
    *,
    names: Iterable[str] | None = None,
    evaluator: Evaluator | None = None,
    force: bool = False,
) -> SensorReport:
    """Evaluate the custom and run-status sensors that are due at ``now``.

    First completes any tick whose runs were requested but not all created (a crash). A
    sensor is due when it is running and its minimum interval has passed since its last
    evaluation (``force`` ignores the interval). Never raises for a sensor's own failure: that
    becomes a FAILED tick.
    """
    at = (now or ports.clock.now()).astimezone(UTC)
    report = SensorReport(now=iso_utc(at))
    report.resumed = resume_requested(ports)
    manifest = current_manifest(ports)
    if manifest is None:
        return report
    wanted = set(names) if names is not None else None
    states = {str(d.get("name")): d for _, d in ports.state.query(SENSOR_STATE)}
    for spec in manifest.sensors:
        if spec.kind not in INTERVAL_KINDS or (wanted is not None and spec.name not in wanted):
            continue
        state = states.get(spec.name)
        if not is_running(spec.default_status, state):
            continue
        if not force and not _due(spec, state, at):
            continue
        try:
            outcome = _evaluate_interval_sensor(ports, manifest, spec, at, evaluator, force)
        except Exception:
            # Only infrastructure can fail here (user errors become FAILED ticks); the next
            # evaluation retries from the stored cursor.
            log.exception("evaluating sensor %s failed; it will be retried", spec.name)
            continue
        if outcome is not None:
            report.evaluated.append(outcome)
    return report


def _due(spec: SensorSpec, state: Doc | None, at: datetime) -> bool:
    last = (state or {}).get("last_eval_ms")
    return last is None or int(last) + spec.minimum_interval_s * 1000 <= to_ms(at)


def _evaluate_interval_sensor(
    ports: Ports,
    manifest: Manifest,
    spec: SensorSpec,
    at: datetime,
    evaluator: Evaluator | None,
    force: bool,
) -> SensorTickOutcome | None:
    sid = state_id(spec.name)
    at_ms = to_ms(at)
    initial_cursor: str | None = None
    if spec.kind == KIND_RUN_STATUS:
        # A new run-status sensor starts at the end of the ledger: it sees what happens from
        # now on, not the whole history.
        state = ports.state.get(SENSOR_STATE, sid)
        last_seq = ledger_head(ports)
        if state is None or state.get("cursor") is None:
            initial_cursor = str(last_seq)
        elif last_seq <= _seq(state.get("cursor")):
            return None  # nothing new in the ledger: no tick, no write
    cause = Cause(actor=f"sensor:{spec.name}", source="servo/sensors")

    def claim(uow: UnitOfWork) -> tuple[str, str | None, int] | None:
        state = uow.get(SENSOR_STATE, sid)
        if not force and not _due(spec, state, at):
            return None
        stale = (state or {}).get("evaluating")
        old = uow.get(TICKS, str(stale)) if stale else None
        tid = f"sensor:{sid}:{ports.ids.new_id()}"
        cursor = (state or {}).get("cursor")
        if cursor is None:
            cursor = initial_cursor
        seq = int((state or {}).get("cursor_seq", 0))
        if old is not None and old.get("status") == EVALUATING:
            uow.update(
                TICKS,
                str(stale),
                {
                    "status": FAILED,
                    "error": error_doc(
                        "the evaluation was interrupted before it finished (the process "
                        "stopped); the next one starts from the same cursor"
                    ),
                    "ended_ms": uow.now_ms,
                },
            )
        uow.create(
            TICKS,
            tid,
            {
                "kind": "sensor",
                "sensor_kind": spec.kind,
                "name": spec.name,
                "tick_id": tid,
                "status": EVALUATING,
                "cursor_before": cursor,
                "cursor_after": None,
                "evaluated_for": iso_utc(at),
                "evaluated_ms": at_ms,
                "code_version": manifest.code_version,
                "started_ms": uow.now_ms,
                "requests": [],
                "reason": None,
                "error": None,
            },
        )
        fields = {"last_eval_ms": at_ms, "evaluating": tid, "updated_ms": uow.now_ms}
        if state is None:
            uow.create(
                SENSOR_STATE,
                sid,
                {"name": spec.name, "status": None, "cursor": cursor, "cursor_seq": 0, **fields},
            )
        else:
            if state.get("cursor") is None and cursor is not None:
                fields["cursor"] = cursor
            uow.update(SENSOR_STATE, sid, fields)
        return tid, cursor, seq

    claimed, _ = in_uow(ports, cause, claim)
    if claimed is None:
        return None
    tid, cursor, seq = claimed
    try:
        if spec.kind == KIND_RUN_STATUS:
            result = _evaluate_run_status(ports, manifest, spec, tid, cursor, evaluator)
        else:
            result = _evaluate_custom(ports, manifest, spec, tid, cursor, at, evaluator)
    except Exception as exc:
        log.exception("sensor %s: evaluation failed", spec.name)
        result = _Evaluated(error=error_doc(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    ports.crash("sensor.before_commit")
    outcome = _commit(ports, spec, tid, seq, result, cause)
    ports.crash("sensor.after_commit")
    if outcome.status == REQUESTED:
        return complete_requested(ports, tid)
    return outcome


def _evaluate_custom(
    ports: Ports,
    manifest: Manifest,
    spec: SensorSpec,
    tid: str,
    cursor: str | None,
    at: datetime,
    evaluator: Evaluator | None,
) -> _Evaluated:
    if spec.code is None:
        return _Evaluated(error=error_doc(f"sensor `{spec.name}` has no function to evaluate"))
    settings = AutomationSettings.of(ports)
    result = resolve_evaluator(ports, evaluator).evaluate(
        EvaluationRequest(
            kind="sensor",
            code_version=manifest.code_version,
            name=spec.name,
            cursor=cursor,
            evaluation_time=at.isoformat(),
        ),
        timeout_s=settings.sensor_evaluation_timeout_s,
    )
    failed = _result_error(result)
    if failed is not None:
        return _Evaluated(error=failed)
    outcome = result.outcomes[0]
    out = _Evaluated(cursor=result.cursor, cursor_updated=result.cursor_updated)
    if outcome.skip_reason is not None or not outcome.requests:
        out.reason = outcome.skip_reason or "the sensor function requested no run"
        return out
    base = f"sensor:{spec.name}"
    suffix = tid.rsplit(":", 1)[-1]
    out.requests = _requests(
        spec,
        manifest,
        outcome,
        _custom_key(base, suffix),
        trigger_info={"type": "sensor", "sensor": spec.name, "tick_id": tid},
        tags={"servo/sensor": spec.name},
    )
    return out


def _custom_key(base: str, suffix: str) -> Callable[[int | None, str | None], str]:
    """Run keys of a custom sensor: ``sensor:<name>:<user key>``, or, for a request without
    a key, one unique to this tick (``sensor:<name>:<tick>:<index>``)."""

    def make(index: int | None, user_key: str | None) -> str:
        return f"{base}:{user_key}" if user_key else f"{base}:{suffix}:{index or 0}"

    return make


def _result_error(result: EvaluationResult) -> Doc | None:
    if result.error is not None:
        return error_doc(result.error, result.traceback)
    if not result.outcomes:
        return error_doc("the evaluation returned nothing")
    first = result.outcomes[0]
    if first.error is not None:
        return error_doc(first.error, first.traceback)
    return None


def _requests(
    spec: SensorSpec,
    manifest: Manifest,
    outcome: ItemOutcome,
    run_key: Callable[[int | None, str | None], str],
    *,
    trigger_info: Mapping[str, Any],
    tags: Mapping[str, str],
) -> list[Doc]:
    """The run requests of one outcome, with final run_keys and everything trigger needs."""
    out: list[Doc] = []
    single = len(outcome.requests) == 1
    for i, req in enumerate(outcome.requests):
        key = run_key(None if single else i, req.run_key)
        selection = req.selection or spec.target
        out.append(
            {
                "run_key": key,
                "selection": selection,
                "partition_key": req.partition_key,
                "tags": {**req.tags, **tags},
                "trigger": dict(trigger_info),
                "actor": f"sensor:{spec.name}",
                "code_version": manifest.code_version,
                "run_id": None,
                "error": None,
            }
        )
    return out


def _seq(cursor: object) -> int:
    try:
        return int(str(cursor))
    except ValueError:
        return -1


def _evaluate_run_status(
    ports: Ports,
    manifest: Manifest,
    spec: SensorSpec,
    tid: str,
    cursor: str | None,
    evaluator: Evaluator | None,
) -> _Evaluated:
    settings = AutomationSettings.of(ports)
    after = _seq(cursor)
    segments = ports.ledger.read(
        EVENTS_STREAM, after_seq=after, limit=settings.run_status_max_segments
    )
    new_cursor = str(segments[-1].seq) if segments else cursor
    statuses = set(spec.config.get("statuses") or ())
    changes = [
        e
        for seg in segments
        for e in seg.events
        if e.get("type") == ev.RUN_STATE and (e.get("data") or {}).get("to") in statuses
    ]
    out = _Evaluated(cursor=new_cursor, cursor_updated=new_cursor != cursor)
    monitored: set[str] | None = None
    selection = spec.config.get("monitored_selection")
    if selection:
        try:
            monitored = {
                str(k) for k in resolve_selection(parse_selection(selection), manifest.graph)
            }
        except SelectionError as exc:
            out.error = error_doc(f"sensor `{spec.name}`: monitored_selection {selection!r}: {exc}")
            out.cursor_updated = False
            return out
    run_ids = sorted({str(e["run_id"]) for e in changes if e.get("run_id")})
    runs = read_many(ports, RUNS, run_ids)
    wanted_tags = dict(spec.config.get("run_tags") or {})
    items: list[Doc] = []
    for e in changes:
        run = runs.get(str(e.get("run_id")))
        if run is None:
            continue
        trig = run.get("trigger") or {}
        if trig.get("sensor") == spec.name:
            continue  # never react to the runs this sensor started
        run_tags = run.get("tags") or {}
        if any(run_tags.get(k) != v for k, v in wanted_tags.items()):
            continue
        if monitored is not None and not monitored.intersection(run.get("assets") or ()):
            continue
        data = e.get("data") or {}
        items.append(
            {
                "run_id": run["run_id"],
                "status": data.get("to"),
                "previous_status": data.get("from"),
                "selection": run.get("selection"),
                "assets": list(run.get("assets") or ()),
                "partitions": run.get("partitions") or {},
                "tags": dict(run_tags),
                "trigger": dict(trig),
                "reason": data.get("reason"),
                "time": e.get("time"),
                "event_id": e.get("id"),
            }
        )
    out.observed = [
        {"run_id": i["run_id"], "status": i["status"], "event_id": i["event_id"]} for i in items
    ]
    if not items:
        out.reason = "no monitored run changed status"
        out.skip_record = True
        return out
    if spec.code is None:
        outcomes = [ItemOutcome(requests=[RequestedRun()]) for _ in items]
    else:
        result = resolve_evaluator(ports, evaluator).evaluate(
            EvaluationRequest(
                kind="run_status",
                code_version=manifest.code_version,
                name=spec.name,
                items=items,
            ),
            timeout_s=settings.sensor_evaluation_timeout_s,
        )
        if result.error is not None or len(result.outcomes) != len(items):
            out.error = error_doc(
                result.error or "the evaluation returned too few outcomes", result.traceback
            )
            out.cursor_updated = False
            return out
        outcomes = list(result.outcomes)
    errors: list[str] = []
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome.error is not None:
            errors.append(f"run {item['run_id']} {item['status']}: {outcome.error}")
            continue
        if not outcome.requests:
            continue
        base = f"run_status:{spec.name}:{item['run_id']}:{item['status']}"
        out.requests.extend(
            _requests(
                spec,
                manifest,
                outcome,
                keyed(base),
                trigger_info={
                    "type": "sensor",
                    "sensor": spec.name,
                    "tick_id": tid,
                    "run_id": item["run_id"],
                    "status": item["status"],
                },
                tags={
                    "servo/sensor": spec.name,
                    "servo/monitored_run": item["run_id"],
                    "servo/monitored_status": str(item["status"]),
                },
            )
        )
    if errors:
        # The function failed for some changes: record it, but move on (the changes were seen;
        # evaluating them again would repeat the same failure).
        out.error = error_doc(
            "; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")
        )
    if not out.requests and out.error is None:
        out.reason = f"saw {len(items)} run status change(s); the sensor requested no run"
    return out


def _commit(
    ports: Ports, spec: SensorSpec, tid: str, seq: int, result: _Evaluated, cause: Cause
) -> SensorTickOutcome:
    sid = state_id(spec.name)

    def body(uow: UnitOfWork) -> SensorTickOutcome:
        state = uow.get(SENSOR_STATE, sid)
        tick = uow.get(TICKS, tid)
        if tick is None:
            raise NotFound(f"tick {tid} of sensor {spec.name} vanished")
        if tick["status"] != EVALUATING or int((state or {}).get("cursor_seq", 0)) != seq:
            if tick["status"] == EVALUATING:
                fields = {
                    "status": SKIPPED,
                    "reason": "superseded: the cursor changed while this evaluation ran (a "
                    "concurrent evaluation or `servo sensors cursor --set`); nothing requested",
                    "ended_ms": uow.now_ms,
                }
                uow.update(TICKS, tid, fields)
                tick = {**tick, **fields}
            return SensorTickOutcome.of(tick)
        state_fields: Doc = {"evaluating": None, "updated_ms": uow.now_ms}
        tick_fields: Doc = {"ended_ms": uow.now_ms}
        if result.error is not None and not result.requests:
            status = FAILED
        elif result.requests:
            status = REQUESTED
        else:
            status = SKIPPED
        if (status != FAILED or result.observed) and result.cursor_updated:
            state_fields["cursor"] = result.cursor
            state_fields["cursor_seq"] = seq + 1
        if status == REQUESTED:
            # Requests commit one evaluation at a time: a concurrent evaluation of the same
            # state fails the compare-and-set above even if neither moved the cursor.
            state_fields["cursor_seq"] = seq + 1
        cursor_after = state_fields.get("cursor", (state or {}).get("cursor"))
        tick_fields.update(
            status=status,
            requests=result.requests,
            reason=result.reason,
            error=result.error,
            cursor_after=cursor_after,
            observed=result.observed,
        )
        if status == REQUESTED:
            tick_fields["requested_ms"] = uow.now_ms
            del tick_fields["ended_ms"]
        if status == SKIPPED and result.skip_record:
            # Nothing happened (no new run status change): keep no record of it.
            uow.delete(TICKS, tid)
            if state is not None:
                uow.update(SENSOR_STATE, sid, state_fields)
            return SensorTickOutcome(
                sensor=spec.name,
                tick_id=None,
                status=SKIPPED,
                reason=result.reason,
                cursor=cursor_after,
            )
        uow.update(TICKS, tid, tick_fields)
        if state is not None:
            uow.update(SENSOR_STATE, sid, {**state_fields, "last_tick_id": tid})
        if status != REQUESTED:
            _emit_ticked(uow, {**tick, **tick_fields})
        return SensorTickOutcome.of({**tick, **tick_fields})

    outcome, _ = in_uow(ports, cause, body)
    return outcome


def _emit_ticked(uow: UnitOfWork, tick: Doc) -> None:
    requests = tick.get("requests") or []
    uow.emit(
        SENSOR_TICKED,
        data={
            "sensor": tick["name"],
            "tick_id": tick["tick_id"],
            "status": tick["status"],
            "run_ids": [r["run_id"] for r in requests if r.get("run_id")],
            "reason": tick.get("reason"),
            "error": (tick.get("error") or {}).get("message"),
            "cursor": tick.get("cursor_after"),
        },
    )


# ---------------------------------------------------------------------------------------------
# Creating the requested runs (also after a crash)


def complete_requested(ports: Ports, tid: str) -> SensorTickOutcome:
    """Create the runs of a REQUESTED tick (idempotently) and mark it SUCCESS or FAILED."""
    tick = ports.state.get(TICKS, tid)
    if tick is None:
        raise NotFound(f"tick {tid} does not exist")
    if tick["status"] != REQUESTED:
        return SensorTickOutcome.of(tick)
    requests = [dict(r) for r in tick.get("requests") or []]
    errors: list[str] = []
    for req in requests:
        if not req.get("selection"):
            req["error"] = "no selection"
            errors.append(
                f"run request {req['run_key']!r} names no selection and sensor "
                f"`{tick['name']}` has no target; return RunRequest(selection=...) or give the "
                "sensor a target"
            )
            continue
        try:
            result = request_run(
                ports,
                selection=req["selection"],
                run_key=req["run_key"],
                partition_key=req.get("partition_key"),
                tags=req.get("tags") or {},
                trigger_info=req.get("trigger") or {},
                actor=req.get("actor") or f"sensor:{tick['name']}",
                code_version=req.get("code_version") or tick["code_version"],
            )
        except InvalidRequest as exc:
            req["error"] = str(exc)
            errors.append(f"run request {req['run_key']!r} is invalid: {exc}")
            continue
        req["run_id"] = result.run_id
        ports.crash("sensor.after_run")

    def finish(uow: UnitOfWork) -> SensorTickOutcome:
        current = uow.get(TICKS, tid)
        if current is None or current["status"] != REQUESTED:
            return SensorTickOutcome.of(current or tick)
        fields: Doc = {
            "status": FAILED if errors or current.get("error") else SUCCESS,
            "requests": requests,
            "ended_ms": uow.now_ms,
        }
        if errors:
            previous = (current.get("error") or {}).get("message")
            fields["error"] = error_doc("; ".join([*([previous] if previous else []), *errors]))
        uow.update(TICKS, tid, fields)
        merged = {**current, **fields}
        _emit_ticked(uow, merged)
        return SensorTickOutcome.of(merged)

    outcome, _ = in_uow(
        ports, Cause(actor=f"sensor:{tick['name']}", source="servo/sensors"), finish
    )
    return outcome


def resume_requested(ports: Ports) -> list[SensorTickOutcome]:
    """Complete every tick left REQUESTED by a crash (or still being completed elsewhere —
    completing twice is harmless: run_keys make it idempotent)."""
    rows = ports.state.query(TICKS, [Where("status", "==", REQUESTED)])
    out: list[SensorTickOutcome] = []
    for tid, _ in rows:
        try:
            out.append(complete_requested(ports, tid))
        except Exception:
            log.exception("completing sensor tick %s failed; it will be retried", tid)
    return out


# ---------------------------------------------------------------------------------------------
# Event-driven sensors: GCS object notifications and Pub/Sub messages


@dataclass(frozen=True)
class Notification:
    """One Pub/Sub message (a GCS notification is one too): id, JSON data, attributes."""

    id: str
    data: Any
    attributes: Mapping[str, str]
    publish_time: str | None = None

    @classmethod
    def from_json(cls, obj: Any) -> Notification:
        """Accept ``{"id"|"message_id"|"messageId", "data", "attributes", "publish_time"}``;
        ``data`` may be a dict, or JSON text."""
        if isinstance(obj, Notification):
            return obj
        if not isinstance(obj, Mapping):
            raise InvalidRequest(
                "a notification must be a JSON object with id, data and attributes"
            )
        mid = obj.get("id") or obj.get("message_id") or obj.get("messageId")
        if not isinstance(mid, str) or not mid:
            raise InvalidRequest("a notification needs a message id (field `id`)")
        attrs = obj.get("attributes") or {}
        if not isinstance(attrs, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
        ):
            raise InvalidRequest("notification attributes must map strings to strings")
        data = obj.get("data")
        if isinstance(data, (bytes, bytearray)):
            data = data.decode("utf-8", "replace")
        if isinstance(data, str):
            with contextlib.suppress(ValueError):
                data = json.loads(data)
        publish = obj.get("publish_time") or obj.get("publishTime")
        return cls(id=mid, data=data, attributes=dict(attrs), publish_time=publish)


@dataclass(frozen=True)
class GcsObject:
    bucket: str
    name: str
    generation: str
    event_type: str | None


def _gcs_object(message: Notification) -> GcsObject | None:
    data = message.data if isinstance(message.data, Mapping) else {}
    attrs = message.attributes
    bucket = attrs.get("bucketId") or data.get("bucket")
    name = attrs.get("objectId") or data.get("name")
    generation = attrs.get("objectGeneration") or data.get("generation")
    if not bucket or not name:
        return None
    return GcsObject(
        bucket=str(bucket),
        name=str(name),
        generation=str(generation) if generation is not None else "0",
        event_type=attrs.get("eventType"),
    )


def gcs_match(config: Mapping[str, Any], obj: GcsObject) -> str | None:
    """Why a GCS sensor with ``config`` ignores ``obj`` (None when it matches)."""
    if obj.event_type is not None and obj.event_type not in (
        config.get("event_types") or ["OBJECT_FINALIZE"]
    ):
        return f"event type {obj.event_type} is not watched"
    if obj.bucket != config.get("bucket"):
        return f"object is in bucket {obj.bucket}, not {config.get('bucket')}"
    prefix = config.get("prefix")
    if prefix and not obj.name.startswith(prefix):
        return f"object name does not start with {prefix!r}"
    glob = config.get("glob")
    if glob and not fnmatch.fnmatchcase(obj.name, glob):
        return f"object name does not match {glob!r}"
    return None


def partition_from_pattern(pattern: str, name: str) -> str | None:
    """The partition key a ``partition_key`` regular expression finds in ``name``."""
    found = re.search(pattern, name)
    if found is None:
        return None
    if "partition" in found.re.groupindex:
        return found.group("partition")
    return found.group(1) if found.re.groups else found.group(0)


def pubsub_match(config: Mapping[str, Any], message: Notification) -> str | None:
    """Why a Pub/Sub sensor with ``config`` ignores ``message`` (None when it matches)."""
    for key, allowed in (config.get("attributes") or {}).items():
        value = message.attributes.get(key)
        if value not in allowed:
            return f"attribute {key}={value!r} is not one of {allowed}"
    return None


@dataclass(frozen=True)
class NotificationResult:
    """What one notification did: SUCCESS (runs requested), SKIPPED, FAILED, IGNORED (no
    match, unknown or stopped sensor: nothing recorded) or DUPLICATE (already handled)."""

    sensor: str
    status: str
    run_ids: tuple[str, ...] = ()
    run_keys: tuple[str, ...] = ()
    reason: str | None = None
    error: str | None = None
    tick_id: str | None = None

    @classmethod
    def of(cls, outcome: SensorTickOutcome, status: str | None = None) -> NotificationResult:
        return cls(
            sensor=outcome.sensor,
            status=status or outcome.status,
            run_ids=outcome.run_ids,
            run_keys=outcome.run_keys,
            reason=outcome.reason,
            error=outcome.error,
            tick_id=outcome.tick_id,
        )


def _find_sensor(manifest: Manifest | None, name: str) -> SensorSpec | None:
    if manifest is None:
        return None
    return next((s for s in manifest.sensors if s.name == name), None)


def handle_notification(
    ports: Ports,
    sensor_name: str,
    message: Notification | Mapping[str, Any],
    *,
    evaluator: Evaluator | None = None,
) -> NotificationResult:
    """Turn one notification into the runs of GCS or Pub/Sub sensor ``sensor_name``.

    Idempotent: the tick and the run_keys derive from the event (bucket, object and
    generation; the message id), so a redelivered notification starts nothing new. A
    notification for an unknown or stopped sensor, or one the sensor's filter rejects, is
    IGNORED and leaves no record.
    """
    note = Notification.from_json(message)
    manifest = current_manifest(ports)
    spec = _find_sensor(manifest, sensor_name)
    if manifest is None or spec is None:
        return NotificationResult(
            sensor=sensor_name,
            status=IGNORED,
            reason=f"sensor `{sensor_name}` is not defined in the current deployment",
        )
    if spec.kind not in EVENT_KINDS:
        raise InvalidRequest(
            f"sensor `{sensor_name}` is a {spec.kind} sensor; notifications go to gcs or pubsub "
            "sensors"
        )
    state = ports.state.get(SENSOR_STATE, state_id(spec.name))
    if not is_running(spec.default_status, state):
        return NotificationResult(sensor=spec.name, status=IGNORED, reason="the sensor is stopped")
    config = spec.config
    obj: GcsObject | None = None
    if spec.kind == KIND_GCS:
        obj = _gcs_object(note)
        if obj is None:
            return NotificationResult(
                sensor=spec.name,
                status=IGNORED,
                reason="the message is not a GCS object notification",
            )
        why = gcs_match(config, obj)
        base = f"gcs:{spec.name}:{obj.bucket}/{obj.name}#{obj.generation}"
    else:
        why = pubsub_match(config, note)
        base = f"pubsub:{spec.name}:{note.id}"
    if why is not None:
        return NotificationResult(sensor=spec.name, status=IGNORED, reason=why)
    tid = f"sensor:{state_id(spec.name)}:{sha256_hex(base)[:32]}"
    existing = ports.state.get(TICKS, tid)
    if existing is not None:
        if existing["status"] == REQUESTED:
            return NotificationResult.of(complete_requested(ports, tid))
        if existing["status"] in FINAL_TICK_STATUSES:
            return NotificationResult.of(SensorTickOutcome.of(existing), DUPLICATE)
    result = _evaluate_notification(ports, manifest, spec, tid, base, note, obj, evaluator)
    outcome = _record_notification(ports, spec, manifest, tid, base, note, obj, result)
    if outcome.status == REQUESTED:
        outcome = complete_requested(ports, tid)
    return NotificationResult.of(outcome)


def _evaluate_notification(
    ports: Ports,
    manifest: Manifest,
    spec: SensorSpec,
    tid: str,
    base: str,
    note: Notification,
    obj: GcsObject | None,
    evaluator: Evaluator | None,
) -> _Evaluated:
    config = spec.config
    outcome: ItemOutcome
    try:
        if spec.code is not None:
            item: Doc
            if obj is not None:
                item = {"name": obj.name, "bucket": obj.bucket, "generation": obj.generation}
            else:
                item = {
                    "id": note.id,
                    "data": note.data,
                    "attributes": dict(note.attributes),
                    "publish_time": note.publish_time,
                }
            result = resolve_evaluator(ports, evaluator).evaluate(
                EvaluationRequest(
                    kind="gcs" if obj is not None else "pubsub",
                    code_version=manifest.code_version,
                    name=spec.name,
                    items=[item],
                ),
                timeout_s=AutomationSettings.of(ports).sensor_evaluation_timeout_s,
            )
            failed = _result_error(result)
            if failed is not None:
                return _Evaluated(error=failed)
            outcome = result.outcomes[0]
            if outcome.skip_reason is not None or not outcome.requests:
                what = f"object {obj.name}" if obj is not None else f"message {note.id}"
                return _Evaluated(
                    reason=outcome.skip_reason or f"the sensor function requested no run for {what}"
                )
        elif obj is not None:
            pattern = config.get("partition_pattern")
            key = partition_from_pattern(pattern, obj.name) if pattern else None
            if pattern and key is None:
                return _Evaluated(
                    reason=f"object name {obj.name!r} does not match partition_key {pattern!r}"
                )
            outcome = ItemOutcome(requests=[RequestedRun(partition_key=key)])
        else:
            attr = config.get("partition_attribute")
            key = note.attributes.get(attr) if attr else None
            if attr and not key:
                return _Evaluated(reason=f"message {note.id} has no attribute {attr!r}")
            outcome = ItemOutcome(requests=[RequestedRun(partition_key=key)])
    except TransientError:
        # The worker runtime could not be reached: nothing is recorded, so the caller answers
        # "retry" and the notification is delivered again, instead of being lost as FAILED.
        raise
    except Exception as exc:
        log.exception("sensor %s: handling a notification failed", spec.name)
        return _Evaluated(error=error_doc(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    trigger_info: Doc = {
        "type": "sensor",
        "sensor": spec.name,
        "tick_id": tid,
        "message_id": note.id,
    }
    tags = {"servo/sensor": spec.name}
    if obj is not None:
        trigger_info.update(object=f"gs://{obj.bucket}/{obj.name}", generation=obj.generation)
        tags["servo/object"] = f"gs://{obj.bucket}/{obj.name}"
    else:
        tags["servo/message_id"] = note.id
    requests = _requests(
        spec,
        manifest,
        outcome,
        keyed(base),
        trigger_info=trigger_info,
        tags=tags,
    )
    return _Evaluated(requests=requests)


def _record_notification(
    ports: Ports,
    spec: SensorSpec,
    manifest: Manifest,
    tid: str,
    base: str,
    note: Notification,
    obj: GcsObject | None,
    result: _Evaluated,
) -> SensorTickOutcome:
    if result.requests:
        status = REQUESTED
    elif result.error is not None:
        status = FAILED
    else:
        status = SKIPPED

    def body(uow: UnitOfWork) -> SensorTickOutcome:
        found = uow.get(TICKS, tid)
        if found is not None:
            return SensorTickOutcome.of(found)
        doc: Doc = {
            "kind": "sensor",
            "sensor_kind": spec.kind,
            "name": spec.name,
            "tick_id": tid,
            "status": status,
            "event_key": base,
            "message_id": note.id,
            "object": f"gs://{obj.bucket}/{obj.name}" if obj is not None else None,
            "generation": obj.generation if obj is not None else None,
            "code_version": manifest.code_version,
            "started_ms": uow.now_ms,
            "evaluated_ms": uow.now_ms,
            "requests": result.requests,
            "reason": result.reason,
            "error": result.error,
            "cursor_before": None,
            "cursor_after": None,
        }
        if status == REQUESTED:
            doc["requested_ms"] = uow.now_ms
        else:
            doc["ended_ms"] = uow.now_ms
        uow.create(TICKS, tid, doc)
        if status != REQUESTED:
            _emit_ticked(uow, doc)
        return SensorTickOutcome.of(doc)

    outcome, _ = in_uow(ports, Cause(actor=f"sensor:{spec.name}", source="servo/sensors"), body)
    return outcome


# ---------------------------------------------------------------------------------------------
# Inspecting and switching sensors (CLI, API)


@dataclass(frozen=True)
class SensorStatus:
    """A sensor as ``servo sensors list`` shows it."""

    name: str
    kind: str
    target: str | None
    minimum_interval_s: int
    running: bool
    status_source: str
    cursor: str | None
    last_evaluation: str | None
    last_tick: Doc | None
    config: Mapping[str, Any]


def _sensor_spec(manifest: Manifest | None, name: str) -> SensorSpec:
    if manifest is None:
        raise NotFound("nothing is deployed in this workspace; run `servo deploy` first")
    spec = _find_sensor(manifest, name)
    if spec is None:
        known = ", ".join(s.name for s in manifest.sensors) or "none"
        raise NotFound(
            f"sensor `{name}` is not defined in the current deployment (sensors: {known})"
        )
    return spec


def sensor_statuses(ports: Ports) -> list[SensorStatus]:
    """Every sensor of the current deployment with its status and cursor."""
    manifest = current_manifest(ports)
    if manifest is None:
        return []
    states = {str(d.get("name")): d for _, d in ports.state.query(SENSOR_STATE)}
    out: list[SensorStatus] = []
    for spec in manifest.sensors:
        state = states.get(spec.name) or {}
        last_id = state.get("last_tick_id")
        last_eval = state.get("last_eval_ms")
        out.append(
            SensorStatus(
                name=spec.name,
                kind=spec.kind,
                target=spec.target,
                minimum_interval_s=spec.minimum_interval_s,
                running=is_running(spec.default_status, state),
                status_source="set" if state.get("status") else "default",
                cursor=state.get("cursor"),
                last_evaluation=iso_utc(datetime.fromtimestamp(int(last_eval) / 1000, UTC))
                if last_eval
                else None,
                last_tick=ports.state.get(TICKS, last_id)
                if last_id
                else next(iter(sensor_ticks(ports, spec.name, 1)), None)
                if spec.kind in EVENT_KINDS
                else None,
                config=dict(spec.config),
            )
        )
    return out


def _update_sensor_state(
    ports: Ports, spec: SensorSpec, fields: Doc, actor: str, bump_cursor: bool = False
) -> Doc:
    sid = state_id(spec.name)

    def body(uow: UnitOfWork) -> Doc:
        state = uow.get(SENSOR_STATE, sid)
        new = dict(fields)
        new["updated_ms"] = uow.now_ms
        if bump_cursor:
            new["cursor_seq"] = int((state or {}).get("cursor_seq", 0)) + 1
        if state is None:
            doc = {
                "name": spec.name,
                "status": None,
                "cursor": None,
                "cursor_seq": 0,
                "last_eval_ms": None,
                "evaluating": None,
                **new,
            }
            uow.create(SENSOR_STATE, sid, doc)
            return doc
        uow.update(SENSOR_STATE, sid, new)
        return {**state, **new}

    doc, _ = in_uow(ports, Cause(actor=actor, source="servo/sensors"), body)
    return doc


def set_sensor_running(ports: Ports, name: str, running: bool, *, actor: str = "system") -> Doc:
    """Start or stop a sensor (overriding its default status); returns its state."""
    spec = _sensor_spec(current_manifest(ports), name)
    return _update_sensor_state(ports, spec, {"status": "running" if running else "stopped"}, actor)


def set_sensor_cursor(ports: Ports, name: str, cursor: str | None, *, actor: str = "system") -> Doc:
    """Set a sensor's cursor; an evaluation running meanwhile will not commit over it."""
    spec = _sensor_spec(current_manifest(ports), name)
    if spec.kind in EVENT_KINDS:
        raise InvalidRequest(
            f"sensor `{name}` is a {spec.kind} sensor: it reacts to each notification and has "
            "no cursor"
        )
    if spec.kind == KIND_RUN_STATUS and cursor is not None and _seq(cursor) < -1:
        raise InvalidRequest(
            f"the cursor of run-status sensor `{name}` is a ledger segment number (an integer "
            f">= -1), not {cursor!r}"
        )
    return _update_sensor_state(ports, spec, {"cursor": cursor}, actor, bump_cursor=True)


def sensor_ticks(ports: Ports, name: str, limit: int = 20) -> list[Doc]:
    """The most recent tick records of sensor ``name``, newest first."""
    rows = ports.state.query(
        TICKS,
        [Where("kind", "==", "sensor"), Where("name", "==", name)],
        order_by="-evaluated_ms",
        limit=limit,
    )
    return [d for _, d in rows]


def event_sensor_topics(manifest: Manifest) -> dict[str, list[str]]:
    """The topics GCS and Pub/Sub sensors listen on, with the sensors on each."""
    topics: dict[str, list[str]] = {}
    for spec in manifest.sensors:
        if spec.kind in EVENT_KINDS and spec.config.get("topic"):
            topics.setdefault(str(spec.config["topic"]), []).append(spec.name)
    return topics
