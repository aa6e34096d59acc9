"""Traces: one OpenTelemetry trace per run, across trigger -> dispatch -> worker -> callback.

The trace context travels as W3C ``traceparent``/``tracestate`` entries in a ``trace`` dict:
in every queue message (:class:`PropagatingQueue` adds it to the payload) and in the worker's
:class:`~servo.worker.envelope.TaskEnvelope` (its ``trace`` field). A service that handles a
message continues the trace with :func:`span` (``parent=payload.get("trace")``).

Tracing is off unless configured, and then costs one flag test per call:

* ``SERVO_TRACING=console`` prints spans, ``otlp`` sends them to an OTLP/HTTP collector
  (``OTEL_EXPORTER_OTLP_ENDPOINT``; needs ``opentelemetry-exporter-otlp-proto-http``), ``gcp``
  sends them to Cloud Trace (needs ``opentelemetry-exporter-gcp-trace``);
* ``SERVO_TRACE_SAMPLE`` is the fraction of new traces kept (default 1.0; on Cloud Trace,
  whose default quota is 3M spans a day, a fraction such as 0.05 for busy workspaces). A trace
  is kept or dropped as a whole: children follow their parent's decision.

Worker processes inherit the environment, so they trace too when the control plane does.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

from servo.core.errors import ServoError

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_configured = False
_tracer: Any = None
_provider: Any = None
_propagator: Any = None
_NULL = contextlib.nullcontext()


def configure(
    exporter: str | None = None,
    *,
    sample_ratio: float | None = None,
    span_exporter: Any = None,
    batch: bool | None = None,
) -> bool:
    """Set up tracing for this process; returns whether it is on.

    ``exporter``: ``console``, ``otlp``, ``gcp``, or None/``off`` to turn tracing off.
    ``span_exporter`` (any OpenTelemetry ``SpanExporter``) is used instead when given — tests
    pass an in-memory one. Calling it again replaces the previous set-up.
    """
    global _configured, _tracer, _provider, _propagator
    with _lock:
        if _provider is not None:
            _provider.shutdown()
        _configured = True
        _tracer = _provider = None
        if span_exporter is None and exporter in (None, "", "off", "none"):
            return False
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            raise ServoError(
                "tracing needs the OpenTelemetry SDK: pip install 'servo[otel]', or unset "
                "SERVO_TRACING"
            ) from None
        ratio = 1.0 if sample_ratio is None else max(0.0, min(1.0, float(sample_ratio)))
        if span_exporter is None:
            span_exporter = _exporter(str(exporter))
        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(ratio)),
            resource=Resource.create({"service.name": "servo"}),
        )
        use_batch = batch if batch is not None else exporter in ("otlp", "gcp")
        processor = BatchSpanProcessor(span_exporter) if use_batch else None
        provider.add_span_processor(processor or SimpleSpanProcessor(span_exporter))
        _provider = provider
        _tracer = provider.get_tracer("servo")
        _propagator = TraceContextTextMapPropagator()
        return True


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ServoError(
                "SERVO_TRACING=otlp needs opentelemetry-exporter-otlp-proto-http installed"
            ) from None
        return OTLPSpanExporter()
    if name == "gcp":
        try:
            from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter
        except ImportError:
            raise ServoError(
                "SERVO_TRACING=gcp needs opentelemetry-exporter-gcp-trace installed"
            ) from None
        return CloudTraceSpanExporter()
    raise ServoError(f"SERVO_TRACING={name!r} is not one of console, otlp, gcp or off")


def _ensure() -> bool:
    if not _configured:
        ratio = os.environ.get("SERVO_TRACE_SAMPLE")
        configure(os.environ.get("SERVO_TRACING"), sample_ratio=float(ratio) if ratio else None)
    return _tracer is not None


def enabled() -> bool:
    """Whether this process records spans."""
    return _tracer is not None if _configured else _ensure()


def shutdown() -> None:
    """Flush and stop the exporter (called at exit)."""
    if _provider is not None:
        _provider.force_flush()


atexit.register(shutdown)


def carrier() -> dict[str, str]:
    """The current span's context as ``{"traceparent": …}``; empty when not tracing."""
    if not enabled():
        return {}
    out: dict[str, str] = {}
    _propagator.inject(out)
    return out


def span(
    name: str,
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """A span for ``with``: a child of ``parent`` (a carried context) when given, else of the
    current span. A no-op when tracing is off."""
    if not enabled():
        return _NULL
    return _span(name, parent, attributes)


@contextlib.contextmanager
def _span(
    name: str, parent: Mapping[str, str] | None, attributes: Mapping[str, Any] | None
) -> Iterator[Any]:
    context = _propagator.extract(dict(parent)) if parent else None
    clean = {k: v for k, v in (attributes or {}).items() if v is not None}
    with _tracer.start_as_current_span(name, context=context, attributes=clean) as s:
        yield s


def start_span(
    name: str,
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """A span that outlives the current call (end it with ``.end()``); None when off."""
    if not enabled():
        return None
    context = _propagator.extract(dict(parent)) if parent else None
    clean = {k: v for k, v in (attributes or {}).items() if v is not None}
    return _tracer.start_span(name, context=context, attributes=clean)


def carrier_of(active_span: Any) -> dict[str, str]:
    """The context of ``active_span`` (from :func:`start_span`) as a carrier."""
    if active_span is None or not enabled():
        return {}
    from opentelemetry import trace

    out: dict[str, str] = {}
    _propagator.inject(out, context=trace.set_span_in_context(active_span))
    return out


def traced(name: str) -> Callable[[F], F]:
    """Decorator: run the function in a span named ``name`` (a no-op when tracing is off)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            if not enabled():
                return fn(*args, **kwargs)
            with _span(name, None, None):
                return fn(*args, **kwargs)

        return cast(F, inner)

    return wrap


class PropagatingQueue:
    """A Queue that adds the current trace context to every payload (as ``trace``) before
    handing it to ``inner``; every other attribute is the inner queue's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def enqueue(
        self,
        topic: str,
        payload: dict[str, Any],
        *,
        name: str | None = None,
        delay_s: float = 0.0,
    ) -> bool:
        if enabled() and not payload.get("trace"):
            context = carrier()
            if context:
                payload = {**payload, "trace": context}
        return bool(self.inner.enqueue(topic, payload, name=name, delay_s=delay_s))

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


def propagating(queue: Any) -> Any:
    """``queue`` wrapped in a :class:`PropagatingQueue` when tracing is on, else itself."""
    if not enabled() or isinstance(queue, PropagatingQueue):
        return queue
    return PropagatingQueue(queue)


def unwrap(queue: Any) -> Any:
    """The queue under any :class:`PropagatingQueue`."""
    while isinstance(queue, PropagatingQueue):
        queue = queue.inner
    return queue
