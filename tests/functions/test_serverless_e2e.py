"""The serverless control plane end to end: the emulators, every Cloud Function as its own
functions-framework process, the worker service, wired through Cloud Tasks, with a small
project deployed into it. Runs are started through the trigger function and observed in
Firestore; nothing here calls a control service directly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from serverless_support import FAN_WIDTH, effects_of, wait_until, write_project

from servo.control.common import ASSET_PARTITIONS, TASKS, asset_partition_id, attempt_token
from servo.control.drain import read_events
from servo.core import events as ev
from servo.ports import Doc, Where
from servo.testing.serverless import ServerlessStack, StackOptions, checkout_root

pytestmark = [pytest.mark.emulators, pytest.mark.slow]

SETTINGS = {
    "heartbeat_interval_ms": 500,
    # Generous, so that a loaded machine never misses heartbeats for this long by accident.
    "heartbeat_timeout_ms": 8_000,
    "cancel_grace_ms": 3_000,
    "dispatch_timeout_ms": 15_000,
}


@dataclass
class Deployed:
    """The running stack, the deployed project and where its assets record their effects."""

    stack: ServerlessStack
    root: Path
    effects: Path


@pytest.fixture(scope="module")
def deployed(
    gcp_emulators: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    base = tmp_path_factory.mktemp("serverless")
    root = write_project(base / "project", base / "effects")
    options = StackOptions(settings=SETTINGS, worker_processes=2, sweep_interval_s=1.0)
    with ServerlessStack(base / "stack", options) as running:
        running.deploy(root)
        _EFFECTS[id(running)] = base / "effects"
        yield Deployed(running, root, base / "effects")


@pytest.fixture
def stack(deployed: Deployed) -> ServerlessStack:
    return deployed.stack


def start(stack: ServerlessStack, selection: str, **fields: Any) -> str:
    status, body = stack.trigger({"selection": selection, **fields})
    assert status == 201, body
    return str(body["run_id"])


def tasks_of(stack: ServerlessStack, run_id: str) -> dict[str, Doc]:
    rows = stack.ports().state.query(TASKS, [Where("run_id", "==", run_id)])
    return {d["asset"]: d for _, d in rows}


_EFFECTS: dict[int, Path] = {}


def effects(stack: ServerlessStack, asset: str, kind: str | None = None) -> list[dict[str, Any]]:
    return effects_of(_EFFECTS[id(stack)], asset, kind)


def test_a_chain_succeeds_through_the_functions(stack: ServerlessStack) -> None:
    run_id = start(stack, "source*")
    run = stack.wait_for_run(run_id)
    assert run["state"] == "SUCCEEDED"
    tasks = tasks_of(stack, run_id)
    assert {a: t["state"] for a, t in tasks.items()} == {
        "source": "SUCCEEDED",
        "middle": "SUCCEEDED",
        "final": "SUCCEEDED",
    }
    for asset in ("source", "middle", "final"):
        assert [e["run_id"] for e in effects(stack, asset)].count(run_id) == 1
        pointer = stack.ports().state.get(ASSET_PARTITIONS, asset_partition_id(asset, None))
        assert pointer is not None
        assert pointer["run_id"] == run_id
    status, view = stack.get("api", f"/api/runs/{run_id}")
    assert status == 200
    assert view["state"] == "SUCCEEDED"


def test_an_upstream_failure_skips_downstream(stack: ServerlessStack) -> None:
    run_id = start(stack, "broken+")
    run = stack.wait_for_run(run_id)
    assert run["state"] == "FAILED"
    tasks = tasks_of(stack, run_id)
    assert tasks["broken"]["state"] == "FAILED"
    assert tasks["broken"]["attempt"] == 1
    assert tasks["after_broken"]["state"] == "SKIPPED"
    assert "broken" in tasks["after_broken"]["reason"]
    assert not [e for e in effects(stack, "after_broken") if e["run_id"] == run_id]


def test_a_retry_waits_for_its_backoff(stack: ServerlessStack) -> None:
    run_id = start(stack, "flaky")
    assert stack.wait_for_run(run_id)["state"] == "SUCCEEDED"
    assert tasks_of(stack, run_id)["flaky"]["attempt"] == 3
    times = {e["attempt"]: e["time"] for e in effects(stack, "flaky") if e["run_id"] == run_id}
    assert sorted(times) == [1, 2, 3]
    # delay=0.3 s, exponential: the second retry waits twice as long as the first
    assert times[2] - times[1] >= 0.3
    assert times[3] - times[2] >= 0.6


def test_duplicate_and_stale_reports_change_nothing(stack: ServerlessStack) -> None:
    run_id = start(stack, "source")
    assert stack.wait_for_run(run_id)["state"] == "SUCCEEDED"
    task = tasks_of(stack, run_id)["source"]
    ports = stack.ports()
    pointer_id = asset_partition_id("source", None)
    before = ports.state.get(ASSET_PARTITIONS, pointer_id)
    assert before is not None

    def report(kind: str, attempt: int, **extra: Any) -> tuple[int, Any]:
        token = attempt_token(
            stack.options.callback_secret,
            ports.tenant,
            ports.workspace,
            run_id,
            task["task_id"],
            attempt,
        )
        body = {
            "kind": kind,
            "run_id": run_id,
            "task_id": task["task_id"],
            "attempt": attempt,
            "token": token,
            **extra,
        }
        return stack.post("callback", body)

    outcome = {"status": "succeeded", "output": {"path": task["output_path"]}}
    for _ in range(2):
        status, answer = report("completed", 1, outcome=outcome)
        assert status == 200
        assert answer["accepted"] is True
    status, answer = report("completed", 2, outcome={"status": "failed"})
    assert status == 200
    assert answer["accepted"] is False
    after = ports.state.get(ASSET_PARTITIONS, pointer_id)
    assert after == before  # committed exactly once
    assert tasks_of(stack, run_id)["source"]["state"] == "SUCCEEDED"
    kinds = [e["type"] for e in read_events(ports, run_id=run_id)]
    assert kinds.count(ev.TASK_DUPLICATE) == 2
    assert kinds.count(ev.TASK_REJECTED) == 1
    assert kinds.count(ev.MATERIALIZATION) == 1
    status, answer = report("completed", 1, outcome=outcome, token="f" * 40)
    assert status == 400


def test_run_keys_dedupe_and_conflict(stack: ServerlessStack) -> None:
    key = f"daily-{time.time_ns()}"
    first = start(stack, "source", run_key=key)
    status, again = stack.trigger({"selection": "source", "run_key": key})
    assert status == 200
    assert again["run_id"] == first
    assert again["created"] is False
    status, conflict = stack.trigger({"selection": "middle", "run_key": key})
    assert status == 409
    assert key in conflict["error"]
    status, bad = stack.trigger({"selection": "no_such_asset"})
    assert status == 400
    assert "no_such_asset" in bad["error"]
    assert stack.wait_for_run(first)["state"] == "SUCCEEDED"


def test_cancel_stops_a_running_task(stack: ServerlessStack) -> None:
    run_id = start(stack, "slow")
    wait_until(
        lambda: any(e["run_id"] == run_id for e in effects(stack, "slow", "started")),
        "the slow asset to start",
    )
    status, answer = stack.post("api", {"actor": "user:test"}, f"/api/runs/{run_id}/cancel")
    assert status == 200
    assert answer["state"] in ("CANCELLING", "CANCELLED")
    run = stack.wait_for_run(run_id)
    assert run["state"] == "CANCELLED"
    task = tasks_of(stack, run_id)["slow"]
    assert task["state"] == "CANCELLED"
    assert not [e for e in effects(stack, "slow", "finished") if e["run_id"] == run_id]


def test_killing_every_function_mid_run_loses_and_doubles_nothing(
    stack: ServerlessStack,
) -> None:
    run_id = start(stack, "fan_root*")
    # Kill while the first fan-out tasks sleep: fewer transactions are in flight then (see
    # below for what a crash inside one costs).
    wait_until(
        lambda: len({e["asset"] for e in _fan_effects(stack, run_id)}) >= 2,
        "the first fan-out tasks to run",
    )
    stack.kill_processes()  # every function, as a crash would; the worker keeps running
    time.sleep(1.0)
    stack.start_processes()
    # A transaction the crash abandoned keeps its Firestore locks until it expires (about a
    # minute on the emulator); the run waits for that, and an attempt whose reports could not
    # get through meanwhile is retried. Either way every task commits exactly once.
    run = stack.wait_for_run(run_id, timeout_s=300)
    tasks = tasks_of(stack, run_id)
    assert run["state"] == "SUCCEEDED", {
        a: (t["state"], t["attempt"], t.get("reason"), t.get("error")) for a, t in tasks.items()
    }
    assert len(tasks) == FAN_WIDTH + 2
    assert {t["state"] for t in tasks.values()} == {"SUCCEEDED"}
    ports = stack.ports()
    for asset in tasks:
        pointer = ports.state.get(ASSET_PARTITIONS, asset_partition_id(asset, None))
        assert pointer is not None
        assert pointer["run_id"] == run_id
    materialized = [
        e["data"]["asset"]
        for e in read_events(ports, run_id=run_id)
        if e["type"] == ev.MATERIALIZATION
    ]
    assert sorted(materialized) == sorted(tasks)  # each exactly once


def _fan_effects(stack: ServerlessStack, run_id: str) -> list[dict[str, Any]]:
    return [
        e for i in range(FAN_WIDTH) for e in effects(stack, f"fan_{i:02d}") if e["run_id"] == run_id
    ]


def test_the_cli_uses_the_gcp_backend(deployed: Deployed) -> None:
    stack = deployed.stack
    env = {**stack.env, "SERVO_BACKEND": "gcp", "SERVO_HOME": str(stack.state_dir / "cli")}
    result = subprocess.run(
        [sys.executable, "-m", "servo.cli.main", "run", "final", "--no-wait", "--json"],
        cwd=deployed.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    assert stack.wait_for_run(run_id)["state"] == "SUCCEEDED"


def test_servo_dev_runs_the_quickstart_through_the_functions(
    gcp_emulators: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "quickstart"
    source = checkout_root() / "examples" / "quickstart"
    shutil.copytree(source / "shop", project / "shop", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(source / "pyproject.toml", project / "pyproject.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVO_") or "EMULATOR" in k}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "servo.cli.main",
            "dev",
            "--backend",
            "emulators",
            "--run",
            "raw_orders or exchange_rate or orders_cleaned or daily_revenue",
            "--partition-range",
            "2024-01-01...2024-01-07",
            "--json",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["state"] == "SUCCEEDED"
    attempts = {t["asset"]: t["attempts"] for t in summary["tasks"]}
    assert attempts["exchange_rate"] == 2  # fails once on purpose, retried with backoff
    assert {t["state"] for t in summary["tasks"]} == {"SUCCEEDED"}
