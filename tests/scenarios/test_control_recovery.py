"""Recovery on the embedded control plane: a worker killed mid-task, and reports delivered
twice or too late — the asset partition is still committed exactly once."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from servo.control.callback import Report, handle_report
from servo.control.common import Settings, attempt_token
from servo.control.dispatch import output_path
from servo.core import events as ev
from servo.worker.envelope import Outcome, OutputRef
from servo.worker.io import PickleIOManager

if TYPE_CHECKING:
    from conftest import Scenario, ScenarioFactory

from conftest import pid_alive, wait_until

ZOMBIE_DEFS = """
@asset(retry_policy=RetryPolicy(max_retries=2))
def victim(context):
    record(context, "start")
    if recorded(context, "start") == 1:
        record(context, "sleeping")
        time.sleep(120)
    record(context, "done")
    return value_of(context)


@asset
def reader(context, victim):
    record(context, "read", value=victim)
    return victim


defs = Definitions(assets=[victim, reader])
"""


def _materialization_events(s: Scenario, run_id: str, asset: str) -> list[dict[str, object]]:
    return [
        e
        for e in s.events(run_id)
        if e["type"] == ev.MATERIALIZATION and e["data"]["asset"] == asset
    ]


def test_killed_worker_is_detected_and_its_task_retried_exactly_once(
    scenario: ScenarioFactory,
) -> None:
    s = scenario(ZOMBIE_DEFS)
    run_id = s.trigger("victim+").run_id
    (sleeping,) = s.wait_for_effect("victim", "sleeping")
    os.kill(sleeping["pid"], signal.SIGKILL)
    run = s.wait(run_id)
    assert run["state"] == "SUCCEEDED"
    assert not pid_alive(sleeping["pid"])

    task = s.tasks(run_id)["victim"]
    assert task["attempt"] == 2 and task["retries_used"] == 1
    lost = [
        e
        for e in s.transitions(run_id, task["task_id"])
        if e["data"]["event"] == "HEARTBEAT_TIMEOUT"
    ]
    assert [(e["attempt"], e["data"]["from"], e["data"]["to"]) for e in lost] == [
        (1, "RUNNING", "RETRY_WAIT")
    ]
    # The killed attempt never finished; the retry ran to the end once.
    assert [e["attempt"] for e in s.effects_of("victim", "done")] == [2]

    pointer = s.materialized("victim")
    assert pointer is not None
    assert pointer["materializations"] == 1
    assert (pointer["run_id"], pointer["attempt"]) == (run_id, 2)
    events = _materialization_events(s, run_id, "victim")
    assert [e["attempt"] for e in events] == [2]
    committed = PickleIOManager(s.ports.blobs).load(pointer["output_path"])
    assert committed == {"asset": "victim", "run_id": run_id, "attempt": 2}
    # The downstream task read the retry's output.
    (read,) = s.effects_of("reader", "read")
    assert read["value"] == committed


REPORT_DEFS = """
@asset(retry_policy=RetryPolicy(max_retries=1))
def target(context):
    record(context, "start")
    if recorded(context, "start") == 1:
        raise RuntimeError("first attempt fails")
    record(context, "sleeping")
    time.sleep(120)
    record(context, "done")
    return value_of(context)


@asset
def reader(context, target):
    record(context, "read", value=target)
    return target


defs = Definitions(assets=[target, reader])
"""


def _report(s: Scenario, run_id: str, task_id: str, attempt: int, outcome: Outcome) -> Report:
    settings = Settings.of(s.ports)
    token = attempt_token(
        settings.callback_secret, s.ports.tenant, s.ports.workspace, run_id, task_id, attempt
    )
    return Report("completed", run_id, task_id, attempt, token, outcome)


def test_duplicate_and_late_completed_reports_change_nothing(scenario: ScenarioFactory) -> None:
    s = scenario(REPORT_DEFS)
    run_id = s.trigger("target+").run_id
    s.wait_for_effect("target", "sleeping")
    task = s.wait_task(run_id, "target", lambda d: d["state"] == "RUNNING" and d["attempt"] == 2)
    task_id = task["task_id"]

    # A late report from attempt 1 (a zombie claiming success) is rejected (D9).
    late_path = output_path("target", None, run_id, task_id, 1)
    io = PickleIOManager(s.ports.blobs)
    late = Outcome(status="succeeded", output=io.stage(late_path, "from the zombie"))
    answer = handle_report(s.ports, _report(s, run_id, task_id, 1, late))
    assert not answer.accepted
    assert "stale attempt 1" in (answer.reason or "")
    # (Heartbeats of attempt 2 keep moving its heartbeat fields; nothing else changes.)
    after_late = s.tasks(run_id)["target"]
    for name in ("state", "attempt", "retries_used", "error", "output_path", "slots"):
        assert after_late.get(name) == task.get(name), name
    assert s.materialized("target") is None
    rejected = [e for e in s.events(run_id) if e["type"] == ev.TASK_REJECTED]
    assert [(e["task_id"], e["attempt"]) for e in rejected] == [(task_id, 1)]

    # The current attempt's completion, delivered twice: one transition, one commit.
    value = {"asset": "target", "run_id": run_id, "attempt": 2, "by": "test"}
    ref: OutputRef = io.stage(output_path("target", None, run_id, task_id, 2), value)
    done = _report(s, run_id, task_id, 2, Outcome(status="succeeded", output=ref))
    first = handle_report(s.ports, done)
    second = handle_report(s.ports, done)
    assert first.accepted and second.accepted
    assert "duplicate" in (second.reason or "")

    run = s.wait(run_id)
    assert run["state"] == "SUCCEEDED"
    succeeded = [e for e in s.transitions(run_id, task_id) if e["data"]["to"] == "SUCCEEDED"]
    assert [e["attempt"] for e in succeeded] == [2]
    duplicates = [
        e for e in s.events(run_id) if e["type"] == ev.TASK_DUPLICATE and e["task_id"] == task_id
    ]
    assert [(e["attempt"], e["data"]["event"]) for e in duplicates] == [(2, "SUCCEED")]
    pointer = s.materialized("target")
    assert pointer is not None
    assert pointer["materializations"] == 1 and pointer["attempt"] == 2
    assert pointer["output_path"] == ref.path
    materialized = _materialization_events(s, run_id, "target")
    assert [e["attempt"] for e in materialized] == [2]
    (read,) = s.effects_of("reader", "read")
    assert read["value"] == value
    # The worker still sleeping in attempt 2 is stopped (told by the answer to its next
    # heartbeat, or killed by the reaper), and the attempt never finishes.
    wait_until(
        lambda: (run_id, task_id, 2) not in s.plane.pool.running(),
        "the worker to stop the attempt the test completed",
    )
    assert s.effects_of("target", "done") == []
