"""The ``servo`` command."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from servo.cli import render
from servo.cli.workspace import (
    Workspace,
    actor_name,
    deploy_project,
    ensure_deployed,
    locate,
    open_workspace,
)
from servo.core.errors import Problem, ServoError, ValidationFailed
from servo.core.planner import PartitionSelection

app = typer.Typer(
    name="servo",
    help="Servo: asset-centric data orchestration, serverless on Google Cloud or on one machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModuleOpt = Annotated[
    str | None, typer.Option("--module", "-m", help="Module holding the Definitions.")
]
FileOpt = Annotated[
    Path | None, typer.Option("--file", "-f", help="Python file holding the Definitions.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def fail(message: str, code: int = 1) -> NoReturn:
    render.err_console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def print_problems(problems: list[Problem], header: str) -> None:
    render.err_console.print(f"[red]{escape(header)}[/red]")
    for p in problems:
        where = f"{render.relative(p.location)}: " if p.location else ""
        render.err_console.print(f"  {escape(where + p.message)}")


def _workspace(
    module: str | None = None, file: Path | None = None, required: bool = True
) -> Workspace:
    try:
        project = locate(module, file, required=required)
        return open_workspace(project)
    except ServoError as exc:
        fail(str(exc))


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")],
    name: Annotated[
        str | None, typer.Option(help="Package name (default: the directory name).")
    ] = None,
) -> None:
    """Create a new Servo project with a few example assets."""
    from servo.cli.scaffold import scaffold

    try:
        created = scaffold(directory, name)
    except ServoError as exc:
        fail(str(exc))
    render.console.print(f"Created a Servo project in {directory} ({len(created)} files).")
    render.console.print(f"Next: cd {directory} && servo validate && servo run '*'")


@app.command()
def validate(module: ModuleOpt = None, file: FileOpt = None, as_json: JsonOpt = False) -> None:
    """Load the project and report every problem at once (exit 1 if there is any)."""
    from servo.project import load_and_build

    try:
        project = locate(module, file)
        assert project is not None
        _, manifest = load_and_build(project)
    except ValidationFailed as exc:
        if as_json:
            render.print_json(
                {
                    "ok": False,
                    "problems": [
                        {"message": p.message, "location": p.location} for p in exc.problems
                    ],
                }
            )
        else:
            print_problems(exc.problems, f"{len(exc.problems)} problem(s) found:")
        raise typer.Exit(1) from None
    except ServoError as exc:
        fail(str(exc))
    counts = {
        "assets": len(manifest.assets),
        "checks": len(manifest.checks),
        "schedules": len(manifest.schedules),
        "sensors": len(manifest.sensors),
    }
    if as_json:
        render.print_json({"ok": True, "code_version": manifest.code_version, **counts})
        return
    render.console.print(
        f"[green]OK[/green] {counts['assets']} assets, {counts['checks']} checks, "
        f"{counts['schedules']} schedules, {counts['sensors']} sensors; code_version {manifest.code_version}"
    )


@app.command()
def deploy(module: ModuleOpt = None, file: FileOpt = None, as_json: JsonOpt = False) -> None:
    """Validate the project and register its code version; later runs use it."""
    ws = _workspace(module, file)
    try:
        result, manifest = deploy_project(ws, actor_name())
    except ValidationFailed as exc:
        print_problems(exc.problems, f"{len(exc.problems)} problem(s) found; nothing deployed:")
        raise typer.Exit(1) from None
    except ServoError as exc:
        fail(str(exc))
    data = {
        "code_version": result.code_version,
        "manifest_id": result.manifest_id,
        "new": result.created,
        "assets": len(manifest.assets),
    }
    if as_json:
        render.print_json(data)
    else:
        word = "Deployed" if result.created else "Already deployed"
        render.console.print(
            f"{word} code_version {result.code_version} (manifest {result.manifest_id}, {len(manifest.assets)} assets)"
        )


def _parse_tags(tags: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        k, sep, v = t.partition("=")
        if not sep or not k:
            fail(f"--tag {t!r} must be written key=value")
        out[k] = v
    return out


def _parse_ranges(ranges: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for r in ranges:
        start, sep, end = r.partition("...")
        if not sep or not start or not end:
            fail(f"--partition-range {r!r} must be written START...END (both included)")
        out.append((start, end))
    return tuple(out)


def _run_and_wait(
    ws: Workspace,
    start: Any,
    *,
    wait: bool,
    as_json: bool,
    timeout: float | None,
) -> None:
    """Start a run through ``start(ports)`` and, with ``wait``, report on it when it ends.

    On the embedded backend this process hosts the control plane for the run; on Google Cloud
    the functions execute it and this process polls its state.
    """
    from servo.local import LocalControlPlane, LocalOptions

    if not wait:
        try:
            result = start(ws.ports)
        except ServoError as exc:
            fail(str(exc))
        if as_json:
            render.print_json(
                {"run_id": result.run_id, "state": result.state, "created": result.created}
            )
        else:
            where = (
                "the serverless control plane executes it"
                if not _embedded(ws)
                else "a running `servo dev` (or the next `servo run`) executes it"
            )
            render.console.print(
                f"Queued run {result.run_id} ({result.task_count} tasks); {where}. "
                f"Follow it with `servo status {result.run_id}`."
            )
        return
    if not _embedded(ws):
        # On Google Cloud the functions execute the run; this process only watches it.
        with _Progress(ws, as_json) as progress:
            try:
                result = start(ws.ports)
            except ServoError as exc:
                fail(str(exc))
            if not as_json:
                verb = "Started" if result.created else "Found existing"
                render.console.print(f"{verb} run {result.run_id} ({result.task_count} tasks)")
            run = _poll_run(ws, result.run_id, timeout, progress)
        _report_run(ws, result.run_id, run, as_json)
        return
    options = LocalOptions(background_compaction=False)
    with (
        LocalControlPlane(ws.ports, ws.home, options) as plane,
        _Progress(ws, as_json) as progress,
    ):
        try:
            result = start(ws.ports)
        except ServoError as exc:
            fail(str(exc))
        if not as_json:
            verb = "Started" if result.created else "Found existing"
            render.console.print(f"{verb} run {result.run_id} ({result.task_count} tasks)")
        run = plane.wait_for_run(result.run_id, timeout=timeout, on_progress=progress)
    _report_run(ws, result.run_id, run, as_json)


def _embedded(ws: Workspace) -> bool:
    from servo.adapters.embedded.queue import InProcessQueue

    return isinstance(ws.ports.queue, InProcessQueue)


def _poll_run(ws: Workspace, run_id: str, timeout: float | None, progress: Any) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = ws.ports.state.get("runs", run_id)
        if run is None:
            fail(f"run {run_id} disappeared")
        progress(run, [])
        if run["state"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
            return run
        if deadline is not None and time.monotonic() > deadline:
            fail(
                f"run {run_id} did not finish within {timeout} s; it goes on: `servo status {run_id}`"
            )
        time.sleep(0.5)


def _report_run(ws: Workspace, run_id: str, run: dict[str, Any], as_json: bool) -> None:
    from servo.local import summarize

    summary = summarize(ws.ports, run_id)
    if as_json:
        render.print_json(summary)
    else:
        render.run_summary(summary)
    raise typer.Exit(0 if run["state"] == "SUCCEEDED" else 1)


class _Progress:
    """Run progress: a bar on a terminal, one line per task state change otherwise."""

    TERMINAL = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED")

    def __init__(self, ws: Workspace, quiet: bool) -> None:
        self.ws = ws
        self.quiet = quiet
        self.seen: dict[str, str] = {}
        self.last = 0.0
        self.bar: Any = None
        self.bar_task: Any = None
        if not quiet and render.is_tty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}"),
                console=render.console,
                transient=True,
            )

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, run: dict[str, Any], _: list[dict[str, Any]]) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        final = run["state"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
        if now - self.last < 0.2 and not final:
            return
        self.last = now
        from servo.local import run_tasks

        tasks = run_tasks(self.ws.ports, run["run_id"])
        if self.bar is not None:
            done = sum(1 for t in tasks if t["state"] in self.TERMINAL)
            failed = sum(1 for t in tasks if t["state"] == "FAILED")
            running = sum(1 for t in tasks if t["state"] in ("RUNNING", "DISPATCHED"))
            detail = f"{running} running" + (f", {failed} failed" if failed else "")
            if self.bar_task is None:
                self.bar_task = self.bar.add_task(run["run_id"], total=len(tasks), detail=detail)
            self.bar.update(self.bar_task, completed=done, detail=detail)
            return
        for t in tasks:
            state = t["state"]
            if self.seen.get(t["task_id"]) != state and state in (
                *self.TERMINAL,
                "RUNNING",
                "RETRY_WAIT",
            ):
                self.seen[t["task_id"]] = state
                label = t["asset"] + (
                    f" [{t['partition_user']}]" if t.get("partition_user") else ""
                )
                render.console.print(f"  {escape(label)}: {render.styled(state)}")


@app.command()
def run(
    selection: Annotated[
        str, typer.Argument(help="Asset selection, e.g. 'orders+' or 'group:raw'.")
    ],
    partition: Annotated[
        list[str], typer.Option("--partition", "-p", help="A partition key (repeatable).")
    ] = [],  # noqa: B006
    partition_range: Annotated[
        list[str], typer.Option("--partition-range", help="START...END, both included.")
    ] = [],  # noqa: B006
    all_partitions: Annotated[
        bool, typer.Option("--all-partitions", help="Every partition.")
    ] = False,
    run_key: Annotated[
        str | None, typer.Option("--run-key", help="Idempotency key: reuse returns the same run.")
    ] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="key=value (repeatable).")] = [],  # noqa: B006
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", help="Tasks of this run at once.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the run to finish.")
    ] = True,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up waiting after this many seconds.")
    ] = None,
    module: ModuleOpt = None,
    file: FileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan and execute a run of the selected assets (deploying the current code if it changed)."""
    from servo.control.trigger import TriggerRequest, trigger

    ws = _workspace(module, file)
    try:
        ensure_deployed(ws, actor_name())
    except ValidationFailed as exc:
        print_problems(exc.problems, f"{len(exc.problems)} problem(s) found; nothing run:")
        raise typer.Exit(1) from None
    except ServoError as exc:
        fail(str(exc))
    req = TriggerRequest(
        selection=selection,
        partitions=PartitionSelection(
            keys=tuple(partition), ranges=_parse_ranges(partition_range), all=all_partitions
        ),
        run_key=run_key,
        request_id=ws.ports.ids.new_id("cli-"),
        tags=_parse_tags(tag),
        trigger={"type": "manual"},
        actor=actor_name(),
        max_concurrency=max_concurrency,
    )
    _run_and_wait(
        ws, lambda ports: trigger(ports, req), wait=wait, as_json=as_json, timeout=timeout
    )


@app.command()
def rerun(
    run_id: Annotated[str, typer.Argument(help="The run to re-execute.")],
    from_failure: Annotated[
        bool, typer.Option("--from-failure", help="Only the tasks that did not succeed.")
    ] = False,
    select: Annotated[
        str | None, typer.Option("--select", help="Only these assets of the run.")
    ] = None,
    module: ModuleOpt = None,
    file: FileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-execute part of a run with the current code."""
    from servo.control.rerun import rerun as rerun_service

    ws = _workspace(module, file)
    try:
        ensure_deployed(ws, actor_name())
    except ServoError as exc:
        fail(str(exc))
    request_id = ws.ports.ids.new_id("cli-")
    _run_and_wait(
        ws,
        lambda ports: rerun_service(
            ports,
            run_id,
            from_failure=from_failure,
            select=select,
            actor=actor_name(),
            request_id=request_id,
        ),
        wait=True,
        as_json=as_json,
        timeout=None,
    )


@app.command()
def status(
    run_id: Annotated[str | None, typer.Argument(help="A run id; without it, recent runs.")] = None,
    limit: Annotated[int, typer.Option(help="How many recent runs.")] = 20,
    state: Annotated[str | None, typer.Option(help="Only runs in this state.")] = None,
    asset: Annotated[
        str | None, typer.Option(help="Only runs that materialize this asset.")
    ] = None,
    tag: Annotated[list[str], typer.Option("--tag", help="key=value (repeatable).")] = [],  # noqa: B006
    since: Annotated[
        str | None, typer.Option(help="Only runs created since: 2h, 7d, 2024-01-05.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run (state, tasks, timings, attempts), or the recent runs."""
    from servo.cli.assets import show_status

    show_status(
        run_id, limit=limit, state=state, asset=asset, tags=tag, since=since, as_json=as_json
    )


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    task: Annotated[str | None, typer.Option("--task", help="ASSET or ASSET:PARTITION")] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="Attempt number (default: all).")
    ] = None,
) -> None:
    """Print what the run's tasks wrote to stdout/stderr and context.log, per attempt."""
    from servo.control.dispatch import log_path
    from servo.core.errors import NotFound
    from servo.local import run_tasks

    ws = _workspace(required=False)
    tasks = run_tasks(ws.ports, run_id)
    if not tasks:
        fail(f"run {run_id} does not exist or has no tasks; `servo status` lists recent runs")
    if task:
        asset, _, part = task.partition(":")
        tasks = [
            t
            for t in tasks
            if t["asset"] == asset and (not part or t.get("partition_user") == part)
        ]
        if not tasks:
            fail(f"run {run_id} has no task {task!r}; tasks are written ASSET or ASSET:PARTITION")
    printed = 0
    for t in tasks:
        attempts = [attempt] if attempt else list(range(1, int(t.get("attempt", 0)) + 1))
        for a in attempts:
            try:
                text = ws.ports.blobs.get(log_path(run_id, t["task_id"], a)).decode(
                    "utf-8", "replace"
                )
            except NotFound:
                continue
            label = t["asset"] + (f":{t['partition_user']}" if t.get("partition_user") else "")
            render.console.print(f"[bold]== {escape(label)} attempt {a} ==[/bold]")
            sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
            sys.stdout.flush()
            printed += 1
    if printed == 0:
        render.console.print("No logs recorded for this selection.")


@app.command()
def events(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    as_json: JsonOpt = False,
) -> None:
    """List every event of a run in causal order."""
    from servo.cli.assets import show_events

    show_events(run_id, as_json)


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="The run to cancel.")],
    as_json: JsonOpt = False,
) -> None:
    """Cancel a run: queued tasks at once, running tasks within the grace period."""
    from servo.control.cancel import cancel_run

    ws = _workspace(required=False)
    try:
        result = cancel_run(ws.ports, run_id, actor=actor_name())
    except ServoError as exc:
        fail(str(exc))
    if as_json:
        render.print_json(
            {
                "run_id": result.run_id,
                "state": result.state,
                "cancelled": result.cancelled,
                "signalled": result.signalled,
            }
        )
        return
    render.console.print(
        f"run {run_id}: {render.styled(result.state)} ({result.cancelled} tasks cancelled, "
        f"{result.signalled} running tasks told to stop)"
    )


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="HTTP address.")] = "127.0.0.1",
    module: ModuleOpt = None,
    file: FileOpt = None,
    backend: Annotated[
        str,
        typer.Option(
            help="embedded (one process), or emulators: the Google emulators, every Cloud "
            "Function as its own process and the worker service."
        ),
    ] = "embedded",
    run_selection: Annotated[
        str | None,
        typer.Option(
            "--run", help="With --backend emulators: run this selection, print it and stop."
        ),
    ] = None,
    partition_range: Annotated[
        list[str], typer.Option("--partition-range", help="START...END, with --run.")
    ] = [],  # noqa: B006
    as_json: JsonOpt = False,
) -> None:
    """Run a local control plane: HTTP API, dispatcher, worker pool and sweeper."""
    from servo.api.devserver import serve

    if backend == "emulators":
        from servo.cli.serverless import dev_on_emulators

        try:
            project = locate(module, file)
            assert project is not None
            code = dev_on_emulators(
                project,
                run_selection=run_selection,
                partition_ranges=_parse_ranges(partition_range),
                as_json=as_json,
            )
        except ServoError as exc:
            fail(str(exc))
        raise typer.Exit(code)
    if backend != "embedded":
        fail(f"--backend {backend!r} is not known; use embedded or emulators")
    ws = _workspace(module, file)
    try:
        ensure_deployed(ws, actor_name())
    except ServoError as exc:
        fail(str(exc))
    serve(ws, host=host, port=port)


def _register_subcommands() -> None:
    from servo.cli.assets import admin_app, asset_app

    app.add_typer(asset_app)
    app.add_typer(admin_app)

    from servo.cli.automation import schedules_app, sensors_app, tick_command

    app.add_typer(schedules_app, name="schedules")
    app.add_typer(sensors_app, name="sensors")
    app.command(name="tick")(tick_command)


_register_subcommands()


def main() -> None:
    try:
        app()
    except ServoError as exc:  # pragma: no cover - commands catch their own
        render.err_console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
