"""Helpers for unit-testing assets: a context to call them with, and a one-asset run.

::

    from servo.testing.assets import build_asset_context, materialize_asset

    def test_orders():
        result = materialize_asset(orders, inputs={"raw_orders": [...]}, checks=[orders_not_empty])
        assert result.value == [...]
        assert all(c.passed for c in result.checks)

Nothing here needs a control plane or storage: inputs are passed in memory and the value is
returned as is. The asset runs through the same code as in a worker (context, checks, output
capture), so what passes here behaves the same when deployed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from servo.core.errors import DefinitionError, PartitionError
from servo.core.keys import AssetKey, PartitionKey
from servo.core.partitions import (
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
    PartitionsDefinition,
    TimeWindowPartitionsDefinition,
)
from servo.sdk.assets import AssetsDefinition
from servo.sdk.checks import AssetCheckDefinition
from servo.sdk.context import AssetExecutionContext
from servo.worker.capture import OutputCapture
from servo.worker.envelope import CheckOutcome, CheckRef
from servo.worker.runtime import call_asset, jsonable, run_check

_LOG_TAIL_IN_ERRORS = 4000

PartitionKeyInput = str | Mapping[str, str] | PartitionKey


@dataclass(frozen=True)
class AssetResult:
    """What :func:`materialize_asset` produced.

    ``value`` is what the function returned, ``checks`` the outcome of each check passed in,
    ``logs`` everything the asset printed or logged, ``metadata`` what it attached with
    ``context.add_output_metadata``.
    """

    value: Any
    checks: list[CheckOutcome] = field(default_factory=list)
    logs: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def checks_passed(self) -> bool:
        """Whether every check passed."""
        return all(c.passed for c in self.checks)

    def check(self, name: str) -> CheckOutcome:
        """The outcome of the check called ``name``."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; ran {[c.name for c in self.checks]}")


def _has_dynamic(partitions_def: PartitionsDefinition) -> bool:
    if isinstance(partitions_def, DynamicPartitionsDefinition):
        return True
    if isinstance(partitions_def, MultiPartitionsDefinition):
        return any(_has_dynamic(d) for d in partitions_def.dimensions.values())
    return False


def _partition(
    key: PartitionKeyInput | None, partitions_def: PartitionsDefinition | None
) -> PartitionKey | None:
    if key is None or isinstance(key, PartitionKey):
        return key
    if partitions_def is not None:
        try:
            return partitions_def.parse_key(key)
        except PartitionError:
            # Dynamic partitions are only known to a running deployment; accept any key here.
            if not _has_dynamic(partitions_def):
                raise
    if isinstance(key, Mapping):
        return PartitionKey.multi(dict(key))
    if not isinstance(key, str):
        raise PartitionError(
            f"partition_key must be a string such as '2024-01-01' (or 'a|b' for several "
            f"dimensions), got {type(key).__name__}"
        )
    names = partitions_def.dimension_names() if partitions_def is not None else []
    if not names:
        return PartitionKey.single(key)
    values = key.split("|")
    if len(values) != len(names):
        raise PartitionError(
            f"partition_key {key!r} needs one value per dimension ({'|'.join(names)})"
        )
    return PartitionKey.multi(dict(zip(names, values, strict=True)))


def _window(
    key: PartitionKey | None, partitions_def: PartitionsDefinition | None
) -> tuple[datetime, datetime] | None:
    if key is None or partitions_def is None:
        return None
    if isinstance(partitions_def, TimeWindowPartitionsDefinition) and key.value is not None:
        window = partitions_def.window(key)
        return (window.start, window.end)
    if isinstance(partitions_def, MultiPartitionsDefinition) and key.is_multi:
        for name, dimension in partitions_def.dimensions.items():
            if isinstance(dimension, TimeWindowPartitionsDefinition):
                window = dimension.window(key.get(name))
                return (window.start, window.end)
    return None


def _test_logger(name: str) -> logging.Logger:
    # Registered under "servo.user" so pytest's caplog sees the records too.
    return logging.getLogger("servo.user." + name.replace("/", "."))


def build_asset_context(
    asset_key: AssetKey | str | Sequence[str] = "asset",
    partition_key: PartitionKeyInput | None = None,
    resources: Mapping[str, Any] | None = None,
    run_id: str = "test",
    *,
    partitions_def: PartitionsDefinition | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> AssetExecutionContext:
    """A context for calling an asset function directly in a test.

    ``partition_key`` is written as users write it (``"2024-01-01"``, ``"2024-01-01|eu"``)
    or as a mapping of dimension to value; with ``partitions_def`` it is validated and a
    time-partitioned key gets its ``partition_time_window``.
    """
    key = AssetKey.of(asset_key)
    partition = _partition(partition_key, partitions_def)
    return AssetExecutionContext(
        asset_key=key,
        partition=partition,
        run_id=run_id,
        attempt=1,
        resources=dict(resources or {}),
        log=_test_logger(key.to_string()),
        partition_window=_window(partition, partitions_def),
        run_tags=dict(run_tags or {}),
    )


def _check_arguments(
    asset_def: AssetsDefinition,
    inputs: Mapping[str, Any],
    checks: Sequence[AssetCheckDefinition],
) -> None:
    if not isinstance(asset_def, AssetsDefinition):
        raise DefinitionError(
            f"materialize_asset needs an asset (a function decorated with @asset), got {asset_def!r}"
        )
    name = asset_def.key_text
    if asset_def.problems:
        listed = "\n".join(f"  - {p}" for p in asset_def.problems)
        raise DefinitionError(f"asset `{name}` is not valid:\n{listed}")
    params = [i.param for i in asset_def.inputs]
    missing = [p for p in params if p not in inputs]
    if missing:
        example = ", ".join(f"{p!r}: ..." for p in missing)
        raise DefinitionError(
            f"materialize_asset(`{name}`): no value for input(s) "
            f"{', '.join(f'`{p}`' for p in missing)}; pass inputs={{{example}}}"
        )
    extra = [k for k in inputs if k not in params]
    if extra:
        accepted = ", ".join(f"`{p}`" for p in params) or "none"
        raise DefinitionError(
            f"materialize_asset(`{name}`): {', '.join(f'`{k}`' for k in extra)} is not an input "
            f"of the asset (its inputs: {accepted})"
        )
    for c in checks:
        if not isinstance(c, AssetCheckDefinition):
            raise DefinitionError(
                f"materialize_asset(`{name}`): checks must be @asset_check functions, got {c!r}"
            )
        if c.asset_text != name:
            raise DefinitionError(
                f"materialize_asset(`{name}`): check `{c.name}` checks `{c.asset_text}`, "
                "not this asset"
            )


def materialize_asset(
    asset_def: AssetsDefinition,
    *,
    inputs: Mapping[str, Any] | None = None,
    partition_key: PartitionKeyInput | None = None,
    resources: Mapping[str, Any] | None = None,
    checks: Sequence[AssetCheckDefinition] = (),
    run_id: str = "test",
) -> AssetResult:
    """Run one asset (and the given checks of it) in this process, with in-memory inputs.

    ``inputs`` maps each input parameter to its value. An exception raised by the asset
    propagates unchanged (with the captured output attached as a note); a check that fails
    or raises is reported in ``AssetResult.checks``.
    """
    given = dict(inputs or {})
    _check_arguments(asset_def, given, checks)
    context = build_asset_context(
        asset_def.key_text,
        partition_key,
        resources,
        run_id,
        partitions_def=asset_def.partitions,
    )
    capture = OutputCapture()
    try:
        log = capture.logger(asset_def.key_text)
        log.parent = _test_logger(asset_def.key_text)
        log.propagate = True
        context.log = log
        try:
            with capture:
                value = call_asset(asset_def, context, given)
                outcomes = [
                    run_check(c, CheckRef(name=c.name, blocking=c.blocking), context, value)
                    for c in checks
                ]
        except Exception as exc:
            logs = capture.text()
            if logs:
                tail = logs[-_LOG_TAIL_IN_ERRORS:]
                exc.add_note(f"output of asset `{asset_def.key_text}`:\n{tail.rstrip()}")
            raise
        return AssetResult(
            value=value,
            checks=outcomes,
            logs=capture.text(),
            metadata=jsonable(context.output_metadata),
        )
    finally:
        capture.close()
