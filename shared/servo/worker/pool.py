"""A pool of warm worker processes for the embedded backend.

Each worker is a process started once (``multiprocessing`` "spawn" context, so it is safe to
start from a process with threads) that imports one code version and then runs attempts of it
one after another, so the interpreter and the user's modules load once per process rather than
once per task. The parent talks to each worker over a duplex pipe (see
:mod:`servo.worker.channel`) and runs one thread per worker that reads its reports, passes them
to ``handler`` and sends the answers back.

Each worker runs in its own process group, so cancelling an attempt (``SIGKILL`` to the group)
also stops the subprocesses the asset started, and a Ctrl-C in the terminal reaches only the
parent, which then closes the pool.

A worker that dies (killed, crashed) is dropped and replaced when there is work for it. Nothing
is reported for the attempt it was running: the control plane's heartbeat timeout notices the
silent attempt and retries it.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import functools
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from servo.core.errors import ServoError
from servo.worker.envelope import Answer, Outcome, TaskEnvelope

logger = logging.getLogger("servo.worker.pool")

SWITCH_AFTER_S = 1.0
"""How long the oldest envelope of a code version without workers may wait before an idle
worker of another (still busy) version is replaced for it."""

PoolHandler = Callable[[str, TaskEnvelope, Outcome | None], Answer]


@dataclass(eq=False)
class _Worker:
    number: int
    code_version: str
    process: BaseProcess
    conn: Connection
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    current: TaskEnvelope | None = None
    gone: bool = False  # retired, killed or dead: its reports are no longer passed on
    reader: threading.Thread | None = None


@dataclass(frozen=True, eq=False)
class _Queued:
    seq: int
    since: float  # time.monotonic() at submission
    envelope: TaskEnvelope


def _matches(envelope: TaskEnvelope, run_id: str, task_id: str, attempt: int) -> bool:
    return envelope.run_id == run_id and envelope.task_id == task_id and envelope.attempt == attempt


class WorkerPool:
    """Up to ``size`` warm worker processes, each serving one code version.

    ``handler(kind, envelope, outcome)`` is called in this process for every report a worker
    makes (``"started"``, ``"heartbeat"``, ``"completed"``) and its :class:`Answer` is sent
    back to the worker. It is called from the pool's reader threads (one per worker, so reports
    of different workers arrive concurrently) and may call :meth:`submit` and
    :meth:`cancel_attempt`.

    Workers start lazily. An envelope goes to an idle worker of its code version; failing that
    a new worker is started while there are fewer than ``size``; failing that an idle worker
    of another code version is replaced; otherwise the envelope waits in the backlog.
    ``fsync`` is passed to the workers' :class:`~servo.adapters.embedded.blobs.FileBlobs`.
    """

    def __init__(
        self,
        size: int,
        blobs_root: Path,
        cache_dir: Path,
        handler: PoolHandler,
        *,
        fsync: bool = True,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"WorkerPool size must be a positive integer, got {size!r}")
        self._size = size
        self._blobs_root = Path(blobs_root)
        self._cache_dir = Path(cache_dir)
        self._handler = handler
        self._fsync = fsync
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when work ends or is dropped
        self._workers: list[_Worker] = []
        # Waiting envelopes by code version, each queue in submission order.
        self._queues: dict[str, deque[_Queued]] = {}
        self._queued = 0
        self._seq = itertools.count()
        self._numbers = itertools.count(1)
        self._closed = False
        atexit.register(self.close)

    # -- public API ------------------------------------------------------------------------

    def submit(self, envelope: TaskEnvelope) -> None:
        """Queue ``envelope`` for the next idle worker of its code version.

        Raises only when the pool is closed; a worker that cannot be started is logged and the
        envelope keeps waiting.
        """
        if not isinstance(envelope, TaskEnvelope):
            raise TypeError(
                f"WorkerPool.submit needs a TaskEnvelope, got {type(envelope).__name__}"
            )
        with self._lock:
            if self._closed:
                raise ServoError("the worker pool is closed; create a new WorkerPool")
            queue = self._queues.setdefault(envelope.code_version, deque())
            queue.append(_Queued(next(self._seq), time.monotonic(), envelope))
            self._queued += 1
            runs = self._dispatch_locked()
        self._send_runs(runs)

    def warm(self, code_version: str) -> None:
        """Start idle workers for ``code_version`` ahead of its first task (up to the pool size),
        so that the interpreter start and the code import overlap with planning."""
        with self._lock:
            if self._closed:
                return
            try:
                while len(self._workers) < self._size:
                    self._spawn_locked(code_version)
            except Exception:
                logger.exception("starting a worker process ahead of work failed")

    def cancel_attempt(self, run_id: str, task_id: str, attempt: int) -> bool:
        """Stop an attempt at once: drop it from the backlog, or kill the worker running it.

        The killed worker is replaced when there is work for it. Returns False when the pool
        neither holds nor runs that attempt.
        """
        with self._lock:
            for version, queue in self._queues.items():
                for queued in queue:
                    if _matches(queued.envelope, run_id, task_id, attempt):
                        queue.remove(queued)
                        if not queue:
                            del self._queues[version]
                        self._queued -= 1
                        self._changed.notify_all()
                        return True
            victim = next(
                (
                    w
                    for w in self._workers
                    if w.current is not None and _matches(w.current, run_id, task_id, attempt)
                ),
                None,
            )
            if victim is None:
                return False
            self._drop_locked(victim)
            _signal_group(victim, signal.SIGKILL)
            runs = self._dispatch_locked()
        self._send_runs(runs)
        return True

    def running(self) -> list[tuple[str, str, int]]:
        """``(run_id, task_id, attempt)`` of every attempt handed to a worker and not finished."""
        with self._lock:
            return [
                (w.current.run_id, w.current.task_id, w.current.attempt)
                for w in self._workers
                if w.current is not None
            ]

    def backlog(self) -> int:
        """How many envelopes wait for a worker."""
        with self._lock:
            return self._queued

    def idle(self) -> bool:
        """Whether nothing is queued or running."""
        with self._lock:
            return self._idle_locked()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (or the pool is closed); False if
        ``timeout`` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._closed or self._idle_locked(), timeout)

    def close(self, timeout: float = 5) -> None:
        """Stop every worker (running attempts are terminated) and wait for them to exit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
            self._queues.clear()
            self._queued = 0
            for w in workers:
                w.gone = True
            self._changed.notify_all()
        atexit.unregister(self.close)
        for w in workers:
            if w.current is None:
                with contextlib.suppress(OSError, ValueError), w.send_lock:
                    w.conn.send(("stop",))
            else:
                _signal_group(w, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in workers:
            if w.process.exitcode is None:
                _signal_group(w, signal.SIGKILL)
                w.process.join(timeout)
        me = threading.current_thread()
        for w in workers:
            if w.reader is not None and w.reader is not me:
                w.reader.join(max(0.0, deadline - time.monotonic()) + 1)
            with contextlib.suppress(OSError):
                w.conn.close()

    # -- scheduling (call with the lock held) -----------------------------------------------

    def _idle_locked(self) -> bool:
        return not self._queued and all(w.current is None for w in self._workers)

    def _dispatch_locked(self) -> list[tuple[_Worker, TaskEnvelope]]:
        """Assign waiting envelopes to workers; the caller sends them after unlocking.

        The oldest waiting envelope goes to an idle worker of its code version, or to a new
        worker while there are fewer than ``size``. When every slot is taken, an idle worker of
        another version keeps serving its own version while that has work (replacing workers
        back and forth would start a process per task when versions interleave), unless the
        oldest envelope's version has no worker at all and has waited ``SWITCH_AFTER_S``. An
        idle worker whose version has no work is replaced at once. When a worker cannot be
        started the envelope keeps waiting (the next submission or finished attempt tries
        again) and the error is logged.
        """
        runs: list[tuple[_Worker, TaskEnvelope]] = []
        self._changed.notify_all()  # whatever called this changed what runs or waits
        if self._closed:
            return runs
        try:
            while self._queued:
                version, oldest = self._oldest_locked()
                worker = next(
                    (w for w in self._workers if w.current is None and w.code_version == version),
                    None,
                )
                if worker is None and len(self._workers) < self._size:
                    worker = self._spawn_locked(version)
                if worker is not None:
                    runs.append(self._take_locked(worker, version))
                    continue
                spare = next((w for w in self._workers if w.current is None), None)
                if spare is None:
                    break  # every worker is busy
                starving = not any(w.code_version == version for w in self._workers) and (
                    time.monotonic() - oldest.since >= SWITCH_AFTER_S
                )
                if spare.code_version in self._queues and not starving:
                    runs.append(self._take_locked(spare, spare.code_version))
                    continue
                self._drop_locked(spare)
                _signal_group(spare, signal.SIGKILL)  # idle: nothing is lost
                runs.append(self._take_locked(self._spawn_locked(version), version))
        except Exception:
            logger.exception("starting a worker process failed; %d envelope(s) wait", self._queued)
        return runs

    def _oldest_locked(self) -> tuple[str, _Queued]:
        version = min(self._queues, key=lambda v: self._queues[v][0].seq)
        return version, self._queues[version][0]

    def _take_locked(self, worker: _Worker, version: str) -> tuple[_Worker, TaskEnvelope]:
        queue = self._queues[version]
        envelope = queue.popleft().envelope
        if not queue:
            del self._queues[version]
        self._queued -= 1
        worker.current = envelope
        return worker, envelope

    def _drop_locked(self, worker: _Worker) -> None:
        worker.gone = True
        if worker in self._workers:
            self._workers.remove(worker)

    def _spawn_locked(self, code_version: str) -> _Worker:
        number = next(self._numbers)
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(
                child_end,
                str(self._blobs_root),
                str(self._cache_dir),
                code_version,
                self._fsync,
            ),
            name=f"servo-worker-{number}",
            daemon=False,  # a daemonic process may not start processes, which assets may do
        )
        try:
            with _main_script_hidden():
                process.start()
        except BaseException:
            parent_end.close()
            child_end.close()
            raise
        # Without the parent's copy of the child's end, the worker's exit shows as EOF here.
        child_end.close()
        worker = _Worker(number, code_version, process, parent_end)
        worker.reader = threading.Thread(
            target=self._serve, args=(worker,), name=f"servo-worker-{number}-reader", daemon=True
        )
        self._workers.append(worker)
        worker.reader.start()
        return worker

    def _send_runs(self, runs: list[tuple[_Worker, TaskEnvelope]]) -> None:
        for worker, envelope in runs:
            try:
                with worker.send_lock:
                    worker.conn.send(("run", envelope))
            except (OSError, ValueError):
                pass  # the worker died; its reader thread drops it

    def _dispatch_after_change(self) -> None:
        with self._lock:
            runs = self._dispatch_locked()
        self._send_runs(runs)

    # -- one reader thread per worker -------------------------------------------------------

    def _serve(self, worker: _Worker) -> None:
        try:
            while True:
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    break
                if message[0] == "report":
                    self._on_report(worker, message)
                elif message[0] == "free":
                    self._on_free(worker)
        finally:
            self._on_exit(worker)

    def _on_report(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        _, kind, key, outcome = message
        envelope = worker.current
        if envelope is not None and envelope.idempotency_key == key and not worker.gone:
            answer = self._call_handler(kind, envelope, outcome)
        else:
            answer = Answer(
                accepted=False, cancel=True, reason="the attempt is no longer run by this pool"
            )
        try:
            with worker.send_lock:
                worker.conn.send(("answer", answer))
        except (OSError, ValueError):
            return
        if kind == "completed":
            self._on_free(worker)

    def _call_handler(self, kind: str, envelope: TaskEnvelope, outcome: Outcome | None) -> Answer:
        try:
            answer = self._handler(kind, envelope, outcome)
            if not isinstance(answer, Answer):
                raise TypeError(f"the pool handler returned {answer!r}, not an Answer")
            return answer
        except Exception as exc:
            logger.exception(
                "the pool handler failed on a %s report of %s", kind, envelope.idempotency_key
            )
            # Do not start an attempt the control plane may not have recorded; keep running
            # ones going (the control plane's heartbeat timeout covers lost reports).
            return Answer(accepted=kind != "started", reason=f"control plane error: {exc}")

    def _on_free(self, worker: _Worker) -> None:
        with self._lock:
            worker.current = None
        self._dispatch_after_change()

    def _on_exit(self, worker: _Worker) -> None:
        with self._lock:
            self._drop_locked(worker)
            worker.current = None  # a lost attempt is reported by nobody
        self._dispatch_after_change()
        worker.process.join(5)
        if worker.process.exitcode is None:
            _signal_group(worker, signal.SIGKILL)
            worker.process.join(5)
        with contextlib.suppress(OSError):
            worker.conn.close()


def _signal_group(worker: _Worker, signum: int) -> None:
    """Send ``signum`` to a worker and the processes it started (its process group)."""
    pid = worker.process.pid
    if pid is None or worker.process.exitcode is not None:
        return  # not started, or already reaped (its pid may belong to someone else now)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


# ---------------------------------------------------------------------------------------------
# The worker process


def _lost_pool() -> None:
    # The pool (our parent) is gone: nobody can receive this attempt's outcome.
    os._exit(70)


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_script_hidden() -> Iterator[None]:
    """Start a spawned worker without re-running the parent's main script.

    A spawned child imports the parent's ``__main__`` file (for the ``servo`` command, the
    whole CLI) so that objects defined there can be unpickled. Workers only receive Servo's
    own types, so the script is hidden while the child is created, saving its import time.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if main is None or path is None or spec is not None:
        yield
        return
    with _MAIN_LOCK:
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = path


def _worker_main(
    conn: Connection, blobs_root: str, cache_dir: str, code_version: str, fsync: bool
) -> None:
    """Entry point of a worker process: load the code version, then run envelopes."""
    with contextlib.suppress(OSError):
        os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # `kill -USR1 <worker>` dumps every thread's stack (into the running attempt's log).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Out of the terminal's foreground group, reading the terminal would stop the process.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)

    from servo.adapters.embedded.blobs import FileBlobs
    from servo.worker.channel import ChannelLost, PipeChannel
    from servo.worker.code import CodeCache
    from servo.worker.runtime import execute

    blobs = FileBlobs(Path(blobs_root), fsync=fsync)
    cache = CodeCache(blobs, Path(cache_dir))
    with contextlib.suppress(Exception):
        cache.definitions(code_version)  # warm up; a failure is reported by each attempt
    channel = PipeChannel(conn, on_lost=_lost_pool)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] != "run":
            break
        envelope: TaskEnvelope = message[1]
        channel.reset()
        try:
            execute(
                envelope,
                channel,
                blobs,
                functools.partial(cache.definitions, envelope.code_version),
            )
        except ChannelLost:
            break
        except BaseException:
            traceback.print_exc()
        if not channel.completed_sent:
            try:
                conn.send(("free",))
            except (OSError, ValueError):
                break
    with contextlib.suppress(OSError):
        conn.close()
