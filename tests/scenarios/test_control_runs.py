"""Runs on the embedded control plane: run_key idempotency, reruns, concurrency limits and the
causal order of the event log."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest

from servo.control.common import RUNS
from servo.control.rerun import rerun
from servo.core import events as ev
from servo.core.errors import Conflict

if TYPE_CHECKING:
    from conftest import Scenario, ScenarioFactory

CHAIN_DEFS = """
@asset
def a(context):
    record(context)
    return value_of(context)


@asset
def b(context, a):
    record(context)
    if not flag("b-fixed"):
        raise Failure("b needs the fix")
    return value_of(context)


@asset
def c(context, b):
    record(context)
    return value_of(context)


@asset
def d(context):
    record(context)
    return value_of(context)


defs = Definitions(assets=[a, b, c, d])
"""


def test_run_key_returns_the_same_run_and_rejects_a_different_request(
    scenario: ScenarioFactory,
) -> None:
    s = scenario(CHAIN_DEFS)
    first = s.trigger("d", run_key="nightly-2024-01-01")
    again = s.trigger("d", run_key="nightly-2024-01-01")
    assert first.created and not again.created
    assert again.run_id == first.run_id
    assert again.fingerprint == first.fingerprint
    with pytest.raises(Conflict) as conflict:
        s.trigger("a", run_key="nightly-2024-01-01")
    assert first.run_id in str(conflict.value)
    assert "nightly-2024-01-01" in str(conflict.value)
    assert [doc_id for doc_id, _ in s.ports.state.query(RUNS)] == [first.run_id]
    assert s.wait(first.run_id)["state"] == "SUCCEEDED"
    assert len(s.effects_of("d")) == 1
    hits = [e for e in s.events(first.run_id) if e["type"] == ev.RUN_KEY_HIT]
    assert len(hits) == 1


def test_rerun_from_failure_and_of_selected_assets(scenario: ScenarioFactory) -> None:
    s = scenario(CHAIN_DEFS)
    parent = s.run("*")
    assert parent["state"] == "FAILED"
    states = {name: t["state"] for name, t in s.tasks(parent["run_id"]).items()}
    assert states == {"a": "SUCCEEDED", "b": "FAILED", "c": "SKIPPED", "d": "SUCCEEDED"}

    # E7: after the fix, only the failed task and its downstream tasks run again.
    s.set_flag("b-fixed")
    child = rerun(s.ports, parent["run_id"], from_failure=True, actor="user:test")
    assert child.task_count == 2
    run = s.wait(child.run_id)
    assert run["state"] == "SUCCEEDED"
    assert run["parent_run_id"] == parent["run_id"]
    assert {name: t["state"] for name, t in s.tasks(child.run_id).items()} == {
        "b": "SUCCEEDED",
        "c": "SUCCEEDED",
    }
    assert [e["run_id"] for e in s.effects_of("a")] == [parent["run_id"]]
    assert [e["run_id"] for e in s.effects_of("b")] == [parent["run_id"], child.run_id]
    # b read the output a committed in the parent run.
    assert s.materialized("b")["run_id"] == child.run_id  # type: ignore[index]
    assert s.materialized("a")["run_id"] == parent["run_id"]  # type: ignore[index]

    # E8: --select re-executes only the selected assets' tasks.
    selected = rerun(s.ports, parent["run_id"], select="d", actor="user:test")
    run = s.wait(selected.run_id)
    assert run["state"] == "SUCCEEDED"
    assert list(s.tasks(selected.run_id)) == ["d"]
    assert [e["run_id"] for e in s.effects_of("d")] == [parent["run_id"], selected.run_id]
    assert s.materialized("d")["materializations"] == 2  # type: ignore[index]


SLEEPERS_DEFS = """
def sleeper(name, pool=None):
    @asset(name=name, pool=pool)
    def sleeping(context):
        record(context, "start")
        time.sleep(0.3)
        record(context, "end")
        return value_of(context)

    return sleeping


many = [sleeper(f"s{i}") for i in range(8)]
pooled = [sleeper("db_one", pool="db"), sleeper("db_two", pool="db")]

defs = Definitions(assets=[*many, *pooled], pools={"db": 1})
"""


def _max_active(transitions: list[dict[str, Any]], key: str = "task_id") -> int:
    """Replay task state changes: the most attempts DISPATCHED or RUNNING at once."""
    active: set[str] = set()
    most = 0
    for e in transitions:
        ident = f"{e['run_id']}/{e[key]}"
        if e["data"]["to"] in ("DISPATCHED", "RUNNING"):
            active.add(ident)
        else:
            active.discard(ident)
        most = max(most, len(active))
    return most


def test_max_concurrency_limits_a_run(scenario: ScenarioFactory) -> None:
    s = scenario(SLEEPERS_DEFS, workers=4)
    run_id = s.trigger("key:s*", max_concurrency=2).run_id
    samples: list[tuple[int, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            states = [t["state"] for t in s.tasks(run_id).values()]
            samples.append(
                (
                    sum(st in ("DISPATCHED", "RUNNING") for st in states),
                    sum(st == "READY" for st in states),
                )
            )
            done.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run = s.wait(run_id)
    finally:
        done.set()
        sampler.join()
    assert run["state"] == "SUCCEEDED"
    assert len(s.tasks(run_id)) == 8
    assert samples and max(active for active, _ in samples) <= 2
    # Tasks beyond the limit waited as READY (at the start six of the eight are waiting).
    assert any(ready > 0 for _, ready in samples)
    events = s.events(run_id)
    # The limit holds in the log too, and the first dispatch took exactly two tasks.
    assert _max_active([e for e in events if e["type"] == ev.TASK_STATE]) == 2
    assert all(len(s.effects_of(f"s{i}", "end")) == 1 for i in range(8))


def test_named_pool_serialises_its_assets_across_runs(scenario: ScenarioFactory) -> None:
    s = scenario(SLEEPERS_DEFS, workers=3)
    runs = [s.trigger("db_one").run_id, s.trigger("db_two").run_id, s.trigger("db_one").run_id]
    for run_id in runs:
        assert s.wait(run_id)["state"] == "SUCCEEDED"
    pooled = [
        e
        for run_id in runs
        for e in s.events(run_id)
        if e["type"] == ev.TASK_STATE and e["data"]["asset"] in ("db_one", "db_two")
    ]
    pooled.sort(key=ev.causal_sort_key)
    assert _max_active(pooled) == 1
    # From the workers' side: every start is followed by its own end before the next start.
    lines = sorted(
        s.effects_of("db_one") + s.effects_of("db_two"), key=lambda e: (e["time"], e["kind"])
    )
    kinds = [(e["kind"], e["run_id"]) for e in lines]
    assert len(kinds) == 6
    for i in range(0, 6, 2):
        assert kinds[i][0] == "start" and kinds[i + 1] == ("end", kinds[i][1])


DIAMOND_DEFS = """
@asset
def a(context):
    record(context)
    return 1


@asset
def b(context, a):
    record(context)
    return a + 1


@asset
def c(context, a):
    record(context)
    return a + 2


@asset
def d(context, b, c):
    record(context)
    return b + c


@asset
def e(context, d):
    record(context)
    return d


def leaf(name):
    @asset(name=name)
    def fan_in_parent(context):
        record(context)
        return 1

    return fan_in_parent


parents = [leaf(f"p{i}") for i in range(6)]


@asset(deps=[f"p{i}" for i in range(6)])
def fan_in(context):
    record(context)
    return 1


defs = Definitions(assets=[a, b, c, d, e, *parents, fan_in])
"""


def _positions(s: Scenario, run_id: str) -> tuple[list[dict[str, Any]], dict[tuple[str, str], int]]:
    events = s.events(run_id)
    where: dict[tuple[str, str], int] = {}
    for i, e in enumerate(events):
        if e["type"] == ev.TASK_STATE:
            where.setdefault((e["task_id"], e["data"]["to"]), i)
    return events, where


def test_events_of_a_finished_run_are_in_causal_order(scenario: ScenarioFactory) -> None:
    s = scenario(DIAMOND_DEFS, workers=4)
    run_ids = [s.trigger("*").run_id for _ in range(4)]
    for run_id in run_ids:
        assert s.wait(run_id)["state"] == "SUCCEEDED"
    s.plane.housekeeping_once()  # drain the outbox so the ledger is read too
    for run_id in run_ids:
        events, at = _positions(s, run_id)
        tasks = s.tasks(run_id)
        assert events[0]["type"] == ev.RUN_CREATED
        final = events[-1]
        assert final["type"] == ev.RUN_STATE and final["data"]["to"] == "SUCCEEDED"
        for task in tasks.values():
            tid = task["task_id"]
            assert at[(tid, "DISPATCHED")] < at[(tid, "RUNNING")] < at[(tid, "SUCCEEDED")]
            if task["upstream"]:
                released = at[(tid, "READY")]
                for up in task["upstream"]:
                    assert at[(up, "SUCCEEDED")] < released, (task["display"], up)
        lcs = [int(e["lc"]) for e in events]
        assert lcs == sorted(lcs)
        assert lcs[-1] > max(lcs[:-1])


WIDE_DEFS = """
@asset
def root(context):
    return 1


def _make(i):
    @asset(name=f"leaf_{i:03d}")
    def leaf(root):
        return root + 1

    return leaf


leaves = [_make(i) for i in range(250)]


@asset(deps=[leaf for leaf in leaves])
def total():
    return 250


defs = Definitions(assets=[root, *leaves, total])
"""


def test_a_wide_fan_out_and_fan_in_complete(scenario: ScenarioFactory) -> None:
    """1 -> 250 -> 1: the root's release is wider than one transaction takes inline, so it is
    batched after the commit; every task still runs exactly once."""
    s = scenario(WIDE_DEFS)
    run = s.run("*")
    assert run["state"] == "SUCCEEDED"
    tasks = s.tasks(run["run_id"])
    assert len(tasks) == 252
    assert all(t["state"] == "SUCCEEDED" and t["attempt"] == 1 for t in tasks.values())
    released = [
        e
        for e in s.events(run["run_id"])
        if e["type"] == ev.TASK_STATE and e["data"]["event"] == "RELEASE"
    ]
    assert len(released) == 251
