"""The tick service and its cron arithmetic: DST, catch-up, idempotency under repeated and
concurrent ticks, partitioned targets (B1, B4, B7)."""

from __future__ import annotations

import hashlib
import itertools
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servo import (
    DailyPartitionsDefinition,
    Definitions,
    HourlyPartitionsDefinition,
    ScheduleDefinition,
    StaticPartitionsDefinition,
    asset,
)
from servo.adapters.embedded import (
    FileBlobs,
    FileLedger,
    InProcessBus,
    InProcessQueue,
    SqliteStateStore,
    UlidIds,
)
from servo.control.automation_common import SCHEDULE_STATE, TICKS
from servo.control.common import RUNS
from servo.control.cron import cron_schedule
from servo.control.deploy import deploy
from servo.control.drain import drain_outbox, read_events
from servo.control.tick import (
    schedule_run_key,
    schedule_statuses,
    schedule_ticks,
    set_schedule_running,
    tick,
)
from servo.core.errors import InvalidRequest, NotFound
from servo.ports import Doc, Ports, no_crash
from servo.project import build_manifest
from servo.sdk.schedules import DefaultStatus
from servo.testing import ManualClock

NY = "America/New_York"
BERLIN = "Europe/Berlin"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# Cron arithmetic across DST


def walls(ticks: list[datetime], zone: str) -> list[str]:
    return [t.astimezone(ZoneInfo(zone)).isoformat() for t in ticks]


def test_daily_0230_in_new_york_runs_once_on_spring_forward_day_at_0300() -> None:
    cron = cron_schedule("30 2 * * *", NY)
    ticks = cron.ticks_between(utc(2024, 3, 8), utc(2024, 3, 13))
    assert walls(ticks, NY) == [
        "2024-03-08T02:30:00-05:00",
        "2024-03-09T02:30:00-05:00",
        "2024-03-10T03:00:00-04:00",  # 02:30 does not exist that day
        "2024-03-11T02:30:00-04:00",
        "2024-03-12T02:30:00-04:00",
    ]


def test_daily_0130_in_new_york_runs_once_on_fall_back_day() -> None:
    cron = cron_schedule("30 1 * * *", NY)
    ticks = cron.ticks_between(utc(2024, 11, 2), utc(2024, 11, 5))
    assert walls(ticks, NY) == [
        "2024-11-02T01:30:00-04:00",
        "2024-11-03T01:30:00-04:00",  # the first of the two 01:30s
        "2024-11-04T01:30:00-05:00",
    ]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (
            (2024, 3, 30),
            (2024, 4, 2),
            ["2024-03-30T02:30:00+01:00", "2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"],
        ),
        (
            (2024, 10, 26),
            (2024, 10, 29),
            ["2024-10-26T02:30:00+02:00", "2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"],
        ),
    ],
)
def test_daily_0230_in_berlin_across_both_changes(
    start: tuple[int, int, int], end: tuple[int, int, int], expected: list[str]
) -> None:
    cron = cron_schedule("30 2 * * *", BERLIN)
    assert walls(cron.ticks_between(utc(*start), utc(*end)), BERLIN) == expected


@pytest.mark.parametrize(
    ("zone", "day", "count"),
    [
        (NY, (2024, 3, 10), 23),
        (NY, (2024, 11, 3), 25),
        (BERLIN, (2024, 3, 31), 23),
        (BERLIN, (2024, 10, 27), 25),
    ],
)
def test_hourly_follows_real_hours_on_change_days(
    zone: str, day: tuple[int, int, int], count: int
) -> None:
    cron = cron_schedule("0 * * * *", zone)
    midnight = datetime(*day, tzinfo=ZoneInfo(zone))
    start = midnight.astimezone(UTC) - timedelta(seconds=1)
    end = (midnight + timedelta(days=1)).astimezone(UTC) - timedelta(seconds=1)
    ticks = cron.ticks_between(start, end)
    assert len(ticks) == count
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(ticks))


def test_hourly_in_new_york_fall_back_fires_at_both_0100s() -> None:
    cron = cron_schedule("0 * * * *", NY)
    ticks = cron.ticks_between(utc(2024, 11, 3, 3, 30), utc(2024, 11, 3, 8, 30))
    assert walls(ticks, NY) == [
        "2024-11-03T00:00:00-04:00",
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T02:00:00-05:00",
        "2024-11-03T03:00:00-05:00",
    ]


def test_two_skipped_times_landing_on_the_same_instant_fire_once() -> None:
    cron = cron_schedule("0,30 2 * * *", NY)
    ticks = cron.ticks_between(utc(2024, 3, 10), utc(2024, 3, 11))
    assert walls(ticks, NY) == ["2024-03-10T03:00:00-04:00"]


ZONES = [NY, BERLIN, "Australia/Sydney", "Asia/Kolkata", "UTC"]
starts = st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2030, 12, 1)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@settings(max_examples=60, deadline=None)
@given(zone=st.sampled_from(ZONES), start=starts, days=st.integers(2, 20))
def test_fixed_time_schedule_fires_exactly_once_per_local_day(
    zone: str, start: datetime, days: int
) -> None:
    cron = cron_schedule("30 2 * * *", zone)
    tz = ZoneInfo(zone)
    ticks = cron.ticks_between(start, start + timedelta(days=days))
    dates = [t.astimezone(tz).date() for t in ticks]
    assert len(dates) == len(set(dates))
    first = (start + timedelta(days=1)).astimezone(tz).date()
    last = (start + timedelta(days=days - 1)).astimezone(tz).date()
    expected = {first + timedelta(days=i) for i in range((last - first).days + 1)}
    assert expected <= set(dates)
    for t in ticks:
        wall = t.astimezone(tz)
        assert (wall.hour, wall.minute) in ((2, 30), (3, 0))


@settings(max_examples=60, deadline=None)
@given(zone=st.sampled_from(ZONES), start=starts, hours=st.integers(2, 24 * 10))
def test_interval_schedule_fires_every_real_hour(zone: str, start: datetime, hours: int) -> None:
    cron = cron_schedule("0 * * * *", zone)
    ticks = cron.ticks_between(start, start + timedelta(hours=hours))
    assert len(ticks) == hours
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(ticks))


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    expr=st.sampled_from(["30 2 * * *", "0 * * * *", "*/20 * * * *", "15 1,2,3 * * *"]),
    start=starts,
    split=st.floats(0, 1),
    count=st.integers(1, 5),
)
def test_windows_compose_and_last_ticks_agree(
    zone: str, expr: str, start: datetime, split: float, count: int
) -> None:
    cron = cron_schedule(expr, zone)
    end = start + timedelta(days=9)
    middle = start + (end - start) * split
    whole = cron.ticks_between(start, end)
    assert whole == cron.ticks_between(start, middle) + cron.ticks_between(middle, end)
    assert whole == sorted(set(whole))
    assert cron.last_ticks(start, end, count) == whole[-count:]


def test_invalid_cron_and_timezone_are_named() -> None:
    with pytest.raises(InvalidRequest, match="not a valid cron expression"):
        cron_schedule("every day", "UTC")
    with pytest.raises(InvalidRequest, match="Mars/Olympus"):
        cron_schedule("0 1 * * *", "Mars/Olympus")


# ---------------------------------------------------------------------------------------------
# The tick service


@asset
def raw() -> int:
    return 1


@asset(partitions=DailyPartitionsDefinition(start_date="2024-01-01"))
def daily_sales() -> int:
    return 1


@asset(partitions=HourlyPartitionsDefinition(start_date="2024-11-02-00:00", timezone=NY))
def hourly_ny() -> int:
    return 1


@asset(partitions=StaticPartitionsDefinition(["eu", "us"]))
def regions() -> int:
    return 1


def make_ports(home: Path, clock: ManualClock, **settings: Any) -> Ports:
    home.mkdir(parents=True, exist_ok=True)
    return Ports(
        state=SqliteStateStore(home / "state.db", "default", "default"),
        ledger=FileLedger(home / "ledger"),
        blobs=FileBlobs(home / "blobs", fsync=False),
        queue=InProcessQueue(clock),
        bus=InProcessBus(),
        clock=clock,
        ids=UlidIds(),
        settings=settings,
    )


def deployed(
    tmp_path: Path, start: datetime, *schedules: ScheduleDefinition, **settings: Any
) -> Ports:
    clock = ManualClock(start)
    ports = make_ports(tmp_path / "home", clock, **settings)
    defs = Definitions(assets=[raw, daily_sales, hourly_ny, regions], schedules=list(schedules))
    # A code version of its own: load_manifest caches manifests by (id(blobs), version), and
    # the id of a previous test's blobs object may be reused.
    version = "v" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    manifest, _ = build_manifest(defs, project="ticks", code_version=version)
    assert manifest is not None
    deploy(ports, manifest, b"", {"module": "unused", "file": None, "name": "ticks"})
    return ports


def runs(ports: Ports) -> list[Doc]:
    return [d for _, d in ports.state.query(RUNS, order_by="created_ms")]


def all_ticks(ports: Ports, name: str) -> list[Doc]:
    return list(reversed(schedule_ticks(ports, name, limit=10_000)))


def advance_through(ports: Ports, until: datetime, step: timedelta) -> None:
    clock = ports.clock
    assert isinstance(clock, ManualClock)
    while clock.now() < until:
        clock.advance(step.total_seconds())
        tick(ports)


def test_a_tick_starts_one_schedule_run_with_its_run_key_and_records_it(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 1, 5, 0, 59, 50),
        ScheduleDefinition(
            name="nightly", cron_schedule="0 1 * * *", target="raw", tags={"team": "x"}
        ),
    )
    assert tick(ports).outcomes == []
    ports.clock.advance(20)  # type: ignore[attr-defined]
    report = tick(ports)
    [outcome] = report.outcomes
    assert outcome.status == "SUCCESS"
    assert outcome.scheduled_time == "2024-01-05T01:00:00Z"
    [run] = runs(ports)
    assert run["run_id"] == outcome.run_ids[0]
    assert run["run_key"] == "schedule:nightly:2024-01-05T01:00:00Z"
    assert run["run_key"] == schedule_run_key("nightly", utc(2024, 1, 5, 1))
    assert run["trigger"]["type"] == "schedule"
    assert run["trigger"]["schedule"] == "nightly"
    assert run["actor"] == "schedule:nightly"
    assert run["tags"] == {
        "team": "x",
        "servo/schedule": "nightly",
        "servo/scheduled_time": "2024-01-05T01:00:00Z",
    }
    [record] = all_ticks(ports, "nightly")
    assert record["status"] == "SUCCESS"
    assert record["run_ids"] == [run["run_id"]]
    assert record["scheduled_local"] == "2024-01-05T01:00:00+00:00"
    drain_outbox(ports)
    ticked = [e for e in read_events(ports) if e["type"] == "servo.schedule.ticked"]
    assert [e["data"]["run_ids"] for e in ticked] == [[run["run_id"]]]


def test_repeated_ticks_make_one_run_per_scheduled_time(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 1, 5, 0, 0, 0),
        ScheduleDefinition(name="every10", cron_schedule="*/10 * * * *", target="raw"),
    )
    for _ in range(3):
        tick(ports)
    advance_through(ports, utc(2024, 1, 5, 1, 0, 30), timedelta(seconds=37))
    for _ in range(3):
        tick(ports)
    keys = [r["run_key"] for r in runs(ports)]
    expected = [
        f"schedule:every10:2024-01-05T00:{m}:00Z" for m in ("00", "10", "20", "30", "40", "50")
    ]
    assert keys == [*expected, "schedule:every10:2024-01-05T01:00:00Z"]
    assert [t["status"] for t in all_ticks(ports, "every10")] == ["SUCCESS"] * 7


def test_concurrent_ticks_in_separate_processes_make_one_run(tmp_path: Path) -> None:
    start = utc(2024, 1, 5, 0, 59, 30)
    ports = deployed(
        tmp_path,
        start,
        ScheduleDefinition(name="hourly", cron_schedule="0 * * * *", target="raw"),
        ScheduleDefinition(name="quarter", cron_schedule="*/15 * * * *", target="raw"),
    )
    assert tick(ports).outcomes == []
    at = utc(2024, 1, 5, 1, 0, 5)
    # Each thread has its own store connection, clock and ids, as separate processes would.
    others = [make_ports(tmp_path / "home", ManualClock(at)) for _ in range(8)]
    barrier = threading.Barrier(len(others))
    errors: list[BaseException] = []

    def worker(p: Ports) -> None:
        try:
            barrier.wait()
            tick(p)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    keys = sorted(r["run_key"] for r in runs(ports))
    assert keys == ["schedule:hourly:2024-01-05T01:00:00Z", "schedule:quarter:2024-01-05T01:00:00Z"]
    assert len(ports.state.query(TICKS)) == 2


def test_a_crash_between_run_and_record_is_repaired_by_the_next_tick(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 1, 5, 0, 59, 30),
        ScheduleDefinition(name="hourly", cron_schedule="0 * * * *", target="raw"),
    )
    tick(ports)
    ports.clock.advance(40)  # type: ignore[attr-defined]

    class Crash(Exception):
        pass

    def crash(name: str) -> None:
        if name == "tick.before_record":
            raise Crash(name)

    ports.crash = crash
    with pytest.raises(Crash):
        tick(ports)
    [run] = runs(ports)
    assert all_ticks(ports, "hourly") == []
    ports.crash = no_crash
    [outcome] = tick(ports).outcomes
    assert outcome.run_ids == (run["run_id"],)
    assert len(runs(ports)) == 1
    assert [t["status"] for t in all_ticks(ports, "hourly")] == ["SUCCESS"]


def test_catch_up_runs_only_the_latest_missed_tick_by_default(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 1, 5, 0, 0, 30),
        ScheduleDefinition(name="hourly", cron_schedule="0 * * * *", target="raw"),
    )
    tick(ports)
    ports.clock.set(utc(2024, 1, 5, 6, 0, 30))  # type: ignore[attr-defined]
    [outcome] = tick(ports).outcomes
    assert outcome.scheduled_time == "2024-01-05T06:00:00Z"
    [record] = [t for t in all_ticks(ports, "hourly") if t["scheduled_time"].endswith("06:00:00Z")]
    assert record["missed_ticks"] == 5
    assert len(runs(ports)) == 2  # 00:00 and 06:00


def test_catch_up_limit_from_settings_and_from_a_schedule_tag(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 1, 5, 0, 0, 30),
        ScheduleDefinition(name="three", cron_schedule="0 * * * *", target="raw"),
        ScheduleDefinition(
            name="tagged", cron_schedule="0 * * * *", target="raw", tags={"servo/max_catchup": "5"}
        ),
        schedule_max_catchup=3,
    )
    tick(ports)
    ports.clock.set(utc(2024, 1, 5, 10, 0, 30))  # type: ignore[attr-defined]
    report = tick(ports)
    by_schedule: dict[str, list[str]] = {}
    for o in report.outcomes:
        by_schedule.setdefault(o.schedule, []).append(o.scheduled_time[11:16])
    assert by_schedule == {
        "three": ["08:00", "09:00", "10:00"],
        "tagged": ["06:00", "07:00", "08:00", "09:00", "10:00"],
    }
    tagged_run = next(r for r in runs(ports) if r["actor"] == "schedule:tagged")
    assert "servo/max_catchup" not in tagged_run["tags"]


def test_a_new_schedule_does_not_backfill(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 1, 5, 13, 30),
        ScheduleDefinition(name="hourly", cron_schedule="0 * * * *", target="raw"),
    )
    assert tick(ports).outcomes == []
    assert runs(ports) == []


@pytest.mark.parametrize(
    ("zone", "start", "end", "expected"),
    [
        (
            NY,
            (2024, 3, 8),
            (2024, 3, 12),
            ["03-08T07:30", "03-09T07:30", "03-10T07:00", "03-11T06:30"],
        ),
        (
            NY,
            (2024, 11, 1),
            (2024, 11, 5),
            ["11-01T06:30", "11-02T06:30", "11-03T07:30", "11-04T07:30"],
        ),
        (
            BERLIN,
            (2024, 3, 29),
            (2024, 4, 2),
            ["03-29T01:30", "03-30T01:30", "03-31T01:00", "04-01T00:30"],
        ),
        (
            BERLIN,
            (2024, 10, 25),
            (2024, 10, 29),
            ["10-25T00:30", "10-26T00:30", "10-27T00:30", "10-28T01:30"],
        ),
    ],
)
def test_the_tick_service_runs_a_daily_0230_schedule_once_a_day_across_dst(
    tmp_path: Path,
    zone: str,
    start: tuple[int, int, int],
    end: tuple[int, int, int],
    expected: list[str],
) -> None:
    ports = deployed(
        tmp_path,
        utc(*start),
        ScheduleDefinition(name="nightly", cron_schedule="30 2 * * *", target="raw", timezone=zone),
    )
    tick(ports)
    advance_through(ports, utc(*end), timedelta(minutes=7))
    records = all_ticks(ports, "nightly")
    assert [r["scheduled_time"][5:16] for r in records] == expected
    assert len(runs(ports)) == len(expected)


def test_the_tick_service_runs_every_real_hour_across_fall_back(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 11, 3, 3, 30),
        ScheduleDefinition(name="hourly", cron_schedule="0 * * * *", target="raw", timezone=NY),
    )
    tick(ports)
    advance_through(ports, utc(2024, 11, 3, 8, 30), timedelta(minutes=11))
    local_times = [r["scheduled_local"] for r in all_ticks(ports, "hourly")]
    assert local_times == [
        "2024-11-03T00:00:00-04:00",
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T02:00:00-05:00",
        "2024-11-03T03:00:00-05:00",
    ]


def test_a_partitioned_target_runs_the_partition_that_just_closed(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 1, 5, 0, 59),
        ScheduleDefinition(name="nightly", cron_schedule="0 1 * * *", target="daily_sales"),
    )
    tick(ports)
    advance_through(ports, utc(2024, 1, 7, 1, 1), timedelta(minutes=13))
    records = all_ticks(ports, "nightly")
    assert [r["partition"] for r in records] == ["2024-01-04", "2024-01-05", "2024-01-06"]
    assert [r["partitions"]["keys"] for r in runs(ports)] == [
        ["2024-01-04"],
        ["2024-01-05"],
        ["2024-01-06"],
    ]


def test_no_closed_partition_is_a_skipped_tick_with_the_reason(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2023, 12, 31, 0, 59),
        ScheduleDefinition(name="nightly", cron_schedule="0 1 * * *", target="daily_sales"),
    )
    tick(ports)
    advance_through(ports, utc(2023, 12, 31, 1, 2), timedelta(minutes=1))
    [record] = all_ticks(ports, "nightly")
    assert record["status"] == "SKIPPED"
    assert "no partition of `daily_sales` had closed by 2023-12-31T01:00:00Z" in record["reason"]
    assert runs(ports) == []


def test_an_hourly_partition_spanning_the_repeated_hour_runs_once(tmp_path: Path) -> None:
    # The 01:00 partition of the fall-back day lasts two hours: the tick at the second 01:00
    # finds the same partition closed as the first one did and skips it.
    ports = deployed(
        tmp_path,
        utc(2024, 11, 3, 3, 30),
        ScheduleDefinition(
            name="hourly", cron_schedule="0 * * * *", target="hourly_ny", timezone=NY
        ),
    )
    tick(ports)
    advance_through(ports, utc(2024, 11, 3, 8, 30), timedelta(minutes=11))
    records = all_ticks(ports, "hourly")
    assert [(r["status"], r["partition"]) for r in records] == [
        ("SUCCESS", "2024-11-02-23:00"),
        ("SUCCESS", "2024-11-03-00:00"),
        ("SKIPPED", "2024-11-03-00:00"),
        ("SUCCESS", "2024-11-03-01:00"),
        ("SUCCESS", "2024-11-03-02:00"),
    ]
    assert len(runs(ports)) == 4


def test_a_static_partitioned_target_without_a_function_fails_with_a_clear_error(
    tmp_path: Path,
) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 1, 5, 0, 59, 30),
        ScheduleDefinition(name="regional", cron_schedule="0 1 * * *", target="regions"),
    )
    tick(ports)
    ports.clock.advance(60)  # type: ignore[attr-defined]
    [outcome] = tick(ports).outcomes
    assert outcome.status == "FAILED"
    assert outcome.error is not None
    assert "@schedule function" in outcome.error
    assert "static" in outcome.error.lower()


def test_stopped_schedules_do_not_tick_and_starting_one_does_not_backfill(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 1, 5, 0, 0, 30),
        ScheduleDefinition(
            name="paused",
            cron_schedule="0 * * * *",
            target="raw",
            default_status=DefaultStatus.STOPPED,
        ),
    )
    assert tick(ports).running == 0
    ports.clock.set(utc(2024, 1, 5, 5, 30))  # type: ignore[attr-defined]
    set_schedule_running(ports, "paused", True)
    assert tick(ports).outcomes == []
    ports.clock.set(utc(2024, 1, 5, 6, 0, 10))  # type: ignore[attr-defined]
    assert [o.scheduled_time for o in tick(ports).outcomes] == ["2024-01-05T06:00:00Z"]
    set_schedule_running(ports, "paused", False)
    ports.clock.set(utc(2024, 1, 5, 7, 0, 10))  # type: ignore[attr-defined]
    assert tick(ports).outcomes == []
    [status] = schedule_statuses(ports)
    assert (status.running, status.status_source) == (False, "set")
    state = ports.state.get(SCHEDULE_STATE, "paused")
    assert state is not None and state["status"] == "stopped"
    with pytest.raises(NotFound, match="schedule `nope` is not defined"):
        set_schedule_running(ports, "nope", True)


def test_schedule_statuses_show_the_next_tick_in_the_timezone(tmp_path: Path) -> None:
    ports = deployed(
        tmp_path,
        utc(2024, 3, 9, 12, 0),
        ScheduleDefinition(name="nightly", cron_schedule="30 2 * * *", target="raw", timezone=NY),
    )
    [status] = schedule_statuses(ports)
    assert status.next_tick == "2024-03-10T07:00:00Z"  # 03:00 EDT: 02:30 does not exist
    assert status.running and status.status_source == "default"


def test_a_thousand_schedules_are_evaluated_in_one_tick(tmp_path: Path) -> None:
    schedules = [
        ScheduleDefinition(
            name=f"s{i:04d}",
            cron_schedule=f"{i % 60} {i % 24} * * *" if i % 2 else f"*/{1 + i % 30} * * * *",
            target="raw",
            timezone=[NY, BERLIN, "UTC"][i % 3],
        )
        for i in range(1000)
    ]
    ports = deployed(tmp_path, utc(2024, 1, 5, 0, 0, 30), *schedules)
    report = tick(ports)
    assert report.schedules == report.running == 1000
    ports.clock.advance(60)  # type: ignore[attr-defined]
    report = tick(ports)
    assert report.outcomes
    assert all(o.status == "SUCCESS" for o in report.outcomes)
    assert len(runs(ports)) == len({r["run_key"] for r in runs(ports)})
