"""Child process of the plan benchmark: read a manifest, select every asset and plan a run of
the given partition range, as the trigger service does.

Usage: python servo_plan.py MANIFEST_JSON FIRST_PARTITION LAST_PARTITION. Prints the phase
timings, the plan's size and the process's peak RSS as JSON.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    """Run the phases and print how long each took."""
    manifest_path, first, last = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    t0 = time.perf_counter()
    from servo.core.manifest import Manifest
    from servo.core.partitions import PartitionContext
    from servo.core.planner import PartitionSelection, plan_run
    from servo.core.selection import resolve_selection

    t1 = time.perf_counter()
    manifest = Manifest.from_json_obj(json.loads(manifest_path.read_text(encoding="utf-8")))
    t2 = time.perf_counter()
    selected = resolve_selection("*", manifest.graph)
    t3 = time.perf_counter()
    rss_before_plan = _rss_mb()
    plan = plan_run(
        manifest, selected, PartitionSelection(ranges=((first, last),)), PartitionContext()
    )
    t4 = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": t1 - t0,
                "parse_manifest_s": t2 - t1,
                "select_s": t3 - t2,
                "plan_s": t4 - t3,
                "tasks": len(plan.tasks),
                "edges": sum(len(t.upstream) for t in plan.tasks),
                "rss_before_plan_mb": rss_before_plan,
                # ru_maxrss is in KiB on Linux.
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
