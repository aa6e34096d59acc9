"""The benchmark suite keeps working: every Servo benchmark runs end to end at a tiny size.

Only the shape of the results is checked, never a timing.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def _projects_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_projects", BENCH / "projects.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_servo_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            *("--assets", "20", "--partitions", "3", "--chain", "5", "--fanout", "4"),
            *("--repeat", "1", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text(encoding="utf-8"))
    servo = results["servo"]
    assert servo["load"]["assets"] == 20
    assert servo["load"]["checks"] == 2
    assert servo["plan"]["tasks"] == 20 * 3
    assert servo["run"]["chain"]["tasks"] == 5
    assert servo["run"]["fanout"]["tasks"] == 4 + 2
    assert servo["run"]["chain"]["peak_tree_rss_mb"] > 0
    assert {r["benchmark"].split(" ")[0] for r in results["rows"]} == {"load", "plan", "run"}
    recorded = [r for r in results["rows"] if r["anchor"] == "anchor (recorded)"]
    assert recorded and all(r["ratio"] > 0 for r in recorded)
    assert "servo/dagster" in done.stdout


def test_one_benchmark_can_be_chosen(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "plan",
            *("--assets", "10", "--partitions", "2", "--repeat", "1", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text(encoding="utf-8"))
    assert set(results["servo"]) == {"plan"}
    assert results["servo"]["plan"]["tasks"] == 20


def test_an_unknown_benchmark_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "lod"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown benchmark 'lod'" in done.stderr


def test_the_dagster_flavour_of_each_project_is_valid_python(tmp_path: Path) -> None:
    projects = _projects_module()
    shapes = {
        "realistic": projects.realistic(60),
        "chain": projects.chain(3),
        "fanout": projects.fan_out(3),
    }
    for name, shape in shapes.items():
        root = projects.write_dagster(shape, tmp_path / name)
        files = sorted((root / projects.PACKAGE).glob("*.py"))
        assert files
        for f in files:
            ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        defs = (root / projects.PACKAGE / "defs.py").read_text(encoding="utf-8")
        assert defs.count("_is_present,") == shape.check_count
