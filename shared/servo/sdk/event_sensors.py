"""Event-driven sensors: runs started by GCS object notifications, Pub/Sub messages and run
status changes, without polling.

Each function returns a :class:`~servo.sdk.schedules.SensorDefinition` whose ``kind`` and
``config`` tell the control plane how to match events; only the optional user function is
Python code, and it runs in the worker runtime like any other user code.

* :func:`gcs_sensor` — an object written to a bucket (a GCS ``OBJECT_FINALIZE`` notification)
  requests a run of the target, for the partition derived from the object's name;
* :func:`pubsub_sensor` — a message on a topic whose attributes match a filter requests a run;
* :func:`run_status_sensor` — a run reaching one of the given statuses requests a run (or
  calls a function, e.g. to notify someone).

Every request carries a run_key derived from the event (bucket, object and generation; the
message id; the run and its status), so a notification delivered twice starts one run.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from servo.core.errors import DefinitionError
from servo.core.statemachine import RunState
from servo.sdk._location import of_caller, of_function
from servo.sdk.schedules import DefaultStatus, SensorDefinition, Target

GCS_EVENT_TYPES = ("OBJECT_FINALIZE", "OBJECT_DELETE", "OBJECT_ARCHIVE", "OBJECT_METADATA_UPDATE")
RUN_STATUSES = tuple(s.value for s in RunState)

KIND_GCS = "gcs"
KIND_PUBSUB = "pubsub"
KIND_RUN_STATUS = "run_status"


def default_gcs_topic(bucket: str) -> str:
    """The Pub/Sub topic a bucket's notifications go to unless a sensor names another."""
    return f"servo-gcs-{bucket}"


def _name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"{what} needs a non-empty name, e.g. name='landing_files'")
    return name


def _check_pattern(name: str, pattern: str) -> None:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise DefinitionError(
            f"gcs_sensor `{name}`: partition_key {pattern!r} is not a valid regular "
            f"expression ({exc})"
        ) from None
    if compiled.groups > 1 and "partition" not in compiled.groupindex:
        raise DefinitionError(
            f"gcs_sensor `{name}`: partition_key {pattern!r} has {compiled.groups} groups; use "
            "one group, or name the one holding the key (?P<partition>...)"
        )


def gcs_sensor(
    *,
    name: str,
    bucket: str,
    target: Target,
    prefix: str | None = None,
    glob: str | None = None,
    partition_key: str | Callable[[str], str | None] | None = None,
    topic: str | None = None,
    event_types: Sequence[str] = ("OBJECT_FINALIZE",),
    description: str | None = None,
    default_status: DefaultStatus = DefaultStatus.RUNNING,
) -> SensorDefinition:
    """Request a run of ``target`` for every object written to ``bucket`` that matches.

    ``prefix`` and ``glob`` (``fnmatch`` syntax on the whole object name, e.g.
    ``"landing/*/orders.csv"``) filter the objects. ``partition_key`` turns the object name
    into the partition to run: a regular expression whose first group (or group named
    ``partition``) is the key — ``r"landing/(\\d{4}-\\d{2}-\\d{2})/"`` maps
    ``landing/2024-01-05/orders.csv`` to ``2024-01-05`` — or a function of the object name
    returning the key (or ``None`` to start nothing), evaluated in the worker runtime.
    ``topic`` is the Pub/Sub topic the bucket's notifications are published to (default
    ``servo-gcs-<bucket>``). The run_key is ``gcs:<sensor>:<bucket>/<object>#<generation>``:
    rewriting an object (a new generation) starts a new run, a redelivered notification not.
    """
    name = _name(name, "gcs_sensor")
    if not isinstance(bucket, str) or not bucket:
        raise DefinitionError(f"gcs_sensor `{name}` needs bucket='my-bucket'")
    for label, value in (("prefix", prefix), ("glob", glob), ("topic", topic)):
        if value is not None and (not isinstance(value, str) or not value):
            raise DefinitionError(f"gcs_sensor `{name}`: {label} must be a non-empty string")
    kinds = list(event_types)
    unknown = [k for k in kinds if k not in GCS_EVENT_TYPES]
    if not kinds or unknown:
        raise DefinitionError(
            f"gcs_sensor `{name}`: event_types {kinds!r} must be a non-empty list drawn from "
            f"{', '.join(GCS_EVENT_TYPES)}"
        )
    fn: Callable[..., Any] | None = None
    pattern: str | None = None
    if isinstance(partition_key, str):
        _check_pattern(name, partition_key)
        pattern = partition_key
    elif callable(partition_key):
        fn = partition_key
    elif partition_key is not None:
        raise DefinitionError(
            f"gcs_sensor `{name}`: partition_key must be a regular expression or a function "
            f"of the object name, not {type(partition_key).__name__}"
        )
    return SensorDefinition(
        name=name,
        fn=fn,
        target=target,
        minimum_interval_seconds=1,
        description=description,
        default_status=default_status,
        kind=KIND_GCS,
        config={
            "bucket": bucket,
            "prefix": prefix,
            "glob": glob,
            "partition_pattern": pattern,
            "topic": topic or default_gcs_topic(bucket),
            "event_types": kinds,
        },
        location=of_function(fn) if fn is not None else of_caller(2),
    )


def pubsub_sensor(
    *,
    name: str,
    topic: str,
    target: Target,
    attributes: Mapping[str, str | Sequence[str]] | None = None,
    partition_attribute: str | None = None,
    fn: Callable[..., Any] | None = None,
    description: str | None = None,
    default_status: DefaultStatus = DefaultStatus.RUNNING,
) -> SensorDefinition:
    """Request a run of ``target`` for every message on ``topic`` whose attributes match.

    ``attributes`` maps an attribute name to the value (or list of values) it must have; the
    filter is applied by Servo, not by the subscription (the Pub/Sub emulator ignores
    subscription filters). ``partition_attribute`` names the attribute holding the partition
    key. ``fn``, if given, receives a :class:`~servo.sdk.evaluation_context.PubSubSensorContext`
    in the worker runtime and returns ``RunRequest``s, a ``SkipReason``, a partition key or
    ``None`` (start nothing). The run_key is ``pubsub:<sensor>:<message id>``.
    """
    name = _name(name, "pubsub_sensor")
    if not isinstance(topic, str) or not topic:
        raise DefinitionError(f"pubsub_sensor `{name}` needs topic='my-topic'")
    filters: dict[str, list[str]] = {}
    for key, value in (attributes or {}).items():
        values = [value] if isinstance(value, str) else list(value)
        if not isinstance(key, str) or not values or not all(isinstance(v, str) for v in values):
            raise DefinitionError(
                f"pubsub_sensor `{name}`: attributes[{key!r}] must be a string or a list of "
                "strings (Pub/Sub attributes are strings)"
            )
        filters[key] = values
    if partition_attribute is not None and (
        not isinstance(partition_attribute, str) or not partition_attribute
    ):
        raise DefinitionError(f"pubsub_sensor `{name}`: partition_attribute must be a string")
    if fn is not None and not callable(fn):
        raise DefinitionError(f"pubsub_sensor `{name}`: fn must be a function, not {fn!r}")
    return SensorDefinition(
        name=name,
        fn=fn,
        target=target,
        minimum_interval_seconds=1,
        description=description if description is not None or fn is None else inspect.getdoc(fn),
        default_status=default_status,
        kind=KIND_PUBSUB,
        config={
            "topic": topic,
            "attributes": filters,
            "partition_attribute": partition_attribute,
        },
        location=of_function(fn) if fn is not None else of_caller(2),
    )


def run_status_sensor(
    *,
    statuses: Sequence[str],
    name: str | None = None,
    target: Target | None = None,
    fn: Callable[..., Any] | None = None,
    monitored_selection: str | None = None,
    run_tags: Mapping[str, str] | None = None,
    minimum_interval_seconds: int = 5,
    description: str | None = None,
    default_status: DefaultStatus = DefaultStatus.RUNNING,
) -> SensorDefinition:
    """React to runs reaching one of ``statuses`` (e.g. ``["FAILED"]``).

    A run is monitored when it materializes an asset of ``monitored_selection`` (every run
    when None) and carries every tag of ``run_tags``; runs this sensor started itself are
    never monitored, so a sensor cannot trigger itself forever. For each status change the
    sensor requests a run of ``target`` (run_key ``run_status:<sensor>:<run id>:<status>``),
    or, when ``fn`` is given, calls ``fn(context)`` in the worker runtime with a
    :class:`~servo.sdk.evaluation_context.RunStatusSensorContext`; it may return
    ``RunRequest``s or a ``SkipReason``, or nothing (to notify someone, say).

    Status changes are read in order from the event ledger with a stored cursor, so every
    change is seen exactly once however many runs finish at the same moment.
    """
    if fn is not None and not callable(fn):
        raise DefinitionError(f"run_status_sensor: fn must be a function, not {fn!r}")
    sensor_name = _name(
        name or (getattr(fn, "__name__", None) if fn else None), "run_status_sensor"
    )
    wanted = list(statuses)
    unknown = [s for s in wanted if s not in RUN_STATUSES]
    if not wanted or unknown:
        raise DefinitionError(
            f"run_status_sensor `{sensor_name}`: statuses {wanted!r} must be a non-empty list "
            f"drawn from {', '.join(RUN_STATUSES)}"
        )
    if fn is None and target is None:
        raise DefinitionError(
            f"run_status_sensor `{sensor_name}` needs a target to run or a fn to call"
        )
    tags = dict(run_tags or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise DefinitionError(f"run_status_sensor `{sensor_name}`: run_tags must map str to str")
    if monitored_selection is not None and (
        not isinstance(monitored_selection, str) or not monitored_selection.strip()
    ):
        raise DefinitionError(
            f"run_status_sensor `{sensor_name}`: monitored_selection must be selection text "
            "such as 'orders*'"
        )
    return SensorDefinition(
        name=sensor_name,
        fn=fn,
        target=target,
        minimum_interval_seconds=minimum_interval_seconds,
        description=description if description is not None or fn is None else inspect.getdoc(fn),
        default_status=default_status,
        kind=KIND_RUN_STATUS,
        config={
            "statuses": wanted,
            "monitored_selection": monitored_selection,
            "run_tags": tags,
        },
        location=of_function(fn) if fn is not None else of_caller(2),
    )


def gcs_object_notification(
    bucket: str,
    name: str,
    generation: int | str = 1,
    event_type: str = "OBJECT_FINALIZE",
) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``(data, attributes)`` of the Pub/Sub message GCS publishes about an object.

    Useful to publish a notification on the embedded bus (``ports.bus.publish(topic, data,
    attributes)``) where no real bucket sends one.
    """
    data = {"kind": "storage#object", "bucket": bucket, "name": name, "generation": str(generation)}
    attributes = {
        "eventType": event_type,
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": str(generation),
        "payloadFormat": "JSON_API_V1",
    }
    return data, attributes
