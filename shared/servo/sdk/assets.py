"""The ``@asset`` decorator and what it builds."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, overload

from servo.core.errors import DefinitionError
from servo.core.keys import AssetKey
from servo.core.mappings import PartitionMapping
from servo.core.partitions import PartitionsDefinition
from servo.sdk._location import SourceLocation, of_function

AUTOMATION_POLICIES = ("eager", "on_missing")


class Backoff(StrEnum):
    """How the delay between retries grows."""

    CONSTANT = "constant"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class Jitter(StrEnum):
    """Randomness added to retry delays so that retries of many tasks spread out."""

    NONE = "none"
    FULL = "full"
    PLUS_MINUS = "plus_minus"


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failed asset up to ``max_retries`` times.

    ``delay`` is the base delay in seconds before the first retry; with ``LINEAR`` backoff the
    n-th retry waits ``n * delay``, with ``EXPONENTIAL`` it waits ``delay * 2**(n-1)``, capped at
    ``max_delay`` seconds when given.
    """

    max_retries: int = 1
    delay: float = 0.0
    backoff: Backoff = Backoff.CONSTANT
    jitter: Jitter = Jitter.NONE
    max_delay: float | None = None

    def problems(self) -> list[str]:
        out: list[str] = []
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool):
            out.append(f"retry_policy.max_retries must be an integer, got {self.max_retries!r}")
        elif self.max_retries < 0:
            out.append(f"retry_policy.max_retries must be >= 0, got {self.max_retries}")
        if not isinstance(self.delay, (int, float)) or self.delay < 0:
            out.append(f"retry_policy.delay must be a number of seconds >= 0, got {self.delay!r}")
        if self.max_delay is not None and (
            not isinstance(self.max_delay, (int, float)) or self.max_delay < 0
        ):
            out.append(f"retry_policy.max_delay must be seconds >= 0, got {self.max_delay!r}")
        try:
            Backoff(self.backoff)
        except ValueError:
            out.append(
                f"retry_policy.backoff {self.backoff!r} is not one of "
                f"{', '.join(b.value for b in Backoff)}"
            )
        try:
            Jitter(self.jitter)
        except ValueError:
            out.append(
                f"retry_policy.jitter {self.jitter!r} is not one of "
                f"{', '.join(j.value for j in Jitter)}"
            )
        return out


@dataclass(frozen=True)
class AssetIn:
    """Names the upstream asset of a data input and, optionally, its partition mapping."""

    key: AssetKey | str | Sequence[str] | None = None
    partition_mapping: PartitionMapping | None = None


@dataclass(frozen=True)
class AssetDep:
    """A non-data dependency: run after ``asset`` without loading its value."""

    asset: AssetKey | str | Sequence[str] | AssetsDefinition
    partition_mapping: PartitionMapping | None = None


@dataclass
class ResolvedInput:
    """A data input of an asset function, with its upstream key as written (unresolved)."""

    param: str
    key_text: str | None
    key: AssetKey | None
    partition_mapping: PartitionMapping | None
    explicit: bool


@dataclass
class AssetsDefinition:
    """An asset: the function that computes it and everything Servo needs to orchestrate it.

    Built by :func:`asset`. Calling it calls the underlying function, which makes assets easy to
    unit-test; :mod:`servo.testing` adds contexts and inputs.
    """

    fn: Callable[..., Any]
    key: AssetKey | None
    key_text: str
    inputs: list[ResolvedInput]
    deps: list[tuple[AssetKey | None, str, PartitionMapping | None]]
    group: str = "default"
    tags: dict[str, str] = field(default_factory=dict)
    owners: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    description: str | None = None
    code_version: str | None = None
    retry_policy: RetryPolicy | None = None
    timeout: float | None = None
    partitions: PartitionsDefinition | None = None
    pool: str | None = None
    automation: str | None = None
    io_manager: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    context_param: str | None = None
    location: SourceLocation = field(default_factory=lambda: SourceLocation(None, None))
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.key.name if self.key else self.key_text

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<asset {self.key_text}>"


def _key_text(value: AssetKey | str | Sequence[str] | AssetsDefinition) -> str:
    if isinstance(value, AssetsDefinition):
        return value.key_text
    if isinstance(value, AssetKey):
        return value.to_string()
    if isinstance(value, str):
        return value
    return "/".join(str(v) for v in value)


def _try_key(text: str, problems: list[str], what: str) -> AssetKey | None:
    try:
        return AssetKey.parse(text)
    except DefinitionError as exc:
        problems.append(f"{what}: {exc}")
        return None


def _is_context_param(p: inspect.Parameter, index: int) -> bool:
    if p.name == "context":
        return True
    ann = p.annotation
    name = ann if isinstance(ann, str) else getattr(ann, "__name__", "")
    return index == 0 and name in ("AssetExecutionContext", "AssetCheckExecutionContext")


def _str_map(value: Any, what: str, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{what} must be a mapping of strings to strings, got {value!r}")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            problems.append(f"{what} must map strings to strings; {k!r}: {v!r} is not")
            continue
        out[k] = v
    return out


def _seconds(value: float | timedelta | None, what: str, problems: list[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        problems.append(f"{what} must be a positive number of seconds, got {value!r}")
        return None
    return float(value)


def build_asset(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    key: AssetKey | str | Sequence[str] | None = None,
    key_prefix: str | Sequence[str] | None = None,
    ins: Mapping[str, AssetIn] | None = None,
    deps: Iterable[AssetKey | str | Sequence[str] | AssetsDefinition | AssetDep] | None = None,
    group: str | None = None,
    tags: Mapping[str, str] | None = None,
    owners: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    description: str | None = None,
    code_version: str | None = None,
    retry_policy: RetryPolicy | None = None,
    timeout: float | timedelta | None = None,
    partitions: PartitionsDefinition | None = None,
    pool: str | None = None,
    automation: str | None = None,
    io_manager: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> AssetsDefinition:
    if not callable(fn) or isinstance(fn, type):
        raise DefinitionError(
            f"@asset must decorate a function, not {fn!r}; write `@asset` above a `def`"
        )
    problems: list[str] = []
    fn_name = getattr(fn, "__name__", "<function>")
    if key is not None and (name is not None or key_prefix is not None):
        problems.append("pass either key= or name=/key_prefix=, not both; use key='prefix/name'")
    if key is not None:
        key_text = _key_text(key)
    else:
        prefix: list[str] = []
        if isinstance(key_prefix, str):
            prefix = key_prefix.split("/") if key_prefix else []
        elif key_prefix is not None:
            prefix = [str(p) for p in key_prefix]
        key_text = "/".join([*prefix, name or fn_name])
    asset_key = _try_key(key_text, problems, "key")

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise DefinitionError(f"asset `{key_text}`: cannot read the function's signature") from None
    ins = dict(ins or {})
    inputs: list[ResolvedInput] = []
    context_param: str | None = None
    for index, p in enumerate(sig.parameters.values()):
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            problems.append(
                f"parameter `{p.name}` is *args/**kwargs; name each upstream asset as its "
                "own parameter (or use deps= for non-data dependencies)"
            )
            continue
        if context_param is None and p.name not in ins and _is_context_param(p, index):
            context_param = p.name
            continue
        spec = ins.pop(p.name, None)
        if spec is not None and not isinstance(spec, AssetIn):
            problems.append(f"ins[{p.name!r}] must be AssetIn(...), got {spec!r}")
            spec = None
        if spec is not None and spec.key is not None:
            text = _key_text(spec.key)
            inputs.append(
                ResolvedInput(
                    p.name,
                    text,
                    _try_key(text, problems, f"input `{p.name}`"),
                    spec.partition_mapping,
                    True,
                )
            )
        else:
            if p.default is not inspect.Parameter.empty and spec is None:
                # A parameter with a default is configuration, not an upstream asset.
                continue
            inputs.append(
                ResolvedInput(
                    p.name,
                    p.name,
                    _try_key(p.name, problems, f"input `{p.name}`"),
                    spec.partition_mapping if spec else None,
                    False,
                )
            )
    for extra in ins:
        problems.append(
            f"ins names `{extra}`, which is not a parameter of {fn_name}(); add the parameter "
            "or remove it from ins"
        )

    dep_list: list[tuple[AssetKey | None, str, PartitionMapping | None]] = []
    for d in deps or ():
        mapping = None
        target: Any = d
        if isinstance(d, AssetDep):
            target, mapping = d.asset, d.partition_mapping
        if not isinstance(target, (AssetKey, str, AssetsDefinition, list, tuple)):
            problems.append(f"deps entry {d!r} is not an asset, asset key or AssetDep")
            continue
        text = _key_text(target)
        dep_list.append((_try_key(text, problems, "deps"), text, mapping))

    for label, value in (("group", group), ("pool", pool), ("io_manager", io_manager)):
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"{label} must be a non-empty string, got {value!r}")
    if automation is not None and automation not in AUTOMATION_POLICIES:
        problems.append(
            f"automation={automation!r} is not supported; use one of {', '.join(AUTOMATION_POLICIES)}"
        )
    if retry_policy is not None:
        if not isinstance(retry_policy, RetryPolicy):
            problems.append(f"retry_policy must be RetryPolicy(...), got {retry_policy!r}")
            retry_policy = None
        else:
            problems.extend(retry_policy.problems())
    if partitions is not None:
        if not isinstance(partitions, PartitionsDefinition):
            problems.append(
                f"partitions must be a partitions definition such as "
                f"DailyPartitionsDefinition(start_date='2024-01-01'), got {partitions!r}"
            )
            partitions = None
        else:
            problems.extend(f"partitions: {p}" for p in partitions.problems())
    owner_list = tuple(owners or ())
    for o in owner_list:
        if not isinstance(o, str) or not o:
            problems.append(f"owners must be non-empty strings, got {o!r}")
    doc = inspect.getdoc(fn)
    return AssetsDefinition(
        fn=fn,
        key=asset_key,
        key_text=key_text,
        inputs=inputs,
        deps=dep_list,
        group=group or "default",
        tags=_str_map(tags, "tags", problems),
        owners=owner_list,
        kinds=tuple(kinds or ()),
        description=description if description is not None else doc,
        code_version=code_version,
        retry_policy=retry_policy,
        timeout=_seconds(timeout, "timeout", problems),
        partitions=partitions,
        pool=pool,
        automation=automation,
        io_manager=io_manager,
        metadata=_str_map(metadata, "metadata", problems),
        context_param=context_param,
        location=of_function(fn),
        problems=problems,
    )


@overload
def asset(fn: Callable[..., Any], /) -> AssetsDefinition: ...


@overload
def asset(
    *,
    name: str | None = None,
    key: AssetKey | str | Sequence[str] | None = None,
    key_prefix: str | Sequence[str] | None = None,
    ins: Mapping[str, AssetIn] | None = None,
    deps: Iterable[AssetKey | str | Sequence[str] | AssetsDefinition | AssetDep] | None = None,
    group: str | None = None,
    group_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    owners: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    description: str | None = None,
    code_version: str | None = None,
    retry_policy: RetryPolicy | None = None,
    timeout: float | timedelta | None = None,
    partitions: PartitionsDefinition | None = None,
    partitions_def: PartitionsDefinition | None = None,
    pool: str | None = None,
    automation: str | None = None,
    io_manager: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., Any]], AssetsDefinition]: ...


def asset(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    group_name: str | None = None,
    partitions_def: PartitionsDefinition | None = None,
    **kwargs: Any,
) -> AssetsDefinition | Callable[[Callable[..., Any]], AssetsDefinition]:
    """Define an asset computed by the decorated function.

    Upstream assets are the function's parameters, by name (``def orders(raw_orders)`` depends
    on ``raw_orders``); ``ins={"param": AssetIn("analytics/orders")}`` names another key and
    ``deps=[...]`` adds dependencies whose values are not loaded. A first parameter named
    ``context`` receives the execution context. The docstring is the default description.

    Problems with the arguments do not raise here: ``servo validate`` (or
    ``Definitions.validate()``) reports every problem of a project at once, with file:line.
    """
    if group_name is not None:
        kwargs.setdefault("group", group_name)
    if partitions_def is not None:
        kwargs.setdefault("partitions", partitions_def)

    def decorate(f: Callable[..., Any]) -> AssetsDefinition:
        return build_asset(f, **kwargs)

    if fn is not None:
        if kwargs:
            raise DefinitionError("use either @asset or @asset(...), not both")
        return decorate(fn)
    return decorate
