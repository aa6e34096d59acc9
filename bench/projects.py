"""Generated benchmark projects: one shape, rendered as a Servo project or a Dagster project.

A :class:`ProjectShape` says which assets exist, how they depend on each other, which are
daily-partitioned, and which have checks and schedules. The two renderers write the same shape
as a package of one module per group plus a ``defs`` module that lists everything, the way a
real project of that size is laid out, so both orchestrators load equivalent code.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "benchproj"
DOMAINS = ("orders", "billing", "users", "marketing", "inventory", "support", "finance", "ops")
TIERS = ("bronze", "silver", "gold")


@dataclass(frozen=True)
class AssetShape:
    """One asset: its upstream assets (loaded as inputs) and how it is described."""

    name: str
    group: str
    deps: tuple[str, ...] = ()
    partitioned: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    kind: str | None = None
    check: str | None = None  # "blocking" or "warn": the asset has a check of that kind


@dataclass(frozen=True)
class ProjectShape:
    """A whole project. Partitioned assets share one daily partitions definition that has
    ``partition_days`` partitions from ``PARTITION_START``."""

    assets: tuple[AssetShape, ...]
    partition_days: int = 0
    scheduled_groups: tuple[str, ...] = ()

    @property
    def groups(self) -> list[str]:
        return sorted({a.group for a in self.assets})

    @property
    def check_count(self) -> int:
        return sum(1 for a in self.assets if a.check)


PARTITION_START = "2024-01-01"


def _day_after(start: str, days: int) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(start) + timedelta(days=days)).isoformat()


def partition_range(days: int) -> tuple[str, str]:
    """The first and last (inclusive) partition keys of a ``days``-day definition."""
    return PARTITION_START, _day_after(PARTITION_START, days - 1)


def realistic(
    n_assets: int, *, group_size: int = 50, partition_days: int = 100, all_partitioned: bool = False
) -> ProjectShape:
    """Groups of chains and fan-ins with cross-group edges, a third of the groups partitioned
    daily (all of them with ``all_partitioned``), tags, owners and kinds on every asset, a
    check on every tenth asset and a schedule on a few unpartitioned groups.

    A partitioned asset only reads partitioned assets (identity mapping) or unpartitioned
    ones; an unpartitioned asset may read anything.
    """
    rng = random.Random(20240101)
    n_groups = max(1, -(-n_assets // group_size))
    assets: list[AssetShape] = []
    by_group: dict[int, list[AssetShape]] = {}
    for i in range(n_assets):
        g = i // group_size
        group = f"g{g:02d}"
        partitioned = all_partitioned or g % 3 == 0
        mine = by_group.setdefault(g, [])
        earlier = [a for gg in range(g) for a in by_group[gg][-5:]]
        candidates = [a for a in mine if a.partitioned or not partitioned]
        outside = [a for a in earlier if a.partitioned or not partitioned]
        roll = rng.random()
        deps: list[str] = []
        if not candidates or roll < 0.1:
            pass  # a source
        elif roll < 0.65:
            deps.append(candidates[-1].name)  # continues a chain
        else:
            width = min(len(candidates), rng.randint(2, 4))
            deps.extend(a.name for a in rng.sample(candidates, width))  # fans in
        if outside and rng.random() < 0.15:
            deps.append(rng.choice(outside).name)
        depth_tier = TIERS[min(2, (i % group_size) * 3 // group_size)]
        domain = DOMAINS[g % len(DOMAINS)]
        shape = AssetShape(
            name=f"{group}_a{i % group_size:03d}",
            group=group,
            deps=tuple(dict.fromkeys(deps)),
            partitioned=partitioned,
            tags={"domain": domain, "tier": depth_tier},
            owner=f"{domain}-team@example.com",
            kind="sql" if i % 4 == 0 else "python",
            check=("blocking" if i % 20 == 9 else "warn") if i % 10 == 9 else None,
        )
        mine.append(shape)
        assets.append(shape)
    unpartitioned_groups = [g for g in range(n_groups) if not (all_partitioned or g % 3 == 0)]
    scheduled = tuple(f"g{g:02d}" for g in unpartitioned_groups[:5])
    uses_partitions = any(a.partitioned for a in assets)
    return ProjectShape(
        assets=tuple(assets),
        partition_days=partition_days if uses_partitions else 0,
        scheduled_groups=scheduled,
    )


def chain(length: int) -> ProjectShape:
    """``a000 -> a001 -> ... -> a{length-1}``, unpartitioned."""
    names = [f"a{i:03d}" for i in range(length)]
    return ProjectShape(
        assets=tuple(
            AssetShape(name=n, group="chain", deps=(names[i - 1],) if i else ())
            for i, n in enumerate(names)
        )
    )


def fan_out(width: int) -> ProjectShape:
    """``root -> mid000..mid{width-1} -> sink``: the sink reads every middle asset."""
    mids = [f"mid{i:03d}" for i in range(width)]
    return ProjectShape(
        assets=(
            AssetShape(name="root", group="fan"),
            *(AssetShape(name=m, group="fan", deps=("root",)) for m in mids),
            AssetShape(name="sink", group="fan", deps=tuple(mids)),
        )
    )


# ---------------------------------------------------------------------------------------------
# Rendering


def _module_of(shape: ProjectShape) -> dict[str, list[AssetShape]]:
    out: dict[str, list[AssetShape]] = {}
    for a in shape.assets:
        out.setdefault(a.group, []).append(a)
    return out


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_servo(shape: ProjectShape, root: Path) -> Path:
    """Write ``shape`` as a Servo project under ``root`` (created); returns ``root``."""
    _write(
        root,
        "pyproject.toml",
        f'[project]\nname = "{PACKAGE}"\nversion = "0.1.0"\n\n'
        f'[tool.servo]\nmodule = "{PACKAGE}.defs"\n',
    )
    _write(root, f"{PACKAGE}/__init__.py", '"""A generated benchmark project."""\n')
    if shape.partition_days:
        end = _day_after(PARTITION_START, shape.partition_days)
        _write(
            root,
            f"{PACKAGE}/partitions.py",
            "from servo import DailyPartitionsDefinition\n\n"
            f'daily = DailyPartitionsDefinition(start_date="{PARTITION_START}", end_date="{end}")\n',
        )
    for group, members in _module_of(shape).items():
        lines = [
            f'"""Assets of group {group}."""\n',
            "from servo import CheckResult, Severity, asset, asset_check\n",
        ]
        if any(a.partitioned for a in members):
            lines.append(f"from {PACKAGE}.partitions import daily\n")
        for a in members:
            args = [f'group="{a.group}"']
            if a.partitioned:
                args.append("partitions=daily")
            if a.tags:
                args.append(f"tags={a.tags!r}")
            if a.owner:
                args.append(f'owners=["{a.owner}"]')
            if a.kind:
                args.append(f'kinds=["{a.kind}"]')
            lines.append(_function("@asset(" + ", ".join(args) + ")", a))
            if a.check:
                blocking = a.check == "blocking"
                severity = "Severity.ERROR" if blocking else "Severity.WARN"
                lines.append(
                    f"\n\n@asset_check(asset={a.name}, blocking={blocking})\n"
                    f"def {a.name}_is_present({a.name}):\n"
                    f'    """{a.name} has a value."""\n'
                    f"    return CheckResult(passed={a.name} is not None, severity={severity})\n"
                )
        _write(root, f"{PACKAGE}/{group}.py", "".join(lines))
    _write(root, f"{PACKAGE}/defs.py", _defs_module(shape, "servo"))
    return root


def write_dagster(shape: ProjectShape, root: Path) -> Path:
    """Write ``shape`` as the equivalent Dagster project under ``root``; returns ``root``."""
    _write(root, f"{PACKAGE}/__init__.py", '"""A generated benchmark project."""\n')
    if shape.partition_days:
        end = _day_after(PARTITION_START, shape.partition_days)
        _write(
            root,
            f"{PACKAGE}/partitions.py",
            "import dagster as dg\n\n"
            f'daily = dg.DailyPartitionsDefinition(start_date="{PARTITION_START}", end_date="{end}")\n',
        )
    for group, members in _module_of(shape).items():
        lines = [f'"""Assets of group {group}."""\n', "import dagster as dg\n"]
        if any(a.partitioned for a in members):
            lines.append(f"from {PACKAGE}.partitions import daily\n")
        for a in members:
            args = [f'group_name="{a.group}"']
            if a.partitioned:
                args.append("partitions_def=daily")
            if a.tags:
                args.append(f"tags={a.tags!r}")
            if a.owner:
                args.append(f'owners=["{a.owner}"]')
            if a.kind:
                args.append(f'kinds={{"{a.kind}"}}')
            lines.append(_function("@dg.asset(" + ", ".join(args) + ")", a))
            if a.check:
                blocking = a.check == "blocking"
                severity = "ERROR" if blocking else "WARN"
                lines.append(
                    f"\n\n@dg.asset_check(asset={a.name}, blocking={blocking})\n"
                    f"def {a.name}_is_present({a.name}):\n"
                    f'    """{a.name} has a value."""\n'
                    f"    return dg.AssetCheckResult(passed={a.name} is not None, "
                    f"severity=dg.AssetCheckSeverity.{severity})\n"
                )
        _write(root, f"{PACKAGE}/{group}.py", "".join(lines))
    _write(root, f"{PACKAGE}/defs.py", _defs_module(shape, "dagster"))
    return root


def _function(decorator: str, a: AssetShape) -> str:
    params = ", ".join(a.deps)
    return (
        f"\n\n{decorator}\ndef {a.name}({params}):\n"
        f'    """{a.name}: {len(a.deps)} upstream asset(s)."""\n'
        "    return 1\n"
    )


def _defs_module(shape: ProjectShape, flavour: str) -> str:
    groups = list(_module_of(shape))
    asset_refs = "".join(f"    {a.group}.{a.name},\n" for a in shape.assets)
    check_refs = "".join(f"    {a.group}.{a.name}_is_present,\n" for a in shape.assets if a.check)
    imports = "\n".join(f"from {PACKAGE} import {g}" for g in groups)
    if flavour == "servo":
        head = "from servo import Definitions, ScheduleDefinition\n"
        schedules = "".join(
            f'    ScheduleDefinition(name="{g}_nightly", cron_schedule="0 2 * * *", '
            f'target="group:{g}"),\n'
            for g in shape.scheduled_groups
        )
        ctor = "Definitions"
    else:
        head = "import dagster as dg\n"
        schedules = "".join(
            f'    dg.ScheduleDefinition(name="{g}_nightly", cron_schedule="0 2 * * *", '
            f'target=dg.AssetSelection.groups("{g}")),\n'
            for g in shape.scheduled_groups
        )
        ctor = "dg.Definitions"
    body = textwrap.dedent(
        """\
        ASSETS = [
        {assets}]
        CHECKS = [
        {checks}]
        SCHEDULES = [
        {schedules}]
        defs = {ctor}(assets=ASSETS, asset_checks=CHECKS, schedules=SCHEDULES)
        """
    )
    text = body.format(assets=asset_refs, checks=check_refs, schedules=schedules, ctor=ctor)
    return f'"""Everything the project defines."""\n{head}{imports}\n\n{text}'
