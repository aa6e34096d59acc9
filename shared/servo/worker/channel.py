"""Control channels a worker reports through: over a pipe to the pool, or a direct call.

The pipe protocol between a :class:`~servo.worker.pool.WorkerPool` and one of its worker
processes is a synchronous RPC on a duplex ``multiprocessing`` pipe. Messages are tuples:

parent to worker
    ``("run", envelope)`` (only while the worker is idle), ``("answer", answer)`` (the reply
    to a report), ``("stop",)``.
worker to parent
    ``("report", kind, idempotency_key, outcome_or_None)`` answered by exactly one
    ``("answer", answer)``; ``("free",)`` when an attempt ended without a ``completed``
    report (a stale start), so the parent knows the worker is idle again.

The parent already knows which envelope a worker is running, so reports carry only its
idempotency key: one small message each way per report.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Literal

from servo.core.errors import ServoError
from servo.worker.envelope import Answer, Outcome, TaskEnvelope

ReportKind = Literal["started", "heartbeat", "completed"]
Handler = Callable[[str, TaskEnvelope, Outcome | None], Answer]
"""Receives every report: ``handler(kind, envelope, outcome)`` returns the control plane's answer."""


class ChannelLost(ServoError):
    """The other end of a worker's channel is gone (the pool process exited)."""


class PipeChannel:
    """The worker side of the pool's pipe RPC.

    A lock serialises the calls, so the main thread's ``started``/``completed`` and the
    supervisor thread's heartbeats never interleave on the pipe. ``on_lost`` runs when the
    pipe breaks (a worker whose pool is gone has no one to report to and should exit).
    """

    def __init__(self, conn: Connection, *, on_lost: Callable[[], None] | None = None) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._on_lost = on_lost
        self.completed_sent = False

    def reset(self) -> None:
        """Prepare for the next attempt."""
        self.completed_sent = False

    def _call(self, kind: ReportKind, envelope: TaskEnvelope, outcome: Outcome | None) -> Answer:
        with self._lock:
            try:
                self._conn.send(("report", kind, envelope.idempotency_key, outcome))
                reply = self._conn.recv()
            except (EOFError, OSError) as exc:
                if self._on_lost is not None:
                    self._on_lost()
                raise ChannelLost(f"the worker pool is gone ({type(exc).__name__})") from exc
        if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "answer"):
            raise ChannelLost(f"unexpected reply from the worker pool: {reply!r}")
        answer = reply[1]
        if not isinstance(answer, Answer):
            raise ChannelLost(f"unexpected answer from the worker pool: {answer!r}")
        return answer

    def started(self, envelope: TaskEnvelope) -> Answer:
        return self._call("started", envelope, None)

    def heartbeat(self, envelope: TaskEnvelope) -> Answer:
        return self._call("heartbeat", envelope, None)

    def completed(self, envelope: TaskEnvelope, outcome: Outcome) -> Answer:
        answer = self._call("completed", envelope, outcome)
        self.completed_sent = True
        return answer


class DirectChannel:
    """Reports by calling ``handler(kind, envelope, outcome)`` in the same process."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    def started(self, envelope: TaskEnvelope) -> Answer:
        return self._handler("started", envelope, None)

    def heartbeat(self, envelope: TaskEnvelope) -> Answer:
        return self._handler("heartbeat", envelope, None)

    def completed(self, envelope: TaskEnvelope, outcome: Outcome) -> Answer:
        return self._handler("completed", envelope, outcome)
