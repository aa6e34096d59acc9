"""Event envelopes: the CloudEvents-style records of every state change.

Every event carries: ``id`` (unique), ``type`` (``servo.run.created`` …), ``specversion``
(the envelope version), ``time`` (ISO-8601 UTC), ``source`` (the service that recorded it),
``tenant``/``workspace``, ``run_id``/``task_id``/``attempt`` when they apply, ``correlation_id``
(the run, or the request that started a chain), ``causation_id`` (the event or message that
caused this one), ``actor`` (who asked: a user, a schedule, a sensor, the system), ``lc`` (a
Lamport clock: an event's lc is greater than that of every event it could have observed, which
gives a causal order across services and machines) and ``data``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

EVENT_SPEC_VERSION = 1

# Event types. Adding one is backwards compatible; readers skip types they do not know.
RUN_CREATED = "servo.run.created"
RUN_STATE = "servo.run.state_changed"
TASKS_CREATED = "servo.tasks.created"
TASK_STATE = "servo.task.state_changed"
TASK_DUPLICATE = "servo.task.duplicate_report"
TASK_REJECTED = "servo.task.rejected_report"
MATERIALIZATION = "servo.asset.materialized"
CHECK_EVALUATED = "servo.check.evaluated"
DEPLOYED = "servo.code.deployed"
RUN_KEY_HIT = "servo.run.key_reused"


def ms_to_iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def causal_sort_key(event: dict[str, Any]) -> tuple[int, int, str]:
    return (int(event.get("lc", 0)), int(event.get("time_ms", 0)), str(event.get("id", "")))


def causal_order(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events sorted causally (Lamport clock, then time, then id) with duplicates removed."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for e in sorted(events, key=causal_sort_key):
        eid = str(e.get("id"))
        if eid in seen:
            continue
        seen.add(eid)
        out.append(e)
    return out
