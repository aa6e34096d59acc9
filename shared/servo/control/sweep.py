"""sweep: the periodic safety net that makes every run finish even if messages are lost.

One index-backed query finds the tasks whose ``due_at`` has passed, and the task's state says
what is due: a dispatch that was never started (re-dispatch), a worker that stopped
heartbeating (a zombie: retry or fail), an attempt that ran past its timeout (FAILED with
reason TIMEOUT), a retry whose delay is over (dispatch it), a cancelled task whose grace period
is over (force-cancel). Then live runs are reconciled: unwritten runs are finished, cancels
that stopped part-way are completed, released or skipped downstream tasks that a lost
follow-up left BLOCKED are fixed, ready tasks are re-dispatched, and runs whose tasks are all
terminal are finished.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servo.control.callback import finalize_run, follow_up, release_task, skip_downstream
from servo.control.cancel import cancel_tasks
from servo.control.common import (
    RUNS,
    SLOTS,
    TASKS,
    Settings,
    apply_task,
    task_doc_id,
)
from servo.control.dispatch import dispatch_run, retry_due
from servo.control.trigger import resume_unwritten_run
from servo.control.uow import Cause, UnitOfWork, in_uow
from servo.core.events import to_ms
from servo.core.statemachine import TaskEvent, TaskSignal, TaskState
from servo.ports import Doc, Ports, StateTxn, Where

LIVE_RUNS = ("QUEUED", "STARTING", "RUNNING", "CANCELLING")


@dataclass
class SweepReport:
    redispatched: int = 0
    zombies: int = 0
    timed_out: int = 0
    retried: int = 0
    force_cancelled: int = 0
    released: int = 0
    finalized: list[str] = field(default_factory=list)

    def total(self) -> int:
        return (
            self.redispatched
            + self.zombies
            + self.timed_out
            + self.retried
            + self.force_cancelled
            + self.released
            + len(self.finalized)
        )


def sweep(ports: Ports, *, limit: int = 500) -> SweepReport:
    settings = Settings.of(ports)
    report = SweepReport()
    now = to_ms(ports.clock.now())
    due = ports.state.query(TASKS, [Where("due_at", "<=", now)], order_by="due_at", limit=limit)
    for _, task in due:
        _handle_due(ports, task, now, settings, report)
    _reconcile_runs(ports, settings, report, now)
    return report


def _handle_due(ports: Ports, task: Doc, now: int, settings: Settings, report: SweepReport) -> None:
    state = task["state"]
    run_id, task_id, attempt = task["run_id"], task["task_id"], int(task.get("attempt", 0))
    if state == TaskState.RETRY_WAIT.value:
        retry_due(ports, run_id, task_id, attempt)
        report.retried += 1
        return
    event: TaskEvent | None = None
    reason = ""
    if state == TaskState.DISPATCHED.value:
        event, reason = TaskEvent.DISPATCH_TIMEOUT, "the worker never started the attempt"
    elif state == TaskState.RUNNING.value:
        if (
            task.get("cancel_requested")
            and task.get("cancel_deadline")
            and now >= int(task["cancel_deadline"])
        ):
            event, reason = TaskEvent.FORCE_CANCEL, "the cancel grace period ended"
        elif task.get("exec_deadline") and now >= int(task["exec_deadline"]):
            event, reason = (
                TaskEvent.EXECUTION_TIMEOUT,
                f"ran longer than its timeout of {int(task['timeout_ms']) // 1000} s",
            )
        elif (
            task.get("heartbeat_ms") is not None
            and now >= int(task["heartbeat_ms"]) + settings.heartbeat_timeout_ms
        ):
            event, reason = (
                TaskEvent.HEARTBEAT_TIMEOUT,
                (
                    f"no heartbeat for {settings.heartbeat_timeout_ms // 1000} s (the worker is gone)"
                ),
            )
    if event is None:
        return
    chosen = event

    def body(uow: UnitOfWork) -> str | None:
        doc = uow.get(TASKS, task_doc_id(run_id, task_id))
        if doc is None or doc["state"] != state or int(doc.get("attempt", 0)) != attempt:
            return None
        slots = uow.get_many(SLOTS, list(doc.get("slots") or [])) if doc.get("slots") else {}
        r = apply_task(
            uow,
            doc,
            TaskSignal(chosen, attempt=attempt, retryable=True, reason=reason),
            extra={
                "error": {
                    "kind": _kind(chosen),
                    "message": reason,
                    "retryable": chosen is not TaskEvent.EXECUTION_TIMEOUT,
                }
            }
            if chosen is not TaskEvent.DISPATCH_TIMEOUT
            else None,
        )
        if not r.accepted or r.duplicate:
            return None
        holder = task_doc_id(run_id, task_id)
        for sid, slot in slots.items():
            if slot.get("holder") == holder:
                uow.set(
                    SLOTS,
                    sid,
                    {
                        "pool": slot.get("pool"),
                        "holder": None,
                        "attempt": 0,
                        "since_ms": uow.now_ms,
                    },
                )
        if doc["state"] == TaskState.RETRY_WAIT.value:
            from servo.control.common import retry_delay_ms

            delay = retry_delay_ms(
                doc.get("retry_policy"), int(doc["retries_used"]), f"{holder}/{attempt}"
            )
            uow.update(
                TASKS, holder, {"due_at": uow.now_ms + delay, "not_before_ms": uow.now_ms + delay}
            )
            doc["not_before_ms"] = uow.now_ms + delay
        return str(doc["state"])

    new_state, _ = in_uow(ports, Cause(source="servo/sweep", correlation_id=run_id), body)
    if new_state is None:
        return
    ports.crash("sweep.after_task_commit")
    if chosen is TaskEvent.DISPATCH_TIMEOUT:
        report.redispatched += 1
        dispatch_run(ports, run_id)
        return
    if chosen is TaskEvent.FORCE_CANCEL:
        report.force_cancelled += 1
    elif chosen is TaskEvent.EXECUTION_TIMEOUT:
        report.timed_out += 1
    else:
        report.zombies += 1
    pools = sorted({str(s).rsplit(":", 1)[0] for s in task.get("slots") or []})
    follow_up(
        ports,
        run_id,
        task_id,
        attempt,
        state=new_state,
        pools=pools,
        delay_ms=_delay_left(ports, run_id, task_id),
    )


def _delay_left(ports: Ports, run_id: str, task_id: str) -> int:
    doc = ports.state.get(TASKS, task_doc_id(run_id, task_id)) or {}
    nb = doc.get("not_before_ms")
    return max(0, int(nb) - to_ms(ports.clock.now())) if nb else 0


def _kind(event: TaskEvent) -> str:
    if event is TaskEvent.EXECUTION_TIMEOUT:
        return "timeout"
    if event is TaskEvent.FORCE_CANCEL:
        return "cancelled"
    return "infrastructure"


def _reconcile_runs(ports: Ports, settings: Settings, report: SweepReport, now: int) -> None:
    runs = ports.state.query(
        RUNS, [Where("state", "in", list(LIVE_RUNS))], order_by="created_ms", limit=200
    )
    for run_id, run in runs:
        if not run.get("tasks_written"):
            if now - int(run.get("created_ms", now)) >= settings.stale_run_write_ms:
                resume_unwritten_run(ports, run)
            continue
        cancel_ms = run.get("cancel_requested_ms")
        if (
            run["state"] == "CANCELLING"
            and cancel_ms is not None
            and now - int(cancel_ms) >= settings.stale_run_write_ms
        ):
            # A cancel that crashed part-way (and was not retried) left tasks that were never
            # cancelled; READY ones would wait forever, as a cancelling run dispatches nothing.
            cancel_tasks(ports, run_id, "system", settings)
        live = ports.state.query(
            TASKS,
            [
                Where("run_id", "==", run_id),
                Where("state", "in", ["READY", "DISPATCHED", "RUNNING", "RETRY_WAIT"]),
            ],
            limit=1,
        )
        if live:
            if live[0][1]["state"] == "READY" and run["state"] != "CANCELLING":
                dispatch_run(ports, run_id)
            continue
        blocked = ports.state.query(
            TASKS, [Where("run_id", "==", run_id), Where("state", "in", ["BLOCKED", "PLANNED"])]
        )
        if blocked:
            report.released += _unblock(ports, run_id, [d for _, d in blocked])
            dispatch_run(ports, run_id)
            continue
        final = finalize_run(ports, run_id)
        if final:
            report.finalized.append(run_id)


def _unblock(ports: Ports, run_id: str, blocked: list[Doc]) -> int:
    """Fix BLOCKED tasks of a run with nothing else to do: a lost follow-up left them behind."""
    upstream_ids = sorted({u for d in blocked for u in d.get("upstream") or []})
    states: dict[str, str] = {}
    for i in range(0, len(upstream_ids), 200):
        chunk = upstream_ids[i : i + 200]
        ids = [task_doc_id(run_id, u) for u in chunk]

        def read(txn: StateTxn, ids: list[str] = ids) -> dict[str, Doc]:
            return txn.get_many(TASKS, ids)

        docs = ports.state.transact(read)
        for d in docs.values():
            states[d["task_id"]] = d["state"]
    failed = [u for u, s in states.items() if s in ("FAILED", "SKIPPED", "CANCELLED")]
    changed = 0
    if failed:
        changed += skip_downstream(ports, run_id, failed)
    for d in blocked:
        if all(states.get(u) == "SUCCEEDED" for u in d.get("upstream") or []):
            changed += int(release_task(ports, run_id, d["task_id"], source="servo/sweep"))
    return changed
