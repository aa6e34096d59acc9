"""tick: evaluate every schedule of the current deployment at a given time.

Called once a minute (Cloud Scheduler on Google Cloud, the local automation loop in
``servo dev``, or ``servo tick --now …`` by hand). For each running schedule it computes the
ticks due since the schedule's cursor (the last scheduled time it evaluated) with
:mod:`servo.control.cron` — correct across DST changes — and, for each due tick:

1. works out what to run: the target, for the time partition that closed at the scheduled
   time (a daily schedule at 01:00 runs yesterday), or whatever the schedule's function
   returns (evaluated in the worker runtime);
2. creates the run with ``run_key = schedule:<name>:<scheduled time, ISO UTC>``, so a repeated
   or concurrent tick finds the existing run instead of starting a second one;
3. records the tick — one document per (schedule, scheduled time), create-only, status
   SUCCESS / SKIPPED / FAILED with the run ids, the skip reason or the error — and moves the
   cursor past it, in one transaction.

A crash between 2 and 3 leaves the cursor where it was, so the next tick redoes the tick and
finds the run through its run_key. A new schedule starts from now (minus a short lookback), an
outage runs at most ``schedule_max_catchup`` missed ticks (default 1, the latest; see
:class:`~servo.control.automation_common.AutomationSettings`). Nothing a user wrote can crash
the service: errors become FAILED ticks.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from servo.control.automation_common import (
    FAILED,
    MAX_CATCHUP_TAG,
    SCHEDULE_STATE,
    SCHEDULE_TICKED,
    SKIPPED,
    SUCCESS,
    TICKS,
    AutomationSettings,
    current_manifest,
    error_doc,
    from_ms,
    is_running,
    iso_utc,
    read_many,
    request_run,
    resolve_evaluator,
    state_id,
    to_ms,
)
from servo.control.cron import CronSchedule, cron_schedule
from servo.control.uow import Cause, UnitOfWork, in_uow
from servo.core.errors import InvalidRequest, NotFound, SelectionError, TransientError
from servo.core.manifest import Manifest, ScheduleSpec
from servo.core.partitions import TimeWindowPartitionsDefinition, partitions_from_spec
from servo.core.selection import parse_selection, resolve_selection
from servo.ports import Doc, Ports, Where
from servo.worker.evaluate import EvaluationRequest, Evaluator, RequestedRun

log = logging.getLogger("servo.tick")

MISSED_COUNT_CAP = 10_000


@dataclass(frozen=True)
class TickOutcome:
    """What became of one tick. ``recorded`` is False when an earlier or concurrent
    evaluation had already recorded it (nothing was done again)."""

    schedule: str
    scheduled_time: str
    status: str
    run_ids: tuple[str, ...] = ()
    reason: str | None = None
    error: str | None = None
    recorded: bool = True

    @classmethod
    def of(cls, doc: Mapping[str, Any], recorded: bool) -> TickOutcome:
        err = doc.get("error") or {}
        return cls(
            schedule=str(doc["name"]),
            scheduled_time=str(doc["scheduled_time"]),
            status=str(doc["status"]),
            run_ids=tuple(doc.get("run_ids") or ()),
            reason=doc.get("reason"),
            error=err.get("message") if err else None,
            recorded=recorded,
        )


@dataclass
class TickReport:
    """The result of one evaluation of the schedules."""

    now: str
    code_version: str | None
    schedules: int = 0
    running: int = 0
    outcomes: list[TickOutcome] = field(default_factory=list)

    def run_ids(self) -> list[str]:
        return [r for o in self.outcomes for r in o.run_ids]


class _TickError(Exception):
    """The tick cannot run (bad target partitions); recorded as FAILED."""


def tick_id(name: str, scheduled: datetime) -> str:
    """Document id of the tick of ``name`` at ``scheduled``."""
    return f"schedule:{state_id(name)}:{iso_utc(scheduled)}"


def schedule_run_key(name: str, scheduled: datetime) -> str:
    """The run_key of the run a schedule starts for a tick."""
    return f"schedule:{name}:{iso_utc(scheduled)}"


def max_catchup(spec: ScheduleSpec, settings: AutomationSettings) -> int:
    """How many missed ticks of ``spec`` run after an outage."""
    raw = spec.tags.get(MAX_CATCHUP_TAG)
    if raw is not None:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value >= 1:
            return value
        log.warning(
            "schedule %s: tag %s=%r is not a positive integer; using %d",
            spec.name,
            MAX_CATCHUP_TAG,
            raw,
            settings.schedule_max_catchup,
        )
    return max(1, int(settings.schedule_max_catchup))


def tick(
    ports: Ports,
    now: datetime | None = None,
    *,
    evaluator: Evaluator | None = None,
    names: Iterable[str] | None = None,
) -> TickReport:
    """Evaluate the schedules (all, or ``names``) at ``now`` (default: the clock's time)."""
    at = (now or ports.clock.now()).astimezone(UTC)
    manifest = current_manifest(ports)
    report = TickReport(now=iso_utc(at), code_version=manifest.code_version if manifest else None)
    if manifest is None:
        return report
    settings = AutomationSettings.of(ports)
    wanted = set(names) if names is not None else None
    states = {str(d.get("name")): d for _, d in ports.state.query(SCHEDULE_STATE)}
    due_work: list[tuple[ScheduleSpec, CronSchedule, list[datetime], int, Doc | None]] = []
    unseen: list[str] = []
    for spec in manifest.schedules:
        if wanted is not None and spec.name not in wanted:
            continue
        report.schedules += 1
        state = states.get(spec.name)
        if not is_running(spec.default_status, state):
            continue
        report.running += 1
        try:
            cron = cron_schedule(spec.cron, spec.timezone)
        except InvalidRequest:
            log.exception("schedule %s cannot be evaluated", spec.name)
            continue
        cursor = _cursor(state, at, settings)
        due = cron.last_ticks(cursor, at, max_catchup(spec, settings))
        if not due:
            if state is None or state.get("cursor_ms") is None:
                unseen.append(spec.name)
            continue
        missed = len(cron.ticks_between(cursor, due[0], limit=MISSED_COUNT_CAP + 1)) - 1
        due_work.append((spec, cron, due, missed, state))
    if unseen:
        _start_cursors(ports, unseen, at)
    if not due_work:
        return report
    existing = read_many(
        ports, TICKS, [tick_id(s.name, t) for s, _, due, _, _ in due_work for t in due]
    )
    runner = _TickRunner(ports, manifest, at, evaluator)
    for spec, cron, due, missed, state in due_work:
        report.outcomes.extend(runner.run_schedule(spec, cron, due, missed, state, existing))
    return report


def _start_cursors(ports: Ports, names: Sequence[str], at: datetime) -> None:
    """Store the cursor of schedules seen for the first time, so that their first tick is
    found however long the next evaluation takes to come."""
    for start in range(0, len(names), 200):
        chunk = list(names[start : start + 200])

        def body(uow: UnitOfWork, chunk: list[str] = chunk) -> None:
            ids = [state_id(n) for n in chunk]
            found = uow.get_many(SCHEDULE_STATE, ids)
            for name, sid in zip(chunk, ids, strict=True):
                doc = found.get(sid)
                if doc is None:
                    uow.create(
                        SCHEDULE_STATE,
                        sid,
                        {
                            "name": name,
                            "status": None,
                            "cursor_ms": to_ms(at),
                            "last_tick_id": None,
                            "last_partition": None,
                            "updated_ms": uow.now_ms,
                        },
                    )
                elif doc.get("cursor_ms") is None:
                    uow.update(
                        SCHEDULE_STATE, sid, {"cursor_ms": to_ms(at), "updated_ms": uow.now_ms}
                    )

        in_uow(ports, Cause(source="servo/tick"), body)


def _cursor(state: Doc | None, at: datetime, settings: AutomationSettings) -> datetime:
    if state is not None and state.get("cursor_ms") is not None:
        return from_ms(int(state["cursor_ms"]))
    return at - timedelta(seconds=settings.schedule_new_lookback_s)


class _TickRunner:
    def __init__(
        self, ports: Ports, manifest: Manifest, at: datetime, evaluator: Evaluator | None
    ) -> None:
        self.ports = ports
        self.manifest = manifest
        self.at = at
        self._evaluator = evaluator
        self._roots: dict[str, list[tuple[str, Any]]] = {}

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = resolve_evaluator(self.ports, None)
        return self._evaluator

    def run_schedule(
        self,
        spec: ScheduleSpec,
        cron: CronSchedule,
        due: list[datetime],
        missed: int,
        state: Doc | None,
        existing: Mapping[str, Doc],
    ) -> list[TickOutcome]:
        outcomes: list[TickOutcome] = []
        records: list[Doc] = []
        previous = (state or {}).get("last_partition")
        reached: datetime | None = None
        for i, scheduled in enumerate(due):
            tid = tick_id(spec.name, scheduled)
            if tid in existing:
                outcomes.append(TickOutcome.of(existing[tid], recorded=False))
                previous = existing[tid].get("partition") or previous
                reached = scheduled
                continue
            try:
                doc = self._evaluate(spec, cron, scheduled, tid, previous)
            except TransientError:
                log.warning("schedule %s: tick %s will be retried", spec.name, tid, exc_info=True)
                break
            except Exception as exc:
                log.exception("schedule %s: tick %s failed", spec.name, tid)
                doc = self._doc(spec, cron, scheduled, tid)
                doc.update(
                    status=FAILED,
                    error=error_doc(f"{type(exc).__name__}: {exc}", traceback.format_exc()),
                )
            if i == 0 and missed > 0:
                doc["missed_ticks"] = missed
                doc["missed_note"] = (
                    f"{missed}{'+' if missed >= MISSED_COUNT_CAP else ''} earlier tick(s) were "
                    "missed and not run (catch-up limit)"
                )
            if doc.get("partition"):
                previous = doc["partition"]
            records.append(doc)
            reached = scheduled
        if reached is None:
            return outcomes
        self.ports.crash("tick.before_record")
        outcomes.extend(self._record(spec, records, reached))
        return outcomes

    # -- one tick ------------------------------------------------------------------------------

    def _doc(self, spec: ScheduleSpec, cron: CronSchedule, scheduled: datetime, tid: str) -> Doc:
        return {
            "kind": "schedule",
            "name": spec.name,
            "tick_id": tid,
            "scheduled_ms": to_ms(scheduled),
            "scheduled_time": iso_utc(scheduled),
            "scheduled_local": scheduled.astimezone(cron.zone).isoformat(),
            "evaluated_for": iso_utc(self.at),
            "code_version": self.manifest.code_version,
            "status": None,
            "reason": None,
            "error": None,
            "partition": None,
            "run_ids": [],
            "run_keys": [],
        }

    def _evaluate(
        self,
        spec: ScheduleSpec,
        cron: CronSchedule,
        scheduled: datetime,
        tid: str,
        previous_partition: str | None,
    ) -> Doc:
        doc = self._doc(spec, cron, scheduled, tid)
        custom = spec.code is not None
        try:
            partitioned, key, why = self._closed_partition(spec, scheduled)
        except _TickError as exc:
            if not custom:
                doc.update(status=FAILED, error=error_doc(str(exc)))
                return doc
            partitioned, key, why = False, None, None
        requests: list[RequestedRun]
        if custom:
            result = self.evaluator.evaluate(
                EvaluationRequest(
                    kind="schedule",
                    code_version=self.manifest.code_version,
                    name=spec.name,
                    scheduled_time=scheduled.astimezone(cron.zone).isoformat(),
                    timezone=spec.timezone,
                    partition_key=key,
                    evaluation_time=self.at.isoformat(),
                )
            )
            outcome = result.outcomes[0] if result.outcomes else None
            if result.error is not None or outcome is None:
                doc.update(
                    status=FAILED,
                    error=error_doc(
                        result.error or "the evaluation returned nothing", result.traceback
                    ),
                )
                return doc
            if outcome.error is not None:
                doc.update(status=FAILED, error=error_doc(outcome.error, outcome.traceback))
                return doc
            if outcome.skip_reason is not None or not outcome.requests:
                doc.update(
                    status=SKIPPED,
                    reason=outcome.skip_reason or "the schedule function requested no run",
                )
                return doc
            requests = [
                r
                if r.partition_key or not partitioned
                else r.model_copy(update={"partition_key": key})
                for r in outcome.requests
            ]
        else:
            if partitioned and key is None:
                doc.update(status=SKIPPED, reason=why)
                return doc
            if partitioned and key == previous_partition:
                doc.update(
                    status=SKIPPED,
                    partition=key,
                    reason=f"partition {key} was already run by the previous tick (no partition "
                    "closed since)",
                )
                return doc
            requests = [RequestedRun(partition_key=key)]
        return self._start_runs(spec, scheduled, doc, requests)

    def _start_runs(
        self, spec: ScheduleSpec, scheduled: datetime, doc: Doc, requests: list[RequestedRun]
    ) -> Doc:
        base = schedule_run_key(spec.name, scheduled)
        tags = {k: v for k, v in spec.tags.items() if k != MAX_CATCHUP_TAG}
        partitions = sorted({r.partition_key for r in requests if r.partition_key})
        doc["partition"] = partitions[0] if len(partitions) == 1 else None
        for i, req in enumerate(requests):
            if req.run_key:
                run_key = f"{base}:{req.run_key}"
            else:
                run_key = base if len(requests) == 1 else f"{base}:{i}"
            try:
                result = request_run(
                    self.ports,
                    selection=req.selection or spec.target,
                    run_key=run_key,
                    partition_key=req.partition_key,
                    tags={
                        **tags,
                        **req.tags,
                        "servo/schedule": spec.name,
                        "servo/scheduled_time": doc["scheduled_time"],
                    },
                    trigger_info={
                        "type": "schedule",
                        "schedule": spec.name,
                        "scheduled_time": doc["scheduled_time"],
                        "tick_id": doc["tick_id"],
                    },
                    actor=f"schedule:{spec.name}",
                    code_version=self.manifest.code_version,
                )
            except InvalidRequest as exc:
                doc.update(
                    status=FAILED,
                    error=error_doc(f"the run request {run_key!r} is invalid: {exc}"),
                )
                return doc
            doc["run_ids"].append(result.run_id)
            doc["run_keys"].append(run_key)
        doc["status"] = SUCCESS
        return doc

    def _closed_partition(
        self, spec: ScheduleSpec, scheduled: datetime
    ) -> tuple[bool, str | None, str | None]:
        """``(partitioned, key, reason)``: the partition that closed at ``scheduled`` of the
        assets of the target that take partitions directly."""
        roots = self._partition_roots(spec.target)
        if not roots:
            return False, None, None
        keys: set[str | None] = set()
        for asset, definition in roots:
            if not isinstance(definition, TimeWindowPartitionsDefinition):
                raise _TickError(
                    f"schedule `{spec.name}` targets `{asset}`, partitioned by "
                    f"{definition.describe()}; a schedule without a function runs the time "
                    "partition that just closed, so give it a @schedule function that returns "
                    "RunRequest(partition_key=...)"
                )
            closed = definition.last_closed_key(scheduled)
            keys.add(closed.user_string() if closed is not None else None)
        if len(keys) > 1:
            raise _TickError(
                f"schedule `{spec.name}` targets assets whose partitions close at different "
                f"times ({', '.join(a for a, _ in roots)}); split it into one schedule per "
                "partitioning"
            )
        key = keys.pop()
        if key is None:
            names = ", ".join(f"`{a}`" for a, _ in roots)
            return True, None, f"no partition of {names} had closed by {iso_utc(scheduled)}"
        return True, key, None

    def _partition_roots(self, selection: str) -> list[tuple[str, Any]]:
        """The selected partitioned assets without a partitioned upstream in the selection
        (the ones a run's partition selection applies to, as in the planner)."""
        found = self._roots.get(selection)
        if found is not None:
            return found
        try:
            selected = {
                str(k) for k in resolve_selection(parse_selection(selection), self.manifest.graph)
            }
        except SelectionError as exc:
            raise _TickError(f"target {selection!r}: {exc}") from None
        by_key = self.manifest.assets_by_key
        roots: list[tuple[str, Any]] = []
        for key in sorted(selected):
            spec = by_key[key]
            if spec.partitions is None:
                continue
            if any(d.asset in selected and by_key[d.asset].partitions for d in spec.deps):
                continue
            roots.append((key, partitions_from_spec(spec.partitions)))
        self._roots[selection] = roots
        return roots

    # -- recording -----------------------------------------------------------------------------

    def _record(
        self, spec: ScheduleSpec, records: list[Doc], reached: datetime
    ) -> list[TickOutcome]:
        sid = state_id(spec.name)
        cursor_ms = to_ms(reached)

        def body(uow: UnitOfWork) -> list[TickOutcome]:
            state = uow.get(SCHEDULE_STATE, sid)
            found = uow.get_many(TICKS, [r["tick_id"] for r in records])
            out: list[TickOutcome] = []
            last_partition = (state or {}).get("last_partition")
            for record in records:
                tid = record["tick_id"]
                if tid in found:
                    out.append(TickOutcome.of(found[tid], recorded=False))
                    continue
                doc = {**record, "created_ms": uow.now_ms, "run_ids": list(record["run_ids"])}
                uow.create(TICKS, tid, doc)
                uow.emit(
                    SCHEDULE_TICKED,
                    data={
                        "schedule": spec.name,
                        "tick_id": tid,
                        "scheduled_time": record["scheduled_time"],
                        "status": record["status"],
                        "run_ids": list(record["run_ids"]),
                        "reason": record["reason"],
                        "error": (record["error"] or {}).get("message"),
                    },
                )
                out.append(TickOutcome.of(record, recorded=True))
                if record.get("partition"):
                    last_partition = record["partition"]
            fields = {
                "cursor_ms": max(cursor_ms, int((state or {}).get("cursor_ms") or 0)),
                "last_tick_id": records[-1]["tick_id"]
                if records
                else (state or {}).get("last_tick_id"),
                "last_partition": last_partition,
                "updated_ms": uow.now_ms,
            }
            if state is None:
                uow.create(SCHEDULE_STATE, sid, {"name": spec.name, "status": None, **fields})
            else:
                uow.update(SCHEDULE_STATE, sid, fields)
            return out

        cause = Cause(actor=f"schedule:{spec.name}", source="servo/tick")
        outcomes, _ = in_uow(self.ports, cause, body)
        return outcomes


# ---------------------------------------------------------------------------------------------
# Inspecting and switching schedules (CLI, API)


@dataclass(frozen=True)
class ScheduleStatus:
    """A schedule as ``servo schedules list`` shows it."""

    name: str
    cron: str
    timezone: str
    target: str
    running: bool
    status_source: str  # "default" or "set"
    custom: bool
    cursor: str | None
    next_tick: str | None
    last_tick: Doc | None


def _schedule_spec(manifest: Manifest | None, name: str) -> ScheduleSpec:
    if manifest is None:
        raise NotFound("nothing is deployed in this workspace; run `servo deploy` first")
    for spec in manifest.schedules:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in manifest.schedules) or "none"
    raise NotFound(
        f"schedule `{name}` is not defined in the current deployment (schedules: {known})"
    )


def schedule_statuses(ports: Ports, now: datetime | None = None) -> list[ScheduleStatus]:
    """Every schedule of the current deployment with its status, cursor and next tick."""
    manifest = current_manifest(ports)
    if manifest is None:
        return []
    at = (now or ports.clock.now()).astimezone(UTC)
    settings = AutomationSettings.of(ports)
    states = {str(d.get("name")): d for _, d in ports.state.query(SCHEDULE_STATE)}
    out: list[ScheduleStatus] = []
    for spec in manifest.schedules:
        state = states.get(spec.name)
        running = is_running(spec.default_status, state)
        cursor = _cursor(state, at, settings) if state and state.get("cursor_ms") else None
        next_tick = None
        if running:
            nxt = cron_schedule(spec.cron, spec.timezone).next_tick(max(at, cursor or at))
            next_tick = iso_utc(nxt) if nxt else None
        last = (
            ports.state.get(TICKS, state["last_tick_id"])
            if state and state.get("last_tick_id")
            else None
        )
        out.append(
            ScheduleStatus(
                name=spec.name,
                cron=spec.cron,
                timezone=spec.timezone,
                target=spec.target,
                running=running,
                status_source="set" if state and state.get("status") else "default",
                custom=spec.code is not None,
                cursor=iso_utc(cursor) if cursor else None,
                next_tick=next_tick,
                last_tick=last,
            )
        )
    return out


def set_schedule_running(
    ports: Ports, name: str, running: bool, *, actor: str = "system", now: datetime | None = None
) -> Doc:
    """Start or stop a schedule (overriding its default status); returns its state.

    Starting a schedule moves its cursor to now: ticks that passed while it was stopped are
    not run.
    """
    spec = _schedule_spec(current_manifest(ports), name)
    at = (now or ports.clock.now()).astimezone(UTC)
    sid = state_id(spec.name)

    def body(uow: UnitOfWork) -> Doc:
        state = uow.get(SCHEDULE_STATE, sid)
        was_running = is_running(spec.default_status, state)
        fields: Doc = {"status": "running" if running else "stopped", "updated_ms": uow.now_ms}
        if running and not was_running:
            fields["cursor_ms"] = to_ms(at)
        if state is None:
            doc = {
                "name": spec.name,
                "cursor_ms": to_ms(at) if running else None,
                "last_tick_id": None,
                "last_partition": None,
                **fields,
            }
            uow.create(SCHEDULE_STATE, sid, doc)
            return doc
        uow.update(SCHEDULE_STATE, sid, fields)
        return {**state, **fields}

    doc, _ = in_uow(ports, Cause(actor=actor, source="servo/schedules"), body)
    return doc


def schedule_ticks(ports: Ports, name: str, limit: int = 20) -> list[Doc]:
    """The most recent tick records of schedule ``name``, newest first."""
    rows = ports.state.query(
        TICKS,
        [Where("kind", "==", "schedule"), Where("name", "==", name)],
        order_by="-scheduled_ms",
        limit=limit,
    )
    return [d for _, d in rows]
