"""Tests of the worker runtime: one attempt run in this process against real files.

Assets are real ``@asset`` functions, outputs and logs go to a real ``FileBlobs`` store, and the
control plane is a recording handler behind ``DirectChannel``.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from servo import CheckResult, Definitions, Severity, asset, asset_check
from servo.adapters.embedded.blobs import FileBlobs
from servo.project import build_bundle
from servo.sdk.context import AssetExecutionContext
from servo.worker.capture import OutputCapture
from servo.worker.channel import DirectChannel
from servo.worker.code import CodeCache, CodeLoadError
from servo.worker.envelope import (
    Answer,
    CheckRef,
    InputRef,
    Outcome,
    OutputRef,
    TaskEnvelope,
)
from servo.worker.io import PickleIOManager
from servo.worker.runtime import Failure, execute

WAIT_S = 30.0


@dataclass
class Recorder:
    """A control plane that records reports and answers from a script."""

    on_started: Answer = field(default_factory=Answer)
    on_heartbeat: Callable[[int], Answer] = lambda n: Answer()
    reports: list[tuple[str, str, Outcome | None]] = field(default_factory=list)

    def __call__(self, kind: str, envelope: TaskEnvelope, outcome: Outcome | None) -> Answer:
        self.reports.append((kind, envelope.idempotency_key, outcome))
        if kind == "started":
            return self.on_started
        if kind == "heartbeat":
            return self.on_heartbeat(sum(1 for k, _, _ in self.reports if k == "heartbeat"))
        return Answer()

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.reports]


@pytest.fixture
def blobs(tmp_path: Path) -> FileBlobs:
    return FileBlobs(tmp_path / "blobs", fsync=False)


def envelope(asset_key: str = "target", **kwargs: Any) -> TaskEnvelope:
    fields: dict[str, Any] = {
        "run_id": "r1",
        "task_id": "t1",
        "attempt": 1,
        "asset": asset_key,
        "code_version": "v1",
        "output_path": f"staged/{asset_key}/r1/1",
        "log_path": f"logs/r1/{asset_key}/1.log",
    }
    fields.update(kwargs)
    return TaskEnvelope(**fields)


def stage(blobs: FileBlobs, path: str, value: Any) -> str:
    PickleIOManager(blobs).stage(path, value)
    return path


def run(
    blobs: FileBlobs,
    defs: Definitions,
    env: TaskEnvelope,
    recorder: Recorder | None = None,
) -> tuple[Outcome, Recorder]:
    recorder = recorder or Recorder()
    outcome = execute(env, DirectChannel(recorder), blobs, defs)
    return outcome, recorder


def staged_value(blobs: FileBlobs, outcome: Outcome) -> Any:
    assert outcome.output is not None
    return pickle.loads(blobs.get(outcome.output.path))


def log_text(blobs: FileBlobs, env: TaskEnvelope) -> str:
    return blobs.get(env.log_path).decode("utf-8")


# -- inputs ------------------------------------------------------------------------------------


def test_unpartitioned_input_is_loaded_and_output_staged(blobs: FileBlobs) -> None:
    @asset
    def target(upstream: int) -> int:
        return upstream + 1

    path = stage(blobs, "committed/upstream", 41)
    env = envelope(
        inputs=[InputRef(input_name="upstream", asset="upstream", partitions=[None], paths=[path])]
    )
    outcome, recorder = run(blobs, Definitions(assets=[target]), env)

    assert outcome.status == "succeeded", outcome.error
    assert outcome.error is None
    assert staged_value(blobs, outcome) == 42
    assert outcome.output is not None
    assert outcome.output.path == env.output_path
    assert outcome.output.size > 0
    assert recorder.kinds() == ["started", "completed"]
    assert recorder.reports[-1][2] == outcome
    assert all(key == env.idempotency_key for _, key, _ in recorder.reports)


def test_single_partition_input_is_the_value(blobs: FileBlobs) -> None:
    @asset
    def target(daily: str) -> str:
        return daily.upper()

    path = stage(blobs, "committed/daily/2024-01-01", "jan first")
    env = envelope(
        partition="2024-01-01",
        inputs=[
            InputRef(input_name="daily", asset="daily", partitions=["2024-01-01"], paths=[path])
        ],
    )
    outcome, _ = run(blobs, Definitions(assets=[target]), env)
    assert outcome.status == "succeeded", outcome.error
    assert staged_value(blobs, outcome) == "JAN FIRST"


def test_several_partitions_arrive_as_a_dict_by_user_key(blobs: FileBlobs) -> None:
    seen: dict[str, Any] = {}

    @asset
    def target(regional: dict[str, int]) -> int:
        seen.update(regional)
        return sum(regional.values())

    keys = ["date=2024-01-01,region=eu", "date=2024-01-01,region=us%2Cwest"]
    paths = [stage(blobs, f"committed/regional/{i}", i + 10) for i in range(2)]
    env = envelope(
        inputs=[InputRef(input_name="regional", asset="regional", partitions=keys, paths=paths)]
    )
    outcome, _ = run(blobs, Definitions(assets=[target]), env)
    assert outcome.status == "succeeded", outcome.error
    assert seen == {"2024-01-01|eu": 10, "2024-01-01|us,west": 11}
    assert staged_value(blobs, outcome) == 21


def test_as_mapping_gives_a_dict_even_for_one_partition(blobs: FileBlobs) -> None:
    @asset
    def target(daily: dict[str, int]) -> list[str]:
        return sorted(daily)

    path = stage(blobs, "committed/daily/x", 1)
    ref = InputRef(
        input_name="daily", asset="daily", partitions=["2024-01-01"], paths=[path], as_mapping=True
    )
    outcome, _ = run(blobs, Definitions(assets=[target]), envelope(inputs=[ref]))
    assert outcome.status == "succeeded", outcome.error
    assert staged_value(blobs, outcome) == ["2024-01-01"]


def test_non_data_dependency_is_not_loaded(blobs: FileBlobs) -> None:
    @asset(deps=["other"])
    def target() -> str:
        return "ok"

    ref = InputRef(input_name=None, asset="other", partitions=[None], paths=["does/not/exist"])
    outcome, _ = run(blobs, Definitions(assets=[target]), envelope(inputs=[ref]))
    assert outcome.status == "succeeded", outcome.error


def test_missing_upstream_output_fails_without_retry_and_names_it(blobs: FileBlobs) -> None:
    called = []

    @asset
    def target(daily: int) -> int:
        called.append(daily)
        return daily

    ref = InputRef(input_name="daily", asset="daily", partitions=["2024-01-02"], paths=[None])
    outcome, recorder = run(blobs, Definitions(assets=[target]), envelope(inputs=[ref]))

    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.kind == "user_code"
    assert outcome.error.retryable is False
    assert "`daily`" in outcome.error.message
    assert "2024-01-02" in outcome.error.message
    assert "materialize" in outcome.error.message
    assert called == []
    assert recorder.kinds() == ["started", "completed"]


def test_none_is_a_value_and_is_staged(blobs: FileBlobs) -> None:
    @asset
    def target() -> None:
        return None

    outcome, _ = run(blobs, Definitions(assets=[target]), envelope())
    assert outcome.status == "succeeded", outcome.error
    assert blobs.exists(envelope().output_path)
    assert staged_value(blobs, outcome) is None


# -- context -----------------------------------------------------------------------------------


def test_context_describes_the_attempt(blobs: FileBlobs) -> None:
    seen: dict[str, Any] = {}

    @asset
    def target(context: AssetExecutionContext) -> int:
        seen["key"] = context.asset_key.to_string()
        seen["partition"] = context.partition_key
        seen["run"] = (context.run_id, context.attempt)
        seen["resources"] = dict(context.resources)
        seen["window"] = context.partition_time_window
        seen["tags"] = dict(context.run_tags)
        context.add_output_metadata({"rows": 3, "when": datetime(2024, 1, 1)})
        return 3

    defs = Definitions(assets=[target], resources={"db": "sqlite://"})
    env = envelope(
        partition="2024-01-01",
        partition_window=("2024-01-01T00:00:00+00:00", "2024-01-02T00:00:00+00:00"),
        attempt=2,
        run_tags={"team": "data"},
    )
    outcome, _ = run(blobs, defs, env)

    assert outcome.status == "succeeded", outcome.error
    assert seen["key"] == "target"
    assert seen["partition"] == "2024-01-01"
    assert seen["run"] == ("r1", 2)
    assert seen["resources"] == {"db": "sqlite://"}
    assert seen["window"] == (
        datetime.fromisoformat("2024-01-01T00:00:00+00:00"),
        datetime.fromisoformat("2024-01-02T00:00:00+00:00"),
    )
    assert seen["tags"] == {"team": "data"}
    assert outcome.output is not None
    assert outcome.output.metadata["rows"] == 3
    assert outcome.output.metadata["when"] == "2024-01-01T00:00:00"


def test_named_io_manager_from_resources_is_used(blobs: FileBlobs) -> None:
    class TextIO:
        def __init__(self) -> None:
            self.store: dict[str, Any] = {"committed/up": "hello"}

        def load(self, path: str) -> Any:
            return self.store[path]

        def stage(self, path: str, value: Any) -> OutputRef:
            self.store[path] = value
            return OutputRef(path=path, size=len(value))

    manager = TextIO()

    @asset(io_manager="text")
    def up() -> str:
        return "unused"

    @asset(io_manager="text")
    def target(up: str) -> str:
        return up + " world"

    ref = InputRef(input_name="up", asset="up", partitions=[None], paths=["committed/up"])
    defs = Definitions(assets=[up, target], resources={"text": manager})
    outcome, _ = run(blobs, defs, envelope(inputs=[ref]))
    assert outcome.status == "succeeded", outcome.error
    assert manager.store[envelope().output_path] == "hello world"
    assert not blobs.exists(envelope().output_path)


# -- errors ------------------------------------------------------------------------------------


def test_user_exception_is_retryable_with_traceback(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        raise ValueError("the warehouse said no")

    env = envelope()
    outcome, recorder = run(blobs, Definitions(assets=[target]), env)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.kind == "user_code"
    assert outcome.error.retryable is True
    assert "ValueError: the warehouse said no" in outcome.error.message
    assert outcome.error.traceback is not None
    assert "in target" in outcome.error.traceback
    assert outcome.output is None
    assert recorder.kinds() == ["started", "completed"]
    assert "the warehouse said no" in log_text(blobs, env)


def test_failure_is_not_retryable(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        raise Failure("input file is corrupt; fix the export")

    outcome, _ = run(blobs, Definitions(assets=[target]), envelope())
    assert outcome.error is not None
    assert outcome.error.kind == "user_code"
    assert outcome.error.retryable is False
    assert outcome.error.message == "input file is corrupt; fix the export"


def test_failure_may_ask_for_a_retry(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        raise Failure("service busy", retryable=True)

    outcome, _ = run(blobs, Definitions(assets=[target]), envelope())
    assert outcome.error is not None
    assert outcome.error.retryable is True


def test_sys_exit_in_an_asset_is_a_user_error(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        sys.exit(3)

    outcome, _ = run(blobs, Definitions(assets=[target]), envelope())
    assert outcome.error is not None
    assert outcome.error.kind == "user_code"
    assert "sys.exit(3)" in outcome.error.message


def test_unpicklable_value_is_a_user_error(blobs: FileBlobs) -> None:
    @asset
    def target() -> Any:
        return threading.Lock()

    outcome, _ = run(blobs, Definitions(assets=[target]), envelope())
    assert outcome.error is not None
    assert outcome.error.kind == "user_code"
    assert outcome.error.retryable is False
    assert "pickled" in outcome.error.message


def test_code_that_fails_to_load_is_an_infrastructure_error(blobs: FileBlobs) -> None:
    def load() -> Definitions:
        raise ImportError("no module named pandas")

    recorder = Recorder()
    outcome = execute(envelope(), DirectChannel(recorder), blobs, load)
    assert outcome.error is not None
    assert outcome.error.kind == "infrastructure"
    assert outcome.error.retryable is True
    assert "pandas" in outcome.error.message
    assert recorder.kinds() == ["started", "completed"]


def test_asset_missing_from_the_code_is_an_infrastructure_error(blobs: FileBlobs) -> None:
    outcome, _ = run(blobs, Definitions(assets=[]), envelope("nowhere"))
    assert outcome.error is not None
    assert outcome.error.kind == "infrastructure"
    assert outcome.error.retryable is False
    assert "nowhere" in outcome.error.message


def test_unreadable_input_is_an_infrastructure_error(blobs: FileBlobs) -> None:
    @asset
    def target(up: int) -> int:
        return up

    ref = InputRef(input_name="up", asset="up", partitions=[None], paths=["committed/gone"])
    outcome, _ = run(blobs, Definitions(assets=[target]), envelope(inputs=[ref]))
    assert outcome.error is not None
    assert outcome.error.kind == "infrastructure"
    assert outcome.error.retryable is True


# -- stale starts, timeout, cancellation ---------------------------------------------------------


@pytest.mark.parametrize(
    "answer", [Answer(accepted=False, reason="attempt 2 is current"), Answer(cancel=True)]
)
def test_stale_attempt_runs_nothing(blobs: FileBlobs, answer: Answer) -> None:
    called = []

    @asset
    def target() -> int:
        called.append(1)
        return 1

    outcome, recorder = run(
        blobs, Definitions(assets=[target]), envelope(), Recorder(on_started=answer)
    )
    assert called == []
    assert outcome.status == "cancelled"
    assert recorder.kinds() == ["started"]
    assert not blobs.exists(envelope().output_path)


def test_timeout_interrupts_a_sleeping_asset(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        time.sleep(120)
        return 1

    env = envelope(timeout_ms=200)
    outcome, recorder = run(blobs, Definitions(assets=[target]), env)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.kind == "timeout"
    assert outcome.error.retryable is False
    assert "200 ms" in outcome.error.message
    assert outcome.error.traceback is not None
    assert "time.sleep(120)" in outcome.error.traceback
    assert recorder.kinds()[-1] == "completed"
    assert "timeout" in log_text(blobs, env)


def test_timeout_holds_even_if_the_asset_swallows_the_interrupt(blobs: FileBlobs) -> None:
    @asset
    def target() -> str:
        try:
            time.sleep(120)
        except KeyboardInterrupt:
            return "carried on"
        return "slept"

    outcome, _ = run(blobs, Definitions(assets=[target]), envelope(timeout_ms=100))
    assert outcome.error is not None
    assert outcome.error.kind == "timeout"


def test_heartbeat_answer_cancels_the_attempt(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        time.sleep(120)
        return 1

    recorder = Recorder(on_heartbeat=lambda n: Answer(cancel=n >= 2))
    env = envelope(heartbeat_interval_ms=30)
    outcome, _ = run(blobs, Definitions(assets=[target]), env, recorder)
    assert outcome.status == "cancelled"
    assert outcome.error is not None
    assert outcome.error.kind == "cancelled"
    assert outcome.error.retryable is False
    kinds = recorder.kinds()
    assert kinds[0] == "started"
    assert kinds[-1] == "completed"
    assert kinds.count("heartbeat") >= 2
    assert set(kinds[1:-1]) == {"heartbeat"}


def test_no_heartbeat_after_completed(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        time.sleep(0.2)
        return 1

    recorder = Recorder()
    outcome, _ = run(
        blobs, Definitions(assets=[target]), envelope(heartbeat_interval_ms=10), recorder
    )
    assert outcome.status == "succeeded"
    time.sleep(0.1)
    assert recorder.kinds()[-1] == "completed"
    assert recorder.kinds().count("completed") == 1


def test_timeout_on_a_worker_thread(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        # A busy loop: an asynchronous exception reaches it between bytecodes.
        end = time.monotonic() + WAIT_S
        n = 0
        while time.monotonic() < end:
            n += 1
        return n

    results: list[Outcome] = []
    worker = threading.Thread(
        target=lambda: results.append(
            run(blobs, Definitions(assets=[target]), envelope(timeout_ms=100))[0]
        )
    )
    worker.start()
    worker.join(WAIT_S * 2)
    assert results, "execute did not return"
    assert results[0].error is not None
    assert results[0].error.kind == "timeout"


def test_ctrl_c_outside_an_attempt_still_reaches_the_previous_handler(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        time.sleep(60)
        return 1

    run(blobs, Definitions(assets=[target]), envelope(timeout_ms=50))

    # Servo's SIGINT handler is now installed; a real interrupt must still raise.
    def interrupt_myself() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(WAIT_S)

    with pytest.raises(KeyboardInterrupt):
        interrupt_myself()


# -- checks ------------------------------------------------------------------------------------


def test_failed_blocking_check_fails_the_attempt(blobs: FileBlobs) -> None:
    @asset
    def target() -> list[int]:
        return []

    @asset_check(asset=target, blocking=True)
    def not_empty(target: list[int]) -> CheckResult:
        return CheckResult(passed=bool(target), metadata={"rows": len(target)})

    env = envelope(checks=[CheckRef(name="not_empty", blocking=True)])
    outcome, _ = run(blobs, Definitions(assets=[target], asset_checks=[not_empty]), env)
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert outcome.error.kind == "check_failed"
    assert outcome.error.retryable is False
    assert "not_empty" in outcome.error.message
    assert [(c.name, c.passed, c.blocking) for c in outcome.checks] == [("not_empty", False, True)]
    assert outcome.checks[0].metadata == {"rows": 0}
    # Staged all the same: committing (or not) is the control plane's decision.
    assert blobs.exists(env.output_path)


def test_failed_warn_check_does_not_fail_the_attempt(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        return 5

    @asset_check(asset=target)
    def small(context: AssetExecutionContext, target: int) -> CheckResult:
        return CheckResult(passed=target < 3, severity=Severity.WARN, description="want < 3")

    @asset_check(asset=target)
    def positive(target: int) -> bool:
        return target > 0

    env = envelope(checks=[CheckRef(name="small"), CheckRef(name="positive")])
    outcome, _ = run(blobs, Definitions(assets=[target], asset_checks=[small, positive]), env)
    assert outcome.status == "succeeded", outcome.error
    by_name = {c.name: c for c in outcome.checks}
    assert by_name["small"].passed is False
    assert by_name["small"].severity == "WARN"
    assert by_name["small"].description == "want < 3"
    assert by_name["positive"].passed is True


def test_blocking_warn_check_does_not_fail_the_attempt(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        return 5

    @asset_check(asset=target, blocking=True)
    def small(target: int) -> CheckResult:
        return CheckResult(passed=False, severity=Severity.WARN)

    env = envelope(checks=[CheckRef(name="small", blocking=True)])
    outcome, _ = run(blobs, Definitions(assets=[target], asset_checks=[small]), env)
    assert outcome.status == "succeeded"


def test_check_that_raises_is_a_failed_check(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        return 5

    @asset_check(asset=target)
    def broken(target: int) -> bool:
        raise RuntimeError("bad check")

    env = envelope(checks=[CheckRef(name="broken")])
    outcome, _ = run(blobs, Definitions(assets=[target], asset_checks=[broken]), env)
    assert outcome.status == "succeeded"
    (check,) = outcome.checks
    assert check.passed is False
    assert "RuntimeError: bad check" in check.metadata["error"]


def test_check_missing_from_the_code_is_a_failed_check(blobs: FileBlobs) -> None:
    @asset
    def target() -> int:
        return 5

    env = envelope(checks=[CheckRef(name="ghost", blocking=True)])
    outcome, _ = run(blobs, Definitions(assets=[target]), env)
    assert outcome.error is not None
    assert outcome.error.kind == "check_failed"


# -- logs --------------------------------------------------------------------------------------


def test_output_of_every_kind_is_captured_into_the_log(blobs: FileBlobs) -> None:
    @asset
    def target(context: AssetExecutionContext) -> int:
        print("hello from print")
        sys.stderr.write("hello from stderr\n")
        os.write(1, b"hello from fd 1\n")
        ctypes.CDLL(None).puts(b"hello from C stdio")
        subprocess.run([sys.executable, "-c", "print('hello from a subprocess')"], check=True)
        context.log.info("hello from context.log")
        return 1

    env = envelope()
    outcome, _ = run(blobs, Definitions(assets=[target]), env)
    assert outcome.status == "succeeded", outcome.error
    text = log_text(blobs, env)
    for expected in (
        "hello from print",
        "hello from stderr",
        "hello from fd 1",
        "hello from C stdio",
        "hello from a subprocess",
        "INFO target - hello from context.log",
    ):
        assert expected in text, f"{expected!r} missing from the log:\n{text}"
    assert text.index("hello from print") < text.index("hello from a subprocess")
    assert text.index("hello from a subprocess") < text.index("hello from context.log")


def test_stdout_is_restored_after_the_attempt(
    blobs: FileBlobs, capfd: pytest.CaptureFixture[str]
) -> None:
    @asset
    def target() -> int:
        print("inside")
        return 1

    before = sys.stdout
    run(blobs, Definitions(assets=[target]), envelope())
    assert sys.stdout is before
    print("outside")
    os.write(1, b"outside fd\n")
    out = capfd.readouterr().out
    assert "outside" in out
    assert "outside fd" in out
    assert "inside" not in out


def test_streams_kept_by_an_asset_keep_working_afterwards(
    blobs: FileBlobs, capfd: pytest.CaptureFixture[str]
) -> None:
    kept: list[Any] = []

    @asset
    def target() -> int:
        kept.append(sys.stderr)
        sys.stdout.buffer.write(b"bytes through the buffer\n")
        return 1

    env = envelope()
    run(blobs, Definitions(assets=[target]), env)
    assert "bytes through the buffer" in log_text(blobs, env)
    kept[0].write("written after the attempt\n")
    kept[0].flush()
    assert "written after the attempt" in capfd.readouterr().err
    assert "written after the attempt" not in log_text(blobs, env)


def test_partial_log_is_published_while_the_asset_runs(blobs: FileBlobs) -> None:
    env = envelope(heartbeat_interval_ms=20)
    seen = []

    @asset
    def target() -> int:
        print("early line", flush=True)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if blobs.exists(env.log_path) and b"early line" in blobs.get(env.log_path):
                seen.append(True)
                break
            time.sleep(0.01)
        return 1

    outcome, _ = run(blobs, Definitions(assets=[target]), env)
    assert outcome.status == "succeeded"
    assert seen == [True]


def test_a_second_concurrent_capture_records_only_log_records() -> None:
    first = OutputCapture()
    second = OutputCapture()
    try:
        with first, second:
            second.logger("x").info("a record")
            print("to the first")
        assert first.redirected
        assert not second.redirected
        assert "a record" in second.text()
        assert "to the first" in first.text()
        assert "to the first" not in second.text()
    finally:
        first.close()
        second.close()


# -- deployed code -------------------------------------------------------------------------------


def deploy_module(blobs: FileBlobs, tmp_path: Path, code_version: str, value: str) -> None:
    root = tmp_path / f"src-{code_version}"
    (root / "runtime_demo_pkg").mkdir(parents=True)
    (root / "runtime_demo_pkg" / "__init__.py").write_text("")
    (root / "runtime_demo_pkg" / "defs.py").write_text(
        "from servo import Definitions, asset\n\n"
        "@asset\n"
        f"def target():\n    return {value!r}\n\n"
        "defs = Definitions(assets=[target])\n"
    )
    blobs.put(f"deployments/{code_version}/bundle.zip", build_bundle(root))
    project = {"module": "runtime_demo_pkg.defs", "file": None, "name": "demo"}
    blobs.put(f"deployments/{code_version}/project.json", json.dumps(project).encode())


def test_code_cache_extracts_loads_and_switches_versions(blobs: FileBlobs, tmp_path: Path) -> None:
    deploy_module(blobs, tmp_path, "v1", "one")
    deploy_module(blobs, tmp_path, "v2", "two")
    cache = CodeCache(blobs, tmp_path / "cache")
    try:
        first = cache.definitions("v1")
        assert first.get_asset("target").fn() == "one"
        assert cache.definitions("v1") is first
        assert (tmp_path / "cache" / "v1" / "runtime_demo_pkg" / "defs.py").is_file()
        second = cache.definitions("v2")
        assert second.get_asset("target").fn() == "two"
        assert str(tmp_path / "cache" / "v1") not in sys.path
    finally:
        for name in [m for m in sys.modules if m.startswith("runtime_demo_pkg")]:
            del sys.modules[name]
        for entry in [p for p in sys.path if p.startswith(str(tmp_path))]:
            sys.path.remove(entry)


def test_code_cache_runs_an_attempt_end_to_end(blobs: FileBlobs, tmp_path: Path) -> None:
    deploy_module(blobs, tmp_path, "v7", "seven")
    cache = CodeCache(blobs, tmp_path / "cache")
    try:
        env = envelope(code_version="v7")
        outcome = execute(
            env, DirectChannel(Recorder()), blobs, lambda: cache.definitions(env.code_version)
        )
        assert outcome.status == "succeeded", outcome.error
        assert staged_value(blobs, outcome) == "seven"
    finally:
        for name in [m for m in sys.modules if m.startswith("runtime_demo_pkg")]:
            del sys.modules[name]
        for entry in [p for p in sys.path if p.startswith(str(tmp_path))]:
            sys.path.remove(entry)


def test_code_cache_errors_name_the_version(blobs: FileBlobs, tmp_path: Path) -> None:
    cache = CodeCache(blobs, tmp_path / "cache")
    with pytest.raises(CodeLoadError, match=r"v404.*deploy"):
        cache.definitions("v404")
    with pytest.raises(CodeLoadError, match="not valid"):
        cache.definitions("../escape")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../outside.py", "x = 1\n")
    blobs.put("deployments/evil/bundle.zip", buf.getvalue())
    with pytest.raises(CodeLoadError, match="unsafe path"):
        cache.definitions("evil")
    assert not (tmp_path / "outside.py").exists()


def test_malformed_envelope_is_reported_not_raised(blobs: FileBlobs) -> None:
    @asset
    def target(daily: int) -> int:
        return daily

    ref = InputRef(input_name="daily", asset="daily", partitions=["bad,key"], paths=["x"])
    outcome, recorder = run(blobs, Definitions(assets=[target]), envelope(inputs=[ref]))
    assert outcome.error is not None
    assert outcome.error.kind == "infrastructure"
    assert recorder.kinds() == ["started", "completed"]
