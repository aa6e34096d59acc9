"""Traces carry their context across queue hops and envelopes (E5); metrics render in the
Prometheus text format and export through OpenTelemetry (E4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from servo.adapters.embedded import InProcessQueue, open_embedded
from servo.projections.compaction import Compactor
from servo.projections.synthetic import synthetic_runs
from servo.telemetry import tracing
from servo.telemetry.metrics import collect, prometheus_text, start_export
from servo.testing.clock import ManualClock
from servo.worker.envelope import TaskEnvelope


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(span_exporter=exporter)
    yield exporter
    tracing.configure(None)


def _by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_trace_context_survives_a_queue_hop(spans: InMemorySpanExporter) -> None:
    inner = InProcessQueue(ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    queue = tracing.propagating(inner)
    assert isinstance(queue, tracing.PropagatingQueue) and tracing.unwrap(queue) is inner
    received: list[dict[str, Any]] = []

    def handler(payload: dict[str, Any]) -> None:
        received.append(payload)
        with tracing.span("servo.dispatch", payload.get("trace")):
            pass

    inner.subscribe("dispatch", handler)
    with tracing.span("servo.trigger"):
        queue.enqueue("dispatch", {"run_id": "r1"})
    inner.run_due()
    (payload,) = received
    assert payload["run_id"] == "r1" and payload["trace"]["traceparent"].startswith("00-")
    found = _by_name(spans)
    trigger, dispatch = found["servo.trigger"], found["servo.dispatch"]
    assert dispatch.context.trace_id == trigger.context.trace_id
    assert dispatch.parent is not None and dispatch.parent.span_id == trigger.context.span_id


def test_trace_context_survives_the_worker_envelope(spans: InMemorySpanExporter) -> None:
    with tracing.span("servo.dispatch"):
        carried = tracing.carrier()
    envelope = TaskEnvelope(
        run_id="r1",
        task_id="t1",
        attempt=1,
        asset="a",
        code_version="cv",
        output_path="o",
        log_path="l",
        trace=carried,
    )
    # Through JSON, as it travels to a worker process or a Cloud Run job.
    arrived = TaskEnvelope.model_validate(json.loads(envelope.model_dump_json()))
    worker = tracing.start_span("servo.worker", arrived.trace)
    with tracing.span("servo.callback.completed", tracing.carrier_of(worker)):
        pass
    worker.end()
    found = _by_name(spans)
    trace_ids = {s.context.trace_id for s in found.values()}
    assert len(trace_ids) == 1, "one trace across dispatch -> worker -> callback"
    assert found["servo.worker"].parent.span_id == found["servo.dispatch"].context.span_id
    assert found["servo.callback.completed"].parent.span_id == found["servo.worker"].context.span_id


def test_sampling_keeps_or_drops_whole_traces() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(span_exporter=exporter, sample_ratio=0.0)
    try:
        with tracing.span("servo.trigger"):
            carried = tracing.carrier()
        with tracing.span("servo.dispatch", carried):
            pass
        assert exporter.get_finished_spans() == ()
        flags = int(carried["traceparent"].rsplit("-", 1)[1], 16)
        assert flags & 1 == 0, "the decision (not sampled) travels with the context"
    finally:
        tracing.configure(None)


def test_tracing_off_is_a_no_op() -> None:
    tracing.configure(None)
    assert not tracing.enabled()
    assert tracing.carrier() == {}
    assert tracing.start_span("x") is None
    queue = InProcessQueue(ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    assert tracing.propagating(queue) is queue
    with tracing.span("nothing", {"traceparent": "garbage"}):
        pass

    @tracing.traced("servo.fn")
    def double(x: int) -> int:
        return 2 * x

    assert double(21) == 42


def test_metrics_in_prometheus_text_format(tmp_path: Path) -> None:
    ports = open_embedded(tmp_path / "home")
    events = list(synthetic_runs(3, 10, seed=4))
    for i in range(0, len(events), 20):
        ports.ledger.append("events", i // 20, events[i : i + 20])
    Compactor(ports).compact()
    ports.queue.enqueue("dispatch", {"run_id": "r1"})
    text = prometheus_text(collect(ports))
    lines = text.splitlines()
    assert "# TYPE servo_runs gauge" in lines
    runs = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("servo_runs{")
    }
    assert sum(runs.values()) == 3
    assert 'servo_queue_depth{topic="dispatch"} 1' in lines
    assert "servo_compaction_lag_segments 0" in lines
    bucket = [
        line for line in lines if line.startswith('servo_task_duration_seconds_bucket{le="+Inf"}')
    ]
    count = [line for line in lines if line.startswith("servo_task_duration_seconds_count")]
    assert bucket and count and bucket[0].rsplit(" ", 1)[1] == count[0].rsplit(" ", 1)[1]
    # Every sample line is `name{labels} value` with a number.
    for line in lines:
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    ports.ledger.append("events", ports.ledger.last_seq("events") + 1, [])
    assert "servo_compaction_lag_segments 1" in prometheus_text(collect(ports)).splitlines()


def test_metrics_export_through_opentelemetry(tmp_path: Path) -> None:
    ports = open_embedded(tmp_path / "home")
    events = list(synthetic_runs(2, 5, seed=5))
    ports.ledger.append("events", 0, events)
    Compactor(ports).compact()
    ports.queue.enqueue("execute", {"run_id": "r1"})
    reader = InMemoryMetricReader()
    stop = start_export(ports, reader=reader)
    try:
        data = reader.get_metrics_data()
        names = {
            m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        assert {"servo_runs", "servo_compaction_lag_segments", "servo_queue_depth"} <= names
    finally:
        stop()
