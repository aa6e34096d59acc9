"""Finding, loading and validating a user's project, and building its manifest.

A project is a directory with a ``pyproject.toml`` whose ``[tool.servo]`` table names the module
holding its :class:`~servo.Definitions` (``module = "pkg.defs"``), or any module/file given with
``-m``/``-f``. Loading imports the user's code; building the manifest validates everything and
reports *every* problem at once, each with file:line.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import io
import os
import sys
import tomllib
import traceback
import zipfile
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from croniter import croniter

from servo.core.errors import (
    DefinitionError,
    Problem,
    SelectionError,
    ServoError,
    ValidationFailed,
)
from servo.core.graph import AssetGraph, AssetNode
from servo.core.keys import AssetKey
from servo.core.manifest import (
    AssetSpec,
    CheckSpec,
    CodeRef,
    DepSpec,
    Manifest,
    RetryPolicySpec,
    ScheduleSpec,
    SensorSpec,
)
from servo.core.mappings import default_mapping
from servo.core.partitions import PartitionsDefinition
from servo.core.selection import parse_selection, resolve_selection
from servo.sdk._location import SourceLocation
from servo.sdk.assets import AssetsDefinition, Backoff, Jitter, RetryPolicy
from servo.sdk.definitions import Definitions

BUNDLE_SUFFIXES = (".py", ".toml", ".cfg", ".txt", ".json", ".yaml", ".yml", ".sql", ".csv")
SKIP_DIRS = frozenset(
    {
        ".servo",
        ".venv",
        "venv",
        "__pycache__",
        ".git",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        ".nox",
        "build",
        "dist",
        "node_modules",
    }
)


class ProjectError(ServoError):
    """The project cannot be found or imported."""


@dataclass(frozen=True)
class ProjectRef:
    """How to find a project's definitions: a root and a module name or a file."""

    root: Path
    module: str | None = None
    file: Path | None = None
    name: str = "project"

    def to_json(self) -> dict[str, str | None]:
        return {
            "root": str(self.root),
            "module": self.module,
            "file": str(self.file) if self.file else None,
            "name": self.name,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProjectRef:
        return cls(
            root=Path(data["root"]),
            module=data.get("module"),
            file=Path(data["file"]) if data.get("file") else None,
            name=data.get("name") or "project",
        )


def find_project(
    start: Path | None = None, *, module: str | None = None, file: Path | None = None
) -> ProjectRef:
    """Locate the project from ``start`` (default: the working directory) upwards."""
    here = (start or Path.cwd()).resolve()
    if file is not None:
        file = file.resolve()
        if not file.is_file():
            raise ProjectError(f"definitions file {file} does not exist")
        file_root = _pyproject_root(file.parent) or file.parent
        return ProjectRef(root=file_root, file=file, name=_project_name(file_root))
    root = _pyproject_root(here)
    if module is not None:
        return ProjectRef(root=root or here, module=module, name=_project_name(root or here))
    if root is None:
        raise ProjectError(
            f"no Servo project found in {here} or its parents: add a pyproject.toml with\n"
            '  [tool.servo]\n  module = "your_package.defs"\n'
            "or pass -m MODULE / -f FILE (servo init DIR scaffolds a project)"
        )
    conf = _servo_table(root)
    mod = conf.get("module")
    if not isinstance(mod, str) or not mod:
        raise ProjectError(
            f'{root / "pyproject.toml"} has no [tool.servo] module = "pkg.defs"; '
            "add it or pass -m MODULE"
        )
    return ProjectRef(root=root, module=mod, name=_project_name(root))


def _pyproject_root(start: Path) -> Path | None:
    for d in [start, *start.parents]:
        p = d / "pyproject.toml"
        if p.is_file() and "servo" in _tool_tables(p):
            return d
    return None


def _tool_tables(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    tool = data.get("tool", {})
    return tool if isinstance(tool, dict) else {}


def _servo_table(root: Path) -> dict[str, Any]:
    table = _tool_tables(root / "pyproject.toml").get("servo", {})
    return table if isinstance(table, dict) else {}


def _project_name(root: Path) -> str:
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
        name = data.get("project", {}).get("name")
        if isinstance(name, str) and name:
            return name
    except (OSError, tomllib.TOMLDecodeError):
        pass
    return root.name


def project_settings(ref: ProjectRef) -> dict[str, Any]:
    """The ``[tool.servo]`` table of the project (empty when there is none)."""
    return _servo_table(ref.root)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedProject:
    ref: ProjectRef
    defs: Definitions
    module: ModuleType


def _import_paths(root: Path) -> list[str]:
    paths = [str(root)]
    if (root / "src").is_dir():
        paths.insert(0, str(root / "src"))
    return paths


def load_project(ref: ProjectRef) -> LoadedProject:
    """Import the project's definitions module and return its ``Definitions``.

    Import errors become a ``ValidationFailed`` with the file:line of the failing line.
    """
    for p in reversed(_import_paths(ref.root)):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    if ref.module is not None:
        _forget_other_copies(ref.module.split(".")[0], ref.root)
    importlib.invalidate_caches()
    try:
        if ref.file is not None:
            mod_name = f"_servo_defs_{ref.file.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, ref.file)
            if spec is None or spec.loader is None:
                raise ProjectError(f"cannot import {ref.file}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            assert ref.module is not None
            module = importlib.import_module(ref.module)
    except ProjectError:
        raise
    except ModuleNotFoundError as exc:
        if ref.module and exc.name and ref.module.startswith(exc.name):
            raise ProjectError(
                f"module {ref.module!r} named in [tool.servo] cannot be found from {ref.root}; "
                "check the name (it is imported with the project root on sys.path)"
            ) from exc
        raise ValidationFailed([_problem_from_exception(exc, ref)]) from exc
    except Exception as exc:
        raise ValidationFailed([_problem_from_exception(exc, ref)]) from exc
    return LoadedProject(ref=ref, defs=_find_definitions(module, ref), module=module)


def _forget_other_copies(top: str, root: Path) -> None:
    """Drop already-imported modules of package ``top`` that come from another directory, so
    that loading a second project with the same package name imports its own code."""
    root_text = str(root.resolve())
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if not str(Path(origin).resolve()).startswith(root_text):
            del sys.modules[name]


def _problem_from_exception(exc: BaseException, ref: ProjectRef) -> Problem:
    frames = traceback.extract_tb(exc.__traceback__)
    root = str(ref.root)
    location = None
    for fr in reversed(frames):
        if fr.filename.startswith(root):
            location = f"{fr.filename}:{fr.lineno}"
            break
    if isinstance(exc, SyntaxError) and exc.filename:
        location = f"{exc.filename}:{exc.lineno}"
    kind = type(exc).__name__
    detail = str(exc) if isinstance(exc, (DefinitionError, ServoError)) else f"{kind}: {exc}"
    return Problem(f"importing the project failed: {detail}", location)


def _find_definitions(module: ModuleType, ref: ProjectRef) -> Definitions:
    defs = getattr(module, "defs", None)
    if isinstance(defs, Definitions):
        return defs
    found = [v for v in vars(module).values() if isinstance(v, Definitions)]
    if len(found) == 1:
        return found[0]
    where = ref.module or str(ref.file)
    if not found:
        raise ProjectError(
            f"{where} defines no Definitions; add `defs = Definitions(assets=[...])`"
        )
    raise ProjectError(
        f"{where} defines {len(found)} Definitions objects; name the one to use `defs`"
    )


# ---------------------------------------------------------------------------------------------
# Code bundle and code version


def iter_bundle_files(root: Path) -> Iterator[tuple[str, Path]]:
    """The project's source files as (posix relative path, absolute path), sorted."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")
        )
        for fn in filenames:
            if fn.endswith(BUNDLE_SUFFIXES) and not fn.startswith("."):
                full = Path(dirpath) / fn
                out.append((full.relative_to(root).as_posix(), full))
    out.sort()
    yield from out


def code_version_of(root: Path) -> str:
    """Content hash of the code bundle: changes when any source file changes."""
    h = hashlib.sha256()
    for rel, full in iter_bundle_files(root):
        data = full.read_bytes()
        h.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def build_bundle(root: Path) -> bytes:
    """A deterministic zip of the project's source files (fixed timestamps and modes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, full in iter_bundle_files(root):
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, full.read_bytes())
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Validation and manifest


@dataclass
class _Collector:
    problems: list[Problem] = field(default_factory=list)

    def add(self, message: str, location: SourceLocation | str | None = None) -> None:
        loc = location.render() if isinstance(location, SourceLocation) else location
        self.problems.append(Problem(message, loc))


def _code_ref(fn: Any, location: SourceLocation, root: Path | None) -> CodeRef:
    file = location.file
    if file is not None and root is not None:
        with contextlib.suppress(ValueError):
            file = Path(file).resolve().relative_to(root.resolve()).as_posix()
    return CodeRef(
        module=getattr(fn, "__module__", "") or "",
        name=getattr(fn, "__qualname__", getattr(fn, "__name__", "")) or "",
        file=file,
        line=location.line,
    )


def _retry_spec(policy: RetryPolicy | None) -> RetryPolicySpec | None:
    if policy is None:
        return None
    return RetryPolicySpec(
        max_retries=int(policy.max_retries),
        delay_ms=round(float(policy.delay) * 1000),
        backoff=Backoff(policy.backoff).value,
        jitter=Jitter(policy.jitter).value,
        max_delay_ms=round(float(policy.max_delay) * 1000)
        if policy.max_delay is not None
        else None,
    )


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if not close:
        # Also try matching on the last component, which is how people usually refer to assets.
        tails = {c.rsplit("/", 1)[-1]: c for c in candidates}
        close = [
            tails[t]
            for t in difflib.get_close_matches(
                name.rsplit("/", 1)[-1], list(tails), n=3, cutoff=0.6
            )
        ]
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"`{c}`" for c in close) + "?"


def _resolve_dep(text: str, downstream: AssetKey | None, known: set[str]) -> str | None:
    """Resolve a dependency written as ``text``: exact key, else a sibling in the same prefix."""
    if text in known:
        return text
    if downstream is not None and len(downstream.path) > 1 and "/" not in text:
        sibling = "/".join([*downstream.path[:-1], text])
        if sibling in known:
            return sibling
    return None


def build_manifest(
    defs: Definitions,
    *,
    project: str,
    code_version: str,
    raise_on_problems: bool = True,
    root: Path | None = None,
) -> tuple[Manifest | None, list[Problem]]:
    """Validate ``defs`` and build its manifest.

    Returns ``(manifest, [])`` when everything is valid, otherwise ``(None, problems)`` — or
    raises ``ValidationFailed`` with every problem when ``raise_on_problems``.
    """
    c = _Collector()
    assets: list[AssetsDefinition] = []
    for a in defs.assets:
        if not isinstance(a, AssetsDefinition):
            c.add(f"Definitions(assets=...) contains {a!r}, which is not an @asset")
            continue
        assets.append(a)

    # Keys: definition problems and duplicates.
    by_key: dict[str, AssetsDefinition] = {}
    for a in assets:
        for msg in a.problems:
            c.add(f"asset `{a.key_text}`: {msg}", a.location)
        if a.key_text in by_key:
            first = by_key[a.key_text].location.render()
            c.add(
                f"asset key `{a.key_text}` is defined twice (first at {first}); "
                "give one of them another name or key_prefix",
                a.location,
            )
        else:
            by_key[a.key_text] = a
    known = set(by_key)
    known_sorted = sorted(known)

    # Dependencies.
    resolved_deps: dict[str, list[DepSpec]] = {}
    for key_text, a in by_key.items():
        specs: list[DepSpec] = []
        seen: set[str] = set()
        for inp in a.inputs:
            if inp.key_text is None or inp.key is None:
                continue
            target = _resolve_dep(inp.key_text, a.key, known)
            if target is None:
                c.add(
                    f"asset `{key_text}` depends on `{inp.key_text}` (parameter `{inp.param}`), "
                    f"which is not defined{_suggest(inp.key_text, known_sorted)}",
                    a.location,
                )
                continue
            if target in seen:
                c.add(f"asset `{key_text}` lists `{target}` twice as an input", a.location)
                continue
            seen.add(target)
            specs.append(
                DepSpec(
                    asset=target,
                    input_name=inp.param,
                    mapping=inp.partition_mapping.to_spec() if inp.partition_mapping else None,
                )
            )
        for dkey, dtext, mapping in a.deps:
            if dkey is None:
                continue
            target = _resolve_dep(dtext, a.key, known)
            if target is None:
                c.add(
                    f"asset `{key_text}` has deps=[`{dtext}`], which is not defined"
                    f"{_suggest(dtext, known_sorted)}",
                    a.location,
                )
                continue
            if target in seen:
                continue
            seen.add(target)
            specs.append(
                DepSpec(
                    asset=target, input_name=None, mapping=mapping.to_spec() if mapping else None
                )
            )
        if key_text in seen:
            c.add(f"asset `{key_text}` depends on itself", a.location)
        resolved_deps[key_text] = sorted(specs, key=lambda d: d.asset)

    # Cycles (report each distinct cycle once).
    graph = AssetGraph(
        [AssetNode(AssetKey.parse(k)) for k in by_key if by_key[k].key is not None],
        [
            (AssetKey.parse(d.asset), AssetKey.parse(k))
            for k, ds in resolved_deps.items()
            for d in ds
            if by_key[k].key is not None and d.asset != k
        ],
    )
    cycle = graph.find_cycle()
    if cycle:
        path = " -> ".join(f"`{k}`" for k in cycle)
        c.add(
            f"dependency cycle: {path}; remove one of these dependencies",
            by_key[str(cycle[0])].location,
        )

    # Partition compatibility between each asset and its upstreams.
    for key_text, a in by_key.items():
        for dep in resolved_deps[key_text]:
            up = by_key[dep.asset]
            mapping_obj = None
            for inp in a.inputs:
                if inp.param == dep.input_name:
                    mapping_obj = inp.partition_mapping
            if dep.input_name is None:
                for dkey, _t, m in a.deps:
                    if dkey is not None and _resolve_dep(str(dkey), a.key, known) == dep.asset:
                        mapping_obj = m
            up_parts, down_parts = _valid_parts(up.partitions), _valid_parts(a.partitions)
            if mapping_obj is not None:
                for msg in mapping_obj.problems(up_parts, down_parts):
                    c.add(f"asset `{key_text}` input `{dep.asset}`: {msg}", a.location)
            elif (
                up_parts is not None
                and down_parts is not None
                and default_mapping(up_parts, down_parts) is None
            ):
                c.add(
                    f"asset `{key_text}` ({down_parts.describe()}) depends on `{dep.asset}` "
                    f"({up_parts.describe()}): these partitionings are incompatible without a "
                    "mapping; pass AssetIn(partition_mapping=...) or AssetDep(..., "
                    "partition_mapping=...)",
                    a.location,
                )

    # Checks.
    check_specs: list[CheckSpec] = []
    check_ids: set[str] = set()
    for chk in defs.asset_checks:
        for msg in chk.problems:
            c.add(f"check `{chk.name}`: {msg}", chk.location)
        target = _resolve_dep(chk.asset_text, None, known) if chk.asset_key else None
        if chk.asset_key is not None and target is None:
            c.add(
                f"check `{chk.name}` is for asset `{chk.asset_text}`, which is not defined"
                f"{_suggest(chk.asset_text, known_sorted)}",
                chk.location,
            )
            continue
        if target is None:
            continue
        cid = f"{target}:{chk.name}"
        if cid in check_ids:
            c.add(f"asset `{target}` has two checks named `{chk.name}`; rename one", chk.location)
            continue
        check_ids.add(cid)
        check_specs.append(
            CheckSpec(
                name=chk.name,
                asset=target,
                blocking=bool(chk.blocking),
                description=chk.description,
                code=_code_ref(chk.fn, chk.location, root),
            )
        )

    # Schedules and sensors: names, cron, timezone, targets.
    full_graph = AssetGraph(
        [
            AssetNode(
                a.key,
                group=a.group,
                tags=dict(a.tags),
                owners=tuple(a.owners),
                kinds=tuple(a.kinds),
            )
            for a in by_key.values()
            if a.key is not None
        ],
        [
            (AssetKey.parse(d.asset), AssetKey.parse(k))
            for k, ds in resolved_deps.items()
            for d in ds
        ],
    )
    schedule_specs: list[ScheduleSpec] = []
    names: set[str] = set()
    for s in defs.schedules:
        for msg in s.problems():
            c.add(msg, s.location)
        if s.name in names:
            c.add(
                f"schedule name `{s.name}` is used twice; schedule names must be unique", s.location
            )
        names.add(s.name)
        ok = True
        if isinstance(s.cron_schedule, str) and s.cron_schedule.strip():
            if not croniter.is_valid(s.cron_schedule):
                ok = False
                c.add(
                    f"schedule `{s.name}`: {s.cron_schedule!r} is not a valid cron expression; "
                    "write five fields, e.g. '0 1 * * *' for 01:00 every day",
                    s.location,
                )
        else:
            ok = False
        if not _valid_timezone(s.timezone):
            ok = False
            c.add(
                f"schedule `{s.name}`: timezone {s.timezone!r} is not an IANA timezone; "
                "use a name like 'UTC' or 'Europe/Berlin'",
                s.location,
            )
        sel = s.selection
        if sel is not None and not _check_selection(
            sel, full_graph, f"schedule `{s.name}`", s.location, c
        ):
            ok = False
        if ok and sel is not None and isinstance(s.name, str) and s.name:
            schedule_specs.append(
                ScheduleSpec(
                    name=s.name,
                    cron=s.cron_schedule,
                    timezone=s.timezone,
                    target=sel,
                    description=s.description,
                    default_status=s.default_status.value,
                    tags=dict(s.tags),
                    code=_code_ref(s.fn, s.location, root) if s.fn is not None else None,
                )
            )
    sensor_specs: list[SensorSpec] = []
    names = set()
    for sn in defs.sensors:
        for msg in sn.problems():
            c.add(msg, sn.location)
        if sn.name in names:
            c.add(
                f"sensor name `{sn.name}` is used twice; sensor names must be unique", sn.location
            )
        names.add(sn.name)
        sel = sn.selection
        ok = sel is None or _check_selection(sel, full_graph, f"sensor `{sn.name}`", sn.location, c)
        if ok and not sn.problems():
            sensor_specs.append(
                SensorSpec(
                    name=sn.name,
                    kind=sn.kind,
                    target=sel,
                    description=sn.description,
                    minimum_interval_s=int(sn.minimum_interval_seconds),
                    default_status=sn.default_status.value,
                    config=_jsonable(dict(sn.config)),
                    code=_code_ref(sn.fn, sn.location, root) if sn.fn is not None else None,
                )
            )

    for pool, limit in defs.pools.items():
        if not isinstance(pool, str) or not pool or not isinstance(limit, int) or limit < 1:
            c.add(f"pools[{pool!r}] = {limit!r}: a pool limit is a positive integer")

    if c.problems:
        problems = sorted(c.problems, key=_problem_order)
        if raise_on_problems:
            raise ValidationFailed(problems)
        return None, problems

    asset_specs = [
        AssetSpec(
            key=k,
            deps=tuple(resolved_deps[k]),
            group=a.group,
            tags=dict(a.tags),
            owners=tuple(a.owners),
            kinds=tuple(a.kinds),
            description=a.description,
            code_version=a.code_version,
            retry_policy=_retry_spec(a.retry_policy),
            timeout_ms=round(a.timeout * 1000) if a.timeout is not None else None,
            partitions=a.partitions.to_spec() if a.partitions is not None else None,
            pool=a.pool,
            automation=a.automation,
            io_manager=a.io_manager,
            metadata=dict(a.metadata),
            context_param=a.context_param,
            code=_code_ref(a.fn, a.location, root),
        )
        for k, a in sorted(by_key.items())
    ]
    manifest = Manifest(
        project=project,
        code_version=code_version,
        assets=tuple(asset_specs),
        checks=tuple(sorted(check_specs, key=lambda s: (s.asset, s.name))),
        schedules=tuple(sorted(schedule_specs, key=lambda s: s.name)),
        sensors=tuple(sorted(sensor_specs, key=lambda s: s.name)),
        pools=dict(sorted(defs.pools.items())),
    )
    return manifest, []


def _problem_order(p: Problem) -> tuple[str, int, str]:
    """Problems sorted by file and line, so they read top to bottom like the code."""
    if not p.location:
        return ("", 0, p.message)
    file, _, line = p.location.rpartition(":")
    return (file, int(line) if line.isdigit() else 0, p.message)


def _valid_parts(p: PartitionsDefinition | None) -> PartitionsDefinition | None:
    if p is None or p.problems():
        return None
    return p


def _valid_timezone(tz: object) -> bool:
    if not isinstance(tz, str) or not tz:
        return False
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_selection(
    text: str, graph: AssetGraph, owner: str, location: SourceLocation, c: _Collector
) -> bool:
    try:
        selected = resolve_selection(parse_selection(text), graph)
    except SelectionError as exc:
        c.add(f"{owner}: target {text!r}: {exc}", location)
        return False
    if not selected:
        c.add(f"{owner}: target {text!r} selects no assets", location)
        return False
    return True


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def load_and_build(ref: ProjectRef) -> tuple[LoadedProject, Manifest]:
    """Load the project and build its manifest; raises ValidationFailed listing every problem."""
    loaded = load_project(ref)
    manifest, _ = build_manifest(
        loaded.defs,
        project=ref.name,
        code_version=code_version_of(ref.root),
        raise_on_problems=True,
        root=ref.root,
    )
    assert manifest is not None
    return loaded, manifest
