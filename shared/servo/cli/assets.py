"""``servo asset …`` and ``servo admin …``, and the projection-backed ``status``/``events``.

The commands read the projections (``servo.projections.query``): compact Parquet files plus
the live tail of events not compacted yet.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from servo.cli import render
from servo.core.errors import ServoError

asset_app = typer.Typer(
    name="asset",
    help="Assets: materializations, partition status, check results.",
    no_args_is_help=True,
)
admin_app = typer.Typer(
    name="admin",
    help="Administration: compact and rebuild the projections.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
STATUS_STYLE = {"MATERIALIZED": "green", "FAILED": "red", "STALE": "yellow", "MISSING": "dim"}
_RELATIVE = re.compile(r"(\d+)\s*([smhdw])\Z")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _fail(message: str) -> typer.Exit:
    render.err_console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(1)


def _ports() -> Any:
    from servo.cli.workspace import locate, open_workspace

    try:
        return open_workspace(locate(required=False)).ports
    except ServoError as exc:
        raise _fail(str(exc)) from None


def parse_since(text: str, now: datetime) -> int:
    """``--since`` as epoch milliseconds: ``2h``, ``3d``, ``2024-01-05`` or an ISO datetime."""
    m = _RELATIVE.match(text.strip())
    if m:
        delta = timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        return int((now - delta).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ServoError(
            f"--since {text!r} is neither a duration (30m, 2h, 7d) nor an ISO date or time "
            "(2024-01-05, 2024-01-05T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_tags(tags: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise ServoError(f"--tag {t!r} must be written key=value")
        out[k] = v
    return out


# ----------------------------------------------------------------------------- status, events


def show_status(
    run_id: str | None,
    *,
    limit: int,
    state: str | None,
    asset: str | None,
    tags: list[str],
    since: str | None,
    as_json: bool,
) -> None:
    """``servo status [RUN_ID]`` from the projections (exit 1 unless the run succeeded)."""
    from servo.projections.query import list_runs, run_view

    ports = _ports()
    if run_id:
        try:
            summary = run_view(ports, run_id)
        except ServoError as exc:
            raise _fail(str(exc)) from None
        if as_json:
            render.print_json(summary)
        else:
            render.run_summary(summary)
        raise typer.Exit(0 if summary["state"] == "SUCCEEDED" else 1)
    try:
        since_ms = parse_since(since, ports.clock.now()) if since else None
        runs = list_runs(
            ports, state=state, asset=asset, tags=parse_tags(tags), since_ms=since_ms, limit=limit
        )
    except ServoError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        render.print_json(runs)
        return
    if not runs:
        render.console.print("No runs yet. Start one with `servo run SELECTION`.")
        return
    table = Table(show_edge=False, pad_edge=False, box=None)
    for col in ("run", "state", "selection", "tasks", "created", "duration"):
        table.add_column(col)
    for r in runs:
        table.add_row(
            r["run_id"],
            render.styled(r["state"]),
            escape(r.get("selection") or ""),
            str(r.get("task_count")),
            render.when(r.get("created_ms")),
            render.duration(r.get("created_ms"), r.get("ended_ms")),
        )
    render.console.print(table)


def show_events(run_id: str, as_json: bool) -> None:
    """``servo events RUN_ID``: every event of the run in causal order."""
    from servo.projections.query import run_events

    ports = _ports()
    evs = run_events(ports, run_id)
    if not evs:
        raise _fail(f"no events for run {run_id}; `servo status` lists recent runs")
    if as_json:
        render.print_json(evs)
        return
    for e in evs:
        data = e.get("data") or {}
        what = ""
        if "to" in data:
            what = f"{data.get('from')} -> {data.get('to')}  {data.get('reason') or ''}"
        elif e["type"].endswith("materialized"):
            what = f"{data.get('asset')} {data.get('partition') or ''} -> {data.get('output_path')}"
        elif "reason" in data:
            what = str(data["reason"])
        subject = e.get("task_id") or ""
        attempt = f"#{e['attempt']}" if e.get("attempt") else ""
        render.console.print(
            f"{e['time']}  {e['type']:<32} {subject}{attempt}  {what}  ({e.get('actor')})",
            markup=False,
        )


# ----------------------------------------------------------------------------- asset


@asset_app.command("show")
def asset_show(
    key: Annotated[str, typer.Argument(help="Asset key, e.g. analytics/orders.")],
    materializations: Annotated[
        int, typer.Option("--materializations", "-n", help="How many recent materializations.")
    ] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Show an asset: recent materializations, partition status and latest check results."""
    from servo.projections.query import asset_view

    ports = _ports()
    try:
        view = asset_view(ports, key, materializations=materializations)
    except ServoError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        render.print_json(view)
        return
    counts = view["partition_counts"]
    summary = "  ".join(
        f"[{STATUS_STYLE[s]}]{s.lower()} {n}[/{STATUS_STYLE[s]}]" for s, n in counts.items() if n
    )
    render.console.print(
        f"asset [bold]{escape(key)}[/bold]  {view['materialization_count']} materializations  "
        f"{summary}"
    )
    if view["materializations"]:
        table = Table(show_edge=False, pad_edge=False, box=None, title="materializations")
        for col in ("when", "partition", "run", "size", "read from"):
            table.add_column(col)
        for m in view["materializations"]:
            ups = ", ".join(
                u["asset"] + (f":{u['partition']}" if u["partition"] else "") for u in m["upstream"]
            )
            table.add_row(
                render.when(m["time_ms"]),
                escape(m["partition"] or ""),
                m["run_id"] or "",
                str(m["size"] or 0),
                escape(ups),
            )
        render.console.print(table)
    interesting = [p for p in view["partitions"] if p["status"] != "MATERIALIZED"]
    if interesting:
        table = Table(show_edge=False, pad_edge=False, box=None, title="partitions needing work")
        for col in ("partition", "status", "detail"):
            table.add_column(col)
        for p in interesting[:50]:
            style = STATUS_STYLE[p["status"]]
            table.add_row(
                escape(p["partition"] or "(unpartitioned)"),
                f"[{style}]{p['status']}[/{style}]",
                escape(p.get("failure") or ""),
            )
        if len(interesting) > 50:
            table.add_row(f"… {len(interesting) - 50} more", "", "")
        render.console.print(table)
    if view["checks"]:
        table = Table(show_edge=False, pad_edge=False, box=None, title="checks (latest)")
        for col in ("check", "partition", "result", "severity", "when"):
            table.add_column(col)
        for c in view["checks"]:
            result = "[green]passed[/green]" if c["passed"] else "[red]failed[/red]"
            table.add_row(
                escape(c["check"]),
                escape(c["partition"] or ""),
                result,
                c["severity"] or "",
                render.when(c["time_ms"]),
            )
        render.console.print(table)


# ----------------------------------------------------------------------------- admin


@admin_app.command("compact")
def admin_compact(as_json: JsonOpt = False) -> None:
    """Fold the events waiting in the ledger into the projections now."""
    from servo.projections.compaction import Compactor

    ports = _ports()
    try:
        result = Compactor(ports).compact()
    except ServoError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        render.print_json(result.to_json())
        return
    render.console.print(
        f"compacted {result.stats.events} events from {result.segments} segments "
        f"({result.published} publications, {result.merges} merges, {result.collected} files "
        f"collected); projections at segment {result.watermark}, epoch {result.epoch}"
    )


@admin_app.command("rebuild-projections")
def admin_rebuild(
    check: Annotated[
        bool, typer.Option("--check", help="Only compare; exit 1 if anything differs.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Recompute every projection from the ledger alone and compare it with the published one;
    replace the published tables when they differ or cannot be read (unless --check)."""
    from servo.projections.rebuild import rebuild_projections

    ports = _ports()
    try:
        report = rebuild_projections(ports, repair=not check)
    except ServoError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        render.print_json(report.to_json())
    else:
        table = Table(show_edge=False, pad_edge=False, box=None)
        for col in ("table", "version", "published", "rebuilt", "result"):
            table.add_column(col)
        for t in report.tables:
            result = "[green]equal[/green]" if t.equal else "[red]differs[/red]"
            table.add_row(
                t.name,
                f"v{t.version}",
                "-" if t.published_rows is None else str(t.published_rows),
                str(t.rebuilt_rows),
                result,
            )
        render.console.print(table)
        for t in report.tables:
            if t.problem:
                render.console.print(f"  {t.name}: {t.problem}", markup=False)
        if report.equal:
            verdict = "the published projections equal the ledger's fold"
        elif report.repaired:
            verdict = "the published projections differed and were replaced by the rebuild"
        else:
            verdict = "the published projections differ from the ledger's fold"
        render.console.print(f"{report.events} events up to segment {report.watermark}: {verdict}")
    raise typer.Exit(0 if report.equal or report.repaired else 1)
