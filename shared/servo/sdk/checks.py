"""Asset checks: assertions about an asset's data, run after it is materialized."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from servo.core.errors import DefinitionError
from servo.core.keys import AssetKey
from servo.sdk._location import SourceLocation, of_function
from servo.sdk.assets import AssetsDefinition, _is_context_param, _key_text

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class Severity(StrEnum):
    """How bad a failed check is. A failed blocking check of severity ERROR stops downstream."""

    WARN = "WARN"
    ERROR = "ERROR"


@dataclass(frozen=True)
class CheckResult:
    """What a check function returns."""

    passed: bool
    severity: Severity = Severity.ERROR
    metadata: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None


@dataclass
class AssetCheckDefinition:
    """A check of one asset. Built by :func:`asset_check`."""

    fn: Callable[..., Any]
    name: str
    asset_key: AssetKey | None
    asset_text: str
    blocking: bool
    description: str | None
    context_param: str | None
    value_param: str | None
    location: SourceLocation
    problems: list[str]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<asset_check {self.asset_text}:{self.name}>"


def asset_check(
    *,
    asset: AssetsDefinition | AssetKey | str | Sequence[str],
    name: str | None = None,
    blocking: bool = False,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], AssetCheckDefinition]:
    """Define a check of ``asset``.

    The function may take a ``context`` parameter and one parameter that receives the asset's
    value; it returns a :class:`CheckResult` (or a bool). A *blocking* check that fails with
    severity ERROR fails the asset's task, so downstream assets are skipped and the output is
    not committed.
    """

    def decorate(fn: Callable[..., Any]) -> AssetCheckDefinition:
        if not callable(fn) or isinstance(fn, type):
            raise DefinitionError(f"@asset_check must decorate a function, not {fn!r}")
        problems: list[str] = []
        check_name: str = name or str(getattr(fn, "__name__", "check"))
        if not check_name or not set(check_name) <= _NAME_CHARS:
            problems.append(f"check name {check_name!r} may only use letters, digits, '_' and '-'")
        text = _key_text(asset)
        key: AssetKey | None
        try:
            key = AssetKey.parse(text)
        except DefinitionError as exc:
            problems.append(f"asset: {exc}")
            key = None
        if not isinstance(blocking, bool):
            problems.append(f"blocking must be True or False, got {blocking!r}")
        context_param: str | None = None
        value_param: str | None = None
        for index, p in enumerate(inspect.signature(fn).parameters.values()):
            if context_param is None and _is_context_param(p, index):
                context_param = p.name
            elif value_param is None:
                value_param = p.name
            elif p.default is inspect.Parameter.empty:
                problems.append(
                    f"check `{check_name}` has an extra parameter `{p.name}`; a check takes "
                    "`context` and one parameter for the asset's value"
                )
        return AssetCheckDefinition(
            fn=fn,
            name=check_name,
            asset_key=key,
            asset_text=text,
            blocking=blocking,
            description=description if description is not None else inspect.getdoc(fn),
            context_param=context_param,
            value_param=value_param,
            location=of_function(fn),
            problems=problems,
        )

    return decorate
