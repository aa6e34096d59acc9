"""``Definitions``: everything a project defines, in one object."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from servo.sdk.assets import AssetsDefinition
from servo.sdk.checks import AssetCheckDefinition
from servo.sdk.schedules import ScheduleDefinition, SensorDefinition


@dataclass
class Definitions:
    """The assets, checks, schedules and sensors of a project.

    ``pools`` sets the concurrency limit of named pools (``@asset(pool="warehouse")``);
    ``resources`` are objects handed to assets through ``context.resources``.
    A project names the module holding its ``Definitions`` in ``pyproject.toml``::

        [tool.servo]
        module = "my_project.defs"
    """

    assets: Iterable[AssetsDefinition] = ()
    asset_checks: Iterable[AssetCheckDefinition] = ()
    schedules: Iterable[ScheduleDefinition] = ()
    sensors: Iterable[SensorDefinition] = ()
    pools: Mapping[str, int] = field(default_factory=dict)
    resources: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.assets = list(self.assets)
        self.asset_checks = list(self.asset_checks)
        self.schedules = list(self.schedules)
        self.sensors = list(self.sensors)
        self.pools = dict(self.pools)
        self.resources = dict(self.resources)

    def get_asset(self, key: str) -> AssetsDefinition:
        for a in self.assets:
            if a.key_text == key:
                return a
        raise KeyError(key)

    def get_sensor(self, name: str) -> SensorDefinition:
        for s in self.sensors:
            if s.name == name:
                return s
        raise KeyError(name)

    def get_schedule(self, name: str) -> ScheduleDefinition:
        for s in self.schedules:
            if s.name == name:
                return s
        raise KeyError(name)

    def checks_of(self, key: str) -> list[AssetCheckDefinition]:
        return [c for c in self.asset_checks if c.asset_text == key]

    def validate(self) -> None:
        """Raise ``ValidationFailed`` listing every problem of these definitions."""
        from servo.project import build_manifest

        build_manifest(
            self, project="definitions", code_version="unversioned", raise_on_problems=True
        )
