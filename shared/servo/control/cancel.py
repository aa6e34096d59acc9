"""cancel: stop a run. Queued tasks are cancelled at once; running tasks are told through the
answer to their next heartbeat and are force-cancelled by the sweep when the grace period ends."""

from __future__ import annotations

from dataclasses import dataclass

from servo.control.common import (
    NONTERMINAL_TASK_STATES,
    RUNS,
    SLOTS,
    TASKS,
    TOPIC_DISPATCH,
    TOPIC_FINALIZE,
    Settings,
    apply_run,
    apply_task,
    task_doc_id,
)
from servo.control.uow import Cause, UnitOfWork, in_uow
from servo.core.errors import NotFound
from servo.core.statemachine import RunEvent, TaskEvent, TaskSignal, TaskState
from servo.ports import Doc, Ports, Where

CANCEL_BATCH = 200


@dataclass(frozen=True)
class CancelResult:
    run_id: str
    state: str
    cancelled: int
    signalled: int


def cancel_run(ports: Ports, run_id: str, *, actor: str = "user:unknown") -> CancelResult:
    """Cancel ``run_id`` (idempotent: cancelling a finished run changes nothing)."""
    settings = Settings.of(ports)
    cause = Cause(actor=actor, source="servo/cancel", correlation_id=run_id)

    def mark(uow: UnitOfWork) -> Doc:
        run = uow.get(RUNS, run_id)
        if run is None:
            raise NotFound(f"run {run_id} does not exist; `servo status` lists recent runs")
        apply_run(
            uow, run, RunEvent.CANCEL, f"cancelled by {actor}", cancel_requested_ms=uow.now_ms
        )
        return run

    run, _ = in_uow(ports, cause, mark)
    ports.crash("cancel.after_run_marked")
    cancelled = signalled = 0
    if run["state"] == "CANCELLING":
        cancelled, signalled = cancel_tasks(ports, run_id, actor, settings)
    ports.queue.enqueue(TOPIC_FINALIZE, {"run_id": run_id})
    from servo.control.callback import finalize_run

    final = finalize_run(ports, run_id) or run["state"]
    return CancelResult(run_id=run_id, state=final, cancelled=cancelled, signalled=signalled)


def cancel_tasks(ports: Ports, run_id: str, actor: str, settings: Settings) -> tuple[int, int]:
    """Cancel the run's unfinished tasks in batches; returns (cancelled, signalled)."""
    cause = Cause(actor=actor, source="servo/cancel", correlation_id=run_id)
    cancelled = signalled = 0
    freed_pools: set[str] = set()
    while True:
        rows = ports.state.query(
            TASKS,
            [
                Where("run_id", "==", run_id),
                Where("state", "in", list(NONTERMINAL_TASK_STATES)),
                Where("cancel_requested", "==", False),
            ],
            limit=CANCEL_BATCH,
        )
        if not rows:
            break
        ids = [doc_id for doc_id, _ in rows]

        def body(uow: UnitOfWork, ids: list[str] = ids) -> tuple[int, int, set[str]]:
            docs = uow.get_many(TASKS, ids)
            slot_ids = sorted({s for d in docs.values() for s in d.get("slots") or []})
            slots = uow.get_many(SLOTS, slot_ids) if slot_ids else {}
            c = s = 0
            pools: set[str] = set()
            for doc_id in ids:
                d = docs.get(doc_id)
                if d is None:
                    continue
                was = d["state"]
                extra = {}
                if was == TaskState.RUNNING.value:
                    deadline = uow.now_ms + settings.cancel_grace_ms
                    extra = {
                        "cancel_deadline": deadline,
                        "due_at": min(deadline, int(d.get("due_at") or deadline)),
                    }
                r = apply_task(
                    uow,
                    d,
                    TaskSignal(TaskEvent.CANCEL, reason=f"cancelled by {actor}"),
                    extra=extra,
                    record_duplicate=False,
                )
                if not r.accepted:
                    continue
                if d["state"] == TaskState.CANCELLED.value:
                    c += 1
                    holder = task_doc_id(run_id, d["task_id"])
                    for sid in d.get("slots") or []:
                        slot = slots.get(sid)
                        if slot and slot.get("holder") == holder:
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
                            pools.add(str(slot.get("pool")))
                else:
                    s += 1
            return c, s, pools

        (c, s, pools), _ = in_uow(ports, cause, body)
        ports.crash("cancel.after_task_batch")
        cancelled += c
        signalled += s
        freed_pools |= pools
        if c == 0 and s == 0:
            break
    for pool in sorted(freed_pools):
        ports.queue.enqueue(TOPIC_DISPATCH, {"pool": pool})
    return cancelled, signalled
