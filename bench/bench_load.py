"""Benchmark 1 (load): a fresh process loads a generated 1,000-asset project's Definitions,
builds its manifest and writes the manifest's canonical JSON; and ``servo validate`` on it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from measure import median, repeat
from projects import realistic, write_servo

HERE = Path(__file__).resolve().parent
SERVO = str(Path(sys.executable).with_name("servo"))


def bench_load(work: Path, n_assets: int, times: int) -> dict[str, Any]:
    """Time loading and manifest building in fresh processes; ``times`` warm runs after a
    cold one (the cold one also compiles the generated code's bytecode)."""
    shape = realistic(n_assets)
    root = write_servo(shape, work / "servo-load")
    manifest = work / "load-manifest.json"
    child = [sys.executable, str(HERE / "children" / "servo_load.py"), str(root), str(manifest)]
    cold, warm = repeat(child, times)
    phases = [m.json_out() for m in warm]
    _, validate = repeat([SERVO, "validate", "--json"], times, cwd=root)
    return {
        "assets": len(shape.assets),
        "partitioned_assets": sum(1 for a in shape.assets if a.partitioned),
        "edges": sum(len(a.deps) for a in shape.assets),
        "checks": shape.check_count,
        "schedules": len(shape.scheduled_groups),
        "manifest_bytes": phases[0]["manifest_bytes"],
        "load_s": median([m.wall_s for m in warm]),
        "load_cold_s": cold.wall_s,
        "load_cpu_s": median([m.cpu_s for m in warm]),
        "import_servo_s": median([p["import_servo_s"] for p in phases]),
        "load_and_build_s": median([p["load_and_build_s"] for p in phases]),
        "write_manifest_s": median([p["write_manifest_s"] for p in phases]),
        "validate_cli_s": median([m.wall_s for m in validate]),
        "runs": times,
    }
