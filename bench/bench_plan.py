"""Benchmark 2 (plan): plan a run of every asset of a 1,000-asset project, all assets
daily-partitioned (identity mappings), over 100 partitions: 100,000 tasks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from measure import median, run_measured
from projects import partition_range, realistic, write_servo

HERE = Path(__file__).resolve().parent


def bench_plan(work: Path, n_assets: int, days: int, times: int) -> dict[str, Any]:
    """Build the manifest once, then plan in ``times`` fresh processes."""
    shape = realistic(n_assets, partition_days=days, all_partitioned=True)
    root = write_servo(shape, work / "servo-plan")
    manifest = work / "plan-manifest.json"
    built = run_measured(
        [sys.executable, str(HERE / "children" / "servo_load.py"), str(root), str(manifest)]
    )
    built.json_out()
    first, last = partition_range(days)
    child = [sys.executable, str(HERE / "children" / "servo_plan.py"), str(manifest), first, last]
    runs = [run_measured(child).json_out() for _ in range(times)]
    return {
        "assets": len(shape.assets),
        "partitions": days,
        "tasks": runs[0]["tasks"],
        "task_edges": runs[0]["edges"],
        "plan_s": median([r["plan_s"] for r in runs]),
        "parse_manifest_s": median([r["parse_manifest_s"] for r in runs]),
        "select_s": median([r["select_s"] for r in runs]),
        "rss_before_plan_mb": max(r["rss_before_plan_mb"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "runs": times,
    }
