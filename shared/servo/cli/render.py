"""Terminal output: rich tables on a terminal, plain lines otherwise, JSON on request."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

STATE_STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "SKIPPED": "yellow",
    "CANCELLED": "magenta",
    "CANCELLING": "magenta",
    "TIMED_OUT": "red",
    "RUNNING": "cyan",
    "DISPATCHED": "cyan",
    "STARTING": "cyan",
    "RETRY_WAIT": "yellow",
    "READY": "white",
    "BLOCKED": "dim",
    "QUEUED": "dim",
}

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def is_tty() -> bool:
    return sys.stdout.isatty()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def relative(location: str) -> str:
    """A file:line location relative to the working directory when it is inside it."""
    try:
        return str(Path(location).relative_to(Path.cwd()))
    except ValueError:
        return location


def when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: int | None, end: int | None) -> str:
    if not start or not end:
        return "-"
    secs = (end - start) / 1000
    return f"{secs:.2f}s" if secs < 120 else f"{secs / 60:.1f}m"


def styled(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def run_summary(summary: dict[str, Any]) -> None:
    header = (
        f"run {summary['run_id']}  {styled(summary['state'])}  "
        f"code {summary['code_version']}  trigger {summary.get('trigger', {}).get('type', '-')}"
    )
    console.print(header)
    if summary.get("run_key"):
        console.print(f"run_key {summary['run_key']}", markup=False)
    console.print(
        f"started {when(summary.get('started_ms'))}  ended {when(summary.get('ended_ms'))}  "
        f"duration {duration(summary.get('created_ms'), summary.get('ended_ms'))}"
    )
    table = Table(show_edge=False, pad_edge=False, box=None)
    for col in ("asset", "partition", "state", "attempts", "duration", "detail"):
        table.add_column(col)
    for t in summary["tasks"]:
        detail = t.get("error") or ("" if t["state"] == "SUCCEEDED" else (t.get("reason") or ""))
        table.add_row(
            escape(t["asset"]),
            escape(t.get("partition") or ""),
            styled(t["state"]),
            str(t["attempts"]),
            duration(t.get("started_ms"), t.get("ended_ms")),
            escape(detail),
        )
    console.print(table)
