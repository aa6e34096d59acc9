"""Projection benchmarks: fold throughput, bytes at rest per task, query latency.

    python bench/projections.py [--events 1000000] [--json out.json]

1. Fold throughput over N synthetic events shaped like the control plane's, wall and CPU time
   (on a busy machine CPU time is the better comparison):
   a. in memory: the events as dicts, folded and merged into final tables;
   b. the first compaction from the file ledger (a full rebuild, written as Parquet): through
      ``Ledger.read`` (segments decoded into dicts by the ledger), and from the segments as
      stored, as a ledger with ``read_encoded`` hands them out.
2. Bytes of ledger (gzip-compressed JSON segments) + projections per task once compacted.
3. Query latency over that history, each with a fresh reader as a CLI call would open:
   ``servo status RUN_ID`` (run view), a partition-status query, recent runs, a run's events;
   and with a live tail of uncompacted segments.
4. The cost of one incremental compaction step on top of the full history.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

from servo.adapters.embedded import open_embedded  # noqa: E402
from servo.adapters.embedded.ledger import FileLedger, stream_directory  # noqa: E402
from servo.ports import Ports  # noqa: E402
from servo.projections import query  # noqa: E402
from servo.projections.compaction import CompactionSettings, Compactor  # noqa: E402
from servo.projections.fold import event_batch, fold_batches  # noqa: E402
from servo.projections.synthetic import synthetic_runs  # noqa: E402

SEGMENT_EVENTS = 500
TASKS_PER_RUN = 100
BATCH_EVENTS = 100_000


class EncodedFileLedger(FileLedger):
    """The file ledger handing out segments as stored, as ``read_encoded`` does
    (:class:`~servo.projections.compaction.EncodedLedger`)."""

    def read_encoded(
        self, stream: str, after_seq: int = -1, limit: int | None = None
    ) -> list[tuple[int, bytes]]:
        directory = stream_directory(self.root, stream)
        seqs = sorted(int(p.stem) for p in directory.glob("*.json") if p.stem.isdigit())
        wanted = [s for s in seqs if s > after_seq][:limit]
        return [(s, (directory / f"{s:012d}.json").read_bytes()) for s in wanted]


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
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


def _throughput(label: str, events: int, fn: Callable[[], Any]) -> dict[str, float]:
    load = os.getloadavg()[0]
    cpu = time.process_time()
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    cpu = time.process_time() - cpu
    print(
        f"{label}: {events / wall:,.0f} events/s ({wall:.2f} s wall, {cpu:.2f} s CPU -> "
        f"{events / cpu:,.0f} events/CPU-s; load {load:.1f})"
    )
    return {
        "events_per_s": round(events / wall),
        "events_per_cpu_s": round(events / cpu),
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "load_average": round(load, 1),
    }


def _compact(ports: Ports, settings: CompactionSettings) -> int:
    result = Compactor(ports, settings).compact()
    assert result.rebuilt, result.to_json()
    assert result.lag_segments == 0, result.to_json()
    return result.stats.events


def _fold_in_memory(events: list[dict[str, Any]]) -> None:
    fold_batches(
        event_batch(events[i : i + BATCH_EVENTS]) for i in range(0, len(events), BATCH_EVENTS)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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

    # 1a. The fold alone (events already in memory as dicts), in batches as a rebuild reads
    # them: DuckDB reads one batch while Python converts the next.
    figures["fold"] = _throughput(
        "fold (dicts in memory -> final tables)", len(events), lambda: _fold_in_memory(events)
    )

    with tempfile.TemporaryDirectory(prefix="servo-bench-proj-") as tmp:
        home = Path(tmp) / "home"
        ledger_root = home / "ledger" / "default" / "default"
        ports = open_embedded(home)
        ports.ledger = FileLedger(ledger_root, fsync=False)
        for seq, start in enumerate(range(0, len(events), SEGMENT_EVENTS)):
            ports.ledger.append("events", seq, events[start : start + SEGMENT_EVENTS])
        events.clear()  # only the ledger holds them from here on

        # 1b. End to end: the first compaction (a full rebuild) from the file ledger to
        # published Parquet, once through `read` (the ledger decodes every segment into
        # dicts) and once from the segments as stored, each into projections of its own.
        settings = CompactionSettings(max_segments=200)
        encoded = open_embedded(Path(tmp) / "encoded")
        encoded.ledger = EncodedFileLedger(ledger_root, fsync=False)
        for name, target in (("compaction_read", ports), ("compaction_encoded", encoded)):
            count = figures["events"]
            figures[name] = _throughput(
                f"first compaction, {'segments as stored' if target is encoded else 'Ledger.read'}"
                " -> Parquet",
                count,
                lambda target=target: _compact(target, settings),
            )

        # 2. Bytes at rest.
        ledger_bytes = _dir_bytes(home / "ledger")
        json_bytes = sum(len(gzip.decompress(p.read_bytes())) for p in ledger_root.rglob("*.json"))
        proj_bytes = _dir_bytes(home / "blobs" / "default" / "default" / "projections")
        figures.update(
            {
                "ledger_bytes_per_task": round(ledger_bytes / tasks),
                "ledger_uncompressed_bytes_per_task": round(json_bytes / tasks),
                "projection_bytes_per_task": round(proj_bytes / tasks),
                "total_bytes_per_task": round((ledger_bytes + proj_bytes) / tasks),
            }
        )
        print(
            f"bytes per task at rest: ledger {ledger_bytes / tasks:,.0f} (gzip-compressed JSON; "
            f"{json_bytes / tasks:,.0f} uncompressed) + projections {proj_bytes / tasks:,.0f} "
            f"= {(ledger_bytes + proj_bytes) / tasks:,.0f}"
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
        # The same as the command a user types, in a process of its own (start-up included).
        servo = Path(sys.executable).with_name("servo")
        if servo.exists():
            env = {**os.environ, "SERVO_HOME": str(home)}

            def status_cli() -> None:
                # Exit status 1 means the run did not succeed; the view is printed either way.
                done = subprocess.run(
                    [str(servo), "status", run_id, "--json"],
                    cwd=tmp,
                    env=env,
                    check=False,
                    capture_output=True,
                    text=True,
                )
                assert json.loads(done.stdout)["run_id"] == run_id, done.stderr

            latency["status_run_cli"] = _timed(status_cli, max(3, args.repeat // 5))
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
    figures["load_average"] = round(os.getloadavg()[0], 1)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
