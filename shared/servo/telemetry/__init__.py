"""Observability: OpenTelemetry traces (:mod:`.tracing`) and metrics (:mod:`.metrics`)."""
