"""The Dagster programs of the benchmark, run with the Dagster virtualenv's interpreter.

Usage:
  python dagster_side.py load PROJECT_ROOT
      import the generated project's Definitions and validate that they load
      (``Definitions.validate_loadable``, which resolves the asset graph, jobs and schedules)
  python dagster_side.py materialize PROJECT_ROOT sqlite|memory
      ``materialize()`` every asset with an instance on a temporary sqlite directory, or with
      an ephemeral (in-memory) instance
Prints the phase timings as JSON.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import tempfile
import time
from typing import Any

MODULE = "benchproj.defs"


def load(root: str) -> dict[str, Any]:
    """Import and validate the project's Definitions."""
    sys.path.insert(0, root)
    t0 = time.perf_counter()
    import dagster as dg  # type: ignore[import-not-found, unused-ignore]

    t1 = time.perf_counter()
    module = importlib.import_module(MODULE)
    t2 = time.perf_counter()
    dg.Definitions.validate_loadable(module.defs)
    t3 = time.perf_counter()
    return {
        "dagster_version": dg.__version__,
        "import_dagster_s": t1 - t0,
        "import_project_s": t2 - t1,
        "validate_loadable_s": t3 - t2,
        "assets": len(module.ASSETS),
        "checks": len(module.CHECKS),
    }


def materialize(root: str, storage: str) -> dict[str, Any]:
    """Materialize every asset of the project in this process."""
    sys.path.insert(0, root)
    t0 = time.perf_counter()
    import dagster as dg  # type: ignore[import-not-found, unused-ignore]

    module = importlib.import_module(MODULE)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        instance = (
            dg.DagsterInstance.local_temp(tempdir=tmp)
            if storage == "sqlite"
            else dg.DagsterInstance.ephemeral()
        )
        t2 = time.perf_counter()
        result = dg.materialize(module.ASSETS, instance=instance)
        t3 = time.perf_counter()
        steps = len(result.get_step_success_events())
    return {
        "dagster_version": dg.__version__,
        "storage": storage,
        "import_s": t1 - t0,
        "instance_s": t2 - t1,
        "materialize_s": t3 - t2,
        "success": result.success,
        "steps": steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    """Dispatch on the first argument."""
    command, root = sys.argv[1], sys.argv[2]
    if command == "load":
        out = load(root)
    elif command == "materialize":
        out = materialize(root, sys.argv[3])
    else:
        raise SystemExit(f"unknown command {command!r}; use load or materialize")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
