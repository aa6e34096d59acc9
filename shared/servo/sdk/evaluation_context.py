"""The contexts handed to schedule and sensor functions when the worker runtime evaluates them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from servo.core.errors import DefinitionError


def _logger(kind: str, name: str) -> logging.Logger:
    return logging.getLogger(f"servo.{kind}.{name}")


@dataclass
class ScheduleEvaluationContext:
    """What a ``@schedule`` function knows about the tick it decides.

    ``scheduled_execution_time`` is the tick's time in the schedule's timezone (not the moment
    of evaluation, which may be later after an outage). ``partition_key`` is the partition of
    a time-partitioned target that closed at that time (``None`` otherwise); a ``RunRequest``
    without a ``partition_key`` runs that partition.
    """

    schedule_name: str
    scheduled_execution_time: datetime
    partition_key: str | None = None
    log: logging.Logger = field(default_factory=lambda: _logger("schedule", "unnamed"))


@dataclass
class SensorEvaluationContext:
    """What a custom ``@sensor`` function knows: its cursor and the time of evaluation.

    The cursor is a string the sensor keeps between evaluations (e.g. the name of the last
    file it saw). Call :meth:`update_cursor` to change it: the new cursor is stored in the same
    commit as the runs this evaluation requests, and the next evaluation starts from it.
    """

    sensor_name: str
    cursor: str | None = None
    evaluation_time: datetime | None = None
    log: logging.Logger = field(default_factory=lambda: _logger("sensor", "unnamed"))
    _new_cursor: str | None = field(default=None, repr=False)
    _cursor_updated: bool = field(default=False, repr=False)

    def update_cursor(self, cursor: str | None) -> None:
        """Set the cursor the next evaluation starts from (``None`` clears it)."""
        if cursor is not None and not isinstance(cursor, str):
            raise DefinitionError(
                f"sensor `{self.sensor_name}`: update_cursor needs a string or None, got "
                f"{type(cursor).__name__}; serialize the value, e.g. with json.dumps"
            )
        self._new_cursor = cursor
        self._cursor_updated = True
        self.cursor = cursor

    @property
    def cursor_updated(self) -> bool:
        """Whether :meth:`update_cursor` was called during this evaluation."""
        return self._cursor_updated


@dataclass(frozen=True)
class RunStatusChange:
    """One run reaching a status, as a run-status sensor sees it."""

    run_id: str
    status: str
    previous_status: str | None
    selection: str | None
    assets: tuple[str, ...]
    partitions: Mapping[str, Any]
    tags: Mapping[str, str]
    trigger: Mapping[str, Any]
    reason: str | None
    time: str


@dataclass
class RunStatusSensorContext:
    """What a run-status sensor function receives: one status change of one run."""

    sensor_name: str
    change: RunStatusChange
    log: logging.Logger = field(default_factory=lambda: _logger("sensor", "unnamed"))

    @property
    def run_id(self) -> str:
        return self.change.run_id

    @property
    def status(self) -> str:
        return self.change.status


@dataclass(frozen=True)
class PubSubMessage:
    """A Pub/Sub message as a message sensor sees it.

    ``data`` is the decoded JSON payload when the message carried JSON, otherwise its text.
    """

    id: str
    data: Any
    attributes: Mapping[str, str]
    publish_time: str | None = None


@dataclass
class PubSubSensorContext:
    """What a Pub/Sub sensor function receives: one message that passed the filter."""

    sensor_name: str
    message: PubSubMessage
    log: logging.Logger = field(default_factory=lambda: _logger("sensor", "unnamed"))
