"""``servo dev --backend emulators``: the serverless control plane on this machine.

Starts the Google emulators, every Cloud Function as a functions-framework process and the
worker service (:class:`~servo.testing.serverless.ServerlessStack`), deploys the project into
it and prints the functions' URLs and the variables that point ``SERVO_BACKEND=gcp`` at it.
With ``--run SELECTION`` it then runs the selection through the trigger function, waits for
the run, prints it and stops everything (exit code 0 when the run succeeded); without, it
serves until Ctrl-C.
"""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape

from servo.cli import render
from servo.cli.workspace import servo_home, settings_for
from servo.cloud import INTEGER_SETTINGS
from servo.project import ProjectRef

EXPORTED = (
    "FIRESTORE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "SERVO_TASKS_EMULATOR_HOST",
    "NO_GCE_CHECK",
    "SERVO_GCP_PROJECT",
    "SERVO_BUCKET",
    "SERVO_TENANT",
    "SERVO_WORKSPACE",
    "SERVO_TASKS_QUEUE",
    "SERVO_EXECUTE_QUEUE",
    "SERVO_TARGET_DISPATCH",
    "SERVO_TARGET_EXECUTE",
)


def dev_on_emulators(
    project: ProjectRef,
    *,
    run_selection: str | None = None,
    partition_ranges: Sequence[tuple[str, str]] = (),
    partitions: Sequence[str] = (),
    timeout_s: float | None = None,
    as_json: bool = False,
    worker_processes: int = 2,
) -> int:
    """Run the stack for ``project`` (see the module docstring); returns the exit code."""
    from servo.local import summarize
    from servo.testing.serverless import ServerlessStack, StackOptions

    settings = {k: int(v) for k, v in settings_for(project).items() if k in INTEGER_SETTINGS}
    options = StackOptions(
        workspace="default", settings=settings, worker_processes=worker_processes
    )
    # A SIGTERM must unwind like Ctrl-C does, so that the stack stops what it started.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    state_dir = state_dir_of(project)
    state_dir.mkdir(parents=True, exist_ok=True)
    say = render.err_console.print if as_json else render.console.print
    say("servo dev: starting the emulators, the functions and the worker service…")
    with ServerlessStack(state_dir, options) as stack:
        code_version = stack.deploy(project.root)
        say(f"deployed code version {code_version}")
        # Topics, push subscriptions and bucket notifications for the project's event sensors.
        stack.wire_event_sensors()
        for name, url in stack.urls.items():
            say(f"  {name:<16} {url}")
        say(f"logs in {state_dir / 'logs'}; to use this stack from another shell:")
        say("  export SERVO_BACKEND=gcp " + _exports(stack.env))
        if run_selection is None:
            say("serving until Ctrl-C")
            _wait_for_signal()
            return 0
        request: dict[str, Any] = {
            "selection": run_selection,
            "partitions": {"keys": list(partitions), "ranges": [list(r) for r in partition_ranges]},
            "actor": "user:servo-dev",
        }
        status, answer = stack.trigger(request)
        if status >= 300:
            message = answer.get("error") if isinstance(answer, dict) else answer
            render.err_console.print(f"[red]error:[/red] {escape(str(message))}")
            return 1
        run_id = str(answer["run_id"])
        say(f"started run {run_id} ({answer['task_count']} tasks) through the trigger function")
        run = stack.wait_for_run(run_id, timeout_s=timeout_s or 600.0)
        summary = summarize(stack.ports(), run_id)
        if as_json:
            render.print_json(summary)
        else:
            render.run_summary(summary)
        return 0 if run["state"] == "SUCCEEDED" else 1


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _exports(env: dict[str, str]) -> str:
    return " ".join(f"{name}={shlex.quote(env[name])}" for name in EXPORTED if env.get(name))


def _wait_for_signal() -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def state_dir_of(project: ProjectRef) -> Path:
    """Where the stack of ``project`` keeps its logs and code cache."""
    return servo_home(project) / "serverless"


__all__ = ["dev_on_emulators", "state_dir_of"]
