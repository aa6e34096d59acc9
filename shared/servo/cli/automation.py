"""``servo schedules …``, ``servo sensors …`` and ``servo tick``.

Registered on the main app with::

    app.add_typer(schedules_app, name="schedules")
    app.add_typer(sensors_app, name="sensors")
    app.command(name="tick")(tick_command)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table

from servo.cli import render
from servo.cli.workspace import Workspace, actor_name, ensure_deployed, locate, open_workspace
from servo.core.errors import ServoError, ValidationFailed

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
LimitOpt = Annotated[int, typer.Option("--limit", "-n", help="How many ticks, newest first.")]

schedules_app = typer.Typer(
    name="schedules",
    help="List schedules, start and stop them, and show their ticks.",
    no_args_is_help=True,
)
sensors_app = typer.Typer(
    name="sensors",
    help="List sensors, start and stop them, show their ticks and cursors.",
    no_args_is_help=True,
)

TICK_STYLE = {"SUCCESS": "green", "SKIPPED": "yellow", "FAILED": "red", "REQUESTED": "cyan"}


def _fail(message: str, code: int = 1) -> NoReturn:
    render.err_console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _workspace() -> Workspace:
    try:
        return open_workspace(locate(required=False))
    except ServoError as exc:
        _fail(str(exc))


def _status(state: str | None) -> str:
    if not state:
        return "-"
    style = TICK_STYLE.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def _table(headers: list[str], rows: list[list[str]], status_column: int | None = None) -> None:
    """A table: rich on a terminal, plain aligned columns otherwise (never truncated)."""
    if not render.is_tty():
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        for line in [headers, *rows]:
            cells = [c.ljust(w) for c, w in zip(line, widths, strict=True)]
            sys.stdout.write("  ".join(cells).rstrip() + "\n")
        sys.stdout.flush()
        return
    table = Table(show_edge=False, pad_edge=False, box=None)
    for h in headers:
        table.add_column(h)
    for r in rows:
        table.add_row(*(_status(c) if i == status_column else escape(c) for i, c in enumerate(r)))
    render.console.print(table)


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    return iso.replace("T", " ").replace("Z", "")


def _tick_detail(doc: dict[str, Any]) -> str:
    err = (doc.get("error") or {}).get("message")
    if err:
        return str(err)
    runs = [r.get("run_id") for r in doc.get("requests") or [] if r.get("run_id")]
    runs = runs or list(doc.get("run_ids") or [])
    if runs:
        return "run " + ", ".join(runs)
    return str(doc.get("reason") or "")


def _print_ticks(ticks: list[dict[str, Any]], as_json: bool, time_field: str) -> None:
    if as_json:
        render.print_json(ticks)
        return
    if not ticks:
        render.console.print("No ticks yet.")
        return
    rows = []
    for t in ticks:
        when = t.get(time_field)
        if isinstance(when, int):
            when = datetime.fromtimestamp(when / 1000, UTC).isoformat().replace("+00:00", "Z")
        rows.append([_when(str(when) if when else None), str(t.get("status")), _tick_detail(t)])
    _table(["time", "status", "detail"], rows, status_column=1)
    for t in ticks:
        tb = (t.get("error") or {}).get("traceback")
        if tb and t is ticks[0]:
            render.console.print("[dim]traceback of the latest failure:[/dim]")
            render.console.print(escape(tb.rstrip()), markup=True)


# ---------------------------------------------------------------------------------------------
# servo schedules


@schedules_app.command("list")
def list_schedules(as_json: JsonOpt = False) -> None:
    """Every schedule of the current deployment: status, next tick, last tick."""
    from servo.control.tick import schedule_statuses

    ws = _workspace()
    statuses = schedule_statuses(ws.ports)
    if as_json:
        render.print_json(
            [
                {
                    "name": s.name,
                    "cron": s.cron,
                    "timezone": s.timezone,
                    "target": s.target,
                    "running": s.running,
                    "status_source": s.status_source,
                    "custom": s.custom,
                    "cursor": s.cursor,
                    "next_tick": s.next_tick,
                    "last_tick": s.last_tick,
                }
                for s in statuses
            ]
        )
        return
    if not statuses:
        render.console.print("No schedules in the current deployment.")
        return
    rows = []
    for s in statuses:
        state = "running" if s.running else "stopped"
        if s.status_source == "set":
            state += " (set)"
        last = s.last_tick or {}
        rows.append(
            [
                s.name,
                s.cron,
                s.timezone,
                s.target,
                state,
                _when(s.next_tick),
                f"{last.get('status')} {_when(last.get('scheduled_time'))}" if last else "-",
            ]
        )
    _table(["schedule", "cron", "timezone", "target", "status", "next tick", "last tick"], rows)


def _switch_schedule(name: str, running: bool) -> None:
    from servo.control.tick import set_schedule_running

    ws = _workspace()
    try:
        set_schedule_running(ws.ports, name, running, actor=actor_name())
    except ServoError as exc:
        _fail(str(exc))
    word = "started" if running else "stopped"
    render.console.print(f"schedule {escape(name)} {word}")


@schedules_app.command("enable")
def enable_schedule(name: Annotated[str, typer.Argument(help="The schedule.")]) -> None:
    """Start a schedule (ticks that passed while it was stopped are not run)."""
    _switch_schedule(name, True)


@schedules_app.command("disable")
def disable_schedule(name: Annotated[str, typer.Argument(help="The schedule.")]) -> None:
    """Stop a schedule."""
    _switch_schedule(name, False)


@schedules_app.command("ticks")
def schedule_ticks_command(
    name: Annotated[str, typer.Argument(help="The schedule.")],
    limit: LimitOpt = 20,
    as_json: JsonOpt = False,
) -> None:
    """The schedule's recent ticks: scheduled time, status, run or reason or error."""
    from servo.control.tick import schedule_ticks

    ws = _workspace()
    _print_ticks(schedule_ticks(ws.ports, name, limit), as_json, "scheduled_time")


# ---------------------------------------------------------------------------------------------
# servo sensors


@sensors_app.command("list")
def list_sensors(as_json: JsonOpt = False) -> None:
    """Every sensor of the current deployment: kind, status, cursor, last tick."""
    from servo.control.sensors import sensor_statuses

    ws = _workspace()
    statuses = sensor_statuses(ws.ports)
    if as_json:
        render.print_json(
            [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "target": s.target,
                    "minimum_interval_s": s.minimum_interval_s,
                    "running": s.running,
                    "status_source": s.status_source,
                    "cursor": s.cursor,
                    "last_evaluation": s.last_evaluation,
                    "last_tick": s.last_tick,
                    "config": dict(s.config),
                }
                for s in statuses
            ]
        )
        return
    if not statuses:
        render.console.print("No sensors in the current deployment.")
        return
    rows = []
    for s in statuses:
        state = "running" if s.running else "stopped"
        if s.status_source == "set":
            state += " (set)"
        last = s.last_tick or {}
        rows.append(
            [
                s.name,
                s.kind,
                s.target or "-",
                state,
                s.cursor if s.cursor is not None else "-",
                str(last.get("status")) if last else "-",
            ]
        )
    _table(["sensor", "kind", "target", "status", "cursor", "last tick"], rows)


def _switch_sensor(name: str, running: bool) -> None:
    from servo.control.sensors import set_sensor_running

    ws = _workspace()
    try:
        set_sensor_running(ws.ports, name, running, actor=actor_name())
    except ServoError as exc:
        _fail(str(exc))
    word = "started" if running else "stopped"
    render.console.print(f"sensor {escape(name)} {word}")


@sensors_app.command("enable")
def enable_sensor(name: Annotated[str, typer.Argument(help="The sensor.")]) -> None:
    """Start a sensor."""
    _switch_sensor(name, True)


@sensors_app.command("disable")
def disable_sensor(name: Annotated[str, typer.Argument(help="The sensor.")]) -> None:
    """Stop a sensor (notifications for it are ignored while it is stopped)."""
    _switch_sensor(name, False)


@sensors_app.command("ticks")
def sensor_ticks_command(
    name: Annotated[str, typer.Argument(help="The sensor.")],
    limit: LimitOpt = 20,
    as_json: JsonOpt = False,
) -> None:
    """The sensor's recent ticks: status, runs, skip reason or error with its traceback."""
    from servo.control.sensors import sensor_ticks

    ws = _workspace()
    _print_ticks(sensor_ticks(ws.ports, name, limit), as_json, "evaluated_ms")


@sensors_app.command("cursor")
def sensor_cursor_command(
    name: Annotated[str, typer.Argument(help="The sensor.")],
    set_to: Annotated[
        str | None,
        typer.Option("--set", help="Store this cursor; the next evaluation starts there."),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Forget the cursor.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show a sensor's cursor, or set it with --set (or clear it with --clear)."""
    from servo.control.sensors import sensor_statuses, set_sensor_cursor

    ws = _workspace()
    if set_to is not None or clear:
        if set_to is not None and clear:
            _fail("use either --set or --clear")
        try:
            set_sensor_cursor(ws.ports, name, None if clear else set_to, actor=actor_name())
        except ServoError as exc:
            _fail(str(exc))
    found = next((s for s in sensor_statuses(ws.ports) if s.name == name), None)
    if found is None:
        _fail(f"sensor `{name}` is not defined in the current deployment")
    if as_json:
        render.print_json({"sensor": name, "cursor": found.cursor})
    else:
        render.console.print(
            found.cursor if found.cursor is not None else "(no cursor)", markup=False
        )


# ---------------------------------------------------------------------------------------------
# servo tick


def parse_time(text: str) -> datetime:
    """An ISO-8601 time; without an offset it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        _fail(f"--now {text!r} is not an ISO-8601 time such as 2024-01-02T01:00:30Z")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@contextlib.contextmanager
def _evaluator(ws: Workspace) -> Iterator[Any]:
    from servo.worker.evaluate import EvaluatorPool

    root = getattr(ws.ports.blobs, "root", None)
    if root is None:
        yield None
        return
    pool = EvaluatorPool(Path(root), ws.home / "code", size=1)
    try:
        yield pool
    finally:
        pool.close()


def tick_command(
    now: Annotated[
        str | None,
        typer.Option("--now", help="Evaluate as if it were this time (ISO-8601; default: now)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate schedules, due sensors and asset automation once, at --now.

    Runs it requests are queued; a running `servo dev` (or the next `servo run`) executes them.
    """
    from servo.control.automation import evaluate_automation
    from servo.control.sensors import sensor_evaluate
    from servo.control.tick import tick

    ws = _workspace()
    if ws.project is not None:
        try:
            ensure_deployed(ws, actor_name())
        except ValidationFailed as exc:
            _fail(f"{len(exc.problems)} problem(s) in the project; run `servo validate`")
        except ServoError as exc:
            _fail(str(exc))
    at = parse_time(now) if now else ws.ports.clock.now()
    try:
        with _evaluator(ws) as evaluator:
            ticks = tick(ws.ports, at, evaluator=evaluator)
            sensors = sensor_evaluate(ws.ports, at, evaluator=evaluator)
            automation = evaluate_automation(ws.ports, at)
    except ServoError as exc:
        _fail(str(exc))
    if as_json:
        render.print_json(
            {
                "now": ticks.now,
                "code_version": ticks.code_version,
                "schedules": [o.__dict__ for o in ticks.outcomes],
                "sensors": [o.__dict__ for o in (*sensors.resumed, *sensors.evaluated)],
                "automation": [r.__dict__ for r in automation.requests],
                "automation_errors": automation.errors,
            }
        )
        return
    render.console.print(
        f"tick at {_when(ticks.now)}: {ticks.running} of {ticks.schedules} schedules running"
    )
    lines = 0
    for o in ticks.outcomes:
        detail = o.error or ("run " + ", ".join(o.run_ids) if o.run_ids else o.reason or "")
        old = "" if o.recorded else " (already done)"
        render.console.print(
            f"  schedule {escape(o.schedule)} {_when(o.scheduled_time)} {_status(o.status)}"
            f"{old} {escape(detail)}"
        )
        lines += 1
    for s in (*sensors.resumed, *sensors.evaluated):
        detail = s.error or ("run " + ", ".join(s.run_ids) if s.run_ids else s.reason or "")
        render.console.print(f"  sensor {escape(s.sensor)} {_status(s.status)} {escape(detail)}")
        lines += 1
    for r in automation.requests:
        part = f" [{r.partition}]" if r.partition else ""
        word = "requested" if r.created else "already requested"
        render.console.print(
            f"  automation {escape(r.asset)}{escape(part)} ({r.policy}) {word}: run {r.run_id}"
        )
        lines += 1
    for e in automation.errors:
        render.console.print(f"  automation [red]error[/red] {escape(e)}")
        lines += 1
    if lines == 0:
        render.console.print("  nothing was due")
