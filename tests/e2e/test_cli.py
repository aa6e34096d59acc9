"""The `servo` command end to end, in real processes, on the embedded backend (H2, D10, E1-E3)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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


def servo(
    cwd: Path, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVO, *args],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def test_validate_good_project(quickstart: Path, env: dict[str, str]) -> None:
    proc = servo(quickstart, env, "validate", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data == {
        "ok": True,
        "assets": 7,
        "checks": 2,
        "schedules": 1,
        "sensors": 0,
        "code_version": data["code_version"],
    }
    plain = servo(quickstart, env, "validate")
    assert (
        f"7 assets, 2 checks, 1 schedules, 0 sensors; code_version {data['code_version']}"
        in plain.stdout
    )


def test_validate_broken_project_reports_all_and_writes_nothing(env: dict[str, str]) -> None:
    broken = ROOT / "examples" / "broken"
    proc = servo(broken, env, "validate")
    assert proc.returncode == 1
    assert "8 problem(s) found" in proc.stderr
    assert "broken_shop/defs.py:29: dependency cycle" in proc.stderr
    deploy = servo(broken, env, "deploy")
    assert deploy.returncode == 1
    assert "nothing deployed" in deploy.stderr
    home = Path(env["SERVO_HOME"])
    assert not (home / "blobs").exists() or not any((home / "blobs").rglob("manifest.json"))


def test_deploy_run_status_logs_events(quickstart: Path, env: dict[str, str]) -> None:
    deployed = servo(quickstart, env, "deploy", "--json")
    assert deployed.returncode == 0, deployed.stderr
    code_version = json.loads(deployed.stdout)["code_version"]

    selection = "raw_orders or orders_cleaned or daily_revenue or exchange_rate"
    run = servo(
        quickstart,
        env,
        "run",
        selection,
        "--partition",
        "2024-01-02",
        "--json",
        "--tag",
        "team=shop",
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["state"] == "SUCCEEDED"
    assert summary["code_version"] == code_version, (
        "D10: the run references the deployed code version"
    )
    assert summary["run_key"] is None
    assert len(summary["fingerprint"]) == 64
    tasks = {(t["asset"], t["partition"]): t for t in summary["tasks"]}
    assert set(tasks) == {
        ("raw_orders", "2024-01-02"),
        ("orders_cleaned", "2024-01-02"),
        ("daily_revenue", "2024-01-02"),
        ("exchange_rate", None),
    }
    assert tasks[("exchange_rate", None)]["attempts"] == 2, "the flaky asset succeeded on retry"
    for t in summary["tasks"]:
        assert set(t) >= {"asset", "partition", "state", "attempts", "error"}

    status = servo(quickstart, env, "status", summary["run_id"], "--json")
    assert status.returncode == 0
    again = json.loads(status.stdout)
    assert {k: again[k] for k in ("run_id", "state", "fingerprint", "code_version")} == {
        k: summary[k] for k in ("run_id", "state", "fingerprint", "code_version")
    }

    logs = servo(quickstart, env, "logs", summary["run_id"], "--task", "raw_orders:2024-01-02")
    assert logs.returncode == 0
    assert "fetched" in logs.stdout and "orders for 2024-01-02" in logs.stdout

    events = servo(quickstart, env, "events", summary["run_id"], "--json")
    evs = json.loads(events.stdout)
    assert evs[0]["type"] == "servo.run.created"
    assert evs[0]["actor"] == "user:tester", "E9: the actor is recorded"
    assert evs[-1]["type"] == "servo.run.state_changed" and evs[-1]["data"]["to"] == "SUCCEEDED"
    for e in evs:
        assert {
            "id",
            "type",
            "time",
            "source",
            "tenant",
            "workspace",
            "run_id",
            "correlation_id",
            "actor",
            "lc",
        } <= set(e)
    lcs = [e["lc"] for e in evs]
    assert lcs == sorted(lcs)

    listing = servo(quickstart, env, "status", "--json")
    assert [r["run_id"] for r in json.loads(listing.stdout)] == [summary["run_id"]]


def test_failed_run_exits_1(quickstart: Path, env: dict[str, str]) -> None:
    # monthly_revenue reads every day of January; only one is materialized.
    run = servo(quickstart, env, "run", "monthly_revenue", "--partition", "2024-01-01", "--json")
    assert run.returncode == 1
    summary = json.loads(run.stdout)
    assert summary["state"] == "FAILED"
    (task,) = summary["tasks"]
    assert "daily_revenue" in task["error"] and "materialize" in task["error"]


def test_bad_input_exits_1_and_changes_nothing(quickstart: Path, env: dict[str, str]) -> None:
    bad_selection = servo(quickstart, env, "run", "raw_ordrs")
    assert bad_selection.returncode == 1
    assert "did you mean `raw_orders`" in bad_selection.stderr
    bad_partition = servo(quickstart, env, "run", "raw_orders", "--partition", "2024-13-45")
    assert bad_partition.returncode == 1
    assert "2024-13-45" in bad_partition.stderr
    missing = servo(quickstart, env, "run", "raw_orders")
    assert missing.returncode == 1 and "--partition" in missing.stderr
    listing = servo(quickstart, env, "status", "--json")
    assert json.loads(listing.stdout) == [], "bad input creates no run"
    unknown = servo(quickstart, env, "status", "r-nope")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr


def test_init_scaffolds_a_project_that_runs(tmp_path: Path, env: dict[str, str]) -> None:
    proj = tmp_path / "fresh"
    created = servo(tmp_path, env, "init", str(proj))
    assert created.returncode == 0, created.stderr
    assert servo(proj, env, "validate").returncode == 0
    run = servo(proj, env, "run", "*", "--partition", "2024-01-03", "--json")
    assert run.returncode == 0, run.stderr + run.stdout
    assert json.loads(run.stdout)["state"] == "SUCCEEDED"
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=proj,
        env={**env, "PYTHONPATH": str(proj)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert servo(tmp_path, env, "init", str(proj)).returncode == 1, (
        "init refuses a non-empty directory"
    )


def _request(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_dev_server_api(quickstart: Path, env: dict[str, str], tmp_path: Path) -> None:
    out = (tmp_path / "dev.log").open("w")
    proc = subprocess.Popen(
        [SERVO, "dev", "--port", "0"], cwd=quickstart, env=env, stdout=out, stderr=out
    )
    info = Path(env["SERVO_HOME"]) / "dev.json"
    try:
        deadline = time.monotonic() + 60
        while not info.exists():
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()
            assert time.monotonic() < deadline, "servo dev did not start"
            time.sleep(0.1)
        base = json.loads(info.read_text())["address"]
        assert _request(f"{base}/healthz") == (200, {"ok": True})
        status, bad = _request(f"{base}/api/runs", "POST", {"selection": ""})
        assert status == 400 and "selection" in bad["error"]
        status, bad = _request(f"{base}/api/runs", "POST", {"selection": "nope"})
        assert status == 400 and "does not exist" in bad["error"]
        assert _request(f"{base}/api/runs/r-missing")[0] == 404
        status, created = _request(
            f"{base}/api/runs",
            "POST",
            {"selection": "raw_customers", "run_key": "k1", "actor": "api:test"},
        )
        assert status == 201, created
        status, same = _request(
            f"{base}/api/runs", "POST", {"selection": "raw_customers", "run_key": "k1"}
        )
        assert (status, same["run_id"], same["created"]) == (200, created["run_id"], False)
        status, conflict = _request(
            f"{base}/api/runs", "POST", {"selection": "exchange_rate", "run_key": "k1"}
        )
        assert status == 409 and created["run_id"] in conflict["error"]
        deadline = time.monotonic() + 120
        while True:
            status, run = _request(f"{base}/api/runs/{created['run_id']}")
            if run["state"] in ("SUCCEEDED", "FAILED"):
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert run["state"] == "SUCCEEDED"
        assert _request(f"{base}/api/assets")[1]["code_version"] == run["code_version"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        out.close()
    assert not info.exists()
