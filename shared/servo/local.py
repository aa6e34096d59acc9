"""The embedded control plane: the same control services as on Google Cloud, wired together
in one process around an in-process queue and a pool of warm worker processes.

``servo run --wait`` and ``servo dev`` use it; tests use it with real worker processes. The
queue delivers ``dispatch``/``retry``/``finalize`` messages to the services and ``execute``
messages to the worker pool; the pool's reports go to the callback service; a housekeeping
thread runs the sweep, drains the outbox into the ledger and stops worker processes whose
attempt is no longer current (force-cancelled, timed out or superseded); a compaction thread
folds the ledger into the projections.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servo.adapters.embedded.queue import InProcessQueue
from servo.control.callback import Report, finalize_run, handle_report
from servo.control.common import (
    RUNS,
    TASKS,
    TOPIC_DISPATCH,
    TOPIC_EXECUTE,
    TOPIC_FINALIZE,
    TOPIC_RETRY,
    task_doc_id,
)
from servo.control.dispatch import dispatch_run, dispatch_waiting, retry_due
from servo.control.drain import drain_outbox
from servo.control.sweep import sweep
from servo.core.errors import InvalidRequest, ServoError
from servo.ports import Doc, Ports
from servo.telemetry import tracing
from servo.worker.envelope import Answer, Outcome, TaskEnvelope
from servo.worker.pool import WorkerPool

log = logging.getLogger("servo.local")

TERMINAL_RUN_STATES = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
# How often a started or completed report is handed to the callback service before giving up.
REPORT_TRIES = 6


@dataclass
class LocalOptions:
    workers: int = max(2, min(8, os.cpu_count() or 2))
    housekeeping_interval_s: float = 0.5
    # Fold the ledger into the projections in the background (`servo dev`); a one-off
    # `servo run` leaves that to the next compaction — queries read the uncompacted tail.
    background_compaction: bool = True


class LocalControlPlane:
    """Hosts the control services, the queue and the worker pool in this process."""

    def __init__(self, ports: Ports, home: Path, options: LocalOptions | None = None) -> None:
        queue = tracing.unwrap(ports.queue)
        if not isinstance(queue, InProcessQueue):
            raise ServoError("the local control plane needs the embedded in-process queue")
        self.ports = ports
        self.queue: InProcessQueue = queue
        # With tracing on, every message enqueued carries the trace context of its sender.
        ports.queue = tracing.propagating(queue)
        self._attempt_spans: dict[tuple[str, str, int], Any] = {}
        self.home = Path(home)
        self.options = options or LocalOptions()
        settings = dict(ports.settings)
        settings.setdefault("max_concurrent_tasks", self.options.workers)
        ports.settings = settings
        blobs_root = getattr(ports.blobs, "root", None)
        if blobs_root is None:
            raise ServoError("the local control plane needs the embedded file blobs")
        # Outputs and logs are written without fsync: like the state store's WAL commits
        # (synchronous=NORMAL) they survive a crash of any process, not a power cut.
        self.pool = WorkerPool(
            size=self.options.workers,
            blobs_root=Path(blobs_root),
            cache_dir=self.home / "code",
            handler=self._report,
            fsync=False,
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self._listeners: list[Callable[[], None]] = []
        self.compaction: Any = None
        if self.options.background_compaction:
            # Imported here: pyarrow and DuckDB cost a third of a second to import.
            from servo.projections.compaction import BackgroundCompaction

            self.compaction = BackgroundCompaction(ports)
        self.queue.subscribe(TOPIC_DISPATCH, self._on_dispatch)
        self.queue.subscribe(TOPIC_RETRY, self._on_retry)
        self.queue.subscribe(TOPIC_FINALIZE, self._on_finalize)
        self.queue.subscribe(TOPIC_EXECUTE, self._on_execute)

    # Handlers -------------------------------------------------------------------------------
    def _on_dispatch(self, payload: Doc) -> None:
        attributes = {"servo.run_id": payload.get("run_id"), "servo.pool": payload.get("pool")}
        with tracing.span("servo.dispatch", payload.get("trace"), attributes):
            if payload.get("run_id"):
                dispatch_run(self.ports, str(payload["run_id"]))
            else:
                dispatch_waiting(self.ports, payload.get("pool"))

    def _on_retry(self, payload: Doc) -> None:
        with tracing.span("servo.retry", payload.get("trace"), {"servo.run_id": payload["run_id"]}):
            retry_due(
                self.ports,
                str(payload["run_id"]),
                str(payload["task_id"]),
                int(payload["attempt"]),
            )

    def _on_finalize(self, payload: Doc) -> None:
        with tracing.span(
            "servo.finalize", payload.get("trace"), {"servo.run_id": payload["run_id"]}
        ):
            finished = finalize_run(self.ports, str(payload["run_id"]))
        if finished:
            self._notify()

    def _on_execute(self, payload: Doc) -> None:
        envelope = TaskEnvelope.model_validate(payload)
        # The attempt's span covers it from leaving the queue to its completed report.
        attempt_span = tracing.start_span(
            "servo.worker",
            envelope.trace,
            {
                "servo.run_id": envelope.run_id,
                "servo.task_id": envelope.task_id,
                "servo.attempt": envelope.attempt,
                "servo.asset": envelope.asset,
                "servo.partition": envelope.partition,
            },
        )
        if attempt_span is not None:
            key = (envelope.run_id, envelope.task_id, envelope.attempt)
            self._attempt_spans[key] = attempt_span
        self.pool.submit(envelope)

    def _report(self, kind: str, envelope: TaskEnvelope, outcome: Outcome | None) -> Answer:
        report = Report(
            kind=kind,  # type: ignore[arg-type]
            run_id=envelope.run_id,
            task_id=envelope.task_id,
            attempt=envelope.attempt,
            token=envelope.token,
            outcome=outcome,
        )
        key = (envelope.run_id, envelope.task_id, envelope.attempt)
        attempt_span = self._attempt_spans.get(key)
        if kind == "heartbeat" or not tracing.enabled():
            answer = self._deliver_report(report)
        else:
            parent = tracing.carrier_of(attempt_span) or envelope.trace
            with tracing.span(f"servo.callback.{kind}", parent, {"servo.run_id": report.run_id}):
                answer = self._deliver_report(report)
        if kind == "completed":
            if attempt_span is not None:
                self._attempt_spans.pop(key, None)
                attempt_span.end()
            self._notify()
        return answer

    def _deliver_report(self, report: Report) -> Answer:
        """``handle_report``, retried on failure as the HTTP channel retries its calls.

        Reports are idempotent, and losing a ``started`` or ``completed`` report costs the
        attempt (a retry, or the task when none is left), so a failed call — a transient store
        error, or a failure after the commit — is repeated. A heartbeat is not: the next one
        comes soon. A report the callback rejects as invalid is never repeated.
        """
        tries = 1 if report.kind == "heartbeat" else REPORT_TRIES
        for attempt in range(1, tries + 1):
            try:
                return handle_report(self.ports, report)
            except InvalidRequest:
                raise
            except Exception:
                if attempt == tries:
                    raise
                log.warning(
                    "delivering the %s report of %s/%s attempt %d failed; retrying",
                    report.kind,
                    report.run_id,
                    report.task_id,
                    report.attempt,
                    exc_info=True,
                )
                time.sleep(min(2.0, 0.05 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    # Lifecycle ------------------------------------------------------------------------------
    def start(self) -> LocalControlPlane:
        from servo.control.deploy import current_code_version

        current = current_code_version(self.ports)
        if current is not None:
            self.pool.warm(current)
        self.queue.start(workers=2)
        self._housekeeper = threading.Thread(
            target=self._housekeeping, name="servo-housekeeping", daemon=True
        )
        self._housekeeper.start()
        if self.compaction is not None:
            self.compaction.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.queue.stop(timeout=5)
        if self._housekeeper is not None:
            self._housekeeper.join(timeout=10)
        if self.compaction is not None:
            self.compaction.stop()
        self.pool.close(timeout=5)
        try:
            drain_outbox(self.ports)
        except Exception:  # pragma: no cover - best effort at shutdown
            log.exception("draining the outbox at shutdown failed")

    def __enter__(self) -> LocalControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _notify(self) -> None:
        self._wake.set()
        for fn in list(self._listeners):
            fn()

    def housekeeping_once(self) -> None:
        """Sweep, drain the outbox, and stop worker processes running attempts that are over."""
        sweep(self.ports)
        self._reap()
        drain_outbox(self.ports)

    def _housekeeping(self) -> None:
        while not self._stop.is_set():
            try:
                self.housekeeping_once()
            except Exception:
                log.exception("housekeeping failed; retrying")
            self._stop.wait(self.options.housekeeping_interval_s)

    def _reap(self) -> None:
        running = self.pool.running()
        if not running:
            return
        ids = [task_doc_id(r, t) for r, t, _ in running]
        docs = self.ports.state.transact(lambda txn: txn.get_many(TASKS, ids))
        for run_id, task_id, attempt in running:
            doc = docs.get(task_doc_id(run_id, task_id))
            if doc is None:
                continue
            current = int(doc.get("attempt", 0)) == attempt and doc["state"] in (
                "DISPATCHED",
                "RUNNING",
            )
            if not current:
                log.info("stopping stale attempt %s of %s/%s", attempt, run_id, task_id)
                self.pool.cancel_attempt(run_id, task_id, attempt)

    # Waiting --------------------------------------------------------------------------------
    def wait_for_run(
        self,
        run_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Doc, list[Doc]], None] | None = None,
        poll_s: float = 0.05,
    ) -> Doc:
        """Block until the run is terminal; returns the run document."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.ports.state.get(RUNS, run_id)
            if run is None:
                raise ServoError(f"run {run_id} does not exist")
            if on_progress is not None:
                on_progress(run, [])
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} did not finish within {timeout} s")
            self._wake.wait(poll_s)
            self._wake.clear()


def run_tasks(ports: Ports, run_id: str) -> list[Doc]:
    """The run's task documents in plan order."""
    from servo.ports import Where

    rows = ports.state.query(TASKS, [Where("run_id", "==", run_id)], order_by="index")
    return [d for _, d in rows]


def summarize(ports: Ports, run_id: str) -> dict[str, Any]:
    """The run as the CLI's and API's JSON contract describes it."""
    run = ports.state.get(RUNS, run_id)
    if run is None:
        raise ServoError(f"run {run_id} does not exist")
    tasks = run_tasks(ports, run_id)
    return {
        "run_id": run["run_id"],
        "state": run["state"],
        "run_key": run.get("run_key"),
        "fingerprint": run["fingerprint"],
        "code_version": run["code_version"],
        "selection": run.get("selection"),
        "partitions": run.get("partitions"),
        "trigger": run.get("trigger"),
        "actor": run.get("actor"),
        "tags": run.get("tags") or {},
        "parent_run_id": run.get("parent_run_id"),
        "created_ms": run.get("created_ms"),
        "started_ms": run.get("started_ms"),
        "ended_ms": run.get("ended_ms"),
        "reason": run.get("reason"),
        "tasks": [
            {
                "task_id": t["task_id"],
                "asset": t["asset"],
                "partition": t.get("partition_user"),
                "state": t["state"],
                "attempts": int(t.get("attempt", 0)),
                "error": (t.get("error") or {}).get("message") if t.get("error") else None,
                "reason": t.get("reason"),
                "started_ms": t.get("started_ms"),
                "ended_ms": t.get("ended_ms"),
                "duration_ms": t.get("duration_ms"),
            }
            for t in tasks
        ],
    }
