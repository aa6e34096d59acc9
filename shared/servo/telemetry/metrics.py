"""Metrics: run counts, task durations, queue depth and compaction lag.

Metrics are computed when they are read (from the projections, the queue and the ledger), so
nothing is counted on the hot path. :func:`prometheus_text` renders them in the Prometheus
text format for ``GET /metrics``; :func:`start_export` publishes the same values periodically
through OpenTelemetry (to Cloud Monitoring with ``opentelemetry-exporter-gcp-monitoring``, to
an OTLP collector, or to the console).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from servo.core.errors import ServoError
from servo.core.events import to_ms
from servo.ports import Ports

DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


@dataclass
class Sample:
    labels: dict[str, str]
    value: float


@dataclass
class Metric:
    """One metric family: ``kind`` is ``gauge``, ``counter`` or ``histogram`` (histogram
    samples carry ``le`` labels, plus ``_sum`` and ``_count`` suffixes)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, Sample]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append((suffix, Sample(dict(labels), float(value))))


def collect(ports: Ports, *, compaction: Any = None) -> list[Metric]:
    """Every metric of the workspace as it is now."""
    from servo.control.uow import OUTBOX
    from servo.projections.query import ProjectionReader

    metrics: list[Metric] = []
    started = time.perf_counter()
    with ProjectionReader(ports, catch_up=None) as reader:
        runs = Metric("servo_runs", "gauge", "Runs by state.")
        for row in reader.rows(
            f"SELECT state, count(*) AS n FROM {reader.relation('runs')} "
            "WHERE created_ms IS NOT NULL GROUP BY state ORDER BY state"
        ):
            runs.add(row["n"], state=str(row["state"]))
        metrics.append(runs)
        tasks = Metric("servo_tasks", "gauge", "Tasks by state.")
        for row in reader.rows(
            f"SELECT state, count(*) AS n FROM {reader.relation('tasks')} "
            "GROUP BY state ORDER BY state"
        ):
            tasks.add(row["n"], state=str(row["state"] or "PLANNED"))
        metrics.append(tasks)
        metrics.append(_durations(reader))
        pointer = reader.pointer
    queue = Metric("servo_queue_depth", "gauge", "Messages waiting in the task queue, by topic.")
    messages = getattr(ports.queue, "messages", None)
    if callable(messages):
        by_topic: dict[str, int] = {}
        for m in messages():
            by_topic[str(m.topic)] = by_topic.get(str(m.topic), 0) + 1
        for topic, n in sorted(by_topic.items()):
            queue.add(n, topic=topic)
    else:
        pending = getattr(ports.queue, "pending", None)
        if callable(pending):
            queue.add(int(pending()), topic="all")
    metrics.append(queue)
    outbox = Metric("servo_outbox_batches", "gauge", "Committed event batches not yet drained.")
    with contextlib.suppress(ServoError):
        outbox.add(len(ports.state.query(OUTBOX)))
    metrics.append(outbox)
    lag = Metric(
        "servo_compaction_lag_segments", "gauge", "Ledger segments not yet in the projections."
    )
    lag.add(max(0, ports.ledger.last_seq("events") - pointer.watermark))
    metrics.append(lag)
    age = Metric(
        "servo_compaction_age_seconds", "gauge", "Seconds since the projections were published."
    )
    if pointer.published_ms:
        age.add(max(0.0, (to_ms(ports.clock.now()) - pointer.published_ms) / 1000))
    metrics.append(age)
    epoch = Metric("servo_projection_epoch", "counter", "Projection publications so far.")
    epoch.add(pointer.epoch)
    metrics.append(epoch)
    if compaction is not None and getattr(compaction, "last_error", None):
        errors = Metric("servo_compaction_failing", "gauge", "1 while compaction keeps failing.")
        errors.add(1)
        metrics.append(errors)
    scrape = Metric("servo_metrics_collect_seconds", "gauge", "Time taken to collect these.")
    scrape.add(time.perf_counter() - started)
    metrics.append(scrape)
    return metrics


def _durations(reader: Any) -> Metric:
    hist = Metric("servo_task_duration_seconds", "histogram", "Run time of finished task attempts.")
    cases = ", ".join(
        f"count(*) FILTER (WHERE d <= {b * 1000}) AS b{i}" for i, b in enumerate(DURATION_BUCKETS_S)
    )
    rows = reader.rows(
        f"""SELECT {cases}, count(*) AS n, coalesce(sum(d), 0) AS total FROM (
              SELECT coalesce(duration_ms, ended_ms - started_ms) AS d
              FROM {reader.relation("attempts")}
              WHERE ended_ms IS NOT NULL AND started_ms IS NOT NULL)"""
    )
    row = rows[0]
    for i, b in enumerate(DURATION_BUCKETS_S):
        hist.add(row[f"b{i}"], "_bucket", le=_number(b))
    hist.add(row["n"], "_bucket", le="+Inf")
    hist.add(float(row["total"]) / 1000, "_sum")
    hist.add(row["n"], "_count")
    return hist


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(metrics: Sequence[Metric]) -> str:
    """The metrics in the Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {m.help}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for suffix, sample in m.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            value = _number(sample.value)
            lines.append(
                f"{m.name}{suffix}{{{labels}}} {value}" if labels else f"{m.name}{suffix} {value}"
            )
    return "\n".join(lines) + "\n"


def start_export(
    ports: Ports,
    exporter: str = "gcp",
    *,
    interval_s: float = 60.0,
    metric_exporter: Any = None,
    reader: Any = None,
) -> Callable[[], None]:
    """Publish the gauges of :func:`collect` through OpenTelemetry every ``interval_s``;
    returns a function that stops it.

    ``exporter``: ``gcp`` (Cloud Monitoring), ``otlp`` or ``console``; or pass an OpenTelemetry
    ``metric_exporter``, or a ready metric ``reader`` (tests use an in-memory reader).
    """
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    if reader is None:
        if metric_exporter is None:
            metric_exporter = _metric_exporter(exporter)
        reader = PeriodicExportingMetricReader(
            metric_exporter, export_interval_millis=int(interval_s * 1000)
        )
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("servo")
    cache: dict[str, Any] = {"at": float("-inf"), "metrics": []}

    def snapshot() -> list[Metric]:
        # One collection serves every instrument of an export cycle.
        now = time.monotonic()
        if now - float(cache["at"]) > 1.0:
            cache["metrics"] = collect(ports)
            cache["at"] = now
        return list(cache["metrics"])

    def observe(name: str) -> Callable[[CallbackOptions], list[Observation]]:
        def callback(options: CallbackOptions) -> list[Observation]:
            out = []
            for m in snapshot():
                if m.name != name:
                    continue
                for suffix, sample in m.samples:
                    if m.kind == "histogram" and suffix != "_count":
                        continue
                    out.append(Observation(sample.value, dict(sample.labels)))
            return out

        return callback

    for name, help_text in (
        ("servo_runs", "Runs by state."),
        ("servo_tasks", "Tasks by state."),
        ("servo_task_duration_seconds", "Finished task attempts."),
        ("servo_queue_depth", "Messages waiting in the task queue."),
        ("servo_compaction_lag_segments", "Ledger segments not yet in the projections."),
        ("servo_compaction_age_seconds", "Seconds since the projections were published."),
    ):
        meter.create_observable_gauge(name, callbacks=[observe(name)], description=help_text)
    return provider.shutdown


def _metric_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
        except ImportError:
            raise ServoError(
                "metrics export to OTLP needs opentelemetry-exporter-otlp-proto-http installed"
            ) from None
        return OTLPMetricExporter()
    if name == "gcp":
        try:
            from opentelemetry.exporter.cloud_monitoring import CloudMonitoringMetricsExporter
        except ImportError:
            raise ServoError(
                "metrics export to Cloud Monitoring needs opentelemetry-exporter-gcp-monitoring "
                "installed"
            ) from None
        return CloudMonitoringMetricsExporter()
    raise ServoError(f"metrics exporter {name!r} is not one of gcp, otlp or console")
