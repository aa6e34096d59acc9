"""The embedded stand-in for Cloud Scheduler and Pub/Sub push: schedules, sensors and asset
automation on one machine, next to a :class:`~servo.local.LocalControlPlane`.

:class:`LocalAutomation` runs one background thread that, every ``poll_s`` seconds:

* calls the ``tick`` service once per wall-clock minute (within about ``poll_s`` of the
  minute's start), and evaluates asset automation at the same moment;
* calls ``sensor_evaluate`` (each sensor runs when its minimum interval has passed);
* evaluates asset automation downstream of newly recorded materializations.

It also subscribes to the embedded bus on the topics of the deployment's GCS and Pub/Sub
sensors: each message becomes a queue message (deduplicated by sensor and message id, retried
on failure — Pub/Sub push semantics) whose handler calls ``handle_notification``.

User functions are evaluated by an :class:`~servo.worker.evaluate.EvaluatorPool` of worker
processes (one per ``LocalAutomation`` unless one is passed in). ``servo dev`` starts it with::

    with LocalControlPlane(ws.ports, ws.home), LocalAutomation(ws.ports, ws.home):
        ...
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from servo.adapters.embedded.bus import BusMessage, InProcessBus
from servo.adapters.embedded.queue import InProcessQueue
from servo.control.automation import (
    AutomationReport,
    automation_on_materializations,
    evaluate_automation,
)
from servo.control.automation_common import current_manifest
from servo.control.sensors import (
    NotificationResult,
    SensorReport,
    event_sensor_topics,
    handle_notification,
    sensor_evaluate,
)
from servo.control.tick import TickReport, tick
from servo.core.errors import ServoError
from servo.ports import Doc, Ports
from servo.worker.evaluate import Evaluator, EvaluatorPool

log = logging.getLogger("servo.local_automation")

TOPIC_SENSOR_NOTIFICATION = "sensor_notification"


@dataclass
class StepReport:
    """What one pass of the loop did."""

    tick: TickReport | None = None
    sensors: SensorReport | None = None
    automation: list[AutomationReport] = field(default_factory=list)


class LocalAutomation:
    """Evaluates schedules, sensors and asset automation in the background (see module doc)."""

    def __init__(
        self,
        ports: Ports,
        home: Path,
        *,
        poll_s: float = 1.0,
        evaluator: Evaluator | None = None,
        evaluator_processes: int = 2,
    ) -> None:
        self.ports = ports
        self.home = Path(home)
        self.poll_s = poll_s
        self._owned: EvaluatorPool | None = None
        if evaluator is None:
            root = getattr(ports.blobs, "root", None)
            if root is None:
                raise ServoError("local automation needs the embedded file blobs")
            self._owned = EvaluatorPool(Path(root), self.home / "code", size=evaluator_processes)
            evaluator = self._owned
        self.evaluator: Evaluator = evaluator
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_minute: datetime | None = None
        self._subscribed: dict[str, list[str]] = {}
        self._subscribed_version: str | None = None
        self._lock = threading.Lock()
        self._queue = ports.queue if isinstance(ports.queue, InProcessQueue) else None
        self._bus = ports.bus if isinstance(ports.bus, InProcessBus) else None
        if self._queue is not None:
            self._queue.subscribe(TOPIC_SENSOR_NOTIFICATION, self._on_queued_notification)

    # Lifecycle ------------------------------------------------------------------------------
    def start(self) -> LocalAutomation:
        """Subscribe to the bus and start the background loop."""
        self.refresh_subscriptions()
        self._thread = threading.Thread(target=self._run, name="servo-automation", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop, leave the bus and stop the evaluation processes it owns."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            if self._bus is not None:
                for topic in self._subscribed:
                    self._bus.unsubscribe(topic, self._on_bus_message)
            self._subscribed = {}
        if self._queue is not None:
            self._queue.unsubscribe(TOPIC_SENSOR_NOTIFICATION)
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> LocalAutomation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("automation step failed; retrying")
            self._stop.wait(self.poll_s)

    # One pass -------------------------------------------------------------------------------
    def step(self, now: datetime | None = None) -> StepReport:
        """One pass of the loop (tests call it directly with a chosen time)."""
        at = (now or self.ports.clock.now()).astimezone(UTC)
        report = StepReport()
        minute = at.replace(second=0, microsecond=0)
        if minute != self._last_minute:
            report.tick = tick(self.ports, at, evaluator=self.evaluator)
            report.automation.append(evaluate_automation(self.ports, at))
            self._last_minute = minute
        report.sensors = sensor_evaluate(self.ports, at, evaluator=self.evaluator)
        report.automation.append(automation_on_materializations(self.ports, at))
        self.refresh_subscriptions()
        return report

    # Notifications --------------------------------------------------------------------------
    def refresh_subscriptions(self) -> None:
        """Follow the topics of the current deployment's GCS and Pub/Sub sensors."""
        if self._bus is None:
            return
        manifest = current_manifest(self.ports)
        version = manifest.code_version if manifest is not None else None
        with self._lock:
            if version == self._subscribed_version:
                return
            wanted = event_sensor_topics(manifest) if manifest is not None else {}
            for topic in set(self._subscribed) - set(wanted):
                self._bus.unsubscribe(topic, self._on_bus_message)
            for topic in set(wanted) - set(self._subscribed):
                self._bus.subscribe(topic, self._on_bus_message)
            self._subscribed = wanted
            self._subscribed_version = version

    def _on_bus_message(self, message: BusMessage) -> None:
        with self._lock:
            sensors = list(self._subscribed.get(message.topic, ()))
        payload: Doc = {
            "id": message.id,
            "data": message.data,
            "attributes": dict(message.attributes),
        }
        for name in sensors:
            item = {"sensor": name, "message": payload}
            if self._queue is None:
                self._handle(item)
            else:
                self._queue.enqueue(
                    TOPIC_SENSOR_NOTIFICATION,
                    item,
                    name=f"notify-{name}-{message.topic}-{message.id}",
                )

    def _on_queued_notification(self, payload: Doc) -> None:
        self._handle(payload)

    def _handle(self, payload: dict[str, Any]) -> NotificationResult:
        result = handle_notification(
            self.ports, str(payload["sensor"]), payload["message"], evaluator=self.evaluator
        )
        log.debug("notification for %s: %s", payload["sensor"], result.status)
        return result
