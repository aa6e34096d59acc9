"""A real control plane: its background compaction, the projection-backed views of a real run
(E1, E2), one trace from trigger to callback (E5), and /metrics (E4)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import DEFS_HEADER, WAIT_S, wait_until
from servo.api.routes import TextResponse, route
from servo.local import summarize
from servo.projections.compaction import Compactor
from servo.projections.query import asset_view, run_events, run_view
from servo.projections.rebuild import rebuild_projections
from servo.telemetry import tracing

if TYPE_CHECKING:
    from conftest import ScenarioFactory

DEFS = (
    DEFS_HEADER
    + """
@asset
def source(context):
    record(context)
    return value_of(context)


@asset(retry_policy=RetryPolicy(max_retries=1))
def flaky(context, source):
    record(context)
    if context.attempt == 1:
        raise ValueError("first attempt fails")
    return value_of(context)


defs = Definitions(assets=[source, flaky])
"""
)


class HoldHousekeeping:
    """A ``Ports.crash`` hook that holds the control plane's housekeeping thread in its first
    drain until released.

    The sweep (housekeeping) is a safety net that runs outside any trace: if it dispatches a
    task in the instant between a traced message making the task READY and that message
    dispatching it, the attempt starts a trace of its own. Holding the sweep while the run
    executes leaves every dispatch to the traced messages, so the trace checked below is the
    same on every run, however the threads are scheduled.
    """

    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, point: str) -> None:
        if (
            point == "drain.after_segment"
            and threading.current_thread().name == "servo-housekeeping"
            and not self.release.is_set()
        ):
            self.holding.set()
            self.release.wait(WAIT_S)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(span_exporter=exporter)
    yield exporter
    tracing.configure(None)


def test_a_real_run_is_traced_projected_and_measured(
    scenario: ScenarioFactory, spans: InMemorySpanExporter
) -> None:
    hold = HoldHousekeeping()
    s = scenario(DEFS, settings={"compaction_interval_s": 0.2}, crash=hold)
    # The deployment's event is drained by the first housekeeping pass, which then waits.
    assert hold.holding.wait(WAIT_S), "the housekeeping thread never drained the outbox"
    try:
        run = s.run("source+")
    finally:
        hold.release.set()
    assert run["state"] == "SUCCEEDED"
    run_id = run["run_id"]

    # E2: the projection view agrees with the live documents.
    view = run_view(s.ports, run_id)
    live = summarize(s.ports, run_id)
    for key in ("run_id", "state", "fingerprint", "code_version", "trigger", "created_ms"):
        assert view[key] == live[key], key
    assert {(t["asset"], t["state"], t["attempts"]) for t in view["tasks"]} == {
        ("source", "SUCCEEDED", 1),
        ("flaky", "SUCCEEDED", 2),
    }
    flaky_attempts = [a for a in view["attempts"] if a["asset"] == "flaky"]
    assert [a["outcome"] for a in flaky_attempts] == ["RETRY_WAIT", "SUCCEEDED"]
    assert "first attempt fails" in (flaky_attempts[0]["error"] or "")

    # E1: every event of the run, causally ordered.
    events = run_events(s.ports, run_id)
    assert events[0]["type"] == "servo.run.created"
    assert events[-1]["data"]["to"] == "SUCCEEDED"
    assert [e["lc"] for e in events] == sorted(e["lc"] for e in events)

    # The background compaction catches up, and its projections equal the ledger's fold.
    compactor = Compactor(s.ports)
    s.plane.housekeeping_once()  # drain what the run left in the outbox
    wait_until(lambda: compactor.lag_segments() == 0, "compaction to catch up", timeout=60)
    assert rebuild_projections(s.ports, repair=False).equal
    flaky = asset_view(s.ports, "flaky")
    assert flaky["materialization_count"] == 1
    (upstream,) = asset_view(s.ports, "source")["partitions"]
    assert upstream["status"] == "MATERIALIZED"

    # E5: one trace from the trigger through dispatch, the worker and the callback.
    finished = spans.get_finished_spans()
    names = {sp.name for sp in finished}
    assert {"servo.trigger", "servo.dispatch", "servo.worker", "servo.callback.completed"} <= names
    (trigger,) = [sp for sp in finished if sp.name == "servo.trigger"]
    same_trace = [sp for sp in finished if sp.context.trace_id == trigger.context.trace_id]
    assert {"servo.dispatch", "servo.worker", "servo.callback.completed"} <= {
        sp.name for sp in same_trace
    }
    workers = [sp for sp in same_trace if sp.name == "servo.worker"]
    assert len(workers) == 3, "one span per attempt: source, flaky #1, flaky #2"

    # E4: metrics on the HTTP surface.
    status, body = route(s.ports, "GET", "/metrics", {}, b"")
    assert status == 200 and isinstance(body, TextResponse)
    assert 'servo_runs{state="SUCCEEDED"} 1' in body.splitlines()
    status, data = route(s.ports, "GET", f"/api/runs/{run_id}/events", {}, b"")
    assert status == 200 and len(data) == len(events)
    status, data = route(s.ports, "GET", "/api/assets/flaky", {}, b"")
    assert status == 200 and data["asset"] == "flaky"
    status, data = route(s.ports, "GET", "/api/runs", {"asset": "flaky"}, b"")
    assert status == 200 and [r["run_id"] for r in data] == [run_id]
