"""Tests of the run and task state machines.

Most tests are generated from the rule tables over every state x event (x guard outcome, x
attempt), so a row added to a table is tested at once, and a state or event that no row mentions
fails. The expectations that are not in the tables (which signals are duplicates, what each
effect changes) are written out here independently of the module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servo.core.statemachine import (
    ATTEMPT_GUARDED_TASK_EVENTS,
    RUN_GUARDS,
    RUN_RULES,
    TASK_EFFECTS,
    TASK_GUARDS,
    TASK_RULES,
    TERMINAL_RUN_STATES,
    TERMINAL_TASK_STATES,
    Rule,
    RunEvent,
    RunFacts,
    RunOutcome,
    RunSignal,
    RunState,
    TaskEvent,
    TaskFacts,
    TaskOutcome,
    TaskSignal,
    TaskState,
    run_completion_event,
    run_rules_table,
    task_rules_table,
    transition_run,
    transition_task,
)

GOLDEN = Path(__file__).parent.parent / "golden" / "state_tables.json"

# ----------------------------------------------------------------------------- the contract

# Which signals count as repeats although no rule applies: the last accepted event, or a state
# that proves the event already took effect.
TASK_EVENT_SHOWN_BY_STATE: dict[TaskEvent, set[TaskState]] = {
    TaskEvent.START: {TaskState.RUNNING},
    TaskEvent.CANCEL: {TaskState.CANCELLED},
}
RUN_EVENT_SHOWN_BY_STATE: dict[RunEvent, set[RunState]] = {
    RunEvent.ADMIT: {RunState.STARTING, RunState.RUNNING},
    RunEvent.CANCEL: {RunState.CANCELLING, RunState.CANCELLED},
}

# What each effect does besides moving the state, spelled out independently.
TASK_EFFECT_EXPECTATIONS: dict[str | None, Callable[[TaskFacts], TaskFacts]] = {
    None: lambda f: f,
    "attempt+1": lambda f: replace(f, attempt=f.attempt + 1),
    "retries_used+1": lambda f: replace(f, retries_used=f.retries_used + 1),
    "cancel_requested=True": lambda f: replace(f, cancel_requested=True),
}


def task_duplicate_expected(facts: TaskFacts, event: TaskEvent) -> bool:
    return (
        facts.last_event == event
        or facts.state in TASK_EVENT_SHOWN_BY_STATE.get(event, set())
        or (
            event == TaskEvent.CANCEL
            and facts.state == TaskState.RUNNING
            and facts.cancel_requested
        )
    )


def run_duplicate_expected(facts: RunFacts, event: RunEvent) -> bool:
    return facts.last_event == event or facts.state in RUN_EVENT_SHOWN_BY_STATE.get(event, set())


# ----------------------------------------------------------------------------- table coverage


def _states_mentioned(rules: tuple[Rule[TaskState, TaskEvent], ...]) -> set[TaskState]:
    return {s for r in rules for s in r.from_states} | {r.to_state for r in rules}


def test_every_task_state_and_event_appears_in_the_table() -> None:
    assert _states_mentioned(TASK_RULES) == set(TaskState)
    assert {r.event for r in TASK_RULES} == set(TaskEvent)


def test_every_run_state_and_event_appears_in_the_table() -> None:
    assert {s for r in RUN_RULES for s in r.from_states} | {r.to_state for r in RUN_RULES} == set(
        RunState
    )
    assert {r.event for r in RUN_RULES} == set(RunEvent)


def test_terminal_states_are_exactly_those_without_outgoing_rules() -> None:
    assert set(TaskState) - {s for r in TASK_RULES for s in r.from_states} == TERMINAL_TASK_STATES
    assert set(RunState) - {s for r in RUN_RULES for s in r.from_states} == TERMINAL_RUN_STATES
    assert {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.SKIPPED,
        TaskState.CANCELLED,
    } == TERMINAL_TASK_STATES
    assert {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.CANCELLED,
        RunState.TIMED_OUT,
    } == TERMINAL_RUN_STATES


def _reachable(start: str, edges: set[tuple[str, str]]) -> set[str]:
    seen = {start}
    frontier = [start]
    while frontier:
        here = frontier.pop()
        for a, b in edges:
            if a == here and b not in seen:
                seen.add(b)
                frontier.append(b)
    return seen


def test_every_state_is_reachable_and_can_finish() -> None:
    task_edges = {(str(s), str(r.to_state)) for r in TASK_RULES for s in r.from_states}
    run_edges = {(str(s), str(r.to_state)) for r in RUN_RULES for s in r.from_states}
    assert _reachable("PLANNED", task_edges) == {str(s) for s in TaskState}
    assert _reachable("QUEUED", run_edges) == {str(s) for s in RunState}
    for state in TaskState:
        assert _reachable(str(state), task_edges) & {str(s) for s in TERMINAL_TASK_STATES}
    for run_state in RunState:
        assert _reachable(str(run_state), run_edges) & {str(s) for s in TERMINAL_RUN_STATES}


def test_every_guard_and_effect_is_used_and_defined() -> None:
    used_guards = {r.guard for r in TASK_RULES if r.guard is not None}
    assert used_guards == set(TASK_GUARDS)
    assert {r.effect for r in TASK_RULES if r.effect is not None} == set(TASK_EFFECTS)
    assert set(TASK_EFFECT_EXPECTATIONS) - {None} == set(TASK_EFFECTS)
    assert {r.guard for r in RUN_RULES if r.guard is not None} == set(RUN_GUARDS)
    assert all(r.effect is None for r in RUN_RULES)


def test_enum_values_are_their_upper_case_names() -> None:
    for enum in (RunState, TaskState, RunEvent, TaskEvent):
        for member in enum:
            assert member.value == member.name
            assert member.value.isupper()


def test_attempt_guarded_events_are_the_worker_and_timer_reports() -> None:
    assert {
        TaskEvent.START,
        TaskEvent.HEARTBEAT,
        TaskEvent.SUCCEED,
        TaskEvent.FAIL,
        TaskEvent.HEARTBEAT_TIMEOUT,
        TaskEvent.DISPATCH_TIMEOUT,
        TaskEvent.EXECUTION_TIMEOUT,
        TaskEvent.CANCELLED_BY_WORKER,
    } == ATTEMPT_GUARDED_TASK_EVENTS


def test_rule_tables_match_the_golden_snapshot() -> None:
    tables = {"task": task_rules_table(), "run": run_rules_table()}
    rendered = json.dumps(tables, indent=2) + "\n"
    if os.environ.get("SERVO_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(rendered, encoding="utf-8")
    assert json.loads(GOLDEN.read_text(encoding="utf-8")) == tables, (
        "the state tables changed; review the diff and rerun with SERVO_UPDATE_GOLDEN=1"
    )


def test_rules_table_rows_have_documented_columns() -> None:
    for row in task_rules_table() + run_rules_table():
        assert set(row) == {"from", "event", "guard", "to", "effect", "reason"}
        assert all(row[column] for column in ("from", "event", "to", "reason"))
    first = task_rules_table()[1]
    assert first["from"] == "PLANNED|BLOCKED"
    assert first["event"] == "RELEASE"


# ----------------------------------------------------------------------------- generated: tasks


@dataclass(frozen=True)
class TaskCase:
    facts: TaskFacts
    signal: TaskSignal


def task_cases(state: TaskState, event: TaskEvent) -> Iterator[TaskCase]:
    """Facts and signals covering every guard outcome, attempt relation and duplicate marker."""
    other_event = TaskEvent.BLOCK if event != TaskEvent.BLOCK else TaskEvent.RELEASE
    for attempt in (0, 2):
        for retries_used, max_retries in ((0, 0), (0, 2), (1, 2), (2, 2)):
            for cancel_requested in (False, True):
                for last_event in (None, event, other_event):
                    facts = TaskFacts(
                        state, attempt, retries_used, max_retries, cancel_requested, last_event
                    )
                    for signal_attempt in (None, attempt, attempt + 1, attempt - 1):
                        for retryable in (False, True):
                            signal = TaskSignal(event, signal_attempt, retryable, "why")
                            yield TaskCase(facts, signal)


def matching_task_rules(facts: TaskFacts, signal: TaskSignal) -> list[Rule[TaskState, TaskEvent]]:
    return [
        r
        for r in TASK_RULES
        if facts.state in r.from_states
        and r.event == signal.event
        and (r.guard is None or TASK_GUARDS[r.guard](facts, signal))
    ]


def check_task_case(case: TaskCase) -> TaskOutcome:
    facts, signal = case.facts, case.signal
    outcome = transition_task(facts, signal)
    assert outcome.reason.strip(), case
    if signal.event in ATTEMPT_GUARDED_TASK_EVENTS and signal.attempt != facts.attempt:
        assert not outcome.accepted, case
        assert outcome.facts == facts
        assert outcome.rule is None
        if signal.attempt is not None:
            assert outcome.reason == (
                f"stale attempt {signal.attempt} (current attempt {facts.attempt})"
            )
        return outcome
    matching = matching_task_rules(facts, signal)
    assert len(matching) <= 1, f"guards overlap for {case}: {matching}"
    if matching:
        rule = matching[0]
        assert (outcome.accepted, outcome.duplicate) == (True, False), case
        assert outcome.rule == rule
        expected = replace(
            TASK_EFFECT_EXPECTATIONS[rule.effect](facts),
            state=rule.to_state,
            last_event=signal.event,
        )
        assert outcome.facts == expected, case
        return outcome
    if task_duplicate_expected(facts, signal.event):
        assert (outcome.accepted, outcome.duplicate) == (True, True), case
        assert outcome.facts == facts
        assert outcome.rule is None
        assert "duplicate" in outcome.reason
        return outcome
    assert (outcome.accepted, outcome.duplicate) == (False, False), case
    assert outcome.facts == facts
    assert outcome.rule is None
    if facts.state in TERMINAL_TASK_STATES:
        assert outcome.reason == f"task is already {facts.state}"
    return outcome


@pytest.mark.parametrize("event", list(TaskEvent))
@pytest.mark.parametrize("state", list(TaskState))
def test_task_transition_follows_the_table(state: TaskState, event: TaskEvent) -> None:
    for case in task_cases(state, event):
        check_task_case(case)


def test_generated_task_cases_exercise_every_rule_and_guard_outcome() -> None:
    rules_hit: set[int] = set()
    guard_outcomes: dict[tuple[TaskState, TaskEvent, str], set[bool]] = {}
    for state in TaskState:
        for event in TaskEvent:
            for case in task_cases(state, event):
                outcome = transition_task(case.facts, case.signal)
                if outcome.rule is not None and not outcome.duplicate:
                    rules_hit.add(TASK_RULES.index(outcome.rule))
                for rule in TASK_RULES:
                    if rule.guard is not None and state in rule.from_states and rule.event == event:
                        guard_outcomes.setdefault((state, event, rule.guard), set()).add(
                            TASK_GUARDS[rule.guard](case.facts, case.signal)
                        )
    assert rules_hit == set(range(len(TASK_RULES)))
    for key, seen in guard_outcomes.items():
        assert seen == {True, False}, key


# ----------------------------------------------------------------------------- generated: runs


def run_cases(state: RunState, event: RunEvent) -> Iterator[tuple[RunFacts, RunSignal]]:
    other_event = RunEvent.ADMIT if event != RunEvent.ADMIT else RunEvent.TIMEOUT
    for last_event in (None, event, other_event):
        for reason in (None, "why"):
            yield RunFacts(state, last_event), RunSignal(event, reason)


@pytest.mark.parametrize("event", list(RunEvent))
@pytest.mark.parametrize("state", list(RunState))
def test_run_transition_follows_the_table(state: RunState, event: RunEvent) -> None:
    for facts, signal in run_cases(state, event):
        outcome = transition_run(facts, signal)
        assert outcome.reason.strip()
        matching = [
            r
            for r in RUN_RULES
            if state in r.from_states
            and r.event == event
            and (r.guard is None or RUN_GUARDS[r.guard](facts, signal))
        ]
        assert len(matching) <= 1
        if matching:
            assert (outcome.accepted, outcome.duplicate) == (True, False)
            assert outcome.rule == matching[0]
            assert outcome.facts == RunFacts(matching[0].to_state, event)
        elif run_duplicate_expected(facts, event):
            assert (outcome.accepted, outcome.duplicate) == (True, True)
            assert outcome.facts == facts
            assert "duplicate" in outcome.reason
        else:
            assert (outcome.accepted, outcome.duplicate) == (False, False)
            assert outcome.facts == facts
            assert outcome.rule is None
            if state in TERMINAL_RUN_STATES:
                assert outcome.reason == f"run is already {state}"


# ----------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(
    max_retries=st.integers(min_value=0, max_value=3),
    steps=st.lists(
        st.tuples(
            st.sampled_from(list(TaskEvent)),
            st.sampled_from(["current", "previous", "next", "none"]),
            st.booleans(),
        ),
        max_size=40,
    ),
)
def test_random_task_histories_keep_the_invariants(
    max_retries: int, steps: list[tuple[TaskEvent, str, bool]]
) -> None:
    facts = TaskFacts(TaskState.PLANNED, max_retries=max_retries)
    for event, which_attempt, retryable in steps:
        attempt = {
            "current": facts.attempt,
            "previous": facts.attempt - 1,
            "next": facts.attempt + 1,
            "none": None,
        }[which_attempt]
        outcome = check_task_case(TaskCase(facts, TaskSignal(event, attempt, retryable)))
        new = outcome.facts
        assert new.attempt >= facts.attempt
        assert facts.retries_used <= new.retries_used <= max_retries
        if facts.state in TERMINAL_TASK_STATES:
            assert new == facts
        if outcome.accepted and not outcome.duplicate:
            assert new.last_event == event
        else:
            assert new is facts
        facts = new


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.sampled_from(list(RunEvent)), max_size=20))
def test_random_run_histories_never_leave_a_terminal_state(steps: list[RunEvent]) -> None:
    facts = RunFacts(RunState.QUEUED)
    for event in steps:
        outcome = transition_run(facts, RunSignal(event))
        if facts.state in TERMINAL_RUN_STATES:
            assert outcome.facts == facts
        if not outcome.accepted or outcome.duplicate:
            assert outcome.facts is facts
        facts = outcome.facts


# ----------------------------------------------------------------------------- task lifecycles


def apply(facts: TaskFacts, *signals: TaskSignal) -> TaskFacts:
    """Apply signals that must all be accepted as real transitions."""
    for signal in signals:
        outcome = transition_task(facts, signal)
        assert (outcome.accepted, outcome.duplicate) == (True, False), (signal, outcome.reason)
        facts = outcome.facts
    return facts


E = TaskEvent


def sig(
    event: TaskEvent,
    attempt: int | None = None,
    *,
    retryable: bool = False,
    reason: str | None = None,
) -> TaskSignal:
    return TaskSignal(event, attempt, retryable, reason)


def test_task_happy_path_and_late_results() -> None:
    facts = apply(
        TaskFacts(TaskState.PLANNED),
        sig(E.BLOCK),
        sig(E.RELEASE),
        sig(E.DISPATCH),
        sig(E.START, 1),
        sig(E.HEARTBEAT, 1),
        sig(E.HEARTBEAT, 1),
    )
    assert (facts.state, facts.attempt) == (TaskState.RUNNING, 1)
    done = transition_task(facts, sig(E.SUCCEED, 1))
    assert done.facts.state == TaskState.SUCCEEDED
    assert done.reason == "attempt 1 succeeded"

    again = transition_task(done.facts, sig(E.SUCCEED, 1))
    assert (again.accepted, again.duplicate) == (True, True)
    assert again.facts == done.facts
    assert again.reason == "duplicate SUCCEED for attempt 1; task is already SUCCEEDED"

    late_fail = transition_task(done.facts, sig(E.FAIL, 1, retryable=True))
    assert not late_fail.accepted
    assert late_fail.reason == "task is already SUCCEEDED"

    stale = transition_task(done.facts, sig(E.FAIL, 0))
    assert not stale.accepted
    assert stale.reason == "stale attempt 0 (current attempt 1)"


def test_task_without_upstream_is_released_from_planned() -> None:
    facts = apply(TaskFacts(TaskState.PLANNED), sig(E.RELEASE))
    assert facts.state == TaskState.READY


def test_retryable_failures_are_retried_until_retries_run_out() -> None:
    facts = apply(TaskFacts(TaskState.READY, max_retries=2), sig(E.DISPATCH), sig(E.START, 1))
    first = transition_task(facts, sig(E.FAIL, 1, retryable=True))
    assert first.facts.state == TaskState.RETRY_WAIT
    assert first.facts.retries_used == 1
    assert first.reason == "attempt 1 failed; retry 1 of 2"

    facts = apply(first.facts, sig(E.RETRY_DUE), sig(E.DISPATCH), sig(E.START, 2))
    second = transition_task(facts, sig(E.FAIL, 2, retryable=True, reason="OSError: reset"))
    assert second.reason == "attempt 2 failed: OSError: reset; retry 2 of 2"

    facts = apply(second.facts, sig(E.RETRY_DUE), sig(E.DISPATCH), sig(E.START, 3))
    last = transition_task(facts, sig(E.FAIL, 3, retryable=True))
    assert last.facts.state == TaskState.FAILED
    assert last.facts.retries_used == 2
    assert last.reason == "attempt 3 failed; no retries left (2 of 2 used)"

    late = transition_task(last.facts, sig(E.SUCCEED, 2))
    assert not late.accepted
    assert late.reason == "stale attempt 2 (current attempt 3)"
    assert late.facts == last.facts


def test_non_retryable_failure_fails_at_once() -> None:
    facts = apply(TaskFacts(TaskState.READY, max_retries=5), sig(E.DISPATCH), sig(E.START, 1))
    outcome = transition_task(facts, sig(E.FAIL, 1, retryable=False))
    assert outcome.facts.state == TaskState.FAILED
    assert outcome.facts.retries_used == 0
    assert outcome.reason == "attempt 1 failed; not retried: the error is not retryable"


def test_lost_start_message_is_recovered_by_the_heartbeat() -> None:
    facts = apply(TaskFacts(TaskState.READY), sig(E.DISPATCH), sig(E.HEARTBEAT, 1))
    assert facts.state == TaskState.RUNNING
    late_start = transition_task(facts, sig(E.START, 1))
    assert (late_start.accepted, late_start.duplicate) == (True, True)
    assert late_start.facts == facts


def test_result_can_arrive_before_the_start() -> None:
    facts = apply(TaskFacts(TaskState.READY), sig(E.DISPATCH), sig(E.SUCCEED, 1))
    assert facts.state == TaskState.SUCCEEDED
    late_start = transition_task(facts, sig(E.START, 1))
    assert not late_start.accepted
    assert late_start.reason == "task is already SUCCEEDED"


def test_lost_dispatch_is_dispatched_again_without_using_a_retry() -> None:
    facts = apply(
        TaskFacts(TaskState.READY, max_retries=1), sig(E.DISPATCH), sig(E.DISPATCH_TIMEOUT, 1)
    )
    assert (facts.state, facts.attempt, facts.retries_used) == (TaskState.READY, 1, 0)
    facts = apply(facts, sig(E.DISPATCH))
    assert facts.attempt == 2
    stale_start = transition_task(facts, sig(E.START, 1))
    assert stale_start.reason == "stale attempt 1 (current attempt 2)"
    assert apply(facts, sig(E.START, 2)).state == TaskState.RUNNING


def test_dispatch_is_idempotent() -> None:
    facts = apply(TaskFacts(TaskState.READY), sig(E.DISPATCH))
    again = transition_task(facts, sig(E.DISPATCH))
    assert (again.accepted, again.duplicate) == (True, True)
    assert again.facts.attempt == 1


def test_zombie_attempt_is_retried_while_retries_remain() -> None:
    facts = apply(TaskFacts(TaskState.READY, max_retries=1), sig(E.DISPATCH), sig(E.START, 1))
    lost = transition_task(facts, sig(E.HEARTBEAT_TIMEOUT, 1))
    assert lost.facts.state == TaskState.RETRY_WAIT
    assert lost.reason == "attempt 1 stopped sending heartbeats; retry 1 of 1"

    facts = apply(lost.facts, sig(E.RETRY_DUE), sig(E.DISPATCH))
    lost_again = transition_task(facts, sig(E.HEARTBEAT_TIMEOUT, 2))
    assert lost_again.facts.state == TaskState.FAILED
    assert (
        lost_again.reason == "attempt 2 stopped sending heartbeats; no retries left (1 of 1 used)"
    )
    late_heartbeat = transition_task(lost_again.facts, sig(E.HEARTBEAT, 1))
    assert late_heartbeat.reason == "stale attempt 1 (current attempt 2)"


def test_execution_timeout_fails_without_retry() -> None:
    facts = apply(TaskFacts(TaskState.READY, max_retries=3), sig(E.DISPATCH), sig(E.START, 1))
    outcome = transition_task(facts, sig(E.EXECUTION_TIMEOUT, 1))
    assert outcome.facts.state == TaskState.FAILED
    assert outcome.facts.retries_used == 0
    assert outcome.reason.startswith("TIMEOUT")


def test_running_task_is_cancelled_gracefully() -> None:
    facts = apply(TaskFacts(TaskState.READY), sig(E.DISPATCH), sig(E.START, 1))
    asked = transition_task(facts, sig(E.CANCEL, reason="by alice"))
    assert asked.facts.state == TaskState.RUNNING
    assert asked.facts.cancel_requested
    assert asked.reason == "cancel requested: by alice; waiting for attempt 1 to stop"

    facts = apply(asked.facts, sig(E.HEARTBEAT, 1))
    assert facts.cancel_requested, "the heartbeat answer must keep telling the worker"
    twice = transition_task(facts, sig(E.CANCEL))
    assert (twice.accepted, twice.duplicate) == (True, True)
    assert twice.reason == "duplicate CANCEL; cancel already requested"

    facts = apply(facts, sig(E.CANCELLED_BY_WORKER, 1))
    assert facts.state == TaskState.CANCELLED
    thrice = transition_task(facts, sig(E.CANCEL))
    assert (thrice.accepted, thrice.duplicate) == (True, True)
    forced = transition_task(facts, sig(E.FORCE_CANCEL))
    assert not forced.accepted
    assert forced.reason == "task is already CANCELLED"


def test_force_cancel_needs_a_cancel_request_and_wins_over_late_results() -> None:
    facts = apply(TaskFacts(TaskState.READY), sig(E.DISPATCH), sig(E.START, 1))
    premature = transition_task(facts, sig(E.FORCE_CANCEL))
    assert not premature.accepted
    assert premature.reason == "FORCE_CANCEL needs cancel_requested (task is RUNNING)"

    facts = apply(facts, sig(E.CANCEL), sig(E.FORCE_CANCEL))
    assert facts.state == TaskState.CANCELLED
    late = transition_task(facts, sig(E.SUCCEED, 1))
    assert not late.accepted
    assert late.facts == facts


def test_failure_after_a_cancel_request_is_not_retried() -> None:
    facts = apply(
        TaskFacts(TaskState.READY, max_retries=3), sig(E.DISPATCH), sig(E.START, 1), sig(E.CANCEL)
    )
    failed = transition_task(facts, sig(E.FAIL, 1, retryable=True))
    assert failed.facts.state == TaskState.FAILED
    assert failed.reason == "attempt 1 failed; not retried: a cancel was requested"
    lost = transition_task(facts, sig(E.HEARTBEAT_TIMEOUT, 1))
    assert lost.facts.state == TaskState.FAILED


@pytest.mark.parametrize(
    "state",
    [TaskState.PLANNED, TaskState.BLOCKED, TaskState.READY, TaskState.RETRY_WAIT],
)
def test_waiting_tasks_are_cancelled_at_once(state: TaskState) -> None:
    outcome = transition_task(TaskFacts(state), sig(E.CANCEL))
    assert outcome.facts.state == TaskState.CANCELLED
    assert outcome.reason == "cancelled"


def test_dispatched_task_is_cancelled_at_once_and_its_worker_is_turned_away() -> None:
    facts = apply(TaskFacts(TaskState.READY), sig(E.DISPATCH), sig(E.CANCEL))
    assert facts.state == TaskState.CANCELLED
    start = transition_task(facts, sig(E.START, 1))
    assert not start.accepted
    assert start.reason == "task is already CANCELLED"


def test_upstream_failure_skips_waiting_tasks_with_the_callers_reason() -> None:
    reason = "upstream raw/orders:2024-01-02 failed"
    for state in (TaskState.PLANNED, TaskState.BLOCKED, TaskState.READY):
        outcome = transition_task(TaskFacts(state), sig(E.UPSTREAM_FAILED, reason=reason))
        assert outcome.facts.state == TaskState.SKIPPED
        assert outcome.reason == reason
    unnamed = transition_task(TaskFacts(TaskState.BLOCKED), sig(E.UPSTREAM_FAILED))
    assert unnamed.reason == "an upstream task did not succeed"


def test_upstream_failure_does_not_apply_to_a_task_that_already_ran() -> None:
    outcome = transition_task(TaskFacts(TaskState.RETRY_WAIT, attempt=1), sig(E.UPSTREAM_FAILED))
    assert not outcome.accepted
    assert outcome.reason == "UPSTREAM_FAILED does not apply to a RETRY_WAIT task"


def test_worker_signal_without_attempt_is_rejected() -> None:
    facts = apply(TaskFacts(TaskState.READY), sig(E.DISPATCH))
    outcome = transition_task(facts, sig(E.START))
    assert not outcome.accepted
    assert outcome.reason == "START must name the attempt it reports on"


def test_signal_that_does_not_apply_is_rejected_with_a_reason() -> None:
    outcome = transition_task(TaskFacts(TaskState.PLANNED), sig(E.RETRY_DUE))
    assert not outcome.accepted
    assert outcome.reason == "RETRY_DUE does not apply to a PLANNED task"


# ----------------------------------------------------------------------------- run lifecycles

R = RunEvent


def run_apply(facts: RunFacts, *events: RunEvent) -> RunFacts:
    for event in events:
        outcome = transition_run(facts, RunSignal(event))
        assert (outcome.accepted, outcome.duplicate) == (True, False), (event, outcome.reason)
        facts = outcome.facts
    return facts


def test_run_happy_path() -> None:
    facts = run_apply(RunFacts(RunState.QUEUED), R.ADMIT, R.TASK_STARTED, R.TASK_STARTED, R.SUCCEED)
    assert facts == RunFacts(RunState.SUCCEEDED, R.SUCCEED)
    again: RunOutcome = transition_run(facts, RunSignal(R.SUCCEED))
    assert (again.accepted, again.duplicate) == (True, True)
    assert again.reason == "duplicate SUCCEED; run is already SUCCEEDED"
    cancel = transition_run(facts, RunSignal(R.CANCEL))
    assert not cancel.accepted
    assert cancel.reason == "run is already SUCCEEDED"


def test_run_can_finish_before_any_task_reports_its_start() -> None:
    facts = run_apply(RunFacts(RunState.QUEUED), R.ADMIT)
    failed = transition_run(facts, RunSignal(R.FAIL, "task raw/orders failed"))
    assert failed.facts.state == RunState.FAILED
    assert failed.reason == "not every task succeeded: task raw/orders failed"


def test_queued_run_is_cancelled_through_cancelling() -> None:
    facts = run_apply(RunFacts(RunState.QUEUED), R.CANCEL)
    assert facts.state == RunState.CANCELLING
    assert transition_run(facts, RunSignal(R.CANCEL)).duplicate
    late_admit = transition_run(facts, RunSignal(R.ADMIT))
    assert not late_admit.accepted
    facts = run_apply(facts, R.CANCEL_COMPLETE)
    assert facts.state == RunState.CANCELLED
    assert transition_run(facts, RunSignal(R.CANCEL)).duplicate


@pytest.mark.parametrize("ending", [R.SUCCEED, R.FAIL])
def test_run_that_ends_while_cancelling_is_cancelled(ending: RunEvent) -> None:
    facts = run_apply(RunFacts(RunState.QUEUED), R.ADMIT, R.TASK_STARTED, R.CANCEL, ending)
    assert facts.state == RunState.CANCELLED


def test_run_timeout_wins_over_a_cancellation_in_progress() -> None:
    facts = run_apply(RunFacts(RunState.QUEUED), R.ADMIT, R.CANCEL, R.TIMEOUT)
    assert facts.state == RunState.TIMED_OUT
    late = transition_run(facts, RunSignal(R.CANCEL_COMPLETE))
    assert not late.accepted
    assert late.reason == "run is already TIMED_OUT"


def test_late_admit_is_a_duplicate_once_running() -> None:
    facts = run_apply(RunFacts(RunState.QUEUED), R.ADMIT, R.TASK_STARTED)
    outcome = transition_run(facts, RunSignal(R.ADMIT))
    assert (outcome.accepted, outcome.duplicate) == (True, True)


S = TaskState


@pytest.mark.parametrize(
    ("run_state", "task_states", "expected"),
    [
        (RunState.RUNNING, [S.SUCCEEDED, S.SUCCEEDED], R.SUCCEED),
        (RunState.STARTING, [], R.SUCCEED),
        (RunState.RUNNING, [S.SUCCEEDED, S.FAILED, S.SKIPPED], R.FAIL),
        (RunState.RUNNING, [S.SUCCEEDED, S.CANCELLED], R.FAIL),
        (RunState.RUNNING, [S.SUCCEEDED, S.RETRY_WAIT], None),
        (RunState.CANCELLING, [S.SUCCEEDED, S.CANCELLED], R.CANCEL_COMPLETE),
        (RunState.CANCELLING, [S.RUNNING], None),
        (RunState.QUEUED, [S.SUCCEEDED], None),
        (RunState.SUCCEEDED, [S.SUCCEEDED], None),
    ],
)
def test_run_completion_event(
    run_state: RunState, task_states: list[TaskState], expected: RunEvent | None
) -> None:
    assert run_completion_event(run_state, task_states) == expected
    if expected is not None:
        assert transition_run(RunFacts(run_state), RunSignal(expected)).accepted
