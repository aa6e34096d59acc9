"""The manifest: a versioned, canonical JSON document of everything a project defines.

The manifest is what the control plane knows about a project. It is produced by loading the
user's code (``servo.project``), stored with the code bundle at deploy time, and read by the
planner, the schedulers and the views. Nothing in it refers to Python objects: partitions and
mappings are stored as their specs, functions as code references.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from servo.core.canonical import canonical_json, sha256_hex
from servo.core.graph import AssetGraph, AssetNode
from servo.core.keys import AssetKey

MANIFEST_SCHEMA_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CodeRef(_Frozen):
    """Where a function is defined: importable module and attribute, plus file:line."""

    module: str
    name: str
    file: str | None = None
    line: int | None = None

    def location(self) -> str:
        if self.file is None:
            return f"{self.module}.{self.name}"
        return f"{self.file}:{self.line}" if self.line else self.file


class RetryPolicySpec(_Frozen):
    max_retries: int = 0
    delay_ms: int = 0
    backoff: Literal["constant", "linear", "exponential"] = "constant"
    jitter: Literal["none", "full", "plus_minus"] = "none"
    max_delay_ms: int | None = None


class DepSpec(_Frozen):
    """One dependency edge: ``asset`` is upstream of the asset holding this spec."""

    asset: str
    input_name: str | None = None  # None for a non-data dependency (deps=)
    mapping: dict[str, Any] | None = None  # explicit partition mapping spec, if given


class AssetSpec(_Frozen):
    key: str
    deps: tuple[DepSpec, ...] = ()
    group: str = "default"
    tags: dict[str, str] = Field(default_factory=dict)
    owners: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    description: str | None = None
    code_version: str | None = None
    retry_policy: RetryPolicySpec | None = None
    timeout_ms: int | None = None
    partitions: dict[str, Any] | None = None
    pool: str | None = None
    automation: str | None = None
    io_manager: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    context_param: str | None = None
    code: CodeRef


class CheckSpec(_Frozen):
    name: str
    asset: str
    blocking: bool = False
    description: str | None = None
    code: CodeRef

    @property
    def id(self) -> str:
        return f"{self.asset}:{self.name}"


class ScheduleSpec(_Frozen):
    name: str
    cron: str
    timezone: str = "UTC"
    target: str
    description: str | None = None
    default_status: Literal["running", "stopped"] = "running"
    tags: dict[str, str] = Field(default_factory=dict)
    code: CodeRef | None = None  # a custom schedule function, if any


class SensorSpec(_Frozen):
    name: str
    kind: str = "custom"  # custom | gcs | pubsub | run_status
    target: str | None = None
    description: str | None = None
    minimum_interval_s: int = 30
    default_status: Literal["running", "stopped"] = "running"
    config: dict[str, Any] = Field(default_factory=dict)
    code: CodeRef | None = None


class Manifest(_Frozen):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    project: str
    code_version: str
    assets: tuple[AssetSpec, ...] = ()
    checks: tuple[CheckSpec, ...] = ()
    schedules: tuple[ScheduleSpec, ...] = ()
    sensors: tuple[SensorSpec, ...] = ()
    pools: dict[str, int] = Field(default_factory=dict)

    def to_json_obj(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def canonical(self) -> str:
        return canonical_json(self.to_json_obj())

    @cached_property
    def manifest_id(self) -> str:
        """Content hash of the canonical manifest ("m" + 24 hex digits)."""
        return "m" + sha256_hex(self.canonical())[:24]

    @classmethod
    def from_json_obj(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version", MANIFEST_SCHEMA_VERSION)
        if version > MANIFEST_SCHEMA_VERSION:
            raise ValueError(
                f"manifest schema version {version} is newer than this Servo understands "
                f"({MANIFEST_SCHEMA_VERSION}); upgrade Servo"
            )
        return cls.model_validate(data)

    @cached_property
    def assets_by_key(self) -> dict[str, AssetSpec]:
        return {a.key: a for a in self.assets}

    def asset(self, key: AssetKey | str) -> AssetSpec:
        return self.assets_by_key[str(key)]

    @cached_property
    def checks_by_asset(self) -> dict[str, tuple[CheckSpec, ...]]:
        out: dict[str, list[CheckSpec]] = {}
        for c in self.checks:
            out.setdefault(c.asset, []).append(c)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def graph(self) -> AssetGraph:
        return build_graph(self.assets)


def build_graph(assets: Iterable[AssetSpec]) -> AssetGraph:
    assets = list(assets)
    nodes = [
        AssetNode(
            key=AssetKey.parse(a.key),
            group=a.group,
            tags=dict(a.tags),
            owners=tuple(a.owners),
            kinds=tuple(a.kinds),
        )
        for a in assets
    ]
    edges = [(AssetKey.parse(d.asset), AssetKey.parse(a.key)) for a in assets for d in a.deps]
    return AssetGraph(nodes, edges)
