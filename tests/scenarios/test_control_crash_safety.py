"""Crash safety of the control services: whichever write boundary a service dies at, the
queue's redelivery, a caller's retry or the sweep finishes the work, and every asset partition
is committed exactly once.

A crash is simulated by a ``Ports.crash`` hook that raises at the chosen boundary the first time
it is reached. Services driven by the queue or the housekeeping thread are retried by them; a
service the test calls itself (deploy, trigger, cancel) is called again with the same request.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import servo
from servo.control.cancel import cancel_run
from servo.control.common import DEPLOYMENTS
from servo.control.drain import EVENTS_STREAM
from servo.control.uow import OUTBOX
from servo.core import events as ev
from servo.worker.io import PickleIOManager

if TYPE_CHECKING:
    from conftest import ScenarioFactory

from conftest import CrashOnce, redeliver

CRASH_POINTS = (
    "callback.after_completed_commit",
    "callback.after_started",
    "cancel.after_run_marked",
    "cancel.after_task_batch",
    "deploy.after_blobs",
    "dispatch.after_commit",
    "drain.after_segment",
    "sweep.after_task_commit",
    "trigger.after_reserve",
    "trigger.after_task_batch",
    "trigger.after_tasks_written",
)

CRASH_DEFS = """
def work(context, kind=None):
    record(context, "start")
    if kind == "flaky" and recorded(context, "start") == 1:
        raise RuntimeError("flaky fails the first time it runs")
    if kind == "lost" and recorded(context, "start") == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies: only the sweep can notice
    record(context, "done")
    return value_of(context)


# No retries: a crash of the control plane must not cost an attempt.
@asset
def a(context):
    return work(context)


@asset
def b(context, a):
    return work(context)


@asset
def c(context, a):
    return work(context)


@asset
def d(context, b, c):
    return work(context)


@asset(retry_policy=RetryPolicy(max_retries=1))
def flaky(context, a):
    return work(context, "flaky")


@asset(retry_policy=RetryPolicy(max_retries=1))
def lost(context):
    return work(context, "lost")


@asset
def slow(context):
    record(context, "start")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
    record(context, "done")
    return 1


defs = Definitions(assets=[a, b, c, d, flaky, lost, slow])
"""

GRAPH = ("a", "b", "c", "d", "flaky", "lost")


def crash_points_in_source() -> set[str]:
    found: set[str] = set()
    for path in Path(servo.__file__).parent.rglob("*.py"):
        found.update(re.findall(r"\.crash\(\s*\"([^\"]+)\"\s*\)", path.read_text()))
    return found


# Crash points of the automation services, exercised by their own scenarios.
COVERED_ELSEWHERE = {
    "sensor.before_commit": "scenarios/test_sensors.py",
    "sensor.after_commit": "scenarios/test_sensors.py",
    "sensor.after_run": "scenarios/test_sensors.py",
    "tick.before_record": "unit/test_tick.py",
}


def test_the_list_of_crash_points_is_complete() -> None:
    """A new crash point fails this test until a crash scenario covers it."""
    assert not set(CRASH_POINTS) & set(COVERED_ELSEWHERE)
    assert set(CRASH_POINTS) | set(COVERED_ELSEWHERE) == crash_points_in_source()
    tests = Path(__file__).parent.parent
    for point, test_file in COVERED_ELSEWHERE.items():
        assert f'"{point}"' in (tests / test_file).read_text(), (point, test_file)


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_any_write_boundary_is_recovered(scenario: ScenarioFactory, point: str) -> None:
    hook = CrashOnce(point)
    s = scenario(
        CRASH_DEFS,
        crash=hook,
        workers=3,
        # A lost dispatch message is found by the sweep after this long.
        settings={"dispatch_timeout_ms": 5_000, "cancel_grace_ms": 60_000},
    )
    # A diamond with a fan-in, a task that fails once and a task whose worker dies once.
    run_id = s.trigger(" or ".join(GRAPH)).run_id
    run = s.wait(run_id)
    assert run["state"] == "SUCCEEDED", run["reason"]

    # A run cancelled while its task runs.
    cancelled_id = s.trigger("slow").run_id
    s.wait_for_effect("slow", "start")
    redeliver(lambda: cancel_run(s.ports, cancelled_id, actor="user:test"))
    assert s.wait(cancelled_id)["state"] == "CANCELLED"

    redeliver(s.plane.housekeeping_once)  # drain the outbox
    redeliver(s.plane.housekeeping_once)
    assert hook.fired, f"the scenario never reached {point}; reached: {sorted(set(hook.seen))}"

    tasks = s.tasks(run_id)
    assert sorted(tasks) == sorted(GRAPH)
    events = s.events()
    materializations = Counter(
        e["data"]["asset"] for e in events if e["type"] == ev.MATERIALIZATION
    )
    assert materializations == Counter(GRAPH)
    io = PickleIOManager(s.ports.blobs)
    for name, task in tasks.items():
        assert task["state"] == "SUCCEEDED", (name, task["reason"])
        # Only the failures the assets cause themselves used a retry.
        assert task["retries_used"] == (1 if name in ("flaky", "lost") else 0), name
        pointer = s.materialized(name)
        assert pointer is not None, name
        assert pointer["materializations"] == 1, name
        assert (pointer["run_id"], pointer["attempt"]) == (run_id, task["attempt"]), name
        committed = {"asset": name, "run_id": run_id, "attempt": task["attempt"]}
        assert io.load(pointer["output_path"]) == committed
        # Each attempt ran the asset at most once, and the committed one ran it to the end.
        done = [e["attempt"] for e in s.effects_of(name, "done")]
        assert len(done) == len(set(done)), name
        assert task["attempt"] in done, name
    assert s.effects_of("slow", "done") == []
    assert s.materialized("slow") is None

    # Every event is in the ledger exactly once, and the outbox is empty.
    segments = s.ports.ledger.read(EVENTS_STREAM)
    ids = Counter(str(e["id"]) for seg in segments for e in seg.events)
    assert ids and max(ids.values()) == 1
    assert s.ports.state.query(OUTBOX) == []
    assert len(events) == len(ids)
    assert [doc_id for doc_id, _ in s.ports.state.query(DEPLOYMENTS)] == [s.code_version]
