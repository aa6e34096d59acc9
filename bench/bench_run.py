"""Benchmark 3 (run): ``servo run '*' --wait --json`` on the embedded backend, with a fresh
SERVO_HOME, for a chain of trivial assets and a fan-out ``1 -> N -> 1``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from measure import median, run_measured
from projects import ProjectShape, chain, fan_out, write_servo

SERVO = str(Path(sys.executable).with_name("servo"))


def _run_once(root: Path, home: Path) -> dict[str, Any]:
    env = {**os.environ, "SERVO_HOME": str(home), "SERVO_BACKEND": "embedded"}
    m = run_measured([SERVO, "run", "*", "--wait", "--json"], cwd=root, env=env, sample_memory=True)
    summary = m.json_out()
    if summary["state"] != "SUCCEEDED":
        raise RuntimeError(f"benchmark run ended {summary['state']}: {summary.get('reason')}")
    tasks = len(summary["tasks"])
    first_start = min(t["started_ms"] for t in summary["tasks"])
    return {
        "tasks": tasks,
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "run_s": (summary["ended_ms"] - summary["created_ms"]) / 1000,
        # The run's fixed cost (worker processes start and import the code) and the rest.
        "to_first_task_s": (first_start - summary["created_ms"]) / 1000,
        "after_first_task_s": (summary["ended_ms"] - first_start) / 1000,
        "peak_tree_rss_mb": m.peak_tree_rss_mb,
        "peak_tree_pss_mb": m.peak_tree_pss_mb,
    }


def _bench_shape(name: str, shape: ProjectShape, work: Path, times: int) -> dict[str, Any]:
    root = write_servo(shape, work / f"servo-{name}")
    runs = [_run_once(root, work / f"home-{name}-{i}") for i in range(times)]
    tasks = runs[0]["tasks"]
    wall = median([r["wall_s"] for r in runs])
    run = median([r["run_s"] for r in runs])
    return {
        "tasks": tasks,
        "wall_s": wall,
        "run_s": run,
        "wall_ms_per_task": wall * 1000 / tasks,
        "run_ms_per_task": run * 1000 / tasks,
        "cpu_ms_per_task": median([r["cpu_s"] for r in runs]) * 1000 / tasks,
        "to_first_task_s": median([r["to_first_task_s"] for r in runs]),
        "after_first_task_ms_per_task": median([r["after_first_task_s"] for r in runs])
        * 1000
        / tasks,
        "peak_tree_rss_mb": max(r["peak_tree_rss_mb"] for r in runs),
        "peak_tree_pss_mb": max(r["peak_tree_pss_mb"] for r in runs),
        "runs": times,
    }


def bench_run(work: Path, chain_length: int, fan_width: int, times: int) -> dict[str, Any]:
    """Run both shapes ``times`` times each (a fresh SERVO_HOME every time)."""
    return {
        "chain": _bench_shape("chain", chain(chain_length), work, times),
        "fanout": _bench_shape("fanout", fan_out(fan_width), work, times),
    }
