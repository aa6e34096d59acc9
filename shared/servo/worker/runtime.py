"""Executing one attempt of one task: run the user's asset function and report what happened.

:func:`execute` is the whole life of an attempt inside a worker:

1. report ``started``; a stale attempt (not accepted, or told to cancel) stops here;
2. watch the attempt from a background supervisor thread: heartbeats every
   ``heartbeat_interval_ms`` (each also publishes the partial log), cancellation when an
   answer says so, and the ``timeout_ms`` deadline;
3. load the inputs, call the function, stage the output, run the checks, with stdout, stderr
   and ``context.log`` captured into the attempt's log;
4. stop the supervisor, write the log to Blobs, report ``completed`` with the outcome.

Timeouts and cancellation interrupt the thread running the attempt with an exception derived
from ``KeyboardInterrupt`` (so ``except Exception`` in user code does not swallow it). On the
main thread this is a real ``SIGINT`` sent with ``pthread_kill`` rather than
``_thread.interrupt_main()``: the latter only sets a flag, which a main thread blocked in
``time.sleep``, a socket read or a subprocess wait would not see until the call returns,
whereas a delivered signal interrupts the blocking call. Servo's handler tells its own signal
apart from a real Ctrl-C and passes the latter to the handler that was installed before.
Code that catches ``KeyboardInterrupt`` and carries on cannot be stopped this way; the pool
kills such a worker when the attempt is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import math
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from types import FrameType, TracebackType
from typing import Any

from servo.core.keys import AssetKey, PartitionKey
from servo.ports import Blobs
from servo.sdk.assets import AssetsDefinition
from servo.sdk.checks import AssetCheckDefinition, CheckResult, Severity
from servo.sdk.context import AssetExecutionContext
from servo.sdk.definitions import Definitions
from servo.worker.capture import OutputCapture
from servo.worker.envelope import (
    Answer,
    CheckOutcome,
    CheckRef,
    ControlChannel,
    InputRead,
    InputRef,
    Outcome,
    OutputRef,
    TaskEnvelope,
    TaskError,
)
from servo.worker.io import IOManager, PickleIOManager, SerializationError

DefinitionsSource = Definitions | Callable[[], Definitions]
"""The project's definitions, or a function loading them (called after ``started``)."""

_MIN_HEARTBEAT_S = 0.01


class Failure(Exception):
    """Raise from an asset to fail it with a clear message.

    Not retried by default (``retryable=False``): use it for problems a retry cannot fix,
    such as bad input data. Any other exception is treated as possibly transient and retried
    according to the asset's retry policy.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class _Interrupted(KeyboardInterrupt):
    """Stops the thread running an attempt (timeout or cancellation)."""


class _InfrastructureError(Exception):
    """Servo could not prepare or store the attempt (code, blobs); worth retrying."""

    def __init__(
        self, message: str, *, retryable: bool = True, traceback: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.traceback = traceback


class _UserError(Exception):
    """The user's code or data is at fault; carries the TaskError to report."""

    def __init__(self, error: TaskError) -> None:
        super().__init__(error.message)
        self.error = error


# ---------------------------------------------------------------------------------------------
# Interrupting the thread that runs an attempt


class _SigintRouter:
    """The process's SIGINT handler while Servo runs attempts on the main thread.

    It stays installed once installed: a signal sent just before an attempt ended may be
    handled only after the attempt, and restoring the old handler (possibly ``SIG_DFL``,
    which terminates the process) would let that late signal through.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()  # the handler runs on the main thread, maybe inside arm()
        self.pending = 0
        self.target: _Interrupter | None = None
        self.previous: Any = signal.SIG_DFL

    def install(self) -> None:
        current = signal.getsignal(signal.SIGINT)
        if current != self.handle:
            self.previous = current
            signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        with self.lock:
            ours = self.pending > 0
            if ours:
                self.pending -= 1
            target = self.target
            if ours and target is not None and target.reason is not None and not target.raised:
                target.raised = True
                raise _Interrupted(target.reason)
        if ours:
            return  # our signal, arriving after its attempt ended
        previous = self.previous
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


_ROUTER = _SigintRouter()


class _Interrupter:
    """Raises :class:`_Interrupted` once in the thread that created it, when fired."""

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.on_main = threading.current_thread() is threading.main_thread()
        self.reason: str | None = None
        self.raised = False
        self._armed = False

    def arm(self) -> None:
        if self.on_main:
            _ROUTER.install()
        with _ROUTER.lock:
            self._armed = True
            if self.on_main:
                _ROUTER.target = self

    def fire(self, reason: str) -> None:
        """Interrupt the attempt's thread (first reason wins; no effect once disarmed)."""
        with _ROUTER.lock:
            if not self._armed or self.reason is not None:
                return
            self.reason = reason
            if self.on_main:
                _ROUTER.pending += 1
                signal.pthread_kill(self.thread_id, signal.SIGINT)
            else:
                self.raised = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread_id), ctypes.py_object(_Interrupted)
                )

    def disarm(self) -> None:
        """Stop any later interrupt (call on the attempt's thread)."""
        with _ROUTER.lock:
            self._armed = False
            if self.on_main:
                if _ROUTER.target is self:
                    _ROUTER.target = None
            elif self.reason is not None:
                # Clear an asynchronous exception that has not been raised yet.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)


# ---------------------------------------------------------------------------------------------
# The supervisor: one long-lived thread per process that heartbeats and enforces deadlines


@dataclass(eq=False)
class _Watch:
    envelope: TaskEnvelope
    channel: ControlChannel
    interrupter: _Interrupter
    flush_log: Callable[[], None]
    interval: float
    next_beat: float
    deadline: float | None


class _Supervisor:
    """Sends heartbeats and enforces timeouts for the attempts running in this process.

    A single daemon thread serves every attempt, so running a task starts no thread. While
    it waits for a heartbeat's answer it enforces no deadline; with one attempt per worker
    process that only delays a timeout by the time the control plane takes to answer.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: list[_Watch] = []
        self._beating: _Watch | None = None
        self._thread: threading.Thread | None = None

    def watch(self, watch: _Watch) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="servo-attempt-supervisor", daemon=True
                )
                self._thread.start()
            self._watches.append(watch)
            self._cond.notify_all()

    def unwatch(self, watch: _Watch) -> None:
        """Stop watching; returns once no heartbeat for ``watch`` is in flight."""
        with self._cond:
            if watch in self._watches:
                self._watches.remove(watch)
            # No wake-up for the supervisor: at worst it wakes at the removed watch's due time
            # and finds nothing to do, which is cheaper than a thread switch after every task.
            while self._beating is watch:
                self._cond.wait()

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._watches:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                due = min(self._watches, key=_due_time)
                at = _due_time(due)
                if at > now:
                    self._cond.wait(at - now)
                    continue
                if due.deadline is not None and due.deadline <= now:
                    due.deadline = None
                    due.interrupter.fire("timeout")
                    continue
                due.next_beat = now + due.interval
                self._beating = due
                self._cond.release()
                try:
                    _beat(due)
                finally:
                    self._cond.acquire()
                    self._beating = None
                    self._cond.notify_all()


def _due_time(watch: _Watch) -> float:
    if watch.deadline is None:
        return watch.next_beat
    return min(watch.next_beat, watch.deadline)


def _beat(watch: _Watch) -> None:
    with contextlib.suppress(Exception):
        watch.flush_log()
    try:
        answer = watch.channel.heartbeat(watch.envelope)
    except Exception:
        # The control plane is unreachable this time; the next heartbeat tries again, and the
        # control plane's own heartbeat timeout covers a worker that stays cut off.
        return
    if answer.cancel or not answer.accepted:
        watch.interrupter.fire("cancelled")


_SUPERVISOR = _Supervisor()


# ---------------------------------------------------------------------------------------------
# Pieces shared with servo.testing


def jsonable(value: Any) -> Any:
    """``value`` as JSON-compatible data (unknown objects become their ``str``)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _user_traceback(exc: BaseException) -> str:
    """The traceback without the frames of this module (they only show Servo calling in)."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def call_asset(
    asset_def: AssetsDefinition, context: AssetExecutionContext, inputs: Mapping[str, Any]
) -> Any:
    """Call the asset's function with its context and input values; await a coroutine."""
    kwargs: dict[str, Any] = dict(inputs)
    if asset_def.context_param is not None:
        kwargs[asset_def.context_param] = context
    result = asset_def.fn(**kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    if inspect.isgenerator(result):
        raise Failure(
            f"asset `{asset_def.key_text}` yields values; an asset function returns its value "
            "(use `return`, not `yield`)"
        )
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run_check(
    check: AssetCheckDefinition | None,
    ref: CheckRef,
    context: AssetExecutionContext,
    value: Any,
) -> CheckOutcome:
    """Run one check of ``value``; an exception or a bad return value is a failed check."""
    if check is None:
        return CheckOutcome(
            name=ref.name,
            passed=False,
            blocking=ref.blocking,
            description=f"check `{ref.name}` is not defined in this code version",
        )
    kwargs: dict[str, Any] = {}
    if check.context_param is not None:
        kwargs[check.context_param] = context
    if check.value_param is not None:
        kwargs[check.value_param] = value
    try:
        result = check.fn(**kwargs)
    except (Exception, SystemExit) as exc:
        context.log.error("check %s raised %s", ref.name, _describe(exc))
        return CheckOutcome(
            name=ref.name,
            passed=False,
            blocking=ref.blocking,
            description=check.description,
            metadata={"error": _describe(exc), "traceback": _user_traceback(exc)},
        )
    if isinstance(result, CheckResult):
        return CheckOutcome(
            name=ref.name,
            passed=bool(result.passed),
            severity="WARN" if result.severity == Severity.WARN else "ERROR",
            blocking=ref.blocking,
            description=result.description or check.description,
            metadata=jsonable(dict(result.metadata)),
        )
    if isinstance(result, bool):
        return CheckOutcome(
            name=ref.name, passed=result, blocking=ref.blocking, description=check.description
        )
    return CheckOutcome(
        name=ref.name,
        passed=False,
        blocking=ref.blocking,
        description=check.description,
        metadata={
            "error": f"check `{ref.name}` returned {type(result).__name__}; return a "
            "CheckResult(passed=...) or a bool"
        },
    )


def blocking_failure(checks: list[CheckOutcome]) -> TaskError | None:
    """The error for the first failed blocking check of severity ERROR, if any."""
    for c in checks:
        if c.blocking and not c.passed and c.severity == "ERROR":
            detail = f": {c.description}" if c.description else ""
            return TaskError(
                kind="check_failed",
                message=f"blocking check `{c.name}` failed{detail}",
                retryable=False,
            )
    return None


def user_error(exc: Exception) -> TaskError:
    """Classify an exception raised by user code."""
    if isinstance(exc, Failure):
        return TaskError(
            kind="user_code",
            message=exc.message,
            retryable=exc.retryable,
            traceback=_user_traceback(exc),
        )
    return TaskError(
        kind="user_code", message=_describe(exc), retryable=True, traceback=_user_traceback(exc)
    )


# ---------------------------------------------------------------------------------------------
# The attempt


@dataclass
class _Result:
    error: TaskError | None = None
    output: OutputRef | None = None
    checks: list[CheckOutcome] = field(default_factory=list)


class _Attempt:
    def __init__(
        self,
        envelope: TaskEnvelope,
        blobs: Blobs,
        defs_source: DefinitionsSource,
        io: IOManager | None,
        capture: OutputCapture,
    ) -> None:
        self.envelope = envelope
        self.blobs = blobs
        self.defs_source = defs_source
        self.io = io
        self.capture = capture
        self.defs: Definitions | None = None

    def run(self) -> _Result:
        try:
            return self._run()
        except _InfrastructureError as exc:
            return _Result(
                TaskError(
                    kind="infrastructure",
                    message=exc.message,
                    retryable=exc.retryable,
                    traceback=exc.traceback,
                )
            )
        except _UserError as exc:
            return _Result(exc.error)
        except Exception as exc:
            # A malformed envelope or a fault in Servo itself: report it rather than vanish.
            return _Result(
                TaskError(
                    kind="infrastructure",
                    message=f"running task {self.envelope.task_id} failed inside Servo: "
                    f"{_describe(exc)}",
                    retryable=True,
                    traceback="".join(traceback.format_exception(exc)),
                )
            )

    def _run(self) -> _Result:
        env = self.envelope
        defs = self._definitions()
        try:
            asset_def = defs.get_asset(env.asset)
        except KeyError:
            raise _InfrastructureError(
                f"asset `{env.asset}` is not defined in code version {env.code_version}; the "
                "task was planned against different code (redeploy, then run it again)",
                retryable=False,
            ) from None
        inputs = self._load_inputs(asset_def)
        context = self._context(defs)
        try:
            value = call_asset(asset_def, context, inputs)
        except Exception as exc:
            return _Result(user_error(exc))
        except SystemExit as exc:
            return _Result(
                TaskError(
                    kind="user_code",
                    message=f"asset `{env.asset}` called sys.exit({exc.code!r}); raise an "
                    "exception (servo.Failure for a permanent problem) to fail an asset",
                    retryable=False,
                    traceback=_user_traceback(exc),
                )
            )
        output = self._stage(asset_def, value, context)
        check_defs = {c.name: c for c in defs.checks_of(env.asset)}
        checks = [run_check(check_defs.get(ref.name), ref, context, value) for ref in env.checks]
        return _Result(blocking_failure(checks), output, checks)

    def _definitions(self) -> Definitions:
        if isinstance(self.defs_source, Definitions):
            self.defs = self.defs_source
            return self.defs
        try:
            self.defs = self.defs_source()
        except Exception as exc:
            raise _InfrastructureError(
                f"loading code version {self.envelope.code_version} failed: {_describe(exc)}",
                traceback=_user_traceback(exc),
            ) from exc
        return self.defs

    def _io_for(self, asset_text: str) -> IOManager:
        if self.io is not None:
            return self.io
        name: str | None = None
        if self.defs is not None:
            with contextlib.suppress(KeyError):
                name = self.defs.get_asset(asset_text).io_manager
        if name is None:
            return PickleIOManager(self.blobs)
        resources = self.defs.resources if self.defs is not None else {}
        manager = resources.get(name)
        if manager is None or not isinstance(manager, IOManager):
            raise _UserError(
                TaskError(
                    kind="user_code",
                    message=f"asset `{asset_text}` uses io_manager {name!r}, but "
                    f"Definitions.resources[{name!r}] is "
                    + ("missing" if manager is None else f"a {type(manager).__name__}")
                    + "; set it to an object with load(path) and stage(path, value) methods",
                    retryable=False,
                )
            )
        return manager

    def _load_inputs(self, asset_def: AssetsDefinition) -> dict[str, Any]:
        env = self.envelope
        by_name = {ref.input_name: ref for ref in env.inputs if ref.input_name is not None}
        values: dict[str, Any] = {}
        for spec in asset_def.inputs:
            ref = by_name.get(spec.param)
            if ref is None:
                raise _InfrastructureError(
                    f"the task of asset `{env.asset}` has no input `{spec.param}` (code version "
                    f"{env.code_version}); it was planned against different code",
                    retryable=False,
                )
            values[spec.param] = self._load_input(ref)
        return values

    def _load_input(self, ref: InputRef) -> Any:
        env = self.envelope
        if len(ref.partitions) != len(ref.paths):
            raise _InfrastructureError(
                f"input `{ref.input_name}` of task {env.task_id} lists {len(ref.partitions)} "
                f"partitions but {len(ref.paths)} paths",
                retryable=False,
            )
        manager = self._io_for(ref.asset)
        loaded: dict[str, Any] = {}
        for partition, path in zip(ref.partitions, ref.paths, strict=True):
            label = PartitionKey.parse_canonical(partition).user_string() if partition else ""
            if path is None:
                where = f" partition `{label}`" if partition else ""
                raise _UserError(
                    TaskError(
                        kind="user_code",
                        message=f"input `{ref.input_name}` of asset `{env.asset}` reads "
                        f"`{ref.asset}`{where}, which has never been materialized; "
                        f"materialize `{ref.asset}`{where} first (or include it in the run)",
                        retryable=False,
                    )
                )
            try:
                loaded[label] = manager.load(path)
            except Exception as exc:
                raise _InfrastructureError(
                    f"loading input `{ref.input_name}` (`{ref.asset}`"
                    + (f" partition `{label}`" if partition else "")
                    + f") from {path} failed: {_describe(exc)}"
                ) from exc
        if ref.as_mapping is False and len(ref.partitions) != 1:
            raise _InfrastructureError(
                f"input `{ref.input_name}` of task {env.task_id} must read exactly one "
                f"partition of `{ref.asset}` but lists {len(ref.partitions)}",
                retryable=False,
            )
        if ref.as_mapping is not True and len(ref.partitions) == 1:
            return next(iter(loaded.values()))
        return loaded

    def _context(self, defs: Definitions) -> AssetExecutionContext:
        env = self.envelope
        try:
            window = None
            if env.partition_window is not None:
                start, end = env.partition_window
                window = (datetime.fromisoformat(start), datetime.fromisoformat(end))
            return AssetExecutionContext(
                asset_key=AssetKey.parse(env.asset),
                partition=PartitionKey.parse_canonical(env.partition) if env.partition else None,
                run_id=env.run_id,
                attempt=env.attempt,
                resources=defs.resources,
                log=self.capture.logger(env.asset),
                partition_window=window,
                run_tags=dict(env.run_tags),
            )
        except Exception as exc:
            raise _InfrastructureError(
                f"the envelope of task {env.task_id} is malformed: {_describe(exc)}",
                retryable=False,
            ) from exc

    def _stage(
        self, asset_def: AssetsDefinition, value: Any, context: AssetExecutionContext
    ) -> OutputRef:
        env = self.envelope
        manager = self._io_for(env.asset)
        try:
            ref = manager.stage(env.output_path, value)
        except SerializationError as exc:
            raise _UserError(
                TaskError(
                    kind="user_code",
                    message=f"asset `{asset_def.key_text}`: {exc}",
                    retryable=False,
                )
            ) from exc
        except Exception as exc:
            raise _InfrastructureError(
                f"staging the output of `{env.asset}` at {env.output_path} failed: {_describe(exc)}"
            ) from exc
        if context.output_metadata:
            ref = ref.model_copy(
                update={"metadata": {**ref.metadata, **jsonable(context.output_metadata)}}
            )
        return ref


def _interrupted_error(reason: str, envelope: TaskEnvelope, exc: BaseException | None) -> TaskError:
    where = _user_traceback(exc) if exc is not None else None
    if reason == "timeout":
        return TaskError(
            kind="timeout",
            message=f"asset `{envelope.asset}` ran longer than its timeout of "
            f"{envelope.timeout_ms} ms and was stopped",
            retryable=False,
            traceback=where,
        )
    return TaskError(
        kind="cancelled",
        message=f"attempt {envelope.attempt} of `{envelope.asset}` was cancelled",
        retryable=False,
        traceback=where,
    )


def _stale(answer: Answer, envelope: TaskEnvelope) -> Outcome:
    why = answer.reason or ("cancel requested" if answer.cancel else "not accepted")
    return Outcome(
        status="cancelled",
        error=TaskError(
            kind="cancelled",
            message=f"attempt {envelope.attempt} of task {envelope.task_id} was not started: {why}",
            retryable=False,
        ),
    )


def execute(
    envelope: TaskEnvelope,
    channel: ControlChannel,
    blobs: Blobs,
    defs: DefinitionsSource,
    *,
    io: IOManager | None = None,
) -> Outcome:
    """Run one attempt of one task and report it; returns the outcome it reported.

    ``defs`` may be a function that loads the definitions: it is called after ``started`` so
    that a failure to load the code is reported as an ``infrastructure`` error. ``io``
    replaces every IO manager (inputs and output) when given. Exceptions from the channel
    itself propagate; interruptions of the attempt never do.
    """
    answer = channel.started(envelope)
    if not answer.accepted or answer.cancel:
        return _stale(answer, envelope)
    began = time.monotonic()
    capture = OutputCapture()
    try:
        outcome = _execute_started(
            envelope,
            channel=channel,
            blobs=blobs,
            defs=defs,
            io=io,
            capture=capture,
            began=began,
        )
        try:
            data = capture.read_bytes()
            # An attempt that printed nothing leaves no log object: one write saved per task.
            # (Logs only grow, so an attempt whose partial log was flushed has data here.)
            if data:
                blobs.put(envelope.log_path, data)
        except Exception as exc:
            # The outcome matters more than the log: report it even if the log is lost.
            with contextlib.suppress(Exception):
                sys.stderr.write(f"servo: writing the log to {envelope.log_path} failed: {exc}\n")
    finally:
        capture.close()
    channel.completed(envelope, outcome)
    return outcome


def _execute_started(
    envelope: TaskEnvelope,
    *,
    channel: ControlChannel,
    blobs: Blobs,
    defs: DefinitionsSource,
    io: IOManager | None,
    capture: OutputCapture,
    began: float,
) -> Outcome:
    interrupter = _Interrupter()
    last_flushed = [-1]

    def flush_log() -> None:
        size = capture.size()
        if size != last_flushed[0]:
            blobs.put(envelope.log_path, capture.read_bytes())
            last_flushed[0] = size

    now = time.monotonic()
    interval = max(envelope.heartbeat_interval_ms / 1000, _MIN_HEARTBEAT_S)
    deadline = (
        began + envelope.timeout_ms / 1000
        if envelope.timeout_ms is not None and envelope.timeout_ms > 0
        else None
    )
    watch = _Watch(envelope, channel, interrupter, flush_log, interval, now + interval, deadline)
    attempt = _Attempt(envelope, blobs, defs, io, capture)
    result: _Result | None = None
    stopped_at: BaseException | None = None
    capture.start()
    try:
        try:
            try:
                interrupter.arm()
                _SUPERVISOR.watch(watch)
                result = attempt.run()
            finally:
                interrupter.disarm()
        except _Interrupted as exc:
            interrupter.disarm()
            stopped_at = exc
    finally:
        interrupter.disarm()
        _SUPERVISOR.unwatch(watch)
        capture.stop()
    reason = interrupter.reason
    if reason is not None and (result is None or interrupter.raised):
        error = _interrupted_error(reason, envelope, stopped_at)
        _note_error(capture, error)
        return Outcome(
            status="cancelled" if reason == "cancelled" else "failed",
            error=error,
            output=result.output if result is not None else None,
            checks=result.checks if result is not None else [],
            duration_ms=_elapsed_ms(began),
        )
    assert result is not None
    if result.error is not None:
        _note_error(capture, result.error)
    return Outcome(
        status="failed" if result.error is not None else "succeeded",
        error=result.error,
        output=result.output,
        checks=result.checks,
        duration_ms=_elapsed_ms(began),
        inputs=_inputs_read(envelope),
    )


def _inputs_read(envelope: TaskEnvelope) -> list[InputRead]:
    """The committed upstream outputs the attempt was given (its lineage)."""
    return [
        InputRead(asset=ref.asset, partition=partition, output_path=path)
        for ref in envelope.inputs
        for partition, path in zip(ref.partitions, ref.paths, strict=False)
        if path is not None
    ]


def _note_error(capture: OutputCapture, error: TaskError) -> None:
    text = f"[servo] attempt failed ({error.kind}): {error.message}"
    if error.traceback:
        text += "\n" + error.traceback
    capture.note(text)


def _elapsed_ms(began: float) -> int:
    return max(0, round((time.monotonic() - began) * 1000))
