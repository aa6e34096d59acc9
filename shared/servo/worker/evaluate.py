"""Evaluating schedule and sensor functions in the worker runtime, never in the control plane.

The control plane sends an :class:`EvaluationRequest` (which function of which code version,
with what cursor, tick time or events) and gets back an :class:`EvaluationResult`: the run
requests or skip reason per item, the new cursor, or the error and its traceback. Both are
plain JSON, so the same request can travel over a pipe to a local process (here) or over
HTTPS to a worker service on Google Cloud.

:func:`evaluate` is the worker side: it calls the user's function and turns whatever it returns
into requests, catching every exception. :class:`EvaluatorPool` is the embedded backend's
transport: a few warm processes (``spawn``), each loading deployed code with
:class:`~servo.worker.code.CodeCache` and evaluating one request at a time; a request that runs
longer than its timeout kills its process.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import inspect
import logging
import multiprocessing
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from servo.sdk.definitions import Definitions
from servo.sdk.evaluation_context import (
    PubSubMessage,
    PubSubSensorContext,
    RunStatusChange,
    RunStatusSensorContext,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
)
from servo.sdk.schedules import RunRequest, SkipReason, as_requests

logger = logging.getLogger("servo.worker.evaluate")

EvaluationKind = Literal["schedule", "sensor", "run_status", "gcs", "pubsub"]
DEFAULT_TIMEOUT_S = 60.0


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class EvaluationRequest(_Model):
    """What to evaluate: the function of schedule or sensor ``name`` in ``code_version``.

    ``items`` are the events of an event-driven evaluation (one run status change, one GCS
    object, one Pub/Sub message each); the function is called once per item.
    """

    kind: EvaluationKind
    code_version: str
    name: str
    cursor: str | None = None
    scheduled_time: str | None = None  # ISO-8601 with offset (schedules)
    timezone: str = "UTC"
    partition_key: str | None = None  # the default partition (schedules)
    evaluation_time: str | None = None  # ISO-8601
    items: list[dict[str, Any]] = Field(default_factory=list)


class RequestedRun(_Model):
    """One ``RunRequest`` as JSON."""

    run_key: str | None = None
    partition_key: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    selection: str | None = None


class ItemOutcome(_Model):
    """What the function decided for one call: runs, a skip reason, or an error."""

    requests: list[RequestedRun] = Field(default_factory=list)
    skip_reason: str | None = None
    error: str | None = None
    traceback: str | None = None


class EvaluationResult(_Model):
    """The outcome of one evaluation. ``error`` is set when nothing could be evaluated (the
    code did not load, the function is not defined); otherwise there is one outcome per call."""

    outcomes: list[ItemOutcome] = Field(default_factory=list)
    cursor: str | None = None
    cursor_updated: bool = False
    error: str | None = None
    traceback: str | None = None
    duration_ms: int = 0

    @classmethod
    def failure(cls, message: str, tb: str | None = None) -> EvaluationResult:
        return cls(error=message, traceback=tb)


class Evaluator(Protocol):
    """Evaluates requests in the worker runtime (a local process, a worker service)."""

    def evaluate(
        self, request: EvaluationRequest, *, timeout_s: float | None = None
    ) -> EvaluationResult: ...


# ---------------------------------------------------------------------------------------------
# The worker side


class _NotDefined(Exception):
    pass


def _user_traceback(exc: BaseException) -> str:
    """The traceback without this module's frames (they only show Servo calling in)."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _takes_argument(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )


def _call(fn: Callable[..., Any], argument: Any) -> Any:
    result = fn(argument) if _takes_argument(fn) else fn()
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _requested(owner: str, request: RunRequest) -> RequestedRun:
    for label in ("run_key", "partition_key", "selection"):
        value = getattr(request, label)
        if value is not None and (not isinstance(value, str) or not value):
            raise TypeError(
                f"{owner} returned a RunRequest whose {label} is {value!r}; use a non-empty string"
            )
    tags = dict(request.tags or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise TypeError(f"{owner} returned a RunRequest whose tags do not map str to str")
    return RequestedRun(
        run_key=request.run_key,
        partition_key=request.partition_key,
        tags=tags,
        selection=request.selection,
    )


def _outcome(owner: str, value: Any, *, keys_allowed: bool) -> ItemOutcome:
    """Normalise a function's return value (``keys_allowed``: a str is a partition key)."""
    if keys_allowed and isinstance(value, str):
        return ItemOutcome(requests=[RequestedRun(partition_key=value)])
    items = as_requests(value)
    skips = [i.message or "skipped" for i in items if isinstance(i, SkipReason)]
    runs = [_requested(owner, i) for i in items if isinstance(i, RunRequest)]
    if skips and runs:
        raise TypeError(
            f"{owner} returned both RunRequests and a SkipReason; return one or the other"
        )
    return ItemOutcome(requests=runs, skip_reason="; ".join(skips) if skips else None)


def _guarded(owner: str, call: Callable[[], Any], *, keys_allowed: bool = False) -> ItemOutcome:
    try:
        return _outcome(owner, call(), keys_allowed=keys_allowed)
    except (Exception, SystemExit) as exc:
        return ItemOutcome(error=f"{owner} raised {_describe(exc)}", traceback=_user_traceback(exc))


def _function(defs: Definitions, request: EvaluationRequest) -> Callable[..., Any]:
    try:
        definition: Any = (
            defs.get_schedule(request.name)
            if request.kind == "schedule"
            else defs.get_sensor(request.name)
        )
    except KeyError:
        what = "schedule" if request.kind == "schedule" else "sensor"
        raise _NotDefined(
            f"{what} `{request.name}` is not defined in code version {request.code_version}; "
            "deploy the code that defines it"
        ) from None
    if definition.fn is None:
        raise _NotDefined(
            f"`{request.name}` in code version {request.code_version} has no function to evaluate"
        )
    fn: Callable[..., Any] = definition.fn
    return fn


def evaluate(defs: Definitions, request: EvaluationRequest) -> EvaluationResult:
    """Evaluate ``request`` against loaded definitions (in the worker process)."""
    began = time.monotonic()
    try:
        fn = _function(defs, request)
    except _NotDefined as exc:
        return EvaluationResult.failure(str(exc))
    log = logging.getLogger(f"servo.{request.kind}.{request.name}")
    cursor: str | None = request.cursor
    cursor_updated = False
    outcomes: list[ItemOutcome] = []
    if request.kind == "schedule":
        when = datetime.fromisoformat(request.scheduled_time or "1970-01-01T00:00:00+00:00")
        schedule_ctx = ScheduleEvaluationContext(
            schedule_name=request.name,
            scheduled_execution_time=when.astimezone(ZoneInfo(request.timezone)),
            partition_key=request.partition_key,
            log=log,
        )
        outcomes.append(_guarded(f"schedule `{request.name}`", lambda: _call(fn, schedule_ctx)))
    elif request.kind == "sensor":
        sensor_ctx = SensorEvaluationContext(
            sensor_name=request.name,
            cursor=request.cursor,
            evaluation_time=datetime.fromisoformat(request.evaluation_time)
            if request.evaluation_time
            else None,
            log=log,
        )
        outcome = _guarded(f"sensor `{request.name}`", lambda: _call(fn, sensor_ctx))
        outcomes.append(outcome)
        if outcome.error is None and sensor_ctx.cursor_updated:
            cursor, cursor_updated = sensor_ctx.cursor, True
    else:
        for item in request.items:
            outcomes.append(_evaluate_item(request, fn, item, log))
    return EvaluationResult(
        outcomes=outcomes,
        cursor=cursor,
        cursor_updated=cursor_updated,
        duration_ms=round((time.monotonic() - began) * 1000),
    )


def _evaluate_item(
    request: EvaluationRequest, fn: Callable[..., Any], item: dict[str, Any], log: logging.Logger
) -> ItemOutcome:
    owner = f"sensor `{request.name}`"
    if request.kind == "gcs":
        name = str(item.get("name", ""))
        return _guarded(owner, lambda: fn(name), keys_allowed=True)
    if request.kind == "pubsub":
        message = PubSubMessage(
            id=str(item.get("id", "")),
            data=item.get("data"),
            attributes=dict(item.get("attributes") or {}),
            publish_time=item.get("publish_time"),
        )
        pubsub_ctx = PubSubSensorContext(sensor_name=request.name, message=message, log=log)
        return _guarded(owner, lambda: _call(fn, pubsub_ctx), keys_allowed=True)
    change = RunStatusChange(
        run_id=str(item["run_id"]),
        status=str(item["status"]),
        previous_status=item.get("previous_status"),
        selection=item.get("selection"),
        assets=tuple(item.get("assets") or ()),
        partitions=dict(item.get("partitions") or {}),
        tags=dict(item.get("tags") or {}),
        trigger=dict(item.get("trigger") or {}),
        reason=item.get("reason"),
        time=str(item.get("time", "")),
    )
    run_ctx = RunStatusSensorContext(sensor_name=request.name, change=change, log=log)
    return _guarded(owner, lambda: _call(fn, run_ctx))


# ---------------------------------------------------------------------------------------------
# The embedded transport: a pool of warm evaluation processes


@dataclass(eq=False)
class _Process:
    process: BaseProcess
    conn: Connection
    code_version: str | None = None
    busy: bool = False


class EvaluatorPool:
    """Up to ``size`` warm processes evaluating requests one at a time each (thread-safe).

    Processes start on first use and keep the last code version they loaded, so a sensor
    evaluated every few seconds pays for importing the project once. A request that takes
    longer than ``timeout_s`` kills its process (the result is an error naming the timeout).
    """

    def __init__(
        self,
        blobs_root: Path,
        cache_dir: Path,
        *,
        size: int = 2,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        fsync: bool = False,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"EvaluatorPool size must be a positive integer, got {size!r}")
        self._blobs_root = Path(blobs_root)
        self._cache_dir = Path(cache_dir)
        self._size = size
        self._timeout_s = timeout_s
        self._fsync = fsync
        self._context = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._procs: list[_Process] = []
        self._closed = False
        atexit.register(self.close)

    def __enter__(self) -> EvaluatorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def processes(self) -> int:
        """How many evaluation processes are alive."""
        with self._cond:
            return len(self._procs)

    def evaluate(
        self, request: EvaluationRequest, *, timeout_s: float | None = None
    ) -> EvaluationResult:
        """Evaluate ``request`` in one of the pool's processes (blocks until it is done)."""
        limit = self._timeout_s if timeout_s is None else timeout_s
        try:
            proc = self._acquire(request.code_version)
        except Exception as exc:
            return EvaluationResult.failure(f"cannot start an evaluation process: {exc}")
        keep = False
        try:
            try:
                proc.conn.send(("eval", request.model_dump(mode="json")))
                if not proc.conn.poll(limit):
                    return EvaluationResult.failure(
                        f"evaluating `{request.name}` took longer than {limit:g} s; it was "
                        "stopped (make the function faster, or raise "
                        "sensor_evaluation_timeout_s)"
                    )
                reply = proc.conn.recv()
            except (EOFError, OSError) as exc:
                proc.process.join(1)
                return EvaluationResult.failure(
                    f"the process evaluating `{request.name}` exited (exit code "
                    f"{proc.process.exitcode}, {type(exc).__name__}); did the function call "
                    "os._exit or crash the interpreter?"
                )
            keep = True
            proc.code_version = request.code_version
            return EvaluationResult.model_validate(reply[1])
        finally:
            self._release(proc, keep)

    def close(self) -> None:
        """Stop every process."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            procs, self._procs = self._procs, []
            self._cond.notify_all()
        atexit.unregister(self.close)
        for p in procs:
            with contextlib.suppress(OSError, ValueError):
                p.conn.send(("stop",))
        for p in procs:
            p.process.join(2)
            if p.process.exitcode is None:
                p.process.kill()
                p.process.join(2)
            with contextlib.suppress(OSError):
                p.conn.close()

    def _acquire(self, code_version: str) -> _Process:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the evaluator pool is closed")
                idle = [p for p in self._procs if not p.busy]
                chosen = next((p for p in idle if p.code_version == code_version), None)
                if chosen is None and len(self._procs) < self._size:
                    chosen = self._spawn()
                if chosen is None and idle:
                    chosen = idle[0]
                if chosen is not None:
                    chosen.busy = True
                    return chosen
                self._cond.wait()

    def _release(self, proc: _Process, keep: bool) -> None:
        if not keep:
            with contextlib.suppress(OSError):
                proc.process.kill()
            proc.process.join(2)
            with contextlib.suppress(OSError):
                proc.conn.close()
        with self._cond:
            proc.busy = False
            if not keep and proc in self._procs:
                self._procs.remove(proc)
            self._cond.notify_all()

    def _spawn(self) -> _Process:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_evaluator_main,
            args=(child_end, str(self._blobs_root), str(self._cache_dir), self._fsync),
            name="servo-evaluator",
            daemon=True,
        )
        try:
            process.start()
        finally:
            child_end.close()
        proc = _Process(process=process, conn=parent_end)
        self._procs.append(proc)
        return proc


def _evaluator_main(conn: Connection, blobs_root: str, cache_dir: str, fsync: bool) -> None:
    """Entry point of an evaluation process: load code versions, evaluate requests."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process stops

    from servo.adapters.embedded.blobs import FileBlobs
    from servo.worker.code import CodeCache

    cache = CodeCache(FileBlobs(Path(blobs_root), fsync=fsync), Path(cache_dir))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] != "eval":
            break
        request = EvaluationRequest.model_validate(message[1])
        try:
            defs = cache.definitions(request.code_version)
        except Exception as exc:
            result = EvaluationResult.failure(
                f"loading code version {request.code_version} failed: {_describe(exc)}",
                _user_traceback(exc),
            )
        else:
            result = evaluate(defs, request)
        try:
            conn.send(("result", result.model_dump(mode="json")))
        except (OSError, ValueError):
            break
    with contextlib.suppress(OSError):
        conn.close()


_SHARED: dict[str, EvaluatorPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_evaluator(blobs_root: Path, cache_dir: Path | None = None) -> EvaluatorPool:
    """A process-wide pool for the embedded blobs at ``blobs_root`` (created on first use)."""
    key = str(Path(blobs_root).resolve())
    with _SHARED_LOCK:
        pool = _SHARED.get(key)
        if pool is None or pool._closed:
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            cache = cache_dir or Path(tempfile.gettempdir()) / f"servo-evaluate-{digest}"
            pool = _SHARED[key] = EvaluatorPool(Path(blobs_root), cache)
        return pool
