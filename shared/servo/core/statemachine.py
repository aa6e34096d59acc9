"""Run and task lifecycles as data.

Every legal move of a run or a task is one row of a table (``RUN_RULES``, ``TASK_RULES``):
``Rule(from_states, event, guard, to_state, reason, effect)``. ``transition_run`` and
``transition_task`` are the only code that interprets the tables; they are pure and never touch a
store, so the same function decides on every backend and the tables can be printed as docs
(``run_rules_table()``, ``task_rules_table()``).

How a task signal is decided, in order:

1. *Attempt guard.* Signals that come from a worker (``ATTEMPT_GUARDED_TASK_EVENTS``) carry the
   attempt number they report on. If it is not the task's current attempt the signal is rejected
   as ``stale attempt N (current attempt M)`` and nothing changes, whatever the state; this is
   what keeps a late result of an abandoned attempt from touching a newer attempt or a terminal
   state.
2. *Rules.* The rules for ``(state, event)`` are tried in table order; the first whose guard
   holds (or that has no guard) is applied. Guards sharing a ``(state, event)`` are mutually
   exclusive, so the order never matters; the tests check this.
3. *Duplicates.* If no rule applies but the facts show that the signal already took effect
   (the last accepted event was this one, or the state itself proves it: a START for a task that
   is already RUNNING, a CANCEL for a task that is CANCELLED or whose cancel is already
   requested), the signal is accepted as a duplicate and nothing changes. Redelivered messages
   and double clicks therefore succeed quietly.
4. Anything else is rejected with a short reason and nothing changes.

Runs follow the same steps without the attempt guard.

Decisions the tables encode:

* ``UPSTREAM_FAILED`` applies to PLANNED, BLOCKED and READY tasks, not to RETRY_WAIT ones. A task
  in RETRY_WAIT has already run, which it only does after every upstream task succeeded, and a
  succeeded task never fails later in the same run; so the signal cannot legitimately reach it,
  and SKIPPED ("never ran because of upstream") would hide its own failed attempt. Rejecting it
  exposes the caller's bug instead. READY is accepted because a READY task holds no worker, so
  skipping it is free and the caller can skip every not-yet-dispatched downstream task in one
  pass without first reading which of them were released.
* A run is cancelled through CANCELLING from every live state, QUEUED included: a queued run may
  already have planned tasks, and one path means "every task is terminal" (``CANCEL_COMPLETE``)
  is the only way a cancellation ends. A caller with nothing left to stop sends
  ``CANCEL_COMPLETE`` straight after ``CANCEL``.
* A failed or lost attempt is never retried once a cancel was requested.
* ``EXECUTION_TIMEOUT`` fails the task without a retry; its reason starts with ``TIMEOUT``.
* ``DISPATCH_TIMEOUT`` (the dispatch message was lost) sends the task back to READY without using
  a retry; dispatching it again still starts a new attempt, so a late START of the lost dispatch
  is stale.
* A task cancelled while DISPATCHED goes straight to CANCELLED. If its worker starts anyway, the
  worker's START or HEARTBEAT is rejected ("task is already CANCELLED") and the worker stops.

Reasons are templates formatted with these fields: ``attempt`` (the attempt the signal is about),
``new_attempt`` (the attempt after the move), ``retry`` and ``max_retries`` (retries used after
the move, and allowed), ``because`` (``": <signal reason>"`` or empty), ``upstream`` (the
caller's reason, naming the upstream task) and ``no_retry`` (why a failure is not retried).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Generic, TypeVar

# ----------------------------------------------------------------------------- states and events


class RunState(StrEnum):
    """Where a run is in its lifecycle."""

    QUEUED = "QUEUED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


class TaskState(StrEnum):
    """Where a task (one operation on one asset partition within a run) is in its lifecycle."""

    PLANNED = "PLANNED"
    BLOCKED = "BLOCKED"
    READY = "READY"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    RETRY_WAIT = "RETRY_WAIT"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"


TERMINAL_RUN_STATES: frozenset[RunState] = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.TIMED_OUT}
)
TERMINAL_TASK_STATES: frozenset[TaskState] = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED}
)


class RunEvent(StrEnum):
    """Something that happened to a run; the caller decides which one from the run's tasks."""

    ADMIT = "ADMIT"
    TASK_STARTED = "TASK_STARTED"
    SUCCEED = "SUCCEED"
    FAIL = "FAIL"
    CANCEL = "CANCEL"
    CANCEL_COMPLETE = "CANCEL_COMPLETE"
    TIMEOUT = "TIMEOUT"


class TaskEvent(StrEnum):
    """Something that happened to a task: a scheduler decision, a worker report or a timer."""

    BLOCK = "BLOCK"
    RELEASE = "RELEASE"
    DISPATCH = "DISPATCH"
    START = "START"
    HEARTBEAT = "HEARTBEAT"
    SUCCEED = "SUCCEED"
    FAIL = "FAIL"
    HEARTBEAT_TIMEOUT = "HEARTBEAT_TIMEOUT"
    DISPATCH_TIMEOUT = "DISPATCH_TIMEOUT"
    EXECUTION_TIMEOUT = "EXECUTION_TIMEOUT"
    RETRY_DUE = "RETRY_DUE"
    UPSTREAM_FAILED = "UPSTREAM_FAILED"
    CANCEL = "CANCEL"
    CANCELLED_BY_WORKER = "CANCELLED_BY_WORKER"
    FORCE_CANCEL = "FORCE_CANCEL"


ATTEMPT_GUARDED_TASK_EVENTS: frozenset[TaskEvent] = frozenset(
    {
        TaskEvent.START,
        TaskEvent.HEARTBEAT,
        TaskEvent.SUCCEED,
        TaskEvent.FAIL,
        TaskEvent.HEARTBEAT_TIMEOUT,
        TaskEvent.DISPATCH_TIMEOUT,
        TaskEvent.EXECUTION_TIMEOUT,
        TaskEvent.CANCELLED_BY_WORKER,
    }
)
"""Task events that are about one attempt and are ignored unless that attempt is current."""

# ----------------------------------------------------------------------------- facts and signals


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """What the task machine needs to know about a task.

    ``attempt`` counts dispatches (0 before the first); ``retries_used`` counts the failures that
    were retried; ``last_event`` is the event of the last accepted transition and is how repeated
    signals are recognised.
    """

    state: TaskState
    attempt: int = 0
    retries_used: int = 0
    max_retries: int = 0
    cancel_requested: bool = False
    last_event: TaskEvent | None = None


@dataclass(frozen=True, slots=True)
class TaskSignal:
    """An event for one task; ``attempt`` is required for ``ATTEMPT_GUARDED_TASK_EVENTS``.

    ``retryable`` only matters for FAIL. ``reason`` is the caller's explanation (an error
    summary, who cancelled, which upstream task failed) and is woven into the outcome's reason.
    """

    event: TaskEvent
    attempt: int | None = None
    retryable: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What the run machine needs to know about a run."""

    state: RunState
    last_event: RunEvent | None = None


@dataclass(frozen=True, slots=True)
class RunSignal:
    """An event for one run, with the caller's explanation."""

    event: RunEvent
    reason: str | None = None


StateT = TypeVar("StateT", bound=StrEnum)
EventT = TypeVar("EventT", bound=StrEnum)


@dataclass(frozen=True, slots=True)
class Rule(Generic[StateT, EventT]):
    """One legal move: ``event`` in any of ``from_states`` leads to ``to_state``.

    ``guard`` names a predicate in the machine's guards table that must hold for the rule to
    apply; ``effect`` names a change to the facts besides the state (e.g. ``attempt+1``);
    ``reason`` is the template of the human explanation (fields in the module docstring).
    """

    from_states: frozenset[StateT]
    event: EventT
    guard: str | None
    to_state: StateT
    reason: str
    effect: str | None = None


TaskRule = Rule[TaskState, TaskEvent]
RunRule = Rule[RunState, RunEvent]


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """The decision on one task signal.

    ``facts`` are the new facts, identical to the old ones unless the signal was accepted and is
    not a duplicate; ``rule`` is the applied rule (None when nothing changed).
    """

    accepted: bool
    duplicate: bool
    facts: TaskFacts
    reason: str
    rule: TaskRule | None


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """The decision on one run signal; fields as in ``TaskOutcome``."""

    accepted: bool
    duplicate: bool
    facts: RunFacts
    reason: str
    rule: RunRule | None


# ----------------------------------------------------------------------------- task table

TaskGuard = Callable[[TaskFacts, TaskSignal], bool]
TaskEffect = Callable[[TaskFacts, TaskState, TaskEvent], TaskFacts]
RunGuard = Callable[[RunFacts, RunSignal], bool]


def _retries_remain(facts: TaskFacts) -> bool:
    # Once a cancel is requested a failing attempt ends the task: retrying would restart work
    # the user asked to stop.
    return facts.retries_used < facts.max_retries and not facts.cancel_requested


def _can_retry(facts: TaskFacts, signal: TaskSignal) -> bool:
    return signal.retryable and _retries_remain(facts)


def _can_retry_lost(facts: TaskFacts, signal: TaskSignal) -> bool:
    return _retries_remain(facts)


TASK_GUARDS: Mapping[str, TaskGuard] = MappingProxyType(
    {
        "can_retry": _can_retry,
        "cannot_retry": lambda facts, signal: not _can_retry(facts, signal),
        "can_retry_lost": _can_retry_lost,
        "cannot_retry_lost": lambda facts, signal: not _can_retry_lost(facts, signal),
        "cancel_requested": lambda facts, signal: facts.cancel_requested,
        "cancel_not_requested": lambda facts, signal: not facts.cancel_requested,
    }
)
"""Predicates over (facts, signal) that rules name in their ``guard``."""


def _move_task(facts: TaskFacts, to_state: TaskState, event: TaskEvent) -> TaskFacts:
    return TaskFacts(
        to_state,
        facts.attempt,
        facts.retries_used,
        facts.max_retries,
        facts.cancel_requested,
        event,
    )


def _next_attempt(facts: TaskFacts, to_state: TaskState, event: TaskEvent) -> TaskFacts:
    return TaskFacts(
        to_state,
        facts.attempt + 1,
        facts.retries_used,
        facts.max_retries,
        facts.cancel_requested,
        event,
    )


def _use_retry(facts: TaskFacts, to_state: TaskState, event: TaskEvent) -> TaskFacts:
    return TaskFacts(
        to_state,
        facts.attempt,
        facts.retries_used + 1,
        facts.max_retries,
        facts.cancel_requested,
        event,
    )


def _request_cancel(facts: TaskFacts, to_state: TaskState, event: TaskEvent) -> TaskFacts:
    return TaskFacts(to_state, facts.attempt, facts.retries_used, facts.max_retries, True, event)


TASK_EFFECTS: Mapping[str, TaskEffect] = MappingProxyType(
    {
        "attempt+1": _next_attempt,
        "retries_used+1": _use_retry,
        "cancel_requested=True": _request_cancel,
    }
)
"""Changes to the task facts besides the state, named by rules' ``effect``."""

_T = TaskState
_TE = TaskEvent

TASK_RULES: tuple[TaskRule, ...] = (
    Rule(frozenset({_T.PLANNED}), _TE.BLOCK, None, _T.BLOCKED, "waiting for upstream tasks"),
    Rule(
        frozenset({_T.PLANNED, _T.BLOCKED}),
        _TE.RELEASE,
        None,
        _T.READY,
        "every upstream task succeeded",
    ),
    Rule(
        frozenset({_T.READY}),
        _TE.DISPATCH,
        None,
        _T.DISPATCHED,
        "dispatched attempt {new_attempt}",
        effect="attempt+1",
    ),
    Rule(frozenset({_T.DISPATCHED}), _TE.START, None, _T.RUNNING, "attempt {attempt} started"),
    Rule(frozenset({_T.RUNNING}), _TE.HEARTBEAT, None, _T.RUNNING, "attempt {attempt} is alive"),
    Rule(
        frozenset({_T.DISPATCHED}),
        _TE.HEARTBEAT,
        None,
        _T.RUNNING,
        "attempt {attempt} is alive; its start message was lost",
    ),
    Rule(
        frozenset({_T.RUNNING, _T.DISPATCHED}),
        _TE.SUCCEED,
        None,
        _T.SUCCEEDED,
        "attempt {attempt} succeeded",
    ),
    Rule(
        frozenset({_T.RUNNING, _T.DISPATCHED}),
        _TE.FAIL,
        "can_retry",
        _T.RETRY_WAIT,
        "attempt {attempt} failed{because}; retry {retry} of {max_retries}",
        effect="retries_used+1",
    ),
    Rule(
        frozenset({_T.RUNNING, _T.DISPATCHED}),
        _TE.FAIL,
        "cannot_retry",
        _T.FAILED,
        "attempt {attempt} failed{because}; {no_retry}",
    ),
    Rule(
        frozenset({_T.RUNNING, _T.DISPATCHED}),
        _TE.HEARTBEAT_TIMEOUT,
        "can_retry_lost",
        _T.RETRY_WAIT,
        "attempt {attempt} stopped sending heartbeats; retry {retry} of {max_retries}",
        effect="retries_used+1",
    ),
    Rule(
        frozenset({_T.RUNNING, _T.DISPATCHED}),
        _TE.HEARTBEAT_TIMEOUT,
        "cannot_retry_lost",
        _T.FAILED,
        "attempt {attempt} stopped sending heartbeats; {no_retry}",
    ),
    Rule(
        frozenset({_T.DISPATCHED}),
        _TE.DISPATCH_TIMEOUT,
        None,
        _T.READY,
        "attempt {attempt} was never picked up; dispatching again",
    ),
    Rule(
        frozenset({_T.RUNNING}),
        _TE.EXECUTION_TIMEOUT,
        None,
        _T.FAILED,
        "TIMEOUT: attempt {attempt} ran past its execution timeout; not retried",
    ),
    Rule(
        frozenset({_T.RETRY_WAIT}),
        _TE.RETRY_DUE,
        None,
        _T.READY,
        "retry {retry} of {max_retries} is due",
    ),
    Rule(
        frozenset({_T.PLANNED, _T.BLOCKED, _T.READY}),
        _TE.UPSTREAM_FAILED,
        None,
        _T.SKIPPED,
        "{upstream}",
    ),
    Rule(
        frozenset({_T.PLANNED, _T.BLOCKED, _T.READY, _T.RETRY_WAIT, _T.DISPATCHED}),
        _TE.CANCEL,
        None,
        _T.CANCELLED,
        "cancelled{because}",
    ),
    Rule(
        frozenset({_T.RUNNING}),
        _TE.CANCEL,
        "cancel_not_requested",
        _T.RUNNING,
        "cancel requested{because}; waiting for attempt {attempt} to stop",
        effect="cancel_requested=True",
    ),
    Rule(
        frozenset({_T.RUNNING}),
        _TE.CANCELLED_BY_WORKER,
        None,
        _T.CANCELLED,
        "attempt {attempt} stopped on request; cancelled",
    ),
    Rule(
        frozenset({_T.RUNNING}),
        _TE.FORCE_CANCEL,
        "cancel_requested",
        _T.CANCELLED,
        "attempt {attempt} did not stop within the grace period; cancelled",
    ),
)
"""Every legal task move. States with no outgoing rule are exactly ``TERMINAL_TASK_STATES``."""

# States that prove an event already took effect for the current attempt even when a later
# signal (e.g. a heartbeat after the start) has replaced ``last_event``.
_TASK_EVENT_SHOWN_BY_STATE: Mapping[TaskEvent, frozenset[TaskState]] = MappingProxyType(
    {
        TaskEvent.START: frozenset({TaskState.RUNNING}),
        TaskEvent.CANCEL: frozenset({TaskState.CANCELLED}),
    }
)


class _TaskReasonFields:
    """Supplies reason template fields on demand, so a transition formats only what it uses."""

    __slots__ = ("_new", "_old", "_signal")

    def __init__(self, old: TaskFacts, new: TaskFacts, signal: TaskSignal) -> None:
        self._old = old
        self._new = new
        self._signal = signal

    def __getitem__(self, key: str) -> object:
        if key == "attempt":
            return self._old.attempt
        if key == "new_attempt":
            return self._new.attempt
        if key == "retry":
            return self._new.retries_used
        if key == "max_retries":
            return self._new.max_retries
        if key == "because":
            return f": {self._signal.reason}" if self._signal.reason else ""
        if key == "upstream":
            return self._signal.reason or "an upstream task did not succeed"
        if key == "no_retry":
            return _why_not_retried(self._old, self._signal)
        raise KeyError(key)


def _why_not_retried(facts: TaskFacts, signal: TaskSignal) -> str:
    if facts.cancel_requested:
        return "not retried: a cancel was requested"
    if signal.event == TaskEvent.FAIL and not signal.retryable:
        return "not retried: the error is not retryable"
    return f"no retries left ({facts.retries_used} of {facts.max_retries} used)"


# ----------------------------------------------------------------------------- run table

RUN_GUARDS: Mapping[str, RunGuard] = MappingProxyType({})
"""Predicates for run rules. Empty: whether every task succeeded or is terminal is decided by
the caller from the task states (see ``run_completion_event``) before it sends the signal."""

_R = RunState
_RE = RunEvent

RUN_RULES: tuple[RunRule, ...] = (
    Rule(frozenset({_R.QUEUED}), _RE.ADMIT, None, _R.STARTING, "admitted{because}"),
    Rule(
        frozenset({_R.STARTING, _R.RUNNING}),
        _RE.TASK_STARTED,
        None,
        _R.RUNNING,
        "a task started{because}",
    ),
    Rule(
        frozenset({_R.STARTING, _R.RUNNING}),
        _RE.SUCCEED,
        None,
        _R.SUCCEEDED,
        "every task succeeded",
    ),
    Rule(
        frozenset({_R.STARTING, _R.RUNNING}),
        _RE.FAIL,
        None,
        _R.FAILED,
        "not every task succeeded{because}",
    ),
    Rule(
        frozenset({_R.CANCELLING}),
        _RE.SUCCEED,
        None,
        _R.CANCELLED,
        "cancelled; the remaining tasks finished",
    ),
    Rule(
        frozenset({_R.CANCELLING}),
        _RE.FAIL,
        None,
        _R.CANCELLED,
        "cancelled; the remaining tasks finished{because}",
    ),
    Rule(
        frozenset({_R.QUEUED, _R.STARTING, _R.RUNNING}),
        _RE.CANCEL,
        None,
        _R.CANCELLING,
        "cancel requested{because}",
    ),
    Rule(
        frozenset({_R.CANCELLING}),
        _RE.CANCEL_COMPLETE,
        None,
        _R.CANCELLED,
        "cancelled; every task has stopped",
    ),
    Rule(
        frozenset({_R.QUEUED, _R.STARTING, _R.RUNNING, _R.CANCELLING}),
        _RE.TIMEOUT,
        None,
        _R.TIMED_OUT,
        "run exceeded its timeout{because}",
    ),
)
"""Every legal run move. States with no outgoing rule are exactly ``TERMINAL_RUN_STATES``."""

_RUN_EVENT_SHOWN_BY_STATE: Mapping[RunEvent, frozenset[RunState]] = MappingProxyType(
    {
        RunEvent.ADMIT: frozenset({RunState.STARTING, RunState.RUNNING}),
        RunEvent.CANCEL: frozenset({RunState.CANCELLING, RunState.CANCELLED}),
    }
)


class _RunReasonFields:
    """Supplies run reason template fields on demand."""

    __slots__ = ("_signal",)

    def __init__(self, signal: RunSignal) -> None:
        self._signal = signal

    def __getitem__(self, key: str) -> object:
        if key == "because":
            return f": {self._signal.reason}" if self._signal.reason else ""
        raise KeyError(key)


# ----------------------------------------------------------------------------- index

GuardT = TypeVar("GuardT")
EffectT = TypeVar("EffectT")


def _build_index(
    rules: Iterable[Rule[StateT, EventT]],
    *,
    guards: Mapping[str, GuardT],
    effects: Mapping[str, EffectT],
    terminal: frozenset[StateT],
    check_reason: Callable[[str], object],
) -> dict[
    tuple[StateT, EventT], tuple[tuple[Rule[StateT, EventT], GuardT | None, str | None], ...]
]:
    """Group rules by (state, event), resolving guard names, after checking the table is sound.

    A broken table is a programming error, so it fails at import rather than at the first
    signal that reaches the bad row.
    """
    index: dict[
        tuple[StateT, EventT], list[tuple[Rule[StateT, EventT], GuardT | None, str | None]]
    ] = {}
    for rule in rules:
        if not rule.from_states:
            raise ValueError(f"rule for {rule.event} has no from_states")
        if rule.from_states & terminal:
            raise ValueError(f"rule for {rule.event} leaves a terminal state")
        if rule.guard is not None and rule.guard not in guards:
            raise ValueError(f"rule for {rule.event} names unknown guard {rule.guard!r}")
        if rule.effect is not None and rule.effect not in effects:
            raise ValueError(f"rule for {rule.event} names unknown effect {rule.effect!r}")
        try:
            check_reason(rule.reason)
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"rule for {rule.event} has a bad reason template: {exc}") from exc
        guard = guards[rule.guard] if rule.guard is not None else None
        for state in rule.from_states:
            index.setdefault((state, rule.event), []).append((rule, guard, rule.effect))
    for (state, event), entries in index.items():
        if len(entries) > 1 and any(rule.guard is None for rule, _, _ in entries):
            raise ValueError(f"{event} in {state} has an unguarded rule among several")
    return {key: tuple(entries) for key, entries in index.items()}


_SAMPLE_TASK_FIELDS = _TaskReasonFields(
    TaskFacts(TaskState.RUNNING), TaskFacts(TaskState.RUNNING), TaskSignal(TaskEvent.FAIL)
)
_SAMPLE_RUN_FIELDS = _RunReasonFields(RunSignal(RunEvent.FAIL))

_TASK_INDEX_BY_NAME = _build_index(
    TASK_RULES,
    guards=TASK_GUARDS,
    effects=TASK_EFFECTS,
    terminal=TERMINAL_TASK_STATES,
    check_reason=lambda template: template.format_map(_SAMPLE_TASK_FIELDS),
)
# Resolve effect names once so that a transition is a dict lookup and one or two calls.
_TASK_INDEX: dict[
    tuple[TaskState, TaskEvent], tuple[tuple[TaskRule, TaskGuard | None, TaskEffect], ...]
] = {
    key: tuple(
        (rule, guard, TASK_EFFECTS[effect] if effect is not None else _move_task)
        for rule, guard, effect in entries
    )
    for key, entries in _TASK_INDEX_BY_NAME.items()
}
_RUN_INDEX = _build_index(
    RUN_RULES,
    guards=RUN_GUARDS,
    effects={},
    terminal=TERMINAL_RUN_STATES,
    check_reason=lambda template: template.format_map(_SAMPLE_RUN_FIELDS),
)

# ----------------------------------------------------------------------------- transitions


def transition_task(facts: TaskFacts, signal: TaskSignal) -> TaskOutcome:
    """Decide what ``signal`` does to a task with ``facts`` (see the module docstring)."""
    event = signal.event
    if event in ATTEMPT_GUARDED_TASK_EVENTS:
        if signal.attempt is None:
            return TaskOutcome(
                False, False, facts, f"{event} must name the attempt it reports on", None
            )
        if signal.attempt != facts.attempt:
            return TaskOutcome(
                False,
                False,
                facts,
                f"stale attempt {signal.attempt} (current attempt {facts.attempt})",
                None,
            )
    candidates = _TASK_INDEX.get((facts.state, event), ())
    for rule, guard, effect in candidates:
        if guard is None or guard(facts, signal):
            new_facts = effect(facts, rule.to_state, event)
            reason = rule.reason.format_map(_TaskReasonFields(facts, new_facts, signal))
            return TaskOutcome(True, False, new_facts, reason, rule)
    if _task_event_already_applied(facts, event):
        return TaskOutcome(True, True, facts, _task_duplicate_reason(facts, event), None)
    if facts.state in TERMINAL_TASK_STATES:
        return TaskOutcome(False, False, facts, f"task is already {facts.state}", None)
    if candidates:
        needed = " or ".join(str(rule.guard) for rule, _, _ in candidates)
        return TaskOutcome(
            False, False, facts, f"{event} needs {needed} (task is {facts.state})", None
        )
    return TaskOutcome(False, False, facts, f"{event} does not apply to a {facts.state} task", None)


def _task_event_already_applied(facts: TaskFacts, event: TaskEvent) -> bool:
    if facts.last_event == event:
        return True
    shown_by = _TASK_EVENT_SHOWN_BY_STATE.get(event)
    if shown_by is not None and facts.state in shown_by:
        return True
    return event == TaskEvent.CANCEL and facts.state == TaskState.RUNNING and facts.cancel_requested


def _task_duplicate_reason(facts: TaskFacts, event: TaskEvent) -> str:
    attempt = f" for attempt {facts.attempt}" if event in ATTEMPT_GUARDED_TASK_EVENTS else ""
    if event == TaskEvent.CANCEL and facts.state == TaskState.RUNNING:
        return f"duplicate {event}; cancel already requested"
    return f"duplicate {event}{attempt}; task is already {facts.state}"


def transition_run(facts: RunFacts, signal: RunSignal) -> RunOutcome:
    """Decide what ``signal`` does to a run with ``facts`` (see the module docstring)."""
    event = signal.event
    candidates = _RUN_INDEX.get((facts.state, event), ())
    for rule, guard, _effect in candidates:
        if guard is None or guard(facts, signal):
            new_facts = RunFacts(rule.to_state, event)
            reason = rule.reason.format_map(_RunReasonFields(signal))
            return RunOutcome(True, False, new_facts, reason, rule)
    if facts.last_event == event or facts.state in _RUN_EVENT_SHOWN_BY_STATE.get(event, ()):
        return RunOutcome(
            True, True, facts, f"duplicate {event}; run is already {facts.state}", None
        )
    if facts.state in TERMINAL_RUN_STATES:
        return RunOutcome(False, False, facts, f"run is already {facts.state}", None)
    if candidates:
        needed = " or ".join(str(rule.guard) for rule, _, _ in candidates)
        return RunOutcome(
            False, False, facts, f"{event} needs {needed} (run is {facts.state})", None
        )
    return RunOutcome(False, False, facts, f"{event} does not apply to a {facts.state} run", None)


def run_completion_event(run_state: RunState, task_states: Iterable[TaskState]) -> RunEvent | None:
    """The event that ends a live run once every task is terminal; None while any task is not.

    A CANCELLING run completes its cancellation; otherwise the run succeeds when every task
    succeeded (a run without tasks has nothing left to do) and fails when any task failed, was
    skipped or was cancelled. QUEUED and terminal runs are never ended this way.
    """
    if run_state not in (RunState.STARTING, RunState.RUNNING, RunState.CANCELLING):
        return None
    every_task_succeeded = True
    for state in task_states:
        if state not in TERMINAL_TASK_STATES:
            return None
        if state != TaskState.SUCCEEDED:
            every_task_succeeded = False
    if run_state == RunState.CANCELLING:
        return RunEvent.CANCEL_COMPLETE
    return RunEvent.SUCCEED if every_task_succeeded else RunEvent.FAIL


# ----------------------------------------------------------------------------- docs


def _rules_table(rules: Iterable[Rule[StateT, EventT]]) -> list[dict[str, str]]:
    rows = []
    for rule in rules:
        states_in_declaration_order = [s for s in type(rule.to_state) if s in rule.from_states]
        rows.append(
            {
                "from": "|".join(s.value for s in states_in_declaration_order),
                "event": rule.event.value,
                "guard": rule.guard or "",
                "to": rule.to_state.value,
                "effect": rule.effect or "",
                "reason": rule.reason,
            }
        )
    return rows


def task_rules_table() -> list[dict[str, str]]:
    """The task rules as rows (from, event, guard, to, effect, reason) for documentation."""
    return _rules_table(TASK_RULES)


def run_rules_table() -> list[dict[str, str]]:
    """The run rules as rows (from, event, guard, to, effect, reason) for documentation."""
    return _rules_table(RUN_RULES)
