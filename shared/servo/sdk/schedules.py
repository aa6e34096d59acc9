"""Schedules and sensors (definitions; their evaluation lives in the control plane)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from servo.core.errors import DefinitionError
from servo.core.keys import AssetKey
from servo.sdk._location import SourceLocation, of_caller, of_function
from servo.sdk.assets import AssetsDefinition

Target = str | AssetsDefinition | AssetKey | Sequence["AssetsDefinition | AssetKey | str"]


class DefaultStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RunRequest:
    """Ask for a run. ``run_key`` makes the request idempotent: a key already used starts
    nothing new. ``partition_key`` selects one partition of the target."""

    run_key: str | None = None
    partition_key: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    selection: str | None = None


@dataclass(frozen=True)
class SkipReason:
    """Returned by a sensor or schedule function to record why it started nothing."""

    message: str = ""


def target_to_selection(target: Target | None) -> str | None:
    """Turn a schedule/sensor target into selection text (``a or b``)."""
    if target is None:
        return None
    if isinstance(target, str):
        return target
    if isinstance(target, AssetsDefinition):
        return target.key_text
    if isinstance(target, AssetKey):
        return target.to_string()
    parts: list[str] = []
    for t in target:
        if isinstance(t, AssetsDefinition):
            parts.append(t.key_text)
        elif isinstance(t, AssetKey):
            parts.append(t.to_string())
        else:
            parts.append(str(t))
    return " or ".join(parts)


@dataclass
class ScheduleDefinition:
    """Run ``target`` on a cron schedule in a timezone.

    On a partitioned target each tick runs the partition that has just closed (a daily schedule
    at 01:00 runs yesterday's partition). A function given with :func:`schedule` may instead
    return ``RunRequest``s or a ``SkipReason``.
    """

    name: str
    cron_schedule: str
    target: Target | None = None
    timezone: str = "UTC"
    description: str | None = None
    default_status: DefaultStatus = DefaultStatus.RUNNING
    tags: Mapping[str, str] = field(default_factory=dict)
    fn: Callable[..., Any] | None = None
    location: SourceLocation = field(default_factory=lambda: of_caller(3))

    @property
    def selection(self) -> str | None:
        return target_to_selection(self.target)

    def problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.name, str) or not self.name:
            out.append("a schedule needs a non-empty name")
        if not isinstance(self.cron_schedule, str) or not self.cron_schedule.strip():
            out.append(
                f"schedule `{self.name}`: cron_schedule must be a cron string like '0 1 * * *'"
            )
        if self.target is None:
            out.append(f"schedule `{self.name}` has no target; pass target='selection'")
        return out


def schedule(
    *,
    cron_schedule: str,
    target: Target,
    name: str | None = None,
    timezone: str = "UTC",
    description: str | None = None,
    default_status: DefaultStatus = DefaultStatus.RUNNING,
    tags: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., Any]], ScheduleDefinition]:
    """Define a schedule whose function decides, per tick, what to run."""

    def decorate(fn: Callable[..., Any]) -> ScheduleDefinition:
        if not callable(fn):
            raise DefinitionError(f"@schedule must decorate a function, not {fn!r}")
        return ScheduleDefinition(
            name=name or fn.__name__,
            cron_schedule=cron_schedule,
            target=target,
            timezone=timezone,
            description=description if description is not None else inspect.getdoc(fn),
            default_status=default_status,
            tags=dict(tags or {}),
            fn=fn,
            location=of_function(fn),
        )

    return decorate


@dataclass
class SensorDefinition:
    """A sensor: evaluated on events or at most every ``minimum_interval_seconds``.

    A custom sensor function receives a context with ``cursor`` and returns ``RunRequest``s (or
    yields them) or a ``SkipReason``; it may call ``context.update_cursor(value)``.
    """

    name: str
    fn: Callable[..., Any] | None = None
    target: Target | None = None
    minimum_interval_seconds: int = 30
    description: str | None = None
    default_status: DefaultStatus = DefaultStatus.RUNNING
    kind: str = "custom"
    config: Mapping[str, Any] = field(default_factory=dict)
    location: SourceLocation = field(default_factory=lambda: of_caller(3))

    @property
    def selection(self) -> str | None:
        return target_to_selection(self.target)

    def problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.name, str) or not self.name:
            out.append("a sensor needs a non-empty name")
        if not isinstance(self.minimum_interval_seconds, int) or self.minimum_interval_seconds < 1:
            out.append(f"sensor `{self.name}`: minimum_interval_seconds must be a positive integer")
        return out


def sensor(
    *,
    target: Target | None = None,
    name: str | None = None,
    minimum_interval_seconds: int = 30,
    description: str | None = None,
    default_status: DefaultStatus = DefaultStatus.RUNNING,
) -> Callable[[Callable[..., Any]], SensorDefinition]:
    """Define a custom sensor evaluated in the worker runtime (never in the control plane)."""

    def decorate(fn: Callable[..., Any]) -> SensorDefinition:
        if not callable(fn):
            raise DefinitionError(f"@sensor must decorate a function, not {fn!r}")
        return SensorDefinition(
            name=name or fn.__name__,
            fn=fn,
            target=target,
            minimum_interval_seconds=minimum_interval_seconds,
            description=description if description is not None else inspect.getdoc(fn),
            default_status=default_status,
            location=of_function(fn),
        )

    return decorate


def as_requests(result: Any) -> list[RunRequest | SkipReason]:
    """Normalise what a schedule or sensor function returned."""
    if result is None:
        return []
    if isinstance(result, (RunRequest, SkipReason)):
        return [result]
    if isinstance(result, Iterable) and not isinstance(result, (str, bytes)):
        out: list[RunRequest | SkipReason] = []
        for item in result:
            if not isinstance(item, (RunRequest, SkipReason)):
                raise DefinitionError(
                    f"a sensor or schedule returned {item!r}; return RunRequest(...) or SkipReason(...)"
                )
            out.append(item)
        return out
    raise DefinitionError(
        f"a sensor or schedule returned {result!r}; return RunRequest(...) or SkipReason(...)"
    )
