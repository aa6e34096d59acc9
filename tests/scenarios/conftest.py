"""Scenarios of the embedded control plane: a real project on disk, deployed and run by a
``LocalControlPlane`` with real worker processes.

The ``scenario`` fixture is a factory: ``scenario(DEFS)`` writes a project whose
``defs.py`` is ``DEFS_HEADER`` followed by ``DEFS`` (the test's assets), deploys it into a
``SERVO_HOME`` under ``tmp_path`` and starts a control plane with short heartbeats. Assets
record what they do with ``record(context, ...)`` into JSON-lines files under ``effects/``
(outside the project, so they do not change its code version), which the test reads from
outside the worker processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servo.cli.workspace import Workspace, deploy_project, open_workspace
from servo.control.common import ASSET_PARTITIONS, RUNS, asset_partition_id
from servo.control.drain import read_events
from servo.control.trigger import TriggerRequest, TriggerResult, trigger
from servo.core import events as ev
from servo.core.planner import PartitionSelection
from servo.local import LocalControlPlane, LocalOptions, run_tasks
from servo.ports import Doc, Ports
from servo.project import find_project

# Generous: a loaded two-core machine may take many seconds to start worker processes.
WAIT_S = 120.0

DEFAULT_SETTINGS: dict[str, Any] = {
    "heartbeat_interval_ms": 200,
    # Long enough that a busy machine never misses heartbeats for this long by accident, short
    # enough that a killed worker is noticed quickly.
    "heartbeat_timeout_ms": 3_000,
}

SUPPORT = '''\
"""Side effects of scenario assets, written where the test can read them."""

import json
import os
import time
from pathlib import Path

EFFECTS = Path({effects!r})


def _file(asset):
    return EFFECTS / (asset.replace("/", "~") + ".jsonl")


def record(context, kind="ran", **fields):
    """Append one line about this attempt to effects/<asset>.jsonl."""
    asset = context.asset_key.to_string()
    entry = {{
        "asset": asset,
        "run_id": context.run_id,
        "attempt": context.attempt,
        "partition": context.partition_key,
        "kind": kind,
        "pid": os.getpid(),
        "time": time.time(),
        **fields,
    }}
    with open(_file(asset), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\\n")


def recorded(context, kind):
    """How many lines of this kind this asset recorded in this run so far."""
    path = _file(context.asset_key.to_string())
    if not path.exists():
        return 0
    count = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["kind"] == kind and entry["run_id"] == context.run_id:
            count += 1
    return count


def flag(name):
    """Whether the test created the flag file effects/<name>."""
    return (EFFECTS / name).exists()


def value_of(context):
    """The value an asset returns: which attempt of which run produced it."""
    return {{"asset": context.asset_key.to_string(), "run_id": context.run_id, "attempt": context.attempt}}
'''

DEFS_HEADER = """\
import os
import signal
import time

from servo import Backoff, Definitions, RetryPolicy, asset
from servo.worker.runtime import Failure

from .support import EFFECTS, flag, record, recorded, value_of

"""


class CrashPointReached(Exception):
    """Raised by a crash hook to simulate the process dying at a write boundary."""


class CrashOnce:
    """A ``Ports.crash`` hook: raises :class:`CrashPointReached` the first time ``point`` is
    reached and records every crash point it sees."""

    def __init__(self, point: str) -> None:
        self.point = point
        self.fired = False
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, name: str) -> None:
        with self._lock:
            self.seen.append(name)
            if name != self.point or self.fired:
                return
            self.fired = True
        raise CrashPointReached(name)


@dataclass
class Scenario:
    """A deployed project and the control plane running it."""

    root: Path
    effects: Path
    workspace: Workspace
    plane: LocalControlPlane
    code_version: str

    @property
    def ports(self) -> Ports:
        return self.workspace.ports

    # Runs -----------------------------------------------------------------------------------
    def request(self, selection: str, **fields: Any) -> TriggerRequest:
        """A manual run request with a fresh request id (a client's idempotency key)."""
        fields.setdefault("request_id", self.ports.ids.new_id("test-"))
        fields.setdefault("actor", "user:test")
        if "partitions" in fields and not isinstance(fields["partitions"], PartitionSelection):
            fields["partitions"] = PartitionSelection(keys=tuple(fields["partitions"]))
        return TriggerRequest(selection=selection, **fields)

    def trigger(self, selection: str, **fields: Any) -> TriggerResult:
        """Trigger a run; a simulated crash inside ``trigger`` is answered by redelivering the
        same request, as a client (or Cloud Tasks) retrying the call would."""
        req = self.request(selection, **fields)
        return redeliver(lambda: trigger(self.ports, req))

    def wait(self, run_id: str, timeout: float = WAIT_S) -> Doc:
        """The run document once the run is terminal."""
        return self.plane.wait_for_run(run_id, timeout=timeout)

    def run(self, selection: str, **fields: Any) -> Doc:
        """Trigger a run and wait for it to finish."""
        return self.wait(self.trigger(selection, **fields).run_id)

    # State ----------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Doc:
        doc = self.ports.state.get(RUNS, run_id)
        assert doc is not None, f"run {run_id} does not exist"
        return doc

    def tasks(self, run_id: str) -> dict[str, Doc]:
        """The run's task documents by display name (the asset, plus the partition if any)."""
        return {t["display"]: t for t in run_tasks(self.ports, run_id)}

    def materialized(self, asset: str, partition: str | None = None) -> Doc | None:
        """The asset partition's committed-output document, if it was ever materialized."""
        return self.ports.state.get(ASSET_PARTITIONS, asset_partition_id(asset, partition))

    def events(self, run_id: str | None = None) -> list[Doc]:
        """The recorded events (ledger and outbox) in causal order."""
        return read_events(self.ports, run_id=run_id)

    def transitions(self, run_id: str, task_id: str | None = None) -> list[Doc]:
        """The run's task state-change events, optionally of one task, in causal order."""
        return [
            e
            for e in self.events(run_id)
            if e["type"] == ev.TASK_STATE and (task_id is None or e["task_id"] == task_id)
        ]

    # Side effects ---------------------------------------------------------------------------
    def effects_of(self, asset: str, kind: str | None = None) -> list[dict[str, Any]]:
        """What attempts of ``asset`` recorded (optionally only one kind of line)."""
        path = self.effects / (asset.replace("/", "~") + ".jsonl")
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [e for e in lines if kind is None or e["kind"] == kind]

    def set_flag(self, name: str) -> None:
        (self.effects / name).write_text("set")

    def wait_for_effect(self, asset: str, kind: str, count: int = 1) -> list[dict[str, Any]]:
        wait_until(
            lambda: len(self.effects_of(asset, kind)) >= count,
            f"{count} `{kind}` line(s) from {asset}",
        )
        return self.effects_of(asset, kind)

    def wait_task(self, run_id: str, display: str, predicate: Callable[[Doc], bool]) -> Doc:
        """Wait until the task's document satisfies ``predicate``; returns it."""
        found: dict[str, Doc] = {}

        def check() -> bool:
            doc = self.tasks(run_id).get(display)
            if doc is not None and predicate(doc):
                found["doc"] = doc
                return True
            return False

        wait_until(check, f"task {display} of run {run_id} to reach the expected state")
        return found["doc"]


ScenarioFactory = Callable[..., Scenario]


def redeliver(call: Callable[[], Any]) -> Any:
    """Call ``call``; if a simulated crash interrupts it, call it again (a redelivery)."""
    try:
        return call()
    except CrashPointReached:
        return call()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def write_project(root: Path, package: str, defs: str, effects: Path) -> None:
    """A minimal Servo project: pyproject.toml and a package with ``support`` and ``defs``."""
    pkg = root / package
    pkg.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "{package}"\n\n[tool.servo]\nmodule = "{package}.defs"\n'
    )
    (pkg / "__init__.py").write_text("")
    (pkg / "support.py").write_text(SUPPORT.format(effects=str(effects)))
    (pkg / "defs.py").write_text(DEFS_HEADER + textwrap.dedent(defs))


@pytest.fixture
def scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ScenarioFactory]:
    """A factory of deployed projects with a started control plane; everything is stopped and
    the imported project modules are forgotten at the end of the test."""
    planes: list[LocalControlPlane] = []
    packages: list[tuple[str, Path]] = []
    workers_before = {p.pid for p in _pool_workers()}
    monkeypatch.setenv("SERVO_HOME", str(tmp_path / "home"))

    def make(
        defs: str,
        *,
        settings: dict[str, Any] | None = None,
        workers: int = 2,
        crash: Callable[[str], None] | None = None,
    ) -> Scenario:
        n = len(packages)
        # Each project gets its own package name: the test process imports the definitions to
        # build the manifest, and Python keeps one module per name.
        digest = hashlib.sha256(f"{tmp_path}/{n}".encode()).hexdigest()[:10]
        package = f"scenario_{digest}"
        root = tmp_path / f"project{n}"
        effects = tmp_path / "effects"
        effects.mkdir(exist_ok=True)
        write_project(root, package, defs, effects)
        packages.append((package, root))
        ws = open_workspace(find_project(root))
        ws.ports.settings = {**ws.ports.settings, **DEFAULT_SETTINGS, **(settings or {})}
        if crash is not None:
            ws.ports.crash = crash
        result, _ = redeliver(lambda: deploy_project(ws, "user:test"))
        plane = LocalControlPlane(
            ws.ports, ws.home, LocalOptions(workers=workers, housekeeping_interval_s=0.2)
        )
        planes.append(plane)
        plane.start()
        return Scenario(
            root=root, effects=effects, workspace=ws, plane=plane, code_version=result.code_version
        )

    try:
        yield make
    finally:
        for plane in planes:
            plane.stop()
        for package, root in packages:
            for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
                del sys.modules[name]
            with contextlib.suppress(ValueError):
                sys.path.remove(str(root))
    # A worker that outlives its pool would also block the interpreter's exit (workers are
    # not daemonic), so stop it here and report it. (A killed worker may still be being reaped
    # by its pool's reader thread: only a process still alive after a while counts.)
    deadline = time.monotonic() + 10
    while True:
        leftovers = [
            p for p in _pool_workers() if p.pid not in workers_before and pid_alive(p.pid or 0)
        ]
        if not leftovers or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for process in leftovers:
        process.kill()
        process.join(10)
    assert not leftovers, f"worker processes outlived their stopped pool: {leftovers}"


def _pool_workers() -> list[multiprocessing.process.BaseProcess]:
    """The live worker processes this process started."""
    return [p for p in multiprocessing.active_children() if p.name.startswith("servo-worker-")]
