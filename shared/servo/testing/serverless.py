"""The serverless control plane on one machine, as real processes.

:class:`ServerlessStack` starts (or reuses) the emulators, creates the bucket and the two Cloud
Tasks queues (control messages, and ``execute`` messages throttled to the worker capacity),
then starts every Cloud Function of ``functions/`` as its own functions-framework process and
the worker service of ``worker_image/`` as another, all wired to each other by URL exactly as
on Google Cloud. A thread stands in for Cloud Scheduler: it POSTs to ``sweep`` every
``sweep_interval_s``, to ``tick`` at the start of every minute and, if asked, to
``compaction``.

``servo dev --backend emulators``, the end-to-end tests and ``bench/serverless.py`` use it::

    with ServerlessStack(tmp_dir) as stack:
        stack.deploy(project_root)
        status, run = stack.trigger({"selection": "*"})
        stack.wait_for_run(run["run_id"])

After a deploy, :meth:`ServerlessStack.wire_event_sensors` plumbs the GCS and Pub/Sub sensors
as on Google Cloud: their topics on the Pub/Sub emulator, a push subscription on each to
``sensor_evaluate?topic=<topic>``, and, for every bucket a GCS sensor watches, a fake-gcs-server
of its own that publishes the bucket's object notifications to the sensor's topic (the
bucket's notification config). Objects written there (:meth:`ServerlessStack.upload`) and
messages published (:meth:`ServerlessStack.publish`) reach the sensors through the emulators
only.

Processes run in their own process groups and are stopped by pid (SIGTERM, then SIGKILL);
their output goes to ``<state_dir>/logs/<name>.log``. When the four emulator variables are
already set (a pytest fixture, ``eval "$(emulators/servo-emulators start)"``), those emulators
are used; otherwise the stack starts its own and stops them at the end, and exports their
variables in this process meanwhile (so that :meth:`ports` reaches them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from servo.core.errors import ServoError
from servo.ports import Doc, Ports
from servo.testing.emulators import (
    COMMON_ENV,
    DEFAULT_PROJECT,
    ENV_VARIABLES,
    GCS_EVENT_FLAGS,
    HOST,
    SERVICES,
    Emulators,
    StorageNotifications,
    free_port,
)

log = logging.getLogger("servo.testing.serverless")

FUNCTIONS: tuple[str, ...] = (
    "trigger",
    "api",
    "dispatch",
    "callback",
    "sweep",
    "tick",
    "sensor_evaluate",
    "compaction",
)
"""Every entry point of ``functions/``."""

WORKER = "worker"
_HANDLED = re.compile(r"notification (\S+) handled: ")
TERMINAL_RUN_STATES = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
_STOP_GRACE_S = 5.0


class StackError(ServoError):
    """A process of the stack could not be started."""


def checkout_root() -> Path:
    """The Servo checkout that holds ``functions/`` and ``worker_image/``."""
    explicit = os.environ.get("SERVO_CHECKOUT")
    if explicit:
        return Path(explicit)
    import servo

    root = Path(servo.__file__).resolve().parents[2]
    if not (root / "functions").is_dir():
        raise StackError(
            f"{root} has no functions/ folder (servo is not installed from a checkout); set "
            "SERVO_CHECKOUT to the checkout's path"
        )
    return root


@dataclass
class StackOptions:
    """How the stack is set up. Names default to fresh ones so that stacks sharing the
    emulators never see each other's documents, objects or tasks."""

    project: str = DEFAULT_PROJECT
    location: str = "local"
    tenant: str = "default"
    workspace: str = field(default_factory=lambda: f"w{secrets.token_hex(4)}")
    bucket: str = "servo-local"
    storage_prefix: str = ""
    functions: tuple[str, ...] = FUNCTIONS
    worker_processes: int = 2
    settings: Mapping[str, int] = field(default_factory=dict)
    """Control-plane settings, exported as ``SERVO_<NAME>`` (e.g. heartbeat_interval_ms)."""
    callback_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    sweep_interval_s: float | None = 2.0
    tick_every_minute: bool = True
    compaction_interval_s: float | None = None
    queue_max_backoff_s: float = 2.0
    function_threads: int = 8
    extra_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EventSensorPlumbing:
    """What :meth:`ServerlessStack.wire_event_sensors` set up."""

    wiring: Any
    """The :class:`~servo.adapters.gcp.provision.EventSensorWiring` it created."""
    storage: Mapping[str, str]
    """Bucket -> URL of the fake-gcs-server publishing that bucket's notifications."""


@dataclass
class _Process:
    name: str
    port: int
    command: list[str]
    popen: subprocess.Popen[bytes] | None = None


class ServerlessStack:
    """See the module docstring."""

    def __init__(
        self, state_dir: Path, options: StackOptions | None = None, *, quiet: bool = True
    ) -> None:
        self.state_dir = Path(state_dir)
        self.options = options or StackOptions()
        self.quiet = quiet
        self.env: dict[str, str] = {}
        self.urls: dict[str, str] = {}
        self._processes: dict[str, _Process] = {}
        self._emulators: Emulators | None = None
        self._exported: dict[str, str | None] = {}
        self._ports: Ports | None = None
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._http = httpx.Client(timeout=60.0)
        self._event_storage: dict[str, Emulators] = {}
        self._event_storage_urls: dict[str, str] = {}
        self._subscriptions: set[str] = set()
        self._publisher: Any = None
        suffix = secrets.token_hex(3)
        prefix = f"projects/{self.options.project}/locations/{self.options.location}/queues"
        self.control_queue = f"{prefix}/servo-control-{suffix}"
        self.execute_queue = f"{prefix}/servo-execute-{suffix}"

    # -- lifecycle

    def __enter__(self) -> ServerlessStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ServerlessStack:
        """Start everything and wait until every process answers."""
        try:
            self._start_emulators()
            self._plan_processes()
            self._provision()
            self.start_processes()
            if self.options.sweep_interval_s or self.options.tick_every_minute:
                self._stop.clear()
                self._scheduler = threading.Thread(
                    target=self._schedule, name="servo-scheduler", daemon=True
                )
                self._scheduler.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the scheduler, the processes and the emulators this stack started."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=30)
            self._scheduler = None
        self.stop_processes()
        self._unwire_event_sensors()
        if self._emulators is not None:
            self._emulators.stop()
            self._emulators = None
        for name, value in self._exported.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._exported.clear()
        self._http.close()

    def _start_emulators(self) -> None:
        hosts = {s: os.environ.get(v) for s, v in ENV_VARIABLES.items()}
        if all(hosts.values()):
            return
        self._emulators = Emulators(self.state_dir / "emulators", project=self.options.project)
        running = self._emulators.start(SERVICES)
        exported = dict(COMMON_ENV)
        for record in running.values():
            exported.update(record.env)
        for name, value in exported.items():
            self._exported.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _url(self, name: str) -> str:
        return f"http://{HOST}:{self._processes[name].port}"

    def _plan_processes(self) -> None:
        root = checkout_root()
        for name in self.options.functions:
            source = root / "functions" / name / "main.py"
            if not source.is_file():
                raise StackError(f"the function {name!r} has no {source}")
            port = free_port()
            command = [
                sys.executable,
                "-m",
                "functions_framework",
                "--target",
                name,
                "--source",
                str(source),
                "--host",
                HOST,
                "--port",
                str(port),
            ]
            self._processes[name] = _Process(name, port, command)
        entrypoint = root / "worker_image" / "entrypoint.py"
        self._processes[WORKER] = _Process(WORKER, free_port(), [sys.executable, str(entrypoint)])
        self.urls = {name: self._url(name) for name in self._processes}
        opts = self.options
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERVO_")}
        for variable in (*ENV_VARIABLES.values(), "SERVO_CHECKOUT"):
            if os.environ.get(variable):
                env[variable] = os.environ[variable]
        env.update(COMMON_ENV)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "THREADS": str(opts.function_threads),
                "SERVO_GCP_PROJECT": opts.project,
                "GOOGLE_CLOUD_PROJECT": opts.project,
                "SERVO_BUCKET": opts.bucket,
                "SERVO_STORAGE_PREFIX": opts.storage_prefix,
                "SERVO_TENANT": opts.tenant,
                "SERVO_WORKSPACE": opts.workspace,
                "SERVO_TASKS_QUEUE": self.control_queue,
                "SERVO_EXECUTE_QUEUE": self.execute_queue,
                "SERVO_CALLBACK_SECRET": opts.callback_secret,
                "SERVO_WORKER_PROCESSES": str(opts.worker_processes),
                "SERVO_CODE_CACHE": str(self.state_dir / "code"),
                "SERVO_DISPATCH_DEADLINE_S": "60",
            }
        )
        if "dispatch" in self._processes:
            env["SERVO_TARGET_DISPATCH"] = self.urls["dispatch"]
        if "callback" in self._processes:
            env["SERVO_CALLBACK_URL"] = self.urls["callback"]
        env["SERVO_TARGET_EXECUTE"] = self.urls[WORKER] + "/execute"
        env["SERVO_EVALUATOR_URL"] = self.urls[WORKER] + "/evaluate"
        for key, value in opts.settings.items():
            env[f"SERVO_{key.upper()}"] = str(int(value))
        env.update(opts.extra_env)
        self.env = env

    def _provision(self) -> None:
        from servo.adapters.gcp.provision import ensure_bucket, ensure_queue

        opts = self.options
        ensure_bucket(opts.project, opts.bucket)
        ensure_queue(self.control_queue, max_backoff_s=opts.queue_max_backoff_s)
        ensure_queue(
            self.execute_queue,
            max_concurrent_dispatches=opts.worker_processes,
            max_backoff_s=opts.queue_max_backoff_s,
        )

    # -- processes

    def start_processes(self, names: Iterable[str] | None = None) -> None:
        """Start the named processes (default: all that are not running); wait until ready."""
        wanted = list(names) if names is not None else list(self._processes)
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        started = []
        for name in wanted:
            proc = self._processes[name]
            if proc.popen is not None and proc.popen.poll() is None:
                continue
            env = dict(self.env)
            env["PORT"] = str(proc.port)
            env["HOST"] = HOST
            with open(logs / f"{name}.log", "ab") as output:
                proc.popen = subprocess.Popen(
                    proc.command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=self.state_dir,
                    env=env,
                    start_new_session=True,
                )
            started.append(proc)
        self._wait_ready(started)

    def _wait_ready(self, procs: Sequence[_Process], timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(procs)
        while pending:
            for proc in list(pending):
                assert proc.popen is not None
                if proc.popen.poll() is not None:
                    raise StackError(
                        f"{proc.name} exited with status {proc.popen.returncode} while "
                        f"starting:\n{self.log_tail(proc.name)}"
                    )
                try:
                    response = self._http.get(f"{self._url(proc.name)}/healthz", timeout=2.0)
                    if response.status_code == 200:
                        pending.remove(proc)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                raise StackError(f"{names} did not answer within {timeout_s:g} s")
            if pending:
                time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines a process wrote."""
        try:
            text = (self.state_dir / "logs" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def kill_processes(self, names: Iterable[str] | None = None) -> None:
        """SIGKILL the named processes (default: every function, not the worker), as a
        crash would."""
        wanted = list(names) if names is not None else list(self.options.functions)
        for name in wanted:
            self._signal(self._processes[name], signal.SIGKILL)

    def stop_processes(self, names: Iterable[str] | None = None) -> None:
        """Stop the named processes (default: all): SIGTERM, then SIGKILL after a grace."""
        wanted = list(names) if names is not None else list(self._processes)
        for name in wanted:
            proc = self._processes.get(name)
            if proc is not None:
                self._signal(proc, signal.SIGTERM)
        for name in wanted:
            proc = self._processes.get(name)
            if proc is None or proc.popen is None:
                continue
            try:
                proc.popen.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=_STOP_GRACE_S)
            # The group may hold children (gunicorn's worker, the worker's processes).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)

    def _signal(self, proc: _Process, sig: signal.Signals) -> None:
        if proc.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=_STOP_GRACE_S)

    # -- the stand-in for Cloud Scheduler

    def _schedule(self) -> None:
        opts = self.options
        next_sweep = time.monotonic() + (opts.sweep_interval_s or 0)
        next_compaction = time.monotonic() + (opts.compaction_interval_s or 0)
        last_minute = int(time.time() // 60)
        while not self._stop.wait(0.2):
            now = time.monotonic()
            if opts.sweep_interval_s and now >= next_sweep and "sweep" in self.urls:
                self._fire("sweep")
                next_sweep = time.monotonic() + opts.sweep_interval_s
            minute = int(time.time() // 60)
            if opts.tick_every_minute and minute != last_minute and "tick" in self.urls:
                last_minute = minute
                self._fire("tick")
            if opts.compaction_interval_s and now >= next_compaction and "compaction" in self.urls:
                self._fire("compaction")
                next_compaction = time.monotonic() + opts.compaction_interval_s

    def _fire(self, name: str) -> None:
        try:
            response = self._http.post(self.urls[name], content=b"", timeout=120.0)
            if response.status_code >= 300:
                log.warning("scheduled %s answered %s", name, response.status_code)
        except httpx.HTTPError as exc:
            log.debug("scheduled %s failed: %s", name, exc)

    # -- using the stack

    def config(self) -> Any:
        """The :class:`~servo.cloud.CloudConfig` every function runs with."""
        from servo.cloud import CloudConfig

        return CloudConfig.from_env(self.env)

    def ports(self) -> Ports:
        """Ports on the same workspace, in this process (to deploy, or to read state)."""
        if self._ports is None:
            from servo.cloud import open_cloud

            self._ports = open_cloud(self.config())
        return self._ports

    def deploy(self, project_root: Path, actor: str = "user:stack") -> str:
        """Validate, bundle and deploy the project at ``project_root``; its code version.

        The project is imported in this process, as ``servo deploy`` does."""
        from servo.cli.workspace import project_record
        from servo.control.deploy import deploy
        from servo.project import build_bundle, find_project, load_and_build

        ref = find_project(Path(project_root))
        _, manifest = load_and_build(ref)
        result = deploy(
            self.ports(), manifest, build_bundle(ref.root), project_record(ref), actor=actor
        )
        return result.code_version

    def post(self, name: str, body: Any = None, path: str = "") -> tuple[int, Any]:
        """POST JSON ``body`` to function ``name``; the status and the decoded answer."""
        response = self._http.post(self.urls[name] + path, json=body if body is not None else {})
        try:
            data = response.json()
        except ValueError:
            data = response.text
        return response.status_code, data

    def get(self, name: str, path: str = "") -> tuple[int, Any]:
        """GET ``path`` of function ``name``; the status and the decoded answer."""
        response = self._http.get(self.urls[name] + path)
        try:
            data = response.json()
        except ValueError:
            data = response.text
        return response.status_code, data

    # -- event sensors

    def wire_event_sensors(self) -> EventSensorPlumbing:
        """Plumb the deployed GCS and Pub/Sub sensors (see the module docstring); call it
        after :meth:`deploy`, and again after a deploy that adds a topic or a bucket.

        The subscriptions are named after this stack's workspace, so stacks sharing the
        emulators do not take each other's messages; they are deleted by :meth:`stop`. A
        bucket wired before keeps its fake-gcs-server and that server's notification flags.
        """
        from servo.adapters.gcp.provision import (
            ensure_event_sensor_wiring,
            event_sensor_wiring,
        )
        from servo.control.automation_common import current_manifest

        if "sensor_evaluate" not in self.urls:
            raise StackError("event sensors need the sensor_evaluate function in the stack")
        manifest = current_manifest(self.ports())
        if manifest is None:
            raise StackError("deploy a project before wiring its event sensors")
        opts = self.options
        wiring = event_sensor_wiring(
            manifest,
            self.urls["sensor_evaluate"],
            subscription_prefix=f"servo-{opts.workspace}-sensor-",
        )
        # The topics first: fake-gcs-server drops an event whose topic does not exist.
        ensure_event_sensor_wiring(opts.project, wiring)
        self._subscriptions.update(sub.subscription for sub in wiring.subscriptions)
        for note in wiring.notifications:
            if note.bucket not in self._event_storage_urls:
                self._event_storage_urls[note.bucket] = self._start_event_storage(note)
        return EventSensorPlumbing(wiring, dict(self._event_storage_urls))

    def _start_event_storage(self, note: Any) -> str:
        events = tuple(e for e in note.event_types if e in GCS_EVENT_FLAGS)
        if not events:
            raise StackError(
                f"fake-gcs-server cannot publish {', '.join(note.event_types)} events of bucket "
                f"{note.bucket}"
            )
        pubsub = os.environ.get(ENV_VARIABLES["pubsub"])
        if not pubsub:
            raise StackError("the Pub/Sub emulator is not running")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in note.bucket)
        emulators = Emulators(
            self.state_dir / "gcs-events" / safe,
            project=self.options.project,
            storage_notifications=StorageNotifications(
                topic=note.topic,
                project=self.options.project,
                events=events,
                bucket=note.bucket,
                object_prefix=note.object_prefix,
                pubsub_host=pubsub,
            ),
        )
        self._event_storage[note.bucket] = emulators
        record = emulators.start(["storage"])["storage"]
        url = f"http://{record.host}"
        self._event_storage_urls[note.bucket] = url
        client = self._storage_client(url)
        if client.lookup_bucket(note.bucket) is None:
            client.create_bucket(note.bucket)
        return url

    def _storage_client(self, url: str) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.options.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": url},
        )

    def event_storage_client(self, bucket: str) -> Any:
        """A Cloud Storage client of the fake-gcs-server that notifies about ``bucket``."""
        url = self._event_storage_urls.get(bucket)
        if url is None:
            raise StackError(
                f"no GCS sensor watches bucket {bucket!r} (or wire_event_sensors was not called)"
            )
        return self._storage_client(url)

    def upload(self, bucket: str, name: str, data: bytes | str = b"") -> int:
        """Write object ``name`` of ``bucket`` (a watched bucket); its generation."""
        blob = self.event_storage_client(bucket).bucket(bucket).blob(name)
        blob.upload_from_string(data)
        return int(blob.generation)

    def publish(
        self, topic: str, data: bytes | str = b"", attributes: Mapping[str, str] | None = None
    ) -> str:
        """Publish a message to ``topic`` on the Pub/Sub emulator; its message id."""
        from servo.adapters.gcp.config import publisher_client

        if self._publisher is None:
            self._publisher = publisher_client()
        payload = data.encode() if isinstance(data, str) else data
        path = f"projects/{self.options.project}/topics/{topic}"
        future = self._publisher.publish(path, payload, **dict(attributes or {}))
        return str(future.result(timeout=60))

    def notifications_handled(self) -> Counter[str]:
        """How many deliveries of each message id ``sensor_evaluate`` has answered, from its
        log (one line per delivery, written once its effect is committed): the only trace
        of a notification that started nothing."""
        seen: Counter[str] = Counter()
        try:
            text = (self.state_dir / "logs" / "sensor_evaluate.log").read_text(errors="replace")
        except OSError:
            return seen
        for line in text.splitlines():
            if "handled: " not in line:
                continue
            try:
                message = str(json.loads(line).get("message", ""))
            except ValueError:
                continue
            found = _HANDLED.match(message)
            if found:
                seen[found.group(1)] += 1
        return seen

    def _unwire_event_sensors(self) -> None:
        if self._subscriptions:
            from servo.adapters.gcp.provision import delete_subscriptions

            try:
                delete_subscriptions(self.options.project, sorted(self._subscriptions))
            except ServoError as exc:
                log.warning("could not delete the sensor subscriptions: %s", exc)
            self._subscriptions.clear()
        for emulators in self._event_storage.values():
            emulators.stop()
        self._event_storage.clear()
        self._event_storage_urls.clear()
        if self._publisher is not None:
            self._publisher.stop()
            self._publisher = None

    def trigger(self, request: Doc) -> tuple[int, Any]:
        """POST a TriggerRequest to the trigger function."""
        return self.post("trigger", request)

    def wait_for_run(self, run_id: str, timeout_s: float = 120.0, poll_s: float = 0.1) -> Doc:
        """Poll the run until it is terminal; returns its document."""
        from servo.control.common import RUNS

        deadline = time.monotonic() + timeout_s
        while True:
            run = self.ports().state.get(RUNS, run_id)
            if run is not None and run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                state = run["state"] if run else "missing"
                raise TimeoutError(f"run {run_id} is still {state} after {timeout_s:g} s")
            time.sleep(poll_s)


__all__ = [
    "FUNCTIONS",
    "WORKER",
    "EventSensorPlumbing",
    "ServerlessStack",
    "StackError",
    "StackOptions",
    "checkout_root",
]
