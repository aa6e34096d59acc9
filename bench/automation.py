"""Automation benchmarks: ``.venv/bin/python bench/automation.py [--json OUT]``.

* **event latency** — a GCS object notification published on the embedded bus until its run
  exists (``run.created_ms`` minus the publish time), with ``servo dev``'s machinery running
  (local control plane with its worker pool, local automation loop): once with a regular
  expression for the partition key (no user code), once with a partition function evaluated
  in a warm worker process. p50 / p95 over ``--events`` notifications sent one at a time.
* **tick of 1,000 schedules** — one call of the ``tick`` service on 1,000 schedules (mixed
  crons and timezones): when none is due (pure evaluation), when 100 are due (they start
  runs), when all 1,000 are due, and the repeated tick at the same time (all deduplicated).
* **worker evaluation** — a custom sensor evaluated in a worker process: the first request
  (process start and project import) and the warm round trip.

Self-contained (it builds its projects in a temporary directory). ``bench/run.py`` can call
:func:`bench_automation` and print :func:`rows`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from servo import Definitions, ScheduleDefinition, asset
from servo.adapters.embedded import open_embedded
from servo.cli.workspace import deploy_project, open_workspace
from servo.control.automation_common import run_key_doc_id
from servo.control.common import RUN_KEYS, RUNS
from servo.control.deploy import deploy
from servo.control.tick import tick
from servo.local import LocalControlPlane, LocalOptions
from servo.local_automation import LocalAutomation
from servo.project import build_manifest, find_project
from servo.sdk.event_sensors import gcs_object_notification
from servo.testing import ManualClock
from servo.worker.evaluate import EvaluationRequest, EvaluatorPool

PROJECT = """
from servo import DailyPartitionsDefinition, Definitions, RunRequest, asset, sensor
from servo.sdk.event_sensors import gcs_sensor

daily = DailyPartitionsDefinition(start_date="2020-01-01")


@asset(partitions=daily)
def orders(context):
    return context.partition_key


def day_of(name):
    return name.split("/")[1]


landing = gcs_sensor(
    name="landing",
    bucket="bench",
    prefix="landing/",
    partition_key=r"landing/(\\d{4}-\\d{2}-\\d{2})/",
    target="orders",
)
landing_fn = gcs_sensor(
    name="landing_fn", bucket="bench-fn", partition_key=day_of, target="orders", topic="bench-fn"
)


@sensor(target="orders", minimum_interval_seconds=3600)
def poller(context):
    return RunRequest(run_key=context.cursor or "first", partition_key="2024-01-01")


defs = Definitions(assets=[orders], sensors=[landing, landing_fn, poller])
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _write_project(root: Path) -> None:
    pkg = root / "benchauto"
    pkg.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "benchauto"\n\n[tool.servo]\nmodule = "benchauto.defs"\n'
    )
    (pkg / "__init__.py").write_text("")
    (pkg / "defs.py").write_text(textwrap.dedent(PROJECT))


def _latencies(
    ports: Any, topic: str, bucket: str, count: int, first_day: int
) -> tuple[list[float], list[float]]:
    """Publish ``count`` notifications one at a time; per notification, the milliseconds
    until the run document was written (its ``created_ms``) and until a client polling every
    half millisecond saw the run with all its tasks written."""
    created: list[float] = []
    visible: list[float] = []
    day0 = datetime(2020, 1, 1)
    sensor = "landing" if bucket == "bench" else "landing_fn"
    for i in range(count):
        day = (day0 + timedelta(days=first_day + i)).strftime("%Y-%m-%d")
        name = f"landing/{day}/orders.csv"
        data, attrs = gcs_object_notification(bucket, name, 1)
        key_id = run_key_doc_id(f"gcs:{sensor}:{bucket}/{name}#1")
        sent_wall_ms = time.time() * 1000
        sent = time.perf_counter()
        ports.bus.publish(topic, data, attrs)
        deadline = sent + 60
        while True:
            doc = ports.state.get(RUN_KEYS, key_id)
            run = ports.state.get(RUNS, doc["run_id"]) if doc else None
            if run is not None and run.get("tasks_written"):
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"no run for {name} after 60 s")
            time.sleep(0.0005)
        visible.append((time.perf_counter() - sent) * 1000)
        # created_ms is whole milliseconds (floored): add half a millisecond on average.
        created.append(max(0.0, float(run["created_ms"]) + 0.5 - sent_wall_ms))
        time.sleep(0.02)  # one event at a time: latency, not burst throughput
    return created, visible


def bench_event_latency(work: Path, events: int) -> dict[str, Any]:
    root = work / "events"
    _write_project(root)
    ws = open_workspace(find_project(root))
    deploy_project(ws, "user:bench")
    plane = LocalControlPlane(ws.ports, ws.home, LocalOptions(workers=2))
    with plane, LocalAutomation(ws.ports, ws.home) as auto:
        auto.refresh_subscriptions()
        _latencies(ws.ports, "servo-gcs-bench", "bench", 5, 0)  # warm-up
        regex, regex_seen = _latencies(ws.ports, "servo-gcs-bench", "bench", events, 10)
        _latencies(ws.ports, "bench-fn", "bench-fn", 3, 0)  # starts the evaluation process
        fn, fn_seen = _latencies(ws.ports, "bench-fn", "bench-fn", events, 10)
    return {
        "events": events,
        "regex_p50_ms": statistics.median(regex),
        "regex_p95_ms": percentile(regex, 0.95),
        "regex_visible_p50_ms": statistics.median(regex_seen),
        "regex_visible_p95_ms": percentile(regex_seen, 0.95),
        "function_p50_ms": statistics.median(fn),
        "function_p95_ms": percentile(fn, 0.95),
        "function_visible_p50_ms": statistics.median(fn_seen),
        "function_visible_p95_ms": percentile(fn_seen, 0.95),
    }


def bench_worker_evaluation(work: Path, times: int) -> dict[str, Any]:
    root = work / "evaluate"
    _write_project(root)
    ws = open_workspace(find_project(root))
    result, _ = deploy_project(ws, "user:bench")
    pool = EvaluatorPool(Path(ws.ports.blobs.root), ws.home / "code", size=1)  # type: ignore[attr-defined]
    request = EvaluationRequest(kind="sensor", code_version=result.code_version, name="poller")
    try:
        began = time.perf_counter()
        first = pool.evaluate(request)
        cold = time.perf_counter() - began
        assert first.error is None, first.error
        warm: list[float] = []
        for _ in range(times):
            began = time.perf_counter()
            answer = pool.evaluate(request)
            warm.append((time.perf_counter() - began) * 1000)
            assert answer.error is None, answer.error
            assert answer.outcomes[0].error is None, answer.outcomes[0].error
    finally:
        pool.close()
    return {
        "cold_s": cold,
        "warm_p50_ms": statistics.median(warm),
        "warm_p95_ms": percentile(warm, 0.95),
    }


@asset
def target() -> int:
    return 1


def _schedules(count: int, due: int) -> list[ScheduleDefinition]:
    """``count`` schedules of which ``due`` fire at 2024-01-05 12:00 UTC."""
    zones = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo"]
    out = []
    for i in range(count):
        if i < due:
            cron = ["0 * * * *", "*/15 * * * *", "0 12 * * *", "*/5 * * * *"][i % 4]
            zone = "UTC"
        else:
            cron = ["30 * * * *", "7 3 * * *", "45 */2 * * *", "10 1 * * 1"][i % 4]
            zone = zones[i % 4]
        out.append(
            ScheduleDefinition(name=f"s{i:04d}", cron_schedule=cron, target="target", timezone=zone)
        )
    return out


def _tick_once(work: Path, count: int, due: int) -> dict[str, float]:
    start = datetime(2024, 1, 5, 11, 59, 30, tzinfo=UTC)
    clock = ManualClock(start)
    home = work / f"ticks-{count}-{due}"
    ports = open_embedded(home)
    ports.clock = clock
    defs = Definitions(assets=[target], schedules=_schedules(count, due))
    manifest, _ = build_manifest(defs, project="bench", code_version=f"b{count}-{due}")
    assert manifest is not None
    deploy(ports, manifest, b"", {"module": "unused", "file": None, "name": "bench"})
    tick(ports)  # first sight: every schedule gets its cursor
    clock.set(start + timedelta(seconds=45))  # 12:00:15
    began = time.perf_counter()
    report = tick(ports)
    elapsed = time.perf_counter() - began
    assert len(report.outcomes) == due, (len(report.outcomes), due)
    began = time.perf_counter()
    again = tick(ports)
    repeated = time.perf_counter() - began
    assert again.outcomes == []
    return {"tick_s": elapsed, "repeat_s": repeated}


def bench_ticks(work: Path, count: int) -> dict[str, Any]:
    none = [_tick_once(work / f"n{i}", count, 0)["tick_s"] for i in range(3)]
    some = _tick_once(work / "some", count, count // 10)
    every = _tick_once(work / "all", count, count)
    return {
        "schedules": count,
        "none_due_s": statistics.median(none),
        "tenth_due_s": some["tick_s"],
        "all_due_s": every["tick_s"],
        "all_due_ms_per_run": every["tick_s"] * 1000 / count,
        "repeat_s": every["repeat_s"],
    }


def bench_automation(work: Path, *, events: int = 100, schedules: int = 1000) -> dict[str, Any]:
    """Every automation figure (see the module docstring)."""
    return {
        "events": bench_event_latency(work, events),
        "ticks": bench_ticks(work, schedules),
        "evaluate": bench_worker_evaluation(work, 50),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, float, float | None]]:
    """``(benchmark, metric, unit, value, target)`` lines for a results table."""
    e, t, v = results["events"], results["ticks"], results["evaluate"]
    n = t["schedules"]
    return [
        (
            "event latency",
            "GCS notification -> run created, regex key, p50",
            "ms",
            e["regex_p50_ms"],
            1000.0,
        ),
        ("event latency", "  same, p95", "ms", e["regex_p95_ms"], None),
        (
            "event latency",
            "  -> client sees the run and its tasks, p50",
            "ms",
            e["regex_visible_p50_ms"],
            None,
        ),
        (
            "event latency",
            "  -> client sees the run and its tasks, p95",
            "ms",
            e["regex_visible_p95_ms"],
            None,
        ),
        (
            "event latency",
            "same, key from a function in a warm worker, p50",
            "ms",
            e["function_p50_ms"],
            1000.0,
        ),
        ("event latency", "  same, p95", "ms", e["function_p95_ms"], None),
        (
            "event latency",
            "  -> client sees the run and its tasks, p50",
            "ms",
            e["function_visible_p50_ms"],
            None,
        ),
        (
            "event latency",
            "  -> client sees the run and its tasks, p95",
            "ms",
            e["function_visible_p95_ms"],
            None,
        ),
        ("tick", f"{n:,} schedules, none due", "s", t["none_due_s"], 1.0),
        ("tick", f"{n:,} schedules, {n // 10} due (runs created)", "s", t["tenth_due_s"], None),
        ("tick", f"{n:,} schedules, all due (runs created)", "s", t["all_due_s"], None),
        ("tick", "same, per run", "ms", t["all_due_ms_per_run"], None),
        ("tick", "repeated tick, all already done", "s", t["repeat_s"], 1.0),
        ("evaluate", "sensor in a new worker process (start + import)", "s", v["cold_s"], None),
        ("evaluate", "sensor in a warm worker process, p50", "ms", v["warm_p50_ms"], None),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="servo-bench-automation-") as tmp:
        results = bench_automation(Path(tmp), events=args.events, schedules=args.schedules)
    table = rows(results)
    widths = [max(len(r[0]) for r in table), max(len(r[1]) for r in table)]
    for bench, metric, unit, value, goal in table:
        verdict = "" if goal is None else ("ok" if value <= goal else "MISSED")
        shown = f"{value:,.1f} {unit}" if value >= 10 else f"{value:.3g} {unit}"
        target_text = f"<= {goal:g} {unit}" if goal is not None else ""
        print(
            f"{bench:<{widths[0]}}  {metric:<{widths[1]}}  {shown:>12}  {target_text:<12} {verdict}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
