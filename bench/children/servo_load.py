"""Child process of the load benchmark: load a Servo project's Definitions, build its manifest
and write the manifest's canonical JSON to a file, as ``servo deploy`` does before uploading.

Usage: python servo_load.py PROJECT_ROOT MANIFEST_OUT. Prints the phase timings as JSON; the
parent times the whole process, interpreter start-up and imports included.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    """Run the phases and print how long each took."""
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    t0 = time.perf_counter()
    from servo.project import find_project, load_and_build

    t1 = time.perf_counter()
    ref = find_project(root)
    _, manifest = load_and_build(ref)
    t2 = time.perf_counter()
    out.write_text(manifest.canonical(), encoding="utf-8")
    t3 = time.perf_counter()
    print(
        json.dumps(
            {
                "import_servo_s": t1 - t0,
                "load_and_build_s": t2 - t1,
                "write_manifest_s": t3 - t2,
                "assets": len(manifest.assets),
                "checks": len(manifest.checks),
                "schedules": len(manifest.schedules),
                "manifest_bytes": out.stat().st_size,
            }
        )
    )


if __name__ == "__main__":
    main()
