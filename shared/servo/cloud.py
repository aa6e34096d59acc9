"""The control plane on Google Cloud: configuration from the environment, ports, and the
routing of queue messages to the control services.

:mod:`servo.local` wires the control services around an in-process queue; this module is its
Google Cloud counterpart. Every function (``servo.api.functions``) and the CLI with
``SERVO_BACKEND=gcp`` build their ports here, from these environment variables:

=============================  ==========================================================
variable                       meaning
=============================  ==========================================================
``SERVO_GCP_PROJECT``          the project id (falls back to ``GOOGLE_CLOUD_PROJECT``)
``SERVO_BUCKET``               the bucket of the ledger, deployments, outputs and logs
``SERVO_TASKS_QUEUE``          the Cloud Tasks queue of the control messages,
                               ``projects/P/locations/L/queues/Q``
``SERVO_EXECUTE_QUEUE``        the queue of ``execute`` messages to the worker service
                               (default: ``SERVO_TASKS_QUEUE``); its
                               ``max_concurrent_dispatches`` is the worker capacity
``SERVO_TARGET_DISPATCH``      URL of the ``dispatch`` function
``SERVO_TARGET_RETRY``         URL for ``retry`` messages (default: the dispatch URL)
``SERVO_TARGET_FINALIZE``      URL for ``finalize`` messages (default: the dispatch URL)
``SERVO_TARGET_EXECUTE``       URL of the worker service's ``/execute``
``SERVO_TENANT``               tenant of this control plane (default ``default``)
``SERVO_WORKSPACE``            workspace of this control plane (default ``default``)
``SERVO_FIRESTORE_DATABASE``   Firestore database (default ``(default)``)
``SERVO_STORAGE_PREFIX``       object name prefix inside the bucket (default none)
``SERVO_TOPIC_PREFIX``         prefix of the Pub/Sub topics Servo publishes to
``SERVO_TASKS_SERVICE_ACCOUNT``  service account whose OIDC token every task carries
``SERVO_TASKS_AUDIENCE``       the OIDC audience (default: each task's URL)
``SERVO_DISPATCH_DEADLINE_S``  how long a control delivery may take (default 600)
``SERVO_EXECUTE_DEADLINE_S``   how long an ``execute`` delivery may take, that is the
                               longest task (default 1800, Cloud Tasks' maximum)
``SERVO_CALLBACK_SECRET``      the secret that signs each attempt's report token; the
                               functions refuse to run without it
``SERVO_EVALUATOR_URL``        the worker service's ``/evaluate`` URL, where the tick and
                               sensor functions run schedule and sensor functions
``SERVO_ID_TOKEN_SOURCE``      ``metadata`` to send a Google ID token (from the metadata
                               server) with calls to the worker service; default ``none``
``SERVO_HEARTBEAT_INTERVAL_MS``, ``SERVO_HEARTBEAT_TIMEOUT_MS``, ``SERVO_DISPATCH_TIMEOUT_MS``,
``SERVO_CANCEL_GRACE_MS``, ``SERVO_MAX_CONCURRENT_TASKS``, ``SERVO_STALE_RUN_WRITE_MS``:
                               the control plane's timings and limits (integers)
=============================  ==========================================================

The emulator variables (``FIRESTORE_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``,
``PUBSUB_EMULATOR_HOST``, ``SERVO_TASKS_EMULATOR_HOST``) point the clients at the emulators.
The worker service reads some of the same variables; see :mod:`servo.worker.service`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from servo.control.callback import finalize_run
from servo.control.common import TOPIC_DISPATCH, TOPIC_EXECUTE, TOPIC_FINALIZE, TOPIC_RETRY
from servo.control.dispatch import dispatch_run, dispatch_waiting, retry_due
from servo.core.errors import InvalidRequest, ServoError
from servo.ports import Doc, Ports, Queue

CONTROL_TOPICS = (TOPIC_DISPATCH, TOPIC_RETRY, TOPIC_FINALIZE)
"""The queue topics the dispatch function serves; ``execute`` goes to the worker service."""

INTEGER_SETTINGS = (
    "heartbeat_interval_ms",
    "heartbeat_timeout_ms",
    "dispatch_timeout_ms",
    "cancel_grace_ms",
    "max_concurrent_tasks",
    "stale_run_write_ms",
)


class ConfigurationError(ServoError):
    """The environment does not describe a usable Google Cloud control plane."""


@dataclass(frozen=True)
class CloudConfig:
    """Everything the environment says about one control plane on Google Cloud."""

    project: str
    bucket: str
    tasks_queue: str
    execute_queue: str
    targets: Mapping[str, str]
    tenant: str = "default"
    workspace: str = "default"
    database: str = "(default)"
    storage_prefix: str = ""
    topic_prefix: str = ""
    service_account_email: str | None = None
    oidc_audience: str | None = None
    dispatch_deadline_s: float = 600.0
    execute_deadline_s: float = 1800.0
    callback_secret: str | None = None
    evaluator_url: str | None = None
    id_token_source: str = "none"
    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CloudConfig:
        """Read the configuration (see the module docstring); raises ConfigurationError
        naming every missing or malformed variable."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def text(name: str, default: str | None = None) -> str | None:
            value = env.get(name, "").strip()
            return value or default

        def number(name: str, default: float) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                return float(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not a number")
                return default

        project = text("SERVO_GCP_PROJECT") or text("GOOGLE_CLOUD_PROJECT")
        bucket = text("SERVO_BUCKET")
        queue = text("SERVO_TASKS_QUEUE")
        for name, value in (
            ("SERVO_GCP_PROJECT", project),
            ("SERVO_BUCKET", bucket),
            ("SERVO_TASKS_QUEUE", queue),
        ):
            if value is None:
                problems.append(f"{name} is not set")
        targets: dict[str, str] = {}
        dispatch_url = text("SERVO_TARGET_DISPATCH")
        for topic in (TOPIC_DISPATCH, TOPIC_RETRY, TOPIC_FINALIZE, TOPIC_EXECUTE):
            url = text(f"SERVO_TARGET_{topic.upper()}")
            if url is None and topic in (TOPIC_RETRY, TOPIC_FINALIZE):
                url = dispatch_url
            if url is not None:
                targets[topic] = url
        settings: dict[str, Any] = {}
        for key in INTEGER_SETTINGS:
            raw = text(f"SERVO_{key.upper()}")
            if raw is None:
                continue
            try:
                settings[key] = int(raw)
            except ValueError:
                problems.append(f"SERVO_{key.upper()}={raw!r} is not an integer")
        source = text("SERVO_ID_TOKEN_SOURCE", "none") or "none"
        if source not in ("none", "metadata"):
            problems.append(f"SERVO_ID_TOKEN_SOURCE={source!r} must be 'none' or 'metadata'")
        dispatch_deadline = number("SERVO_DISPATCH_DEADLINE_S", 600.0)
        execute_deadline = number("SERVO_EXECUTE_DEADLINE_S", 1800.0)
        if problems:
            raise ConfigurationError(
                "the Google Cloud backend is not configured: "
                + "; ".join(problems)
                + " (see servo.cloud for every variable)"
            )
        assert project is not None
        assert bucket is not None
        assert queue is not None
        return cls(
            project=project,
            bucket=bucket,
            tasks_queue=queue,
            execute_queue=text("SERVO_EXECUTE_QUEUE", queue) or queue,
            targets=targets,
            tenant=text("SERVO_TENANT", "default") or "default",
            workspace=text("SERVO_WORKSPACE", "default") or "default",
            database=text("SERVO_FIRESTORE_DATABASE", "(default)") or "(default)",
            storage_prefix=text("SERVO_STORAGE_PREFIX", "") or "",
            topic_prefix=text("SERVO_TOPIC_PREFIX", "") or "",
            service_account_email=text("SERVO_TASKS_SERVICE_ACCOUNT"),
            oidc_audience=text("SERVO_TASKS_AUDIENCE"),
            dispatch_deadline_s=dispatch_deadline,
            execute_deadline_s=execute_deadline,
            callback_secret=text("SERVO_CALLBACK_SECRET"),
            evaluator_url=text("SERVO_EVALUATOR_URL"),
            id_token_source=source,
            settings=settings,
        )


class TopicQueues:
    """A :class:`~servo.ports.Queue` that sends each topic to its own queue.

    ``execute`` messages go to a queue of their own so that its concurrency limit can match
    the worker capacity without throttling the control messages.
    """

    def __init__(self, default: Queue, by_topic: Mapping[str, Queue] | None = None) -> None:
        self.default = default
        self.by_topic = dict(by_topic or {})

    def enqueue(
        self, topic: str, payload: Doc, *, name: str | None = None, delay_s: float = 0.0
    ) -> bool:
        queue = self.by_topic.get(topic, self.default)
        return queue.enqueue(topic, payload, name=name, delay_s=delay_s)


def open_cloud(config: CloudConfig, *, counter: Any = None) -> Ports:
    """The ports of ``config``'s tenant and workspace, with its settings applied."""
    from servo.adapters.gcp import CloudTasksQueue, GcpConfig, OperationCounter, open_gcp

    gcp = GcpConfig(
        project=config.project,
        bucket=config.bucket,
        tasks_queue_path=config.tasks_queue,
        task_targets=dict(config.targets),
        database=config.database,
        prefix=config.storage_prefix,
        tenant=config.tenant,
        workspace=config.workspace,
        service_account_email=config.service_account_email,
        oidc_audience=config.oidc_audience,
        topic_prefix=config.topic_prefix,
        dispatch_deadline_s=config.dispatch_deadline_s,
    )
    counter = counter if counter is not None else OperationCounter()
    ports = open_gcp(gcp, counter=counter)
    control = ports.queue
    assert isinstance(control, CloudTasksQueue)
    execute = CloudTasksQueue(
        control.client,
        config.execute_queue,
        dict(config.targets),
        config.service_account_email,
        oidc_audience=config.oidc_audience,
        dispatch_deadline_s=config.execute_deadline_s,
        clock=ports.clock,
        counter=counter,
    )
    ports.queue = TopicQueues(control, {TOPIC_EXECUTE: execute})
    settings: dict[str, Any] = {**ports.settings, **config.settings}
    if config.callback_secret:
        settings["callback_secret"] = config.callback_secret
    ports.settings = settings
    return ports


def open_from_env(
    environ: Mapping[str, str] | None = None, *, require_secret: bool = False
) -> Ports:
    """The ports described by the environment (see the module docstring)."""
    config = CloudConfig.from_env(environ)
    if require_secret and not config.callback_secret:
        raise ConfigurationError(
            "SERVO_CALLBACK_SECRET is not set: the functions need the secret that signs the "
            "workers' report tokens (store it in Secret Manager and expose it as this variable)"
        )
    return open_cloud(config)


def _text_field(payload: Doc, name: str, topic: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"a {topic!r} message needs a non-empty string `{name}`")
    return value


def handle_control_message(ports: Ports, topic: str, payload: Any) -> Doc:
    """Run the control service a queue message of ``topic`` is for; returns what it did.

    The same routing as :class:`servo.local.LocalControlPlane`: ``dispatch`` dispatches a
    run's READY tasks (or, with a ``pool``, those waiting for that pool), ``retry`` makes a
    retry whose delay is over dispatchable, ``finalize`` finishes a run whose tasks are all
    terminal. Raises InvalidRequest for a malformed message or a topic served elsewhere.
    """
    if not isinstance(payload, dict):
        raise InvalidRequest(f"the payload of a {topic!r} message must be a JSON object")
    if topic == TOPIC_DISPATCH:
        if payload.get("run_id") is not None:
            return {"dispatched": dispatch_run(ports, _text_field(payload, "run_id", topic))}
        pool = payload.get("pool")
        if pool is not None and not isinstance(pool, str):
            raise InvalidRequest("`pool` of a 'dispatch' message must be a string")
        return {"dispatched": dispatch_waiting(ports, pool)}
    if topic == TOPIC_RETRY:
        attempt = payload.get("attempt")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise InvalidRequest("a 'retry' message needs a positive integer `attempt`")
        run_id = _text_field(payload, "run_id", topic)
        task = _text_field(payload, "task_id", topic)
        return {"dispatched": retry_due(ports, run_id, task, attempt)}
    if topic == TOPIC_FINALIZE:
        return {"state": finalize_run(ports, _text_field(payload, "run_id", topic))}
    raise InvalidRequest(
        f"queue topic {topic!r} is not handled here: the dispatch function serves "
        f"{', '.join(CONTROL_TOPICS)}; point SERVO_TARGET_{str(topic).upper()} at the right "
        "service"
    )


__all__ = [
    "CONTROL_TOPICS",
    "CloudConfig",
    "ConfigurationError",
    "TopicQueues",
    "handle_control_message",
    "open_cloud",
    "open_from_env",
]
