"""The Dagster anchor: figures recorded earlier on this machine class, or the same programs
measured now in a separate virtualenv with ``dagster==1.13.*`` (created once, kept in
``bench/.dagster-venv``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from measure import median, repeat, run_measured
from projects import ProjectShape, chain, fan_out, realistic, write_dagster

HERE = Path(__file__).resolve().parent
VENV = HERE / ".dagster-venv"
REQUIREMENT = "dagster==1.13.*"
SIDE = str(HERE / "children" / "dagster_side.py")

# Dagster 1.13 on this machine class (2 cores), measured before this suite existed.
RECORDED: dict[str, Any] = {
    "version": "1.13",
    "load_s": 1.4,  # import a 1,000-asset Definitions in a fresh process
    "validate_cli_s": 5.7,  # `dagster definitions validate` on it
    "chain_sqlite_ms_per_step": 129.0,  # materialize(), chain of 100, sqlite instance
    "fanout_sqlite_ms_per_step": 156.0,  # materialize(), fan-out 1 -> 500 -> 1, sqlite instance
    "chain_memory_ms_per_step": 33.0,  # materialize() with in-memory storage
    "fanout_memory_ms_per_step": 33.0,
}


def _python() -> Path:
    return VENV / "bin" / "python"


def installed_version() -> str | None:
    """The Dagster version in the benchmark's virtualenv, or None if it has none."""
    if not _python().exists():
        return None
    probe = subprocess.run(
        [str(_python()), "-c", "import dagster; print(dagster.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    version = probe.stdout.strip()
    return version if probe.returncode == 0 and version.startswith("1.13.") else None


def ensure_venv() -> tuple[str | None, str]:
    """Create the virtualenv and install Dagster into it if needed.

    Returns ``(version, "")``, or ``(None, why)`` when Dagster cannot be installed.
    """
    version = installed_version()
    if version:
        return version, ""
    print(f"installing {REQUIREMENT} into {VENV} (once) ...", file=sys.stderr, flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(_python()), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(_python()), "-m", "pip", "install", "--quiet", REQUIREMENT],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200, check=False)
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(step)}` timed out"
        if done.returncode != 0:
            return None, f"`{' '.join(step)}` failed: {done.stderr.strip()[-500:]}"
    version = installed_version()
    return (version, "") if version else (None, "dagster does not import after installing it")


def _materialize(shape: ProjectShape, name: str, work: Path, times: int) -> dict[str, Any]:
    root = write_dagster(shape, work / f"dagster-{name}")
    out: dict[str, Any] = {}
    for storage in ("sqlite", "memory"):
        runs = [
            run_measured([str(_python()), SIDE, "materialize", str(root), storage])
            for _ in range(times)
        ]
        figures = [m.json_out() for m in runs]
        if not all(f["success"] for f in figures):
            raise RuntimeError(f"Dagster materialize() of the {name} failed")
        steps = figures[0]["steps"]
        out[storage] = {
            "steps": steps,
            "materialize_s": median([f["materialize_s"] for f in figures]),
            "ms_per_step": median([f["materialize_s"] for f in figures]) * 1000 / steps,
            "wall_ms_per_step": median([m.wall_s for m in runs]) * 1000 / steps,
            "cpu_ms_per_step": median([m.cpu_s for m in runs]) * 1000 / steps,
            "peak_rss_mb": max(f["peak_rss_mb"] for f in figures),
        }
    return out


def measure_dagster(
    work: Path,
    *,
    n_assets: int,
    chain_length: int,
    fan_width: int,
    times: int,
    benches: set[str],
) -> dict[str, Any]:
    """Run the equivalent Dagster programs for the selected benchmarks."""
    out: dict[str, Any] = {"version": installed_version()}
    if "load" in benches:
        root = write_dagster(realistic(n_assets), work / "dagster-load")
        cold, warm = repeat([str(_python()), SIDE, "load", str(root)], times)
        phases = [m.json_out() for m in warm]
        home = work / "dagster-home"
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text("", encoding="utf-8")
        validate_cmd = [
            str(VENV / "bin" / "dagster"),
            *("definitions", "validate", "-m", "benchproj.defs", "-d", str(root)),
        ]
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        _, validate = repeat(validate_cmd, times, cwd=root, env=env, json_output=False)
        out["load"] = {
            "load_s": median([m.wall_s for m in warm]),
            "load_cold_s": cold.wall_s,
            "load_cpu_s": median([m.cpu_s for m in warm]),
            "import_dagster_s": median([p["import_dagster_s"] for p in phases]),
            "import_project_s": median([p["import_project_s"] for p in phases]),
            "validate_loadable_s": median([p["validate_loadable_s"] for p in phases]),
            "validate_cli_s": median([m.wall_s for m in validate]),
        }
    if "run" in benches:
        out["chain"] = _materialize(chain(chain_length), "chain", work, times)
        out["fanout"] = _materialize(fan_out(fan_width), "fanout", work, times)
    return out
