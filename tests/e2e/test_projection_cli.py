"""`servo asset show`, `servo status` filters and `servo admin …` end to end (E10, G8)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVO = str(Path(sys.executable).with_name("servo"))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SERVO_HOME": str(tmp_path / "home"), "SERVO_ACTOR": "tester"}


@pytest.fixture
def quickstart(tmp_path: Path) -> Path:
    dest = tmp_path / "quickstart"
    shutil.copytree(
        ROOT / "examples" / "quickstart",
        dest,
        ignore=shutil.ignore_patterns(".servo", "__pycache__"),
    )
    return dest


def servo(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVO, *args], cwd=cwd, env=env, text=True, capture_output=True, timeout=300, check=False
    )


def test_asset_show_status_filters_and_admin_commands(
    quickstart: Path, env: dict[str, str]
) -> None:
    run = servo(
        quickstart,
        env,
        "run",
        "raw_orders or orders_cleaned or daily_revenue or exchange_rate",
        "--partition",
        "2024-01-02",
        "--tag",
        "team=shop",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout)["run_id"]

    shown = servo(quickstart, env, "asset", "show", "daily_revenue", "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["materialization_count"] == 1
    (mat,) = view["materializations"]
    assert (mat["partition"], mat["run_id"]) == ("2024-01-02", run_id)
    statuses = {p["partition"]: p["status"] for p in view["partitions"]}
    assert statuses["2024-01-02"] == "MATERIALIZED"
    assert statuses["2024-01-03"] == "MISSING", "declared partitions nothing has touched yet"
    assert {c["check"] for c in view["checks"]} >= {"revenue_is_positive"}
    text = servo(quickstart, env, "asset", "show", "daily_revenue")
    assert text.returncode == 0 and "daily_revenue" in text.stdout
    missing = servo(quickstart, env, "asset", "show", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr

    def listed(*args: str) -> list[str]:
        proc = servo(quickstart, env, "status", "--json", *args)
        assert proc.returncode == 0, proc.stderr
        return [r["run_id"] for r in json.loads(proc.stdout)]

    assert listed("--asset", "daily_revenue") == [run_id]
    assert listed("--asset", "monthly_revenue") == []
    assert listed("--tag", "team=shop", "--since", "1h") == [run_id]
    assert listed("--tag", "team=other") == []
    assert listed("--state", "failed") == []
    bad = servo(quickstart, env, "status", "--since", "yesterday-ish")
    assert bad.returncode == 1 and "--since" in bad.stderr

    compacted = servo(quickstart, env, "admin", "compact", "--json")
    assert compacted.returncode == 0, compacted.stderr
    assert json.loads(compacted.stdout)["lag_segments"] == 0

    checked = servo(quickstart, env, "admin", "rebuild-projections", "--check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["equal"]

    projections = Path(env["SERVO_HOME"]) / "blobs" / "default" / "default" / "projections"
    for parquet in (projections / "tasks").rglob("*.parquet"):
        parquet.unlink()
    damaged = servo(quickstart, env, "admin", "rebuild-projections", "--check")
    assert damaged.returncode == 1 and "cannot be read" in damaged.stdout
    repaired = servo(quickstart, env, "admin", "rebuild-projections")
    assert repaired.returncode == 0 and "replaced by the rebuild" in repaired.stdout
    again = servo(quickstart, env, "admin", "rebuild-projections", "--check")
    assert again.returncode == 0, again.stdout
    status = servo(quickstart, env, "status", run_id, "--json")
    assert status.returncode == 0 and len(json.loads(status.stdout)["tasks"]) == 4
