"""Cancelling runs on the embedded control plane (D5): waiting tasks stop at once, a running
task when its worker acknowledges, and a worker that ignores the request is killed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from servo.control.cancel import cancel_run

if TYPE_CHECKING:
    from conftest import Scenario, ScenarioFactory

from conftest import CrashOnce, CrashPointReached, pid_alive, wait_until

CANCEL_DEFS = """
def looping(name):
    @asset(name=name)
    def looper(context):
        record(context, "start")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
        record(context, "finished")
        return 1

    return looper


first = looping("first")
second = looping("second")


@asset(deps=["first", "second"])
def after(context):
    record(context, "start")
    return 1


@asset
def stubborn(context):
    record(context, "start")
    deadline = time.monotonic() + 120
    while True:
        try:
            while time.monotonic() < deadline:
                time.sleep(0.05)
            break
        except KeyboardInterrupt:
            record(context, "ignored interrupt")
    record(context, "finished")
    return 1


defs = Definitions(assets=[first, second, after, stubborn])
"""


def _start_loopers(s: Scenario) -> tuple[str, str, str]:
    """Start a run where one looper runs, the other waits as READY (max_concurrency=1) and
    `after` is BLOCKED; returns the run id and the names of the running and waiting loopers."""
    run_id = s.trigger("*after", max_concurrency=1).run_id
    wait_until(lambda: bool(s.effects_of("first") or s.effects_of("second")), "a looper to start")
    (started,) = s.effects_of("first") + s.effects_of("second")
    running = started["asset"]
    waiting = "second" if running == "first" else "first"
    tasks = s.tasks(run_id)
    assert tasks[running]["state"] == "RUNNING"
    assert tasks[waiting]["state"] == "READY"
    assert tasks["after"]["state"] == "BLOCKED"
    return run_id, running, waiting


def test_cancel_stops_waiting_tasks_at_once_and_running_ones_on_acknowledgement(
    scenario: ScenarioFactory,
) -> None:
    # A long grace period: the running task must stop because its worker acknowledged.
    s = scenario(CANCEL_DEFS, settings={"cancel_grace_ms": 600_000})
    run_id, running, waiting = _start_loopers(s)

    result = cancel_run(s.ports, run_id, actor="user:test")
    assert (result.cancelled, result.signalled) == (2, 1)
    assert result.state == "CANCELLING"
    tasks = s.tasks(run_id)
    assert tasks[waiting]["state"] == "CANCELLED"
    assert tasks["after"]["state"] == "CANCELLED"
    assert tasks[running]["state"] == "RUNNING" and tasks[running]["cancel_requested"]

    run = s.wait(run_id)
    assert run["state"] == "CANCELLED"
    task = s.tasks(run_id)[running]
    assert task["state"] == "CANCELLED"
    assert task["last_event"] == "CANCELLED_BY_WORKER"
    assert task["error"]["kind"] == "cancelled"
    moves = [e["data"]["event"] for e in s.transitions(run_id, task["task_id"])]
    assert moves[-2:] == ["CANCEL", "CANCELLED_BY_WORKER"]
    assert s.effects_of(running, "finished") == []
    assert s.effects_of(waiting) == [] and s.effects_of("after") == []
    for name in ("first", "second", "after"):
        assert s.materialized(name) is None


def test_cancel_force_cancels_a_task_that_ignores_the_interrupt(
    scenario: ScenarioFactory,
) -> None:
    grace_ms = 1_500
    s = scenario(CANCEL_DEFS, settings={"cancel_grace_ms": grace_ms})
    run_id = s.trigger("stubborn").run_id
    (started,) = s.wait_for_effect("stubborn", "start")

    result = cancel_run(s.ports, run_id, actor="user:test")
    assert (result.cancelled, result.signalled) == (0, 1)
    run = s.wait(run_id)
    assert run["state"] == "CANCELLED"
    task = s.tasks(run_id)["stubborn"]
    assert task["state"] == "CANCELLED"
    assert task["last_event"] == "FORCE_CANCEL"
    moves = s.transitions(run_id, task["task_id"])
    requested, forced = moves[-2:]
    assert requested["data"]["event"] == "CANCEL"
    assert forced["data"]["event"] == "FORCE_CANCEL"
    assert forced["data"]["from"] == "RUNNING" and forced["data"]["to"] == "CANCELLED"
    # Never before the grace period is over.
    assert int(forced["time_ms"]) - int(requested["time_ms"]) >= grace_ms
    # The worker process running it is killed, and the asset never finished.
    wait_until(lambda: not pid_alive(started["pid"]), "the stubborn worker to be killed")
    assert s.effects_of("stubborn", "finished") == []
    assert s.materialized("stubborn") is None


def test_a_cancel_interrupted_after_marking_the_run_is_finished_by_the_sweep(
    scenario: ScenarioFactory,
) -> None:
    s = scenario(
        CANCEL_DEFS,
        crash=CrashOnce("cancel.after_run_marked"),
        # The sweep takes over a cancel that has not finished its writes after this long.
        settings={"cancel_grace_ms": 600_000, "stale_run_write_ms": 1_000},
    )
    run_id, running, waiting = _start_loopers(s)
    with pytest.raises(CrashPointReached):
        cancel_run(s.ports, run_id, actor="user:test")
    # Nobody calls cancel again: the run is CANCELLING but its tasks were never told.
    assert s.get_run(run_id)["state"] == "CANCELLING"
    assert s.tasks(run_id)[waiting]["state"] == "READY"

    run = s.wait(run_id)
    assert run["state"] == "CANCELLED"
    tasks = s.tasks(run_id)
    assert {name: t["state"] for name, t in tasks.items()} == {
        "first": "CANCELLED",
        "second": "CANCELLED",
        "after": "CANCELLED",
    }
    assert tasks[waiting]["reason"] == "cancelled: cancelled by system"
    assert tasks[running]["last_event"] == "CANCELLED_BY_WORKER"
    assert s.effects_of(waiting) == [] and s.effects_of("after") == []
