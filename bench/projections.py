"""Projection benchmarks: fold throughput, bytes at rest per task, query latency.

    python bench/projections.py [--events 1000000] [--json out.json]

1. Fold throughput over N synthetic events shaped like the control plane's (in memory: map +
   merge; and end to end: compaction reading the file ledger and writing Parquet).
2. Bytes of ledger + projections per task once compacted (the ledger as the embedded backend
   writes it, JSON, and what it would take compressed with zstd).
3. Query latency over that history, each with a fresh reader as a CLI call would open:
   ``servo status RUN_ID`` (run view), a partition-status query, recent runs, a run's events;
   and with a live tail of uncompacted segments.
4. The cost of one incremental compaction step on top of the full history.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

from servo.adapters.embedded import open_embedded  # noqa: E402
from servo.projections import query  # noqa: E402
from servo.projections.compaction import (  # noqa: E402
    CompactionSettings,
    Compactor,
    finish_tables,
)
from servo.projections.fold import connect, fold_batches  # noqa: E402
from servo.projections.synthetic import synthetic_runs  # noqa: E402

SEGMENT_EVENTS = 500
TASKS_PER_RUN = 100


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(fn: Any, repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return {
        "median_ms": round(statistics.median(samples), 1),
        "p90_ms": round(sorted(samples)[int(len(samples) * 0.9) - 1], 1),
        "max_ms": round(max(samples), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs (figures scale with a busy machine)")

    # ~4.4 events per task: size the history to reach the requested number of events.
    runs = max(1, round(args.events / (TASKS_PER_RUN * 4.4 + 6)))
    events = list(synthetic_runs(runs, TASKS_PER_RUN, seed=7))
    tasks = runs * TASKS_PER_RUN
    figures: dict[str, Any] = {"events": len(events), "runs": runs, "tasks": tasks}
    print(f"history: {len(events):,} events, {runs:,} runs, {tasks:,} tasks")

    # 1a. The fold alone (events already in memory): batches folded (Python reading one batch
    # while DuckDB derives the previous), then every table merged into its final form.
    cpu = time.process_time()
    t = time.perf_counter()
    parts, _ = fold_batches(events[i : i + 100_000] for i in range(0, len(events), 100_000))
    con = connect()
    finish_tables(con, parts, None)
    fold_s = time.perf_counter() - t
    fold_cpu = time.process_time() - cpu
    con.close()
    figures["fold_events_per_s"] = round(len(events) / fold_s)
    figures["fold_events_per_cpu_s"] = round(len(events) / fold_cpu)
    print(
        f"fold (map + merge, in memory): {len(events) / fold_s:,.0f} events/s "
        f"({fold_s:.2f} s wall, {fold_cpu:.2f} s CPU -> {len(events) / fold_cpu:,.0f} events/CPU-s)"
    )

    with tempfile.TemporaryDirectory(prefix="servo-bench-proj-") as tmp:
        home = Path(tmp)
        ports = open_embedded(home)
        ports.ledger = type(ports.ledger)(home / "ledger" / "default" / "default", fsync=False)
        for seq, start in enumerate(range(0, len(events), SEGMENT_EVENTS)):
            ports.ledger.append("events", seq, events[start : start + SEGMENT_EVENTS])
        del events

        # 1b. End to end: compaction from the file ledger to published Parquet.
        settings = CompactionSettings(max_segments=400)
        cpu = time.process_time()
        t = time.perf_counter()
        result = Compactor(ports, settings).compact()
        compact_s = time.perf_counter() - t
        compact_cpu = time.process_time() - cpu
        figures["compaction_events_per_s"] = round(result.stats.events / compact_s)
        figures["compaction_events_per_cpu_s"] = round(result.stats.events / compact_cpu)
        print(
            f"compaction (ledger JSON -> Parquet, first = full rebuild): "
            f"{result.stats.events / compact_s:,.0f} events/s ({compact_s:.2f} s wall, "
            f"{result.stats.events / compact_cpu:,.0f} events/CPU-s)"
        )

        # 2. Bytes at rest.
        ledger_bytes = _dir_bytes(home / "ledger")
        proj_bytes = _dir_bytes(home / "blobs" / "default" / "default" / "projections")
        zstd_bytes = sum(
            len(pa.compress(p.read_bytes(), codec="zstd", asbytes=True))
            for p in (home / "ledger").rglob("*.json")
        )
        figures.update(
            {
                "ledger_bytes_per_task": round(ledger_bytes / tasks),
                "ledger_zstd_bytes_per_task": round(zstd_bytes / tasks),
                "projection_bytes_per_task": round(proj_bytes / tasks),
                "total_bytes_per_task": round((ledger_bytes + proj_bytes) / tasks),
                "total_zstd_ledger_bytes_per_task": round((zstd_bytes + proj_bytes) / tasks),
            }
        )
        print(
            f"bytes per task: ledger {ledger_bytes / tasks:,.0f} (JSON; {zstd_bytes / tasks:,.0f} "
            f"if segments were zstd-compressed) + projections {proj_bytes / tasks:,.0f} = "
            f"{(ledger_bytes + proj_bytes) / tasks:,.0f} "
            f"({(zstd_bytes + proj_bytes) / tasks:,.0f} with compressed segments)"
        )

        # 3. Queries, each with a fresh reader (as one CLI call or API request).
        run_id = f"r{runs // 2:08d}"
        latency = {
            "status_run": _timed(lambda: query.run_view(ports, run_id), args.repeat),
            "partition_status": _timed(
                lambda: query.partition_status(ports, "a1", declared=[]), args.repeat
            ),
            "recent_runs": _timed(lambda: query.list_runs(ports, limit=20), args.repeat),
            "recent_runs_by_asset_and_tag": _timed(
                lambda: query.list_runs(ports, asset="a2", tags={"team": "t1"}), args.repeat
            ),
            "run_events": _timed(lambda: query.run_events(ports, run_id), args.repeat),
            "asset_view": _timed(lambda: query.asset_view(ports, "a1"), args.repeat),
        }
        # 4. One more run recorded (a live tail), then one incremental step.
        more = list(synthetic_runs(1, TASKS_PER_RUN, seed=8, start_ms=4_000_000_000_000))
        for e in more:
            e["id"] = "n" + e["id"]
            e["run_id"] = "rtail"
        last = ports.ledger.last_seq("events")
        for i, start in enumerate(range(0, len(more), SEGMENT_EVENTS)):
            ports.ledger.append("events", last + 1 + i, more[start : start + SEGMENT_EVENTS])
        latency["status_run_with_live_tail"] = _timed(
            lambda: query.run_view(ports, "rtail"), args.repeat
        )
        figures["query_latency"] = latency
        for name, value in latency.items():
            print(f"query {name}: median {value['median_ms']} ms, p90 {value['p90_ms']} ms")
        t = time.perf_counter()
        step = Compactor(ports, settings).compact()
        step_s = time.perf_counter() - t
        figures["incremental_step"] = {
            "events": step.stats.events,
            "seconds": round(step_s, 3),
            "merges": step.merges,
        }
        print(
            f"incremental compaction of {step.stats.events} new events over "
            f"{figures['events']:,}: {step_s * 1000:.0f} ms ({step.merges} merges)"
        )
    figures["load_average"] = round(load, 1)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
