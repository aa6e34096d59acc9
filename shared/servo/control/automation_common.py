"""What the automation services (tick, sensors, asset automation) share: their collections,
settings, tick records, and turning a run request into a run idempotently."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servo.control.common import LEDGER_HEADS, RUN_KEYS
from servo.control.deploy import current_code_version, load_manifest
from servo.control.drain import EVENTS_STREAM
from servo.control.trigger import TriggerRequest, trigger
from servo.core.canonical import sha256_hex
from servo.core.errors import Conflict, ServoError
from servo.core.manifest import Manifest
from servo.core.planner import PartitionSelection
from servo.ports import Doc, Ports, StateTxn
from servo.worker.evaluate import Evaluator, shared_evaluator

# Collections of the state store.
SCHEDULE_STATE = "schedule_state"
SENSOR_STATE = "sensor_state"
TICKS = "ticks"
AUTOMATION_STATE = "automation_state"

# Tick statuses. EVALUATING and REQUESTED are transient (sensors only): a sensor tick is
# EVALUATING while its function runs and REQUESTED once its run requests and cursor are
# committed but not every run has been created yet.
SUCCESS = "SUCCESS"
SKIPPED = "SKIPPED"
FAILED = "FAILED"
EVALUATING = "EVALUATING"
REQUESTED = "REQUESTED"
FINAL_TICK_STATUSES = (SUCCESS, SKIPPED, FAILED)

# Event types (readers skip types they do not know).
SCHEDULE_TICKED = "servo.schedule.ticked"
SENSOR_TICKED = "servo.sensor.ticked"
AUTOMATION_REQUESTED = "servo.automation.requested"

# Tags Servo reads from a schedule's tags rather than passing them to its runs.
MAX_CATCHUP_TAG = "servo/max_catchup"


@dataclass(frozen=True)
class AutomationSettings:
    """Settings of schedules, sensors and asset automation (from ``Ports.settings``).

    ``schedule_max_catchup``: after an outage (no tick evaluated for a while) a schedule runs
    at most this many of the ticks it missed — the most recent ones; the older ones are
    counted in the first tick's record (``missed_ticks``) and not run. Default 1: only the
    latest missed tick runs. A schedule can set its own limit with the tag
    ``servo/max_catchup``.

    ``schedule_new_lookback_s``: a schedule seen for the first time (new, or enabled again)
    starts from now minus this much, so a tick that fell just before the first evaluation
    (a deploy at 00:59:58, an evaluation at 01:00:05) still runs; nothing older is backfilled.
    """

    schedule_max_catchup: int = 1
    schedule_new_lookback_s: int = 60
    sensor_evaluation_timeout_s: float = 60.0
    run_status_max_segments: int = 200
    automation_max_requests_per_asset: int = 100

    @classmethod
    def of(cls, ports: Ports) -> AutomationSettings:
        known = {k: v for k, v in ports.settings.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def state_id(name: str) -> str:
    """Document id of a schedule's or sensor's state (ids may not contain '/')."""
    return name.replace("/", "~")


def iso_utc(moment: datetime) -> str:
    """``2024-01-02T01:00:00Z`` (microseconds only when present)."""
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def is_running(default_status: str, state: Mapping[str, Any] | None) -> bool:
    """Whether a schedule or sensor is on: its stored override, else its default status."""
    status = (state or {}).get("status")
    return (status or default_status) == "running"


def current_manifest(ports: Ports) -> Manifest | None:
    """The manifest of the current deployment, or None when nothing is deployed."""
    cv = current_code_version(ports)
    return load_manifest(ports, cv) if cv is not None else None


def ledger_head(ports: Ports) -> int:
    """The sequence number of the last event segment the drain has committed (-1: none).

    One document read, where listing the ledger would grow with its length.
    """
    head = ports.state.get(LEDGER_HEADS, EVENTS_STREAM)
    return int(head["next_seq"]) - 1 if head else -1


def run_key_doc_id(run_key: str) -> str:
    """The ``run_keys`` document of a run_key (as written by the trigger service)."""
    return "k" + sha256_hex(run_key)[:40]


@dataclass(frozen=True)
class RequestedRunResult:
    """The run a request resolved to. ``created`` is False when the run_key was used before;
    ``conflict`` when it was used for a different request (e.g. before a redeploy)."""

    run_id: str
    created: bool
    conflict: bool = False


def request_run(
    ports: Ports,
    *,
    selection: str,
    run_key: str,
    partition_key: str | None,
    tags: Mapping[str, str],
    trigger_info: Mapping[str, Any],
    actor: str,
    code_version: str,
) -> RequestedRunResult:
    """Create the run for ``run_key`` (or find the one already made for it).

    A run_key used before for a *different* request (the code was redeployed between a crash
    and its retry, or a user function answered differently) is not an error here: the run
    that key already started is the answer, so a retried evaluation never starts a second run.
    Raises InvalidRequest when the request itself is wrong (unknown selection, bad partition).
    """
    req = TriggerRequest(
        selection=selection,
        partitions=PartitionSelection(keys=(partition_key,) if partition_key else ()),
        run_key=run_key,
        tags=dict(tags),
        code_version=code_version,
        trigger=dict(trigger_info),
        actor=actor,
    )
    try:
        result = trigger(ports, req)
    except Conflict:
        doc = ports.state.get(RUN_KEYS, run_key_doc_id(run_key))
        if doc is None:
            raise
        return RequestedRunResult(run_id=str(doc["run_id"]), created=False, conflict=True)
    return RequestedRunResult(run_id=result.run_id, created=result.created)


def resolve_evaluator(ports: Ports, evaluator: Evaluator | None) -> Evaluator:
    """The evaluator to use: the given one, or the embedded backend's shared process pool."""
    if evaluator is not None:
        return evaluator
    root = getattr(ports.blobs, "root", None)
    if root is None:
        raise ServoError(
            "this backend has no way to evaluate schedule and sensor functions; pass an "
            "evaluator (a worker service) to the automation services"
        )
    return shared_evaluator(Path(root))


def error_doc(message: str, traceback: str | None = None) -> Doc:
    return {"message": message, "traceback": traceback}


def read_many(
    ports: Ports, collection: str, ids: Sequence[str], chunk: int = 400
) -> dict[str, Doc]:
    """The documents that exist among ``ids`` (read in consistent chunks)."""
    found: dict[str, Doc] = {}
    for start in range(0, len(ids), chunk):
        part = list(ids[start : start + chunk])

        def read(txn: StateTxn, part: list[str] = part) -> dict[str, Doc]:
            return txn.get_many(collection, part)

        found.update(ports.state.transact(read))
    return found


def keyed(base: str) -> Callable[[int | None, str | None], str]:
    """Run keys under ``base``: the user's key appended, else the request's index (nothing
    for a single request)."""

    def make(index: int | None, user_key: str | None) -> str:
        if user_key:
            return f"{base}:{user_key}"
        return base if index is None else f"{base}:{index}"

    return make
