"""Validation reports every problem of a project at once, each with file:line (H1, H3, A2)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from servo.core.errors import ValidationFailed
from servo.project import (
    ProjectError,
    build_bundle,
    code_version_of,
    find_project,
    load_and_build,
)

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "examples" / "broken"
QUICKSTART = ROOT / "examples" / "quickstart"


def _problems(project_dir: Path) -> list[tuple[str | None, str]]:
    with pytest.raises(ValidationFailed) as info:
        load_and_build(find_project(project_dir))
    return [(p.location, p.message) for p in info.value.problems]


def test_broken_example_reports_every_problem_with_its_line() -> None:
    problems = _problems(BROKEN)
    defs = str(BROKEN / "broken_shop" / "defs.py")
    by_line = {int(loc.rsplit(":", 1)[1]): msg for loc, msg in problems if loc}
    assert all(loc and loc.startswith(defs) for loc, _ in problems)
    assert len(problems) == 8
    assert "depends on `customer`" in by_line[23]
    assert "did you mean `customers`?" in by_line[23]
    assert "dependency cycle: `invoices` -> `payments` -> `refunds` -> `invoices`" in by_line[29]
    assert "asset `sessions`" in by_line[44]
    assert "2024-13-01" in by_line[44]
    assert "`daily_sales`" in by_line[54]
    assert "incompatible" in by_line[54]
    assert "`monthly_sales`" in by_line[59]
    assert "IdentityPartitionMapping" in by_line[59]
    assert "asset key `customers` is defined twice" in by_line[67]
    assert "'61 * * * *' is not a valid cron expression" in by_line[72]
    assert "'Mars/Olympus_Mons' is not an IANA timezone" in by_line[73]


def test_problems_are_sorted_by_line() -> None:
    lines = [int(loc.rsplit(":", 1)[1]) for loc, _ in _problems(BROKEN) if loc]
    assert lines == sorted(lines)


def test_quickstart_is_valid() -> None:
    _, manifest = load_and_build(find_project(QUICKSTART))
    assert len(manifest.assets) >= 6
    assert len(manifest.checks) == 2
    assert [s.name for s in manifest.schedules] == ["nightly_orders"]
    assert manifest.code_version == code_version_of(QUICKSTART)


def _project(tmp_path: Path, source: str) -> Path:
    (tmp_path / "pyproject.toml").write_text('[tool.servo]\nmodule = "proj.defs"\n')
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "defs.py").write_text(textwrap.dedent(source))
    return tmp_path


def test_asset_misuse_names_the_asset_problem_and_fix(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        """
        from servo import Definitions, RetryPolicy, asset

        @asset(retry_policy=RetryPolicy(max_retries=-1), automation="sometimes", timeout=-5)
        def orders(*rows):
            return rows

        defs = Definitions(assets=[orders])
        """,
    )
    messages = [m for _, m in _problems(root)]
    text = "\n".join(messages)
    assert all(m.startswith("asset `orders`") for m in messages)
    assert "max_retries must be >= 0" in text
    assert "automation='sometimes' is not supported; use one of eager, on_missing" in text
    assert "timeout must be a positive number of seconds" in text
    assert "*args/**kwargs" in text


def test_import_error_is_reported_with_location(tmp_path: Path) -> None:
    root = _project(tmp_path, "from servo import asset\nraise RuntimeError('boom')\n")
    ((loc, msg),) = _problems(root)
    assert loc == f"{root / 'proj' / 'defs.py'}:2"
    assert "RuntimeError: boom" in msg


def test_missing_definitions_is_a_clear_error(tmp_path: Path) -> None:
    root = _project(tmp_path, "x = 1\n")
    with pytest.raises(ProjectError, match="defines no Definitions"):
        load_and_build(find_project(root))


def test_no_project_found(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match=r"\[tool.servo\]"):
        find_project(tmp_path)


def test_unknown_selection_in_schedule_target(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        """
        from servo import Definitions, ScheduleDefinition, asset

        @asset
        def orders():
            return 1

        s = ScheduleDefinition(name="s", cron_schedule="0 1 * * *", target="ordrs+")
        defs = Definitions(assets=[orders], schedules=[s])
        """,
    )
    ((_, msg),) = _problems(root)
    assert "schedule `s`" in msg
    assert "did you mean `orders`" in msg


def test_code_version_changes_with_any_source_file(tmp_path: Path) -> None:
    root = _project(tmp_path, "from servo import Definitions\ndefs = Definitions()\n")
    before = code_version_of(root)
    assert code_version_of(root) == before
    (root / "proj" / "helpers.py").write_text("X = 1\n")
    after = code_version_of(root)
    assert after != before
    (root / ".servo").mkdir()
    (root / ".servo" / "state.json").write_text("{}")
    assert code_version_of(root) == after, "runtime state is not part of the code bundle"


def test_bundle_is_deterministic(tmp_path: Path) -> None:
    root = _project(tmp_path, "from servo import Definitions\ndefs = Definitions()\n")
    assert build_bundle(root) == build_bundle(root)


def test_manifest_code_references_are_relative(tmp_path: Path) -> None:
    root = _project(
        tmp_path,
        """
        from servo import Definitions, asset, asset_check

        @asset
        def a():
            return 1

        @asset_check(asset=a)
        def a_ok(a):
            return True

        defs = Definitions(assets=[a], asset_checks=[a_ok])
        """,
    )
    _, manifest = load_and_build(find_project(root))
    refs = [x.code for x in manifest.assets] + [c.code for c in manifest.checks]
    assert [r.file for r in refs] == ["proj/defs.py", "proj/defs.py"]
    assert str(tmp_path) not in manifest.canonical()
