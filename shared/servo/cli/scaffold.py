"""``servo init``: a new project that validates and runs as created."""

from __future__ import annotations

import re
from pathlib import Path

from servo.core.errors import ServoError

PYPROJECT = """\
[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["servo"]

[tool.servo]
module = "{package}.defs"
"""

DEFS = '''\
"""{name}: the assets of this project. Run them with `servo run '*' --partition 2024-01-01`."""

from __future__ import annotations

from servo import (
    AssetExecutionContext,
    CheckResult,
    DailyPartitionsDefinition,
    Definitions,
    RetryPolicy,
    ScheduleDefinition,
    asset,
    asset_check,
)

daily = DailyPartitionsDefinition(start_date="2024-01-01")


@asset(partitions=daily, group="raw", retry_policy=RetryPolicy(max_retries=2, delay=1))
def events(context: AssetExecutionContext) -> list[dict[str, int]]:
    """One day of (generated) events; replace this with a real source."""
    day = int((context.partition_key or "0").replace("-", ""))
    context.log.info("loading events for %s", context.partition_key)
    return [{{"user": (day + i) % 7, "value": (day * i) % 100}} for i in range(20)]


@asset(partitions=daily, group="analytics")
def daily_totals(events: list[dict[str, int]]) -> dict[str, int]:
    """Event count and value sum of the day."""
    return {{"events": len(events), "value": sum(e["value"] for e in events)}}


@asset_check(asset=daily_totals, blocking=True)
def has_events(daily_totals: dict[str, int]) -> CheckResult:
    """A day without events usually means the source failed."""
    return CheckResult(passed=daily_totals["events"] > 0)


nightly = ScheduleDefinition(name="nightly", cron_schedule="0 2 * * *", target="events*")

defs = Definitions(assets=[events, daily_totals], asset_checks=[has_events], schedules=[nightly])
'''

TEST = """\
from servo.testing import materialize_asset

from {package}.defs import daily_totals


def test_daily_totals_counts_events() -> None:
    result = materialize_asset(daily_totals, inputs={{"events": [{{"user": 1, "value": 5}}]}})
    assert result.value == {{"events": 1, "value": 5}}
"""


def scaffold(directory: Path, name: str | None = None) -> list[Path]:
    """Create a project in ``directory`` (which must be empty or absent)."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ServoError(f"{directory} is not empty; choose a new directory for the project")
    project = name or directory.resolve().name
    package = re.sub(r"[^0-9a-zA-Z_]", "_", project).lower()
    if not package or package[0].isdigit():
        package = f"p_{package}"
    files = {
        directory / "pyproject.toml": PYPROJECT.format(name=project, package=package),
        directory / package / "__init__.py": "",
        directory / package / "defs.py": DEFS.format(name=project),
        directory / "tests" / "test_assets.py": TEST.format(package=package),
        directory / ".gitignore": ".servo/\n__pycache__/\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)
