"""Throughput of the serverless control plane through real processes.

    .venv/bin/python bench/serverless.py                   # fan-out 1 -> 1000 -> 1, 20 latency runs
    .venv/bin/python bench/serverless.py --fanout 200 --latency-runs 10 --workers 4 --json out.json

Starts the emulators (unless their variables are set), every Cloud Function as its own
functions-framework process and the worker service with ``--workers`` processes
(:class:`servo.testing.serverless.ServerlessStack`), deploys a generated fan-out project and
measures, through the trigger function:

* tasks per second end to end: the fan-out run's tasks divided by the time from sending the
  trigger request to the run's end;
* trigger -> first task started: for ``--latency-runs`` one-task runs, the time from sending
  the trigger request to the task's ``started`` report being recorded (p50 and p95), after
  one cold run (reported apart: each process builds its clients on its first request).

Everything shares this machine's cores, emulators included, so the figures say how the
control plane behaves, not what Google Cloud would do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from projects import fan_out, write_servo
from servo.control.common import TASKS
from servo.ports import Where
from servo.testing.serverless import ServerlessStack, StackOptions


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``, interpolated."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fan_out_throughput(stack: ServerlessStack, timeout_s: float) -> dict[str, Any]:
    sent = time.time()
    status, answer = stack.trigger({"selection": "*", "actor": "user:bench"})
    if status != 201:
        raise RuntimeError(f"trigger answered {status}: {answer}")
    run = stack.wait_for_run(str(answer["run_id"]), timeout_s=timeout_s, poll_s=0.25)
    if run["state"] != "SUCCEEDED":
        raise RuntimeError(f"the fan-out run ended {run['state']}: {run.get('reason')}")
    tasks = int(answer["task_count"])
    elapsed = run["ended_ms"] / 1000 - sent
    return {
        "tasks": tasks,
        "seconds": round(elapsed, 2),
        "tasks_per_s": round(tasks / elapsed, 2),
    }


def first_task_latency(stack: ServerlessStack, runs: int) -> dict[str, Any]:
    """One cold run (every process builds its clients on its first request), then ``runs``
    warm ones."""
    ports = stack.ports()
    latencies: list[float] = []
    for _ in range(runs + 1):
        sent = time.time()
        status, answer = stack.trigger({"selection": "root", "actor": "user:bench"})
        if status != 201:
            raise RuntimeError(f"trigger answered {status}: {answer}")
        run_id = str(answer["run_id"])
        deadline = time.monotonic() + 120
        started_ms = None
        while started_ms is None:
            rows = ports.state.query(TASKS, [Where("run_id", "==", run_id)])
            started_ms = rows[0][1].get("started_ms") if rows else None
            if started_ms is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the task of run {run_id} never started")
                time.sleep(0.01)
        latencies.append(started_ms / 1000 - sent)
        stack.wait_for_run(run_id, timeout_s=120, poll_s=0.05)
    cold = latencies.pop(0)
    return {
        "runs": runs,
        "cold_s": round(cold, 3),
        "p50_s": round(percentile(latencies, 0.5), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "max_s": round(max(latencies), 3),
        "mean_s": round(statistics.fmean(latencies), 3),
    }


def bench_serverless(
    work: Path, fan_width: int, latency_runs: int = 20, workers: int = 2, timeout_s: float = 1800
) -> dict[str, Any]:
    """Start a stack under ``work``, measure, stop it; the figures :func:`main` prints."""
    root = write_servo(fan_out(fan_width), work / "project")
    options = StackOptions(
        worker_processes=workers,
        sweep_interval_s=10.0,
        # A run this wide keeps tasks queued for a while before a worker is free.
        settings={"dispatch_timeout_ms": int(timeout_s * 1000)},
    )
    began = time.monotonic()
    with ServerlessStack(work / "stack", options) as stack:
        started = time.monotonic() - began
        stack.deploy(root)
        latency = first_task_latency(stack, latency_runs)
        throughput = fan_out_throughput(stack, timeout_s)
    return {
        "stack_start_s": round(started, 2),
        "worker_processes": workers,
        "fan_out": throughput,
        "trigger_to_first_task_started": latency,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fanout", type=int, default=1000, help="width of the fan-out")
    parser.add_argument("--latency-runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="worker service processes")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="servo-serverless-bench-") as tmp:
        result = bench_serverless(
            Path(tmp), args.fanout, args.latency_runs, args.workers, args.timeout
        )
    throughput = result["fan_out"]
    latency = result["trigger_to_first_task_started"]
    print(f"stack started in {result['stack_start_s']} s ({args.workers} worker processes)")
    print(
        f"fan-out 1 -> {args.fanout} -> 1: {throughput['tasks']} tasks in "
        f"{throughput['seconds']} s = {throughput['tasks_per_s']} tasks/s end to end"
    )
    print(
        f"trigger -> first task started over {latency['runs']} runs: p50 {latency['p50_s']} s, "
        f"p95 {latency['p95_s']} s (max {latency['max_s']} s; the first, cold: {latency['cold_s']} s)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
