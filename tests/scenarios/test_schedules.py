"""Schedules on the embedded control plane: schedule functions evaluated in worker processes,
the runs they start, the local automation loop, and the `servo schedules` / `servo sensors` /
`servo tick` commands (B1, B4, B7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from servo.adapters.embedded import FileBlobs
from servo.control.common import RUNS
from servo.control.tick import schedule_ticks, tick
from servo.local_automation import LocalAutomation
from servo.ports import Doc, Ports
from servo.worker.evaluate import EvaluatorPool

if TYPE_CHECKING:
    from conftest import Scenario, ScenarioFactory

SERVO = str(Path(sys.executable).with_name("servo"))

SCHEDULE_DEFS = """
import json as _json

from servo import DailyPartitionsDefinition, RunRequest, ScheduleDefinition, SkipReason, schedule

daily = DailyPartitionsDefinition(start_date="2024-01-01")


def note(name, **fields):
    with open(EFFECTS / f"schedule-{name}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(_json.dumps({"pid": os.getpid(), **fields}) + "\\n")


@asset(partitions=daily)
def sales(context):
    record(context)
    return context.partition_key


@asset
def report(context):
    record(context)
    return 1


@schedule(cron_schedule="0 1 * * *", target="sales", timezone="Europe/Berlin")
def nightly(context):
    note(
        "nightly",
        scheduled=context.scheduled_execution_time.isoformat(),
        partition=context.partition_key,
    )
    return RunRequest(partition_key=context.partition_key, tags={"source": "nightly"})


@schedule(cron_schedule="0 1 * * *", target="report")
def weekdays(context):
    if context.scheduled_execution_time.weekday() >= 5:
        return SkipReason("no report at the weekend")
    return RunRequest()


@schedule(cron_schedule="0 1 * * *", target="report")
def broken(context):
    raise RuntimeError("the calendar service is down")


defs = Definitions(
    assets=[sales, report],
    schedules=[
        nightly,
        weekdays,
        broken,
        ScheduleDefinition(name="hourly", cron_schedule="0 * * * *", target="report"),
    ],
)
"""


@pytest.fixture
def pools() -> Iterator[list[EvaluatorPool]]:
    made: list[EvaluatorPool] = []
    yield made
    for pool in made:
        pool.close()


def evaluator(s: Scenario, pools: list[EvaluatorPool]) -> EvaluatorPool:
    blobs = s.ports.blobs
    assert isinstance(blobs, FileBlobs)
    pool = EvaluatorPool(blobs.root, s.workspace.home / "code", size=1)
    pools.append(pool)
    return pool


def notes(s: Scenario, name: str) -> list[dict[str, Any]]:
    path = s.effects / f"schedule-{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def schedule_runs(ports: Ports, name: str) -> list[Doc]:
    rows = ports.state.query(RUNS, order_by="created_ms")
    return [d for _, d in rows if (d.get("trigger") or {}).get("schedule") == name]


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_schedule_functions_run_in_worker_processes_and_their_runs_execute(
    scenario: ScenarioFactory, pools: list[EvaluatorPool]
) -> None:
    s = scenario(SCHEDULE_DEFS)
    pool = evaluator(s, pools)
    # Friday 2024-01-05 00:59:30 UTC; the Berlin schedule's 01:00 is 00:00 UTC.
    tick(s.ports, utc(2024, 1, 4, 23, 59, 30), evaluator=pool)
    report = tick(s.ports, utc(2024, 1, 5, 1, 0, 30), evaluator=pool)
    by_name = {o.schedule: o for o in report.outcomes}
    assert by_name["nightly"].status == "SUCCESS"
    assert by_name["weekdays"].status == "SUCCESS"
    assert by_name["hourly"].status == "SUCCESS"
    assert by_name["broken"].status == "FAILED"
    assert by_name["broken"].error == (
        "schedule `broken` raised RuntimeError: the calendar service is down"
    )
    [failed] = schedule_ticks(s.ports, "broken")
    assert "the calendar service is down" in failed["error"]["traceback"]
    assert "defs.py" in failed["error"]["traceback"]

    [seen] = notes(s, "nightly")
    assert seen["scheduled"] == "2024-01-05T01:00:00+01:00"
    assert seen["partition"] == "2024-01-04"
    assert seen["pid"] != os.getpid()  # evaluated in a worker process
    [run] = schedule_runs(s.ports, "nightly")
    assert run["run_key"] == "schedule:nightly:2024-01-05T00:00:00Z"
    assert run["tags"]["source"] == "nightly"
    assert run["partitions"]["keys"] == ["2024-01-04"]
    assert s.wait(run["run_id"])["state"] == "SUCCEEDED"
    assert [e["partition"] for e in s.effects_of("sales")] == ["2024-01-04"]

    # Saturday: the function's SkipReason is recorded.
    tick(s.ports, utc(2024, 1, 6, 1, 0, 30), evaluator=pool)
    latest = schedule_ticks(s.ports, "weekdays", limit=1)[0]
    assert (latest["status"], latest["reason"]) == ("SKIPPED", "no report at the weekend")
    # Repeating a tick changes nothing.
    again = tick(s.ports, utc(2024, 1, 6, 1, 0, 30), evaluator=pool)
    assert again.outcomes == []
    assert len(schedule_runs(s.ports, "nightly")) == 2


def test_the_local_automation_loop_ticks_once_a_minute(
    scenario: ScenarioFactory, pools: list[EvaluatorPool]
) -> None:
    s = scenario(SCHEDULE_DEFS)
    pool = evaluator(s, pools)
    loop = LocalAutomation(s.ports, s.workspace.home, evaluator=pool)
    try:
        first = loop.step(utc(2024, 1, 5, 13, 59, 30))
        assert first.tick is not None and first.tick.outcomes == []
        assert loop.step(utc(2024, 1, 5, 13, 59, 50)).tick is None  # same minute
        fired = loop.step(utc(2024, 1, 5, 14, 0, 2)).tick
        assert fired is not None
        assert [o.schedule for o in fired.outcomes] == ["hourly"]
    finally:
        loop.stop()


def cli(s: Scenario, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVO_ACTOR": "tester"}
    return subprocess.run(
        [SERVO, *args],
        cwd=s.root,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )


def test_the_schedules_sensors_and_tick_commands(scenario: ScenarioFactory) -> None:
    s = scenario(SCHEDULE_DEFS)
    listed = cli(s, "schedules", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [x["name"] for x in json.loads(listed.stdout)] == [
        "broken",
        "hourly",
        "nightly",
        "weekdays",
    ]
    for name in ("broken", "nightly", "weekdays"):
        assert cli(s, "schedules", "disable", name).returncode == 0
    first = cli(s, "tick", "--now", "2024-01-05T12:59:30Z", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["schedules"] == []
    second = cli(s, "tick", "--now", "2024-01-05T13:00:20Z", "--json")
    assert second.returncode == 0, second.stderr
    [outcome] = json.loads(second.stdout)["schedules"]
    assert (outcome["schedule"], outcome["status"]) == ("hourly", "SUCCESS")
    plain = cli(s, "tick", "--now", "2024-01-05T13:00:40Z")
    assert "nothing was due" in plain.stdout
    ticks = cli(s, "schedules", "ticks", "hourly", "--json")
    assert [t["run_ids"] for t in json.loads(ticks.stdout)] == [outcome["run_ids"]]
    human = cli(s, "schedules", "list")
    rows = {line.split()[0]: line for line in human.stdout.splitlines()[1:] if line.strip()}
    assert "stopped (set)" in rows["nightly"]
    assert "running" in rows["hourly"] and "SUCCESS 2024-01-05 13:00:00" in rows["hourly"]
    assert s.wait(outcome["run_ids"][0])["state"] == "SUCCEEDED"
    unknown = cli(s, "schedules", "enable", "nope")
    assert unknown.returncode == 1
    assert "schedule `nope` is not defined" in unknown.stderr
    bad = cli(s, "tick", "--now", "yesterday")
    assert bad.returncode == 1 and "ISO-8601" in bad.stderr
    sensors = cli(s, "sensors", "list")
    assert sensors.returncode == 0
    assert "No sensors" in sensors.stdout
