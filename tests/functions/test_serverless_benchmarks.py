"""The serverless benchmarks keep working: each runs end to end at a tiny size on the
session's emulators. Only the shape of the results is checked, never a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servo.testing.serverless import checkout_root

pytestmark = [pytest.mark.emulators, pytest.mark.slow]

BENCH = checkout_root() / "bench"


def _run(script: str, *args: str, out: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json", str(out)],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data: dict[str, object] = json.loads(out.read_text())
    return data


def test_the_cost_benchmark_accounts_for_every_service(
    gcp_emulators: dict[str, str], tmp_path: Path
) -> None:
    data = _run("gcp_costs.py", "--chain", "3", "--fanout", "4", out=tmp_path / "costs.json")
    results = data["results"]
    assert isinstance(results, list)
    assert [r["scenario"] for r in results] == ["chain3", "fanout4"]
    for result in results:
        assert result["operations_per_task"] > 0
        assert set(result["per_task_by_service"]) == {
            "trigger",
            "dispatch",
            "worker",
            "callback",
            "sweep",
            "compaction",
        }
        assert result["hottest_documents"]
        assert "tasks" in result["firestore_by_collection"]
        assert result["usd_per_million_tasks"] > 0


def test_the_throughput_benchmark_measures_through_the_processes(
    gcp_emulators: dict[str, str], tmp_path: Path
) -> None:
    data = _run("serverless.py", "--fanout", "3", "--latency-runs", "2", out=tmp_path / "tp.json")
    fan_out = data["fan_out"]
    latency = data["trigger_to_first_task_started"]
    assert isinstance(fan_out, dict)
    assert isinstance(latency, dict)
    assert fan_out["tasks"] == 5
    assert fan_out["tasks_per_s"] > 0
    assert latency["runs"] == 2
    assert latency["p95_s"] >= latency["p50_s"] > 0
