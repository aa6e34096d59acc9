"""callback: a worker's reports (started, heartbeat, completed) applied to its task.

Every report names its attempt and carries the attempt's token. Reports for another attempt
(late, or from a zombie) change nothing and are recorded as rejected; a report repeated for
the current attempt changes nothing and is recorded as a duplicate (an idempotent hit). On
success the output is committed (the asset partition's pointer moves to it, exactly once, in
the same transaction as the task's SUCCEEDED), downstream tasks are released and the run is
finished when every task is terminal; on failure the retry policy decides between RETRY_WAIT
and FAILED, and a final failure skips every downstream task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from servo.control.common import (
    ACTIVE_TASK_STATES,
    ASSET_PARTITIONS,
    NONTERMINAL_TASK_STATES,
    RUNS,
    SLOTS,
    TASKS,
    TOPIC_DISPATCH,
    TOPIC_FINALIZE,
    TOPIC_RETRY,
    UNSUCCESSFUL_TASK_STATES,
    Settings,
    apply_run,
    apply_task,
    asset_partition_id,
    check_token,
    retry_delay_ms,
    task_doc_id,
)
from servo.control.dispatch import (
    LIVE_RUN_STATES,
    claim_and_dispatch,
    pool_limits,
    send_envelope,
)
from servo.control.uow import Cause, UnitOfWork, in_uow
from servo.core import events as ev
from servo.core.errors import InvalidRequest
from servo.core.statemachine import (
    TERMINAL_TASK_STATES,
    RunEvent,
    RunState,
    TaskEvent,
    TaskSignal,
    TaskState,
)
from servo.ports import Doc, Ports, Where
from servo.worker.envelope import Answer, Outcome

SKIP_BATCH = 200
# Downstream tasks released in the success's own transaction; wider releases are batched.
RELEASE_INLINE_MAX = 100
# READY tasks a finishing attempt dispatches itself; the rest go through a dispatch message.
HANDOFF_MAX = 20
ReportKind = Literal["started", "heartbeat", "completed"]


@dataclass(frozen=True)
class Report:
    """A worker's report about one attempt."""

    kind: ReportKind
    run_id: str
    task_id: str
    attempt: int
    token: str
    outcome: Outcome | None = None

    @classmethod
    def from_json(cls, data: Any) -> Report:
        if not isinstance(data, dict):
            raise InvalidRequest("a report must be a JSON object")
        kind = data.get("kind")
        if kind not in ("started", "heartbeat", "completed"):
            raise InvalidRequest("field `kind` must be started, heartbeat or completed")
        for f in ("run_id", "task_id", "token"):
            if not isinstance(data.get(f), str) or not data.get(f):
                raise InvalidRequest(f"field `{f}` is required")
        attempt = data.get("attempt")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise InvalidRequest("field `attempt` must be a positive integer")
        outcome = None
        if kind == "completed":
            try:
                outcome = Outcome.model_validate(data.get("outcome"))
            except Exception as exc:
                raise InvalidRequest(f"field `outcome` is malformed: {exc}") from None
        return cls(kind, data["run_id"], data["task_id"], attempt, data["token"], outcome)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "token": self.token,
            "outcome": self.outcome.model_dump(mode="json") if self.outcome else None,
        }


def handle_report(ports: Ports, report: Report) -> Answer:
    """Apply a worker report; the answer tells the worker whether to go on."""
    settings = Settings.of(ports)
    if not check_token(
        settings, ports, report.run_id, report.task_id, report.attempt, report.token
    ):
        raise InvalidRequest(
            f"the token does not authorize reports about attempt {report.attempt} of task "
            f"{report.task_id} in run {report.run_id}"
        )
    if report.kind == "started":
        return _started(ports, report, settings)
    if report.kind == "heartbeat":
        return _heartbeat(ports, report, settings)
    assert report.outcome is not None
    return _completed(ports, report, report.outcome, settings)


def _cause(report: Report) -> Cause:
    return Cause(
        actor=f"worker:{report.run_id}/{report.task_id}/{report.attempt}",
        source="servo/callback",
        correlation_id=report.run_id,
        causation_id=f"{report.kind}:{report.run_id}/{report.task_id}/{report.attempt}",
    )


def _running_due(task: Doc, now_ms: int, settings: Settings) -> dict[str, Any]:
    """The deadlines of a RUNNING task, folded into ``due_at`` for the sweep's one query."""
    hb = now_ms + settings.heartbeat_timeout_ms
    deadlines = [hb]
    if task.get("exec_deadline"):
        deadlines.append(int(task["exec_deadline"]))
    if task.get("cancel_deadline"):
        deadlines.append(int(task["cancel_deadline"]))
    return {"heartbeat_ms": now_ms, "due_at": min(deadlines)}


def _started(ports: Ports, report: Report, settings: Settings) -> Answer:
    def body(uow: UnitOfWork) -> Answer:
        task = uow.get(TASKS, task_doc_id(report.run_id, report.task_id))
        if task is None:
            raise InvalidRequest(f"task {report.task_id} of run {report.run_id} does not exist")
        # Only a task dispatched before its run was RUNNING may have to make it RUNNING.
        run = None if task.get("run_running") else uow.get(RUNS, report.run_id)
        extra: dict[str, Any] = {"started_ms": uow.now_ms}
        if task.get("timeout_ms"):
            extra["exec_deadline"] = uow.now_ms + int(task["timeout_ms"])
        task_for_due = {**task, **extra}
        extra.update(_running_due(task_for_due, uow.now_ms, settings))
        outcome = apply_task(
            uow, task, TaskSignal(TaskEvent.START, attempt=report.attempt), extra=extra
        )
        if not outcome.accepted:
            return Answer(accepted=False, cancel=True, reason=outcome.reason)
        if not outcome.duplicate and run is not None and run["state"] == RunState.STARTING.value:
            apply_run(uow, run, RunEvent.TASK_STARTED, "first task started")
        return Answer(
            accepted=True, cancel=bool(task.get("cancel_requested")), reason=outcome.reason
        )

    answer, _ = in_uow(ports, _cause(report), body)
    ports.crash("callback.after_started")
    return answer


def _heartbeat(ports: Ports, report: Report, settings: Settings) -> Answer:
    def body(uow: UnitOfWork) -> Answer:
        task = uow.get(TASKS, task_doc_id(report.run_id, report.task_id))
        if task is None:
            raise InvalidRequest(f"task {report.task_id} of run {report.run_id} does not exist")
        run = uow.get(RUNS, report.run_id) if task["state"] == TaskState.DISPATCHED.value else None
        extra = _running_due(task, uow.now_ms, settings)
        if task["state"] == TaskState.DISPATCHED.value:
            extra["started_ms"] = uow.now_ms
        outcome = apply_task(
            uow,
            task,
            TaskSignal(TaskEvent.HEARTBEAT, attempt=report.attempt),
            extra=extra,
            record_duplicate=False,
        )
        if not outcome.accepted:
            return Answer(accepted=False, cancel=True, reason=outcome.reason)
        if run is not None and run["state"] == RunState.STARTING.value:
            apply_run(uow, run, RunEvent.TASK_STARTED, "first task started")
        return Answer(accepted=True, cancel=bool(task.get("cancel_requested")))

    answer, _ = in_uow(ports, _cause(report), body)
    return answer


def _read_slots(uow: UnitOfWork, task: Doc) -> dict[str, Doc]:
    slots = task.get("slots") or []
    return uow.get_many(SLOTS, list(slots)) if slots else {}


def _release_slots(uow: UnitOfWork, task: Doc, slots: dict[str, Doc], attempt: int) -> list[str]:
    holder = task_doc_id(task["run_id"], task["task_id"])
    released = []
    for sid, slot in slots.items():
        if slot.get("holder") == holder and int(slot.get("attempt", 0)) == attempt:
            uow.set(
                SLOTS,
                sid,
                {"pool": slot.get("pool"), "holder": None, "attempt": 0, "since_ms": uow.now_ms},
            )
            released.append(str(slot.get("pool")))
    return released


def _completed(ports: Ports, report: Report, outcome: Outcome, settings: Settings) -> Answer:
    follow: dict[str, Any] = {}

    def body(uow: UnitOfWork) -> Answer:
        follow.clear()
        doc_id = task_doc_id(report.run_id, report.task_id)
        task = uow.get(TASKS, doc_id)
        if task is None:
            raise InvalidRequest(f"task {report.task_id} of run {report.run_id} does not exist")
        # Tasks carry their run's code version and limit, so a report reads no run document
        # (tasks written by older versions do not: read the run for them).
        run_doc = None if task.get("code_version") else uow.get(RUNS, report.run_id)
        run = run_doc if run_doc is not None else task
        if not run.get("code_version"):
            raise InvalidRequest(f"run {report.run_id} does not exist")
        slots = _read_slots(uow, task)
        single = list(task.get("release_with") or [])
        # A wide release is done after the commit, in batches (a transaction holds at most
        # 500 writes); a narrow one goes with the success itself.
        release_inline = len(single) <= RELEASE_INLINE_MAX
        downstream_docs = (
            uow.get_many(TASKS, [task_doc_id(report.run_id, d) for d in single])
            if outcome.status == "succeeded" and single and release_inline
            else {}
        )
        pointer_id = asset_partition_id(task["asset"], task.get("partition"))
        pointer = uow.get(ASSET_PARTITIONS, pointer_id) if outcome.status == "succeeded" else None
        held = {
            sid: slot
            for sid, slot in slots.items()
            if slot.get("holder") == doc_id and int(slot.get("attempt", 0)) == report.attempt
        }
        limits = pool_limits(ports, run, settings)
        # A task still running means its run is live (a cancelled run's READY tasks are
        # cancelled, so nothing is handed to them).
        live = task["state"] in ACTIVE_TASK_STATES and (
            run_doc is None or run_doc["state"] in LIVE_RUN_STATES
        )
        waiting: list[tuple[str, Doc]] = []
        if live and (held or run.get("max_concurrency")):
            # The attempt's capacity is handed to the next READY task of the run in this same
            # transaction, rather than freed and claimed again by a separate dispatch.
            waiting = uow.query(
                TASKS,
                [Where("run_id", "==", report.run_id), Where("state", "==", TaskState.READY.value)],
                order_by="order",
                limit=3,
            )
        # Writes start here.
        base = {
            "duration_ms": outcome.duration_ms,
            "checks": [c.model_dump(mode="json") for c in outcome.checks],
        }
        new = False
        if outcome.status == "succeeded":
            result = apply_task(
                uow,
                task,
                TaskSignal(TaskEvent.SUCCEED, attempt=report.attempt),
                extra={
                    **base,
                    "error": None,
                    "output_path": outcome.output.path if outcome.output else None,
                },
                event_data={"error": None, "duration_ms": outcome.duration_ms},
            )
            new = result.accepted and not result.duplicate
            if new:
                _commit_output(uow, task, run, pointer_id, pointer, outcome, report.attempt)
                for d in downstream_docs.values():
                    apply_task(uow, d, TaskSignal(TaskEvent.RELEASE), record_duplicate=False)
        elif outcome.status == "cancelled":
            result = apply_task(
                uow,
                task,
                TaskSignal(TaskEvent.CANCELLED_BY_WORKER, attempt=report.attempt),
                extra={
                    **base,
                    "error": outcome.error.model_dump(mode="json") if outcome.error else None,
                },
                event_data={
                    "error": outcome.error.message if outcome.error else None,
                    "duration_ms": outcome.duration_ms,
                },
            )
            new = result.accepted and not result.duplicate
        else:
            error = outcome.error
            message = error.message if error else "the task failed"
            retryable = bool(error.retryable) if error else True
            event = TaskEvent.FAIL
            if error is not None and error.kind == "timeout":
                event = TaskEvent.EXECUTION_TIMEOUT
            result = apply_task(
                uow,
                task,
                TaskSignal(
                    event, attempt=report.attempt, retryable=retryable, reason=_first_line(message)
                ),
                extra={**base, "error": error.model_dump(mode="json") if error else None},
                event_data={"error": message, "duration_ms": outcome.duration_ms},
            )
            new = result.accepted and not result.duplicate
            if new and task["state"] == TaskState.RETRY_WAIT.value:
                delay = retry_delay_ms(
                    task.get("retry_policy"),
                    int(task["retries_used"]),
                    f"{doc_id}/{report.attempt}",
                )
                uow.update(
                    TASKS,
                    doc_id,
                    {"due_at": uow.now_ms + delay, "not_before_ms": uow.now_ms + delay},
                )
                task["not_before_ms"] = uow.now_ms + delay
        if new:
            released = sorted(
                (
                    (task_doc_id(report.run_id, d["task_id"]), d)
                    for d in downstream_docs.values()
                    if d["state"] == TaskState.READY.value
                ),
                key=lambda kv: kv[1]["order"],
            )
            handed: list[Doc] = []
            if live:
                budget = (
                    1
                    if run.get("max_concurrency")
                    else min(HANDOFF_MAX, len(released) + len(waiting))
                )
                free: dict[str, list[str]] = {}
                for sid in held:
                    free.setdefault(sid.rsplit(":", 1)[0], []).append(sid)
                handed = claim_and_dispatch(
                    uow, [*released, *waiting], free, limits, settings, budget, run_running=True
                )
            used = {sid for d in handed for sid in d.get("slots") or []}
            follow["pools"] = _release_slots(
                uow, task, {k: v for k, v in held.items() if k not in used}, report.attempt
            )
            follow["handed"] = handed
            follow["released_any"] = bool(released) or (
                outcome.status == "succeeded" and bool(single) and not release_inline
            )
            follow["release_later"] = (
                single if outcome.status == "succeeded" and not release_inline else []
            )
            follow["dispatch_run"] = any(
                d["state"] == TaskState.READY.value for _, d in released
            ) or (outcome.status == "succeeded" and bool(single) and not release_inline)
        if result.accepted:
            follow["lc"] = int(task.get("lc", 0))
            downstream = set(task.get("downstream") or [])
            follow["fan_in"] = bool(downstream - set(task.get("release_with") or []))
            follow["leaf"] = not downstream
            follow["state"] = task["state"]
            follow["not_before_ms"] = task.get("not_before_ms")
            follow["now_ms"] = uow.now_ms
        return Answer(accepted=result.accepted, cancel=False, reason=result.reason)

    answer, _ = in_uow(ports, _cause(report), body)
    ports.crash("callback.after_completed_commit")
    for handed in follow.get("handed") or []:
        send_envelope(ports, handed, settings)
    if follow.get("release_later"):
        release_tasks(ports, report.run_id, list(follow["release_later"]), follow.get("lc", 0))
    if "state" in follow:
        follow_up(
            ports,
            report.run_id,
            report.task_id,
            report.attempt,
            state=str(follow["state"]),
            pools=follow.get("pools") or [],
            delay_ms=max(0, int(follow["not_before_ms"] or 0) - int(follow["now_ms"])),
            dispatch_run=follow.get("dispatch_run"),
            fan_in=bool(follow.get("fan_in", True)),
            leaf=bool(follow.get("leaf", True)),
            released_any=bool(follow.get("released_any", False)),
        )
    return answer


def follow_up(
    ports: Ports,
    run_id: str,
    task_id: str,
    attempt: int,
    *,
    state: str,
    pools: Sequence[str] = (),
    delay_ms: int = 0,
    dispatch_run: bool | None = None,
    fan_in: bool = True,
    leaf: bool = True,
    released_any: bool = False,
) -> None:
    """Work that follows a task's transition once it is committed: release downstream tasks,
    skip them after a final failure, schedule a retry, free pool capacity, finish the run.

    Every step is idempotent and is repeated when a report is redelivered (a duplicate report
    still runs its follow-up), and the sweep repeats whatever a crash interrupts, so losing this
    work delays it but never loses it. ``dispatch_run`` says whether released tasks are still
    waiting for a dispatch (False when the callback dispatched them itself); ``fan_in`` whether
    the task has downstream tasks with several upstream tasks; ``leaf`` whether it has no
    downstream task at all; ``released_any`` whether its success released downstream tasks.
    A success that released something cannot be a run's last event, so only the others
    check whether the run is finished.
    """
    if state == TaskState.RETRY_WAIT.value:
        ports.queue.enqueue(
            TOPIC_RETRY,
            {"run_id": run_id, "task_id": task_id, "attempt": attempt},
            name=f"retry-{run_id}-{task_id}-{attempt}",
            delay_s=delay_ms / 1000,
        )
    fanned_in: list[str] = []
    if state == TaskState.SUCCEEDED.value:
        fanned_in = release_fan_in(ports, run_id, task_id) if fan_in else []
        # ``dispatch_run`` is None when unknown (a redelivered report): dispatch to be safe.
        if fanned_in or dispatch_run is None or dispatch_run:
            ports.queue.enqueue(TOPIC_DISPATCH, {"run_id": run_id})
    if state == TaskState.FAILED.value:
        skip_downstream(ports, run_id, [task_id])
    for pool in sorted(set(pools)):
        ports.queue.enqueue(TOPIC_DISPATCH, {"pool": pool})
    succeeded_last = state == TaskState.SUCCEEDED.value and (
        leaf or not (released_any or fanned_in)
    )
    if succeeded_last or state in (TaskState.FAILED.value, TaskState.CANCELLED.value):
        ports.queue.enqueue(TOPIC_FINALIZE, {"run_id": run_id})


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "failed"
    return line[:300]


def _commit_output(
    uow: UnitOfWork,
    task: Doc,
    run: Doc,
    pointer_id: str,
    pointer: Doc | None,
    outcome: Outcome,
    attempt: int,
) -> None:
    """Make the attempt's staged output the asset partition's committed output."""
    output = outcome.output
    record = {
        "asset": task["asset"],
        "partition": task.get("partition"),
        "partition_user": task.get("partition_user"),
        "status": "MATERIALIZED",
        "run_id": task["run_id"],
        "task_id": task["task_id"],
        "attempt": attempt,
        "output_path": output.path if output else None,
        "size": output.size if output else 0,
        "metadata": dict(output.metadata) if output else {},
        "code_version": run["code_version"],
        "materialized_ms": uow.now_ms,
        "materializations": int((pointer or {}).get("materializations", 0)) + 1,
        "checks": {c.name: c.passed for c in outcome.checks},
    }
    uow.set(ASSET_PARTITIONS, pointer_id, record)
    uow.emit(
        ev.MATERIALIZATION,
        run_id=task["run_id"],
        task_id=task["task_id"],
        attempt=attempt,
        data={
            "asset": task["asset"],
            "partition": task.get("partition"),
            "output_path": record["output_path"],
            "size": record["size"],
            "metadata": record["metadata"],
            "code_version": run["code_version"],
            "inputs": [i.model_dump(mode="json") for i in outcome.inputs],
        },
        data_version=2,
    )
    for c in outcome.checks:
        uow.emit(
            ev.CHECK_EVALUATED,
            run_id=task["run_id"],
            task_id=task["task_id"],
            attempt=attempt,
            data={
                "asset": task["asset"],
                "partition": task.get("partition"),
                **c.model_dump(mode="json"),
            },
        )


def release_fan_in(ports: Ports, run_id: str, task_id: str) -> list[str]:
    """Release downstream tasks that have several upstream tasks, once all of them succeeded.

    Runs after the upstream's SUCCEEDED is committed; the query for an unfinished sibling is
    strongly consistent, so when the last upstream finishes at least one of the racing
    callbacks sees none left, and the release itself is idempotent.
    """
    task = ports.state.get(TASKS, task_doc_id(run_id, task_id))
    if task is None or task["state"] != TaskState.SUCCEEDED.value:
        return []
    single = set(task.get("release_with") or [])
    released: list[str] = []
    for down in task.get("downstream") or []:
        if down in single:
            continue
        pending = ports.state.query(
            TASKS,
            [
                Where("run_id", "==", run_id),
                Where("downstream", "array_contains", down),
                Where("succeeded", "==", False),
            ],
            limit=1,
        )
        if pending:
            continue
        if release_task(ports, run_id, down, lc_floor=int(task.get("lc", 0))):
            released.append(down)
    return released


def release_task(
    ports: Ports, run_id: str, task_id: str, *, lc_floor: int = 0, source: str = "servo/callback"
) -> bool:
    """BLOCKED -> READY once every upstream task of ``task_id`` succeeded; True if released.

    The upstream tasks are read in the transaction: that confirms they all succeeded, and it
    gives the release a Lamport clock above each upstream's SUCCEEDED event — the caller's
    floor covers only the upstream it came from, and a sibling may have succeeded later.
    """

    def body(uow: UnitOfWork) -> bool:
        doc = uow.get(TASKS, task_doc_id(run_id, task_id))
        if doc is None or doc["state"] not in (TaskState.BLOCKED.value, TaskState.PLANNED.value):
            return False
        upstream = list(doc.get("upstream") or [])
        ups = uow.get_many(TASKS, [task_doc_id(run_id, u) for u in upstream])
        if len(ups) != len(upstream) or any(
            u["state"] != TaskState.SUCCEEDED.value for u in ups.values()
        ):
            return False
        r = apply_task(uow, doc, TaskSignal(TaskEvent.RELEASE), record_duplicate=False)
        return r.accepted and not r.duplicate

    cause = Cause(source=source, correlation_id=run_id, lc_floor=lc_floor)
    done, _ = in_uow(ports, cause, body)
    return done


def release_tasks(ports: Ports, run_id: str, task_ids: Sequence[str], lc_floor: int) -> int:
    """Release single-upstream downstream tasks in batches (after a wide fan-out's upstream
    succeeded); idempotent. Returns how many were released."""
    released = 0
    for start in range(0, len(task_ids), SKIP_BATCH):
        chunk = list(task_ids[start : start + SKIP_BATCH])

        def body(uow: UnitOfWork, chunk: list[str] = chunk) -> int:
            docs = uow.get_many(TASKS, [task_doc_id(run_id, t) for t in chunk])
            n = 0
            for d in docs.values():
                if d["state"] in (TaskState.BLOCKED.value, TaskState.PLANNED.value):
                    r = apply_task(uow, d, TaskSignal(TaskEvent.RELEASE), record_duplicate=False)
                    n += int(r.accepted and not r.duplicate)
            return n

        cause = Cause(source="servo/callback", correlation_id=run_id, lc_floor=lc_floor)
        count, _ = in_uow(ports, cause, body)
        released += count
    return released


def skip_downstream(ports: Ports, run_id: str, failed: Sequence[str]) -> int:
    """Skip every task downstream of ``failed``, in batches, naming the failed task."""
    root_docs = {t: ports.state.get(TASKS, task_doc_id(run_id, t)) for t in failed}
    frontier: list[tuple[str, str]] = []
    for t, d in root_docs.items():
        if d is None:
            continue
        for down in d.get("downstream") or []:
            frontier.append((down, d.get("display") or t))
    seen: set[str] = set()
    skipped = 0
    floor = max((int(d.get("lc", 0)) for d in root_docs.values() if d), default=0)
    while frontier:
        batch: list[tuple[str, str]] = []
        while frontier and len(batch) < SKIP_BATCH:
            item = frontier.pop(0)
            if item[0] not in seen:
                seen.add(item[0])
                batch.append(item)
        if not batch:
            break

        def body(uow: UnitOfWork, batch: list[tuple[str, str]] = batch) -> list[tuple[str, str]]:
            docs = uow.get_many(TASKS, [task_doc_id(run_id, t) for t, _ in batch])
            nxt: list[tuple[str, str]] = []
            for t, cause_display in batch:
                d = docs.get(task_doc_id(run_id, t))
                if d is None:
                    continue
                if d["state"] in (
                    TaskState.PLANNED.value,
                    TaskState.BLOCKED.value,
                    TaskState.READY.value,
                ):
                    apply_task(
                        uow,
                        d,
                        TaskSignal(
                            TaskEvent.UPSTREAM_FAILED,
                            reason=f"upstream task `{cause_display}` failed",
                        ),
                        extra={"skipped_because": cause_display},
                        record_duplicate=False,
                    )
                if d["state"] == TaskState.SKIPPED.value:
                    nxt.extend((down, cause_display) for down in d.get("downstream") or [])
            return nxt

        cause = Cause(source="servo/callback", correlation_id=run_id, lc_floor=floor)
        nxt, events = in_uow(ports, cause, body)
        floor = max([floor, *(int(e["lc"]) for e in events)])
        skipped += sum(1 for e in events if e["type"] == ev.TASK_STATE)
        frontier.extend(nxt)
    return skipped


def finalize_run(ports: Ports, run_id: str) -> str | None:
    """Finish the run if every task is terminal; returns the run's final state, if any."""
    pending = ports.state.query(
        TASKS,
        [Where("run_id", "==", run_id), Where("state", "in", list(NONTERMINAL_TASK_STATES))],
        limit=1,
    )
    if pending:
        return None
    bad = ports.state.query(
        TASKS,
        [Where("run_id", "==", run_id), Where("state", "in", list(UNSUCCESSFUL_TASK_STATES))],
        limit=1,
    )
    # The run's last event must sort after every task event: start from the latest task's clock.
    latest = ports.state.query(TASKS, [Where("run_id", "==", run_id)], order_by="-lc", limit=1)
    floor = int(latest[0][1].get("lc", 0)) if latest else 0

    def body(uow: UnitOfWork) -> str | None:
        run = uow.get(RUNS, run_id)
        if run is None or not run.get("tasks_written"):
            return None
        state = RunState(run["state"])
        if state.value in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
            return state.value
        if state is RunState.CANCELLING:
            apply_run(uow, run, RunEvent.CANCEL_COMPLETE, "every task has stopped")
        elif bad:
            d = bad[0][1]
            apply_run(uow, run, RunEvent.FAIL, f"task `{d.get('display')}` is {d['state']}")
        else:
            apply_run(uow, run, RunEvent.SUCCEED, "every task succeeded")
        return str(run["state"])

    final, _ = in_uow(
        ports, Cause(source="servo/callback", correlation_id=run_id, lc_floor=floor), body
    )
    return final


def is_terminal_task(doc: Doc) -> bool:
    return TaskState(doc["state"]) in TERMINAL_TASK_STATES
