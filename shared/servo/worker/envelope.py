"""The contract between the control plane and a worker: what to run, and what happened.

A :class:`TaskEnvelope` is everything a worker needs to execute one attempt of one task. The
worker reports back through a :class:`ControlChannel` (a pipe to the local control plane, or
HTTPS to the callback function on Google Cloud); every report carries the attempt number and
the attempt's token, and the control plane ignores reports for any other attempt.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

ENVELOPE_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class InputRef(_Model):
    """One upstream asset read by the task, with the committed objects to load."""

    input_name: str | None  # None for a non-data dependency (nothing is loaded)
    asset: str
    # One entry per upstream partition read (canonical partition key, or None if unpartitioned),
    # with the blob path of its committed output (None when it was never materialized).
    partitions: list[str | None] = Field(default_factory=list)
    paths: list[str | None] = Field(default_factory=list)
    # How the function receives the value: True -> always a dict {partition: value} (a mapping
    # that may select several partitions, even when it selects one today); False -> always the
    # single value; None -> the value for one entry, a dict for several.
    as_mapping: bool | None = None


class CheckRef(_Model):
    name: str
    blocking: bool = False


class TaskEnvelope(_Model):
    version: int = ENVELOPE_VERSION
    tenant: str = "default"
    workspace: str = "default"
    run_id: str
    task_id: str
    attempt: int
    asset: str
    partition: str | None = None  # canonical partition key
    partition_window: tuple[str, str] | None = None  # ISO start/end for time partitions
    code_version: str
    inputs: list[InputRef] = Field(default_factory=list)
    checks: list[CheckRef] = Field(default_factory=list)
    output_path: str  # where this attempt stages its output
    log_path: str  # where this attempt's captured stdout/stderr/context.log go
    timeout_ms: int | None = None
    heartbeat_interval_ms: int = 5000
    token: str = ""
    run_tags: dict[str, str] = Field(default_factory=dict)
    trace: dict[str, str] = Field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}/{self.task_id}/{self.attempt}"


ErrorKind = Literal["user_code", "timeout", "infrastructure", "cancelled", "check_failed"]


class TaskError(_Model):
    kind: ErrorKind
    message: str
    retryable: bool = True
    traceback: str | None = None


class CheckOutcome(_Model):
    name: str
    passed: bool
    severity: Literal["WARN", "ERROR"] = "ERROR"
    blocking: bool = False
    description: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class OutputRef(_Model):
    path: str
    size: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)


class InputRead(_Model):
    """A committed upstream output an attempt read (its lineage)."""

    asset: str
    partition: str | None = None
    output_path: str | None = None


class Outcome(_Model):
    status: Literal["succeeded", "failed", "cancelled"]
    error: TaskError | None = None
    output: OutputRef | None = None
    checks: list[CheckOutcome] = Field(default_factory=list)
    duration_ms: int = 0
    inputs: list[InputRead] = Field(default_factory=list)


class Answer(_Model):
    """The control plane's reply to a report."""

    accepted: bool = True
    cancel: bool = False  # stop the attempt (run cancelled, or the attempt is no longer current)
    reason: str | None = None


class ControlChannel(Protocol):
    """How a worker reports to the control plane."""

    def started(self, envelope: TaskEnvelope) -> Answer: ...

    def heartbeat(self, envelope: TaskEnvelope) -> Answer: ...

    def completed(self, envelope: TaskEnvelope, outcome: Outcome) -> Answer: ...
