"""The README demo: the quickstart project end to end on the embedded backend.

Runs the same `servo` commands a user would type, in a fresh state directory, and prints what
they print. Exit code 0 when the run succeeded.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parent / "quickstart"
SERVO = str(Path(sys.executable).with_name("servo"))


def servo(
    *args: str, env: dict[str, str], capture: bool = False
) -> subprocess.CompletedProcess[str]:
    print(f"\n$ servo {shlex.join(args)}", flush=True)
    proc = subprocess.run(
        [SERVO, *args], check=False, cwd=QUICKSTART, env=env, text=True, capture_output=capture
    )
    if capture:
        sys.stdout.write(proc.stdout if args[-1] != "--json" else "")
        sys.stderr.write(proc.stderr)
    return proc


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="servo-demo-"))
    env = {**os.environ, "SERVO_HOME": str(home), "SERVO_ACTOR": "demo"}
    print(f"Servo quickstart demo (state in {home})")
    if servo("validate", env=env).returncode != 0:
        return 1
    if servo("deploy", env=env).returncode != 0:
        return 1
    run = servo(
        "run", "*", "--partition-range", "2024-01-01...2024-01-31", "--json", env=env, capture=True
    )
    summary = json.loads(run.stdout)
    run_id = summary["run_id"]
    servo("status", run_id, env=env)
    servo("logs", run_id, "--task", "exchange_rate", env=env)
    servo("logs", run_id, "--task", "raw_orders:2024-01-15", env=env)
    print(
        f"\nRun {run_id}: {summary['state']}, {len(summary['tasks'])} tasks. "
        f"Explore it with: SERVO_HOME={home} servo events {run_id}"
    )
    return 0 if summary["state"] == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
