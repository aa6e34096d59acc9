"""Scenarios of the embedded worker pool with real worker processes and a real deployed project.

A small project is written to disk, bundled with ``build_bundle`` and deployed into a
``FileBlobs`` store the way ``servo deploy`` lays it out; the pool's workers fetch, unpack and
import it. The handler plays the control plane and records every report.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from servo.adapters.embedded.blobs import FileBlobs
from servo.project import build_bundle
from servo.worker.envelope import Answer, Outcome, TaskEnvelope
from servo.worker.pool import WorkerPool

WAIT_S = 60.0

DEFS = """
import logging
import os
import subprocess
import time

from servo import Definitions, asset

VERSION = "{version}"


@asset
def trivial():
    return (VERSION, os.getpid())


@asset
def chatty(context):
    print("printed by the worker")
    context.log.info("logged by context.log")
    logging.getLogger("some.library").warning("warned by a library")
    return 1


@asset
def sleeper(context):
    child = subprocess.Popen(["sleep", "120"])
    path = context.run_tags["pid_file"]
    with open(path + ".tmp", "w") as handle:
        handle.write(f"{{os.getpid()}} {{child.pid}}")
    os.replace(path + ".tmp", path)
    time.sleep(120)
    return 1


defs = Definitions(assets=[trivial, chatty, sleeper])
"""


def write_project(root: Path, version: str) -> Path:
    (root / "demo_pool_pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.servo]\nmodule = "demo_pool_pkg.defs"\n'
    )
    (root / "demo_pool_pkg" / "__init__.py").write_text("")
    (root / "demo_pool_pkg" / "defs.py").write_text(textwrap.dedent(DEFS.format(version=version)))
    return root


def deploy(blobs: FileBlobs, root: Path, code_version: str) -> None:
    blobs.put(f"deployments/{code_version}/bundle.zip", build_bundle(root))
    info = {"module": "demo_pool_pkg.defs", "file": None, "name": "demo"}
    blobs.put(f"deployments/{code_version}/project.json", json.dumps(info).encode())


class ControlPlane:
    """Records reports; lets tests wait for them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.reports: list[tuple[str, TaskEnvelope, Outcome | None]] = []
        self.answer: Callable[[str, TaskEnvelope], Answer] = lambda kind, env: Answer()

    def __call__(self, kind: str, envelope: TaskEnvelope, outcome: Outcome | None) -> Answer:
        with self.cond:
            self.reports.append((kind, envelope, outcome))
            self.cond.notify_all()
        return self.answer(kind, envelope)

    def completed(self) -> dict[str, Outcome]:
        with self.cond:
            return {
                env.idempotency_key: outcome
                for kind, env, outcome in self.reports
                if kind == "completed" and outcome is not None
            }

    def kinds_of(self, key: str) -> list[str]:
        with self.cond:
            return [kind for kind, env, _ in self.reports if env.idempotency_key == key]

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}; reports: {len(self.reports)}"
                self.cond.wait(left)

    def wait_completed(self, count: int) -> dict[str, Outcome]:
        self.wait_for(lambda: len(self.completed()) >= count, f"{count} completed reports")
        return self.completed()


@pytest.fixture
def store(tmp_path: Path) -> FileBlobs:
    blobs = FileBlobs(tmp_path / "blobs", fsync=False)
    deploy(blobs, write_project(tmp_path / "project-v1", "one"), "v1")
    deploy(blobs, write_project(tmp_path / "project-v2", "two"), "v2")
    return blobs


@pytest.fixture
def plane() -> ControlPlane:
    return ControlPlane()


@pytest.fixture
def make_pool(
    store: FileBlobs, tmp_path: Path, plane: ControlPlane
) -> Iterator[Callable[[int], WorkerPool]]:
    pools: list[WorkerPool] = []

    def make(size: int) -> WorkerPool:
        pool = WorkerPool(size, store.root, tmp_path / "code-cache", plane, fsync=False)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


def envelope(
    n: int, asset: str = "trivial", code_version: str = "v1", **kwargs: Any
) -> TaskEnvelope:
    return TaskEnvelope(
        run_id="r1",
        task_id=f"t{n}",
        attempt=1,
        asset=asset,
        code_version=code_version,
        output_path=f"staged/{asset}/t{n}/1",
        log_path=f"logs/r1/t{n}/1.log",
        **kwargs,
    )


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (zombies count as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def children_of_this_process() -> list[int]:
    """Live child processes, except multiprocessing's own resource tracker."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[1] != me or fields[0] == "Z":
            continue
        with contextlib.suppress(OSError):
            if b"resource_tracker" in (entry / "cmdline").read_bytes():
                continue
        found.append(int(entry.name))
    return found


def read_pids(path: Path) -> tuple[int, int]:
    wait_until(path.exists, f"the asset to write {path}")
    worker, child = path.read_text().split()
    return int(worker), int(child)


# -- scenarios ---------------------------------------------------------------------------------


def test_fifty_tasks_through_two_warm_workers(
    make_pool: Callable[[int], WorkerPool], plane: ControlPlane, store: FileBlobs
) -> None:
    pool = make_pool(2)
    envelopes = [envelope(n) for n in range(50)]
    for env in envelopes:
        pool.submit(env)
    done = plane.wait_completed(50)

    assert set(done) == {env.idempotency_key for env in envelopes}
    assert all(o.status == "succeeded" for o in done.values()), [o.error for o in done.values()]
    values = [pickle.loads(store.get(env.output_path)) for env in envelopes]
    assert {version for version, _ in values} == {"one"}
    # The interpreter starts once per worker, not once per task.
    assert len({pid for _, pid in values}) <= 2
    for env in envelopes:
        assert plane.kinds_of(env.idempotency_key) == ["started", "completed"]
    assert pool.wait_idle(WAIT_S)
    assert pool.running() == []
    assert pool.backlog() == 0


def test_worker_output_and_logs_are_captured(
    make_pool: Callable[[int], WorkerPool], plane: ControlPlane, store: FileBlobs
) -> None:
    pool = make_pool(1)
    env = envelope(1, asset="chatty")
    pool.submit(env)
    done = plane.wait_completed(1)
    assert done[env.idempotency_key].status == "succeeded"
    text = store.get(env.log_path).decode()
    assert "printed by the worker" in text
    assert "logged by context.log" in text
    assert "warned by a library" in text


def test_killed_worker_is_replaced_and_its_attempt_not_reported(
    make_pool: Callable[[int], WorkerPool], plane: ControlPlane, tmp_path: Path
) -> None:
    pool = make_pool(1)
    pid_file = tmp_path / "sleeper.pid"
    doomed = envelope(1, asset="sleeper", run_tags={"pid_file": str(pid_file)})
    pool.submit(doomed)
    worker_pid, child_pid = read_pids(pid_file)
    assert pool.running() == [("r1", "t1", 1)]

    os.kill(worker_pid, signal.SIGKILL)
    os.kill(child_pid, signal.SIGKILL)  # an orphan now; not the pool's to clean up
    wait_until(lambda: pool.running() == [], "the pool to drop the dead worker")
    after = envelope(2)
    pool.submit(after)
    done = plane.wait_completed(1)

    assert after.idempotency_key in done
    assert done[after.idempotency_key].status == "succeeded"
    assert doomed.idempotency_key not in done
    assert plane.kinds_of(doomed.idempotency_key) == ["started"]


def test_cancel_attempt_kills_the_worker_and_what_it_started(
    make_pool: Callable[[int], WorkerPool], plane: ControlPlane, tmp_path: Path
) -> None:
    pool = make_pool(1)
    pid_file = tmp_path / "sleeper.pid"
    doomed = envelope(1, asset="sleeper", run_tags={"pid_file": str(pid_file)})
    queued = envelope(2)
    pool.submit(doomed)
    worker_pid, child_pid = read_pids(pid_file)
    pool.submit(queued)
    assert pool.backlog() == 1

    assert pool.cancel_attempt("r1", "t1", 1) is True
    wait_until(lambda: not pid_alive(worker_pid), "the worker to die")
    wait_until(lambda: not pid_alive(child_pid), "the asset's subprocess to die")
    done = plane.wait_completed(1)

    assert set(done) == {queued.idempotency_key}
    assert pool.cancel_attempt("r1", "t1", 1) is False
    assert plane.kinds_of(doomed.idempotency_key) == ["started"]


def test_cancel_attempt_removes_a_queued_envelope(
    make_pool: Callable[[int], WorkerPool], plane: ControlPlane, tmp_path: Path
) -> None:
    pool = make_pool(1)
    pid_file = tmp_path / "sleeper.pid"
    pool.submit(envelope(1, asset="sleeper", run_tags={"pid_file": str(pid_file)}))
    read_pids(pid_file)
    pool.submit(envelope(2))
    assert pool.cancel_attempt("r1", "t2", 1) is True
    assert pool.backlog() == 0
    assert not pool.idle()


def test_workers_are_replaced_for_another_code_version(
    make_pool: Callable[[int], WorkerPool], plane: ControlPlane, store: FileBlobs
) -> None:
    pool = make_pool(1)
    first, second = envelope(1, code_version="v1"), envelope(2, code_version="v2")
    pool.submit(first)
    plane.wait_completed(1)
    pool.submit(second)
    done = plane.wait_completed(2)
    assert done[second.idempotency_key].status == "succeeded"
    assert pickle.loads(store.get(first.output_path))[0] == "one"
    assert pickle.loads(store.get(second.output_path))[0] == "two"


def test_unknown_code_version_is_an_infrastructure_error(
    make_pool: Callable[[int], WorkerPool], plane: ControlPlane
) -> None:
    pool = make_pool(1)
    env = envelope(1, code_version="never-deployed")
    pool.submit(env)
    outcome = plane.wait_completed(1)[env.idempotency_key]
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.kind == "infrastructure"
    assert outcome.error.retryable is True


def test_stale_start_frees_the_worker(
    make_pool: Callable[[int], WorkerPool], plane: ControlPlane
) -> None:
    plane.answer = lambda kind, env: Answer(accepted=env.task_id != "t1")
    pool = make_pool(1)
    stale, fresh = envelope(1), envelope(2)
    pool.submit(stale)
    pool.submit(fresh)
    done = plane.wait_completed(1)
    assert set(done) == {fresh.idempotency_key}
    assert plane.kinds_of(stale.idempotency_key) == ["started"]
    assert pool.wait_idle(WAIT_S)


def test_close_leaves_no_processes_behind(
    store: FileBlobs, tmp_path: Path, plane: ControlPlane
) -> None:
    before = set(children_of_this_process())  # other tests' helpers may be running
    pool = WorkerPool(2, store.root, tmp_path / "code-cache", plane, fsync=False)
    pid_file = tmp_path / "sleeper.pid"
    pool.submit(envelope(1, asset="sleeper", run_tags={"pid_file": str(pid_file)}))
    pool.submit(envelope(2))
    worker_pid, child_pid = read_pids(pid_file)
    plane.wait_completed(1)

    pool.close()

    assert set(children_of_this_process()) - before == set()
    wait_until(lambda: not pid_alive(child_pid), "the asset's subprocess to die")
    assert not pid_alive(worker_pid)
    assert "r1/t1/1" not in plane.completed()
    with pytest.raises(Exception, match="closed"):
        pool.submit(envelope(3))
