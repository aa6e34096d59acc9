"""The read side over projections + live tail: run views (E2), a run's events in causal order
(E1), recent runs with filters, asset views with partition status and lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from servo.adapters.embedded import open_embedded
from servo.control.uow import OUTBOX
from servo.core import events as ev
from servo.core.errors import NotFound
from servo.ports import Ports
from servo.projections.compaction import Compactor
from servo.projections.query import (
    asset_view,
    list_runs,
    partition_status,
    run_events,
    run_view,
)
from servo.projections.synthetic import synthetic_runs

T0 = 1_767_225_600_000


class History:
    """Events written like the services write them: lc and time grow, ids are unique."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.n = 0

    def add(self, type_: str, data: dict[str, Any], **envelope: Any) -> dict[str, Any]:
        self.n += 1
        event = {
            "id": f"e{self.n:06d}",
            "type": type_,
            "specversion": 1,
            "source": "test",
            "time_ms": T0 + self.n * 1000,
            "tenant": "default",
            "workspace": "default",
            "run_id": None,
            "task_id": None,
            "attempt": None,
            "correlation_id": envelope.get("run_id"),
            "causation_id": None,
            "actor": "user:test",
            "lc": self.n,
            "seq": 0,
            "data": data,
            **envelope,
        }
        self.events.append(event)
        return event

    def run(self, run_id: str, tasks: list[tuple[str, str, str | None]], **data: Any) -> None:
        self.add(
            ev.RUN_CREATED,
            {"selection": "*", "task_count": len(tasks), "trigger": {"type": "manual"}, **data},
            run_id=run_id,
        )
        self.add(
            ev.TASKS_CREATED,
            {
                "tasks": [
                    {"task_id": t, "key": f"{a}:{p}" if p else a, "state": "READY"}
                    for t, a, p in tasks
                ]
            },
            run_id=run_id,
        )

    def task(
        self, run_id: str, task_id: str, asset: str, part: str | None, to: str, attempt: int = 1
    ) -> None:
        event = {"SUCCEEDED": "SUCCEED", "FAILED": "FAIL", "RUNNING": "START"}.get(to, "X")
        self.add(
            ev.TASK_STATE,
            {"asset": asset, "partition": part, "from": "RUNNING", "to": to, "event": event,
             "reason": f"{asset} {to.lower()}"},
            run_id=run_id, task_id=task_id, attempt=attempt,
        )  # fmt: skip

    def materialize(
        self,
        run_id: str,
        task_id: str,
        asset: str,
        part: str | None,
        inputs: list[dict[str, Any]] | None = None,
    ) -> str:
        path = f"outputs/{asset}/{part}/{run_id}.{task_id}.pkl"
        self.add(
            ev.MATERIALIZATION,
            {"asset": asset, "partition": part, "output_path": path, "size": 10,
             "metadata": {}, "code_version": "cv", "inputs": inputs or []},
            run_id=run_id, task_id=task_id, attempt=1,
        )  # fmt: skip
        return path


def _ports(tmp_path: Path) -> Ports:
    return open_embedded(tmp_path / "home")


def _record(ports: Ports, events: list[dict[str, Any]]) -> None:
    start = ports.ledger.last_seq("events") + 1
    for i in range(0, len(events), 7):
        ports.ledger.append("events", start + i // 7, events[i : i + 7])


def test_run_view_and_events_from_compacted_history_and_live_tail(tmp_path: Path) -> None:
    ports = _ports(tmp_path)
    h = History()
    h.run("r1", [("t1", "raw", "2024-01-01"), ("t2", "clean", "2024-01-01")], tags={"team": "a"})
    h.task("r1", "t1", "raw", "2024-01-01", "RUNNING")
    h.task("r1", "t1", "raw", "2024-01-01", "SUCCEEDED")
    _record(ports, h.events)
    Compactor(ports).compact()
    # Later events: one more segment not compacted, and a batch still in the outbox.
    n = len(h.events)
    h.task("r1", "t2", "clean", "2024-01-01", "RUNNING")
    _record(ports, h.events[n:])
    m = len(h.events)
    h.task("r1", "t2", "clean", "2024-01-01", "FAILED")
    h.add(ev.RUN_STATE, {"from": "RUNNING", "to": "FAILED", "event": "FAIL"}, run_id="r1")
    ports.state.transact(
        lambda txn: txn.create(OUTBOX, "o1", {"events": h.events[m:], "created_ms": 1, "lc": 1})
    )

    view = run_view(ports, "r1")
    assert view["state"] == "FAILED", "the outbox tail is part of the view"
    assert [(t["task_id"], t["state"], t["partition"]) for t in view["tasks"]] == [
        ("t1", "SUCCEEDED", "2024-01-01"),
        ("t2", "FAILED", "2024-01-01"),
    ], "tasks in plan order"
    assert view["tasks"][1]["error"] == "clean failed"
    assert view["tags"] == {"team": "a"} and view["trigger"] == {"type": "manual"}
    assert view["counts"] == {"FAILED": 1, "SUCCEEDED": 1}
    (a1,) = [a for a in view["attempts"] if a["task_id"] == "t1"]
    assert a1["outcome"] == "SUCCEEDED" and a1["started_ms"] < a1["ended_ms"]

    evs = run_events(ports, "r1")
    assert [e["id"] for e in evs] == [e["id"] for e in h.events], "every event, causal order"
    assert evs[0]["type"] == ev.RUN_CREATED and evs[-1]["data"]["to"] == "FAILED"
    assert {"id", "type", "time", "source", "tenant", "workspace", "actor", "lc"} <= set(evs[0])
    with pytest.raises(NotFound):
        run_view(ports, "r-missing")


def test_recent_runs_filter_by_state_asset_tag_and_time(tmp_path: Path) -> None:
    ports = _ports(tmp_path)
    events = list(synthetic_runs(12, 8, seed=11, assets=4))
    _record(ports, events)
    Compactor(ports).compact()
    runs = list_runs(ports, limit=50)
    assert len(runs) == 12
    assert [r["created_ms"] for r in runs] == sorted((r["created_ms"] for r in runs), reverse=True)
    assert len(list_runs(ports, limit=5)) == 5
    team1 = list_runs(ports, tags={"team": "t1"}, limit=50)
    assert {r["run_id"] for r in team1} == {"r00000001", "r00000006", "r00000011"}
    assert all(r["tags"]["team"] == "t1" for r in team1)
    states = {r["state"] for r in runs}
    for state in states:
        assert all(r["state"] == state for r in list_runs(ports, state=state.lower(), limit=50))
    assert list_runs(ports, asset="a3", limit=50) and list_runs(ports, asset="zzz") == []
    middle = sorted(r["created_ms"] for r in runs)[6]
    assert len(list_runs(ports, since_ms=middle, limit=50)) == 6
    assert len(list_runs(ports, until_ms=middle, limit=50)) == 6


def test_partition_status_missing_failed_materialized_stale(tmp_path: Path) -> None:
    ports = _ports(tmp_path)
    h = History()
    days = ["2024-01-01", "2024-01-02", "2024-01-03"]
    h.run("r1", [(f"u{d}", "up", d) for d in days] + [(f"d{d}", "down", d) for d in days])
    paths = {}
    for d in days:
        h.task("r1", f"u{d}", "up", d, "SUCCEEDED")
        paths[d] = h.materialize("r1", f"u{d}", "up", d)
    for d in days[:2]:
        h.task("r1", f"d{d}", "down", d, "SUCCEEDED")
        h.materialize(
            "r1", f"d{d}", "down", d, [{"asset": "up", "partition": d, "output_path": paths[d]}]
        )
    h.task("r1", f"d{days[2]}", "down", days[2], "FAILED")
    # Later, `up` for the first day is materialized again: `down` for that day is stale.
    h.run("r2", [("u", "up", days[0])])
    h.task("r2", "u", "up", days[0], "SUCCEEDED")
    h.materialize("r2", "u", "up", days[0])
    _record(ports, h.events)
    Compactor(ports).compact()

    declared = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    status = {
        p["partition"]: p["status"] for p in partition_status(ports, "down", declared=declared)
    }
    assert status == {
        "2024-01-01": "STALE",
        "2024-01-02": "MATERIALIZED",
        "2024-01-03": "FAILED",
        "2024-01-04": "MISSING",
    }
    up = {p["partition"]: p for p in partition_status(ports, "up", declared=[])}
    assert up["2024-01-01"]["run_id"] == "r2" and up["2024-01-01"]["status"] == "MATERIALIZED"

    view = asset_view(ports, "down")
    assert view["materialization_count"] == 2
    latest = view["materializations"][0]
    assert latest["partition"] == "2024-01-02"
    (upstream,) = latest["upstream"]
    assert upstream["asset"] == "up" and upstream["output_path"] == paths["2024-01-02"]
    assert upstream["materialization_id"] is not None, "lineage resolves to the upstream event"
    assert view["partition_counts"]["FAILED"] == 1
    with pytest.raises(NotFound):
        asset_view(ports, "never/seen")


def test_checks_keep_the_latest_result_per_partition(tmp_path: Path) -> None:
    ports = _ports(tmp_path)
    h = History()
    h.run("r1", [("t1", "x", None)])
    for passed in (True, False, True, False):
        h.add(
            ev.CHECK_EVALUATED,
            {"asset": "x", "partition": None, "name": "c", "passed": passed, "severity": "WARN",
             "metadata": {"n": int(passed)}},
            run_id="r1", task_id="t1", attempt=1,
        )  # fmt: skip
    _record(ports, h.events)
    (check,) = asset_view(ports, "x")["checks"]
    assert check["passed"] is False and check["severity"] == "WARN"
    assert check["metadata"] == {"n": 0}
    assert json.dumps(check)  # plain JSON
