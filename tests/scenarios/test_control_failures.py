"""Failures of user code on the embedded control plane: skipped downstream tasks, retries with
backoff, execution timeouts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import ScenarioFactory

SKIP_DEFS = """
@asset
def a(context):
    record(context)
    raise Failure("a cannot read its source")


@asset
def b(context, a):
    record(context)
    return 1


@asset
def c(context, b):
    record(context)
    return 2


@asset
def d(context):
    record(context)
    return 3


defs = Definitions(assets=[a, b, c, d])
"""


def test_upstream_failure_skips_downstream_tasks(scenario: ScenarioFactory) -> None:
    s = scenario(SKIP_DEFS)
    run = s.run("*")
    assert run["state"] == "FAILED"
    tasks = s.tasks(run["run_id"])
    assert {name: t["state"] for name, t in tasks.items()} == {
        "a": "FAILED",
        "b": "SKIPPED",
        "c": "SKIPPED",
        "d": "SUCCEEDED",
    }
    for name in ("b", "c"):
        assert "`a`" in tasks[name]["reason"], tasks[name]["reason"]
        assert tasks[name]["skipped_because"] == "a"
        assert tasks[name]["attempt"] == 0
    assert "a cannot read its source" in tasks["a"]["error"]["message"]
    # Nothing downstream of the failure ever ran, in the log or in the side effects.
    for e in s.transitions(run["run_id"]):
        if e["data"]["asset"] in ("b", "c"):
            assert e["data"]["to"] not in ("DISPATCHED", "RUNNING"), e
    assert [e["data"]["to"] for e in s.transitions(run["run_id"], tasks["b"]["task_id"])] == [
        "SKIPPED"
    ]
    assert s.effects_of("b") == [] and s.effects_of("c") == []
    assert len(s.effects_of("d")) == 1
    assert s.materialized("d") is not None and s.materialized("a") is None


RETRY_DEFS = """
@asset(retry_policy=RetryPolicy(max_retries=3, delay=0.2, backoff=Backoff.EXPONENTIAL))
def flaky(context):
    record(context, "start")
    if recorded(context, "start") <= 2:
        raise RuntimeError("the source is not ready yet")
    return value_of(context)


@asset(retry_policy=RetryPolicy(max_retries=2, delay=0.05))
def broken(context):
    record(context, "start")
    raise RuntimeError("always broken")


defs = Definitions(assets=[flaky, broken])
"""


def _retry_gaps(transitions: list[dict[str, Any]]) -> list[int]:
    """Milliseconds from each move into RETRY_WAIT to the move out of it."""
    gaps: list[int] = []
    entered: int | None = None
    for e in transitions:
        if e["data"]["to"] == "RETRY_WAIT":
            entered = int(e["time_ms"])
        elif e["data"]["from"] == "RETRY_WAIT":
            assert entered is not None
            assert e["data"]["event"] == "RETRY_DUE"
            gaps.append(int(e["time_ms"]) - entered)
    return gaps


def test_retry_with_exponential_backoff_succeeds_on_the_third_attempt(
    scenario: ScenarioFactory,
) -> None:
    s = scenario(RETRY_DEFS)
    run = s.run("flaky")
    assert run["state"] == "SUCCEEDED"
    task = s.tasks(run["run_id"])["flaky"]
    assert task["state"] == "SUCCEEDED"
    assert task["attempt"] == 3 and task["retries_used"] == 2
    assert [e["attempt"] for e in s.effects_of("flaky", "start")] == [1, 2, 3]
    moves = s.transitions(run["run_id"], task["task_id"])
    dispatched = [e["attempt"] for e in moves if e["data"]["to"] == "DISPATCHED"]
    assert dispatched == [1, 2, 3]
    failures = [e for e in moves if e["data"]["to"] == "RETRY_WAIT"]
    assert [e["attempt"] for e in failures] == [1, 2]
    assert all("not ready yet" in e["data"]["reason"] for e in failures)
    # Exponential backoff: 200 ms before the first retry, 400 ms before the second. A retry is
    # never early; it may be late on a busy machine, so only lower bounds are checked.
    first, second = _retry_gaps(moves)
    assert first >= 200
    assert second >= 400
    pointer = s.materialized("flaky")
    assert pointer is not None
    assert pointer["attempt"] == 3 and pointer["materializations"] == 1


def test_exhausted_retries_fail_the_task(scenario: ScenarioFactory) -> None:
    s = scenario(RETRY_DEFS)
    run = s.run("broken")
    assert run["state"] == "FAILED"
    task = s.tasks(run["run_id"])["broken"]
    assert task["state"] == "FAILED"
    assert task["attempt"] == 3 and task["retries_used"] == 2
    assert "no retries left" in task["reason"]
    assert len(s.effects_of("broken", "start")) == 3
    moves = s.transitions(run["run_id"], task["task_id"])
    assert [e["data"]["to"] for e in moves if e["data"]["from"] == "RUNNING"] == [
        "RETRY_WAIT",
        "RETRY_WAIT",
        "FAILED",
    ]
    assert s.materialized("broken") is None


TIMEOUT_DEFS = """
@asset(timeout=1, retry_policy=RetryPolicy(max_retries=2))
def slow(context):
    record(context, "start")
    time.sleep(30)
    record(context, "finished")
    return 1


defs = Definitions(assets=[slow])
"""


def test_execution_timeout_fails_the_task_without_retry(scenario: ScenarioFactory) -> None:
    s = scenario(TIMEOUT_DEFS)
    run = s.run("slow")
    assert run["state"] == "FAILED"
    task = s.tasks(run["run_id"])["slow"]
    assert task["state"] == "FAILED"
    assert task["reason"].startswith("TIMEOUT"), task["reason"]
    assert task["attempt"] == 1 and task["retries_used"] == 0
    assert task["error"]["kind"] == "timeout"
    assert len(s.effects_of("slow", "start")) == 1
    assert s.effects_of("slow", "finished") == []
    moves = s.transitions(run["run_id"], task["task_id"])
    assert moves[-1]["data"]["event"] == "EXECUTION_TIMEOUT"
    assert "RETRY_WAIT" not in [e["data"]["to"] for e in moves]
