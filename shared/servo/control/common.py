"""What the control services share: collections, settings, ids, tokens, task transitions."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from servo.control.uow import UnitOfWork
from servo.core import events as ev
from servo.core.statemachine import (
    TERMINAL_TASK_STATES,
    RunEvent,
    RunFacts,
    RunSignal,
    RunState,
    TaskEvent,
    TaskFacts,
    TaskOutcome,
    TaskSignal,
    TaskState,
    transition_run,
    transition_task,
)
from servo.ports import Doc, Ports

# Collections of the state store.
RUNS = "runs"
TASKS = "tasks"
RUN_KEYS = "run_keys"
DEPLOYMENTS = "deployments"
WORKSPACE = "workspace"
SLOTS = "slots"
ASSET_PARTITIONS = "asset_partitions"
LEDGER_HEADS = "ledger_heads"

# Queue topics.
TOPIC_DISPATCH = "dispatch"
TOPIC_EXECUTE = "execute"
TOPIC_RETRY = "retry"
TOPIC_FINALIZE = "finalize"

GLOBAL_POOL = "__global__"

ACTIVE_TASK_STATES = (TaskState.DISPATCHED.value, TaskState.RUNNING.value)
NONTERMINAL_TASK_STATES = tuple(s.value for s in TaskState if s not in TERMINAL_TASK_STATES)
UNSUCCESSFUL_TASK_STATES = (
    TaskState.FAILED.value,
    TaskState.SKIPPED.value,
    TaskState.CANCELLED.value,
)


@dataclass(frozen=True)
class Settings:
    """Timing and limits of the control plane (overridable through ``Ports.settings``)."""

    heartbeat_interval_ms: int = 2_000
    heartbeat_timeout_ms: int = 30_000
    dispatch_timeout_ms: int = 120_000
    cancel_grace_ms: int = 10_000
    max_concurrent_tasks: int | None = None
    dispatch_batch: int = 100
    callback_secret: str = "servo-local-secret"
    stale_run_write_ms: int = 30_000

    @classmethod
    def of(cls, ports: Ports) -> Settings:
        known = {k: v for k, v in ports.settings.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def task_doc_id(run_id: str, task_id: str) -> str:
    return f"{run_id}.{task_id}"


def asset_partition_id(asset: str, partition: str | None) -> str:
    """Document id of an asset partition (Firestore ids may not contain '/')."""
    return f"{asset.replace('/', '~')}|{partition if partition is not None else '-'}"


def attempt_token(
    secret: str, tenant: str, workspace: str, run_id: str, task_id: str, attempt: int
) -> str:
    """A token that authorizes reports about one attempt of one task, and nothing else."""
    msg = f"{tenant}/{workspace}/{run_id}/{task_id}/{attempt}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()[:40]


def check_token(
    settings: Settings, ports: Ports, run_id: str, task_id: str, attempt: int, token: str
) -> bool:
    expected = attempt_token(
        settings.callback_secret, ports.tenant, ports.workspace, run_id, task_id, attempt
    )
    return hmac.compare_digest(expected, token)


def task_facts(doc: Mapping[str, Any]) -> TaskFacts:
    last = doc.get("last_event")
    return TaskFacts(
        state=TaskState(doc["state"]),
        attempt=int(doc.get("attempt", 0)),
        retries_used=int(doc.get("retries_used", 0)),
        max_retries=int(doc.get("max_retries", 0)),
        cancel_requested=bool(doc.get("cancel_requested", False)),
        last_event=TaskEvent(last) if last else None,
    )


def apply_task(
    uow: UnitOfWork,
    doc: Doc,
    signal: TaskSignal,
    *,
    extra: Mapping[str, Any] | None = None,
    event_data: Mapping[str, Any] | None = None,
    record_duplicate: bool = True,
) -> TaskOutcome:
    """Apply ``signal`` to the task ``doc`` inside ``uow``: write the change and its event.

    Rejected signals change nothing; duplicates are recorded as idempotent hits (an event, no
    state change). ``extra`` fields are written only when the transition is accepted and new.
    ``doc`` is updated in place to the new document.
    """
    facts = task_facts(doc)
    outcome = transition_task(facts, signal)
    run_id, task_id = doc["run_id"], doc["task_id"]
    if outcome.duplicate:
        if record_duplicate:
            uow.emit(
                ev.TASK_DUPLICATE,
                run_id=run_id,
                task_id=task_id,
                attempt=signal.attempt,
                data={
                    "event": signal.event.value,
                    "state": facts.state.value,
                    "reason": outcome.reason,
                },
            )
        return outcome
    if not outcome.accepted:
        if signal.attempt is not None:
            uow.emit(
                ev.TASK_REJECTED,
                run_id=run_id,
                task_id=task_id,
                attempt=signal.attempt,
                data={
                    "event": signal.event.value,
                    "state": facts.state.value,
                    "reason": outcome.reason,
                },
            )
        return outcome
    new = outcome.facts
    fields: dict[str, Any] = {
        "state": new.state.value,
        "attempt": new.attempt,
        "retries_used": new.retries_used,
        "cancel_requested": new.cancel_requested,
        "last_event": signal.event.value,
        "reason": outcome.reason,
        "updated_ms": uow.now_ms,
        "succeeded": new.state is TaskState.SUCCEEDED,
    }
    if new.state in TERMINAL_TASK_STATES:
        fields["due_at"] = None
        fields["ended_ms"] = uow.now_ms
    if extra:
        fields.update(extra)
    if new.state != facts.state or signal.event is not TaskEvent.HEARTBEAT:
        data_version = 2 if event_data and "duration_ms" in event_data else 1
        uow.emit(
            ev.TASK_STATE,
            run_id=run_id,
            task_id=task_id,
            attempt=new.attempt or None,
            data={
                "asset": doc["asset"],
                "partition": doc.get("partition"),
                "from": facts.state.value,
                "to": new.state.value,
                "event": signal.event.value,
                "reason": outcome.reason,
                **(dict(event_data) if event_data else {}),
            },
            data_version=data_version,
        )
    uow.update(TASKS, task_doc_id(run_id, task_id), fields)
    doc.update(fields)
    return outcome


def apply_run(
    uow: UnitOfWork, run: Doc, event: RunEvent, reason: str | None = None, **extra: Any
) -> bool:
    """Apply a run event; returns True when the run's state changed."""
    last = run.get("last_event")
    facts = RunFacts(state=RunState(run["state"]), last_event=RunEvent(last) if last else None)
    outcome = transition_run(facts, RunSignal(event, reason))
    if not outcome.accepted or outcome.duplicate:
        return False
    fields: dict[str, Any] = {
        "state": outcome.facts.state.value,
        "last_event": event.value,
        "reason": outcome.reason,
        "updated_ms": uow.now_ms,
        **extra,
    }
    if outcome.facts.state.value in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
        fields["ended_ms"] = uow.now_ms
    if outcome.facts.state is RunState.STARTING:
        fields.setdefault("started_ms", uow.now_ms)
    uow.emit(
        ev.RUN_STATE,
        run_id=run["run_id"],
        data={
            "from": facts.state.value,
            "to": outcome.facts.state.value,
            "event": event.value,
            "reason": outcome.reason,
        },
    )
    uow.update(RUNS, run["run_id"], fields)
    run.update(fields)
    return True


def retry_delay_ms(policy: Mapping[str, Any] | None, retry_number: int, jitter_source: str) -> int:
    """The delay before retry ``retry_number`` (1-based) under ``policy``.

    Jitter is derived from ``jitter_source`` (the task and attempt) so that the same failure
    always gets the same delay — a redelivered report must not pick a different retry time.
    """
    if not policy:
        return 0
    base = int(policy.get("delay_ms", 0))
    backoff = policy.get("backoff", "constant")
    if backoff == "linear":
        delay = base * retry_number
    elif backoff == "exponential":
        delay = base * (2 ** (retry_number - 1))
    else:
        delay = base
    cap = policy.get("max_delay_ms")
    if cap is not None:
        delay = min(delay, int(cap))
    jitter = policy.get("jitter", "none")
    if jitter != "none" and delay > 0:
        frac = int(hashlib.sha256(jitter_source.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        if jitter == "full":
            delay = int(delay * frac)
        else:  # plus_minus: +-25 %
            delay = int(delay * (0.75 + 0.5 * frac))
    return max(0, delay)
