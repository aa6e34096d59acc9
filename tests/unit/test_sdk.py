"""The SDK as a Dagster user writes it: decorators, inputs, deps, keys, checks, schedules."""

from __future__ import annotations

from datetime import timedelta

import pytest

from servo import (
    AssetDep,
    AssetIn,
    Backoff,
    CheckResult,
    DailyPartitionsDefinition,
    DefinitionError,
    Definitions,
    Jitter,
    LastPartitionMapping,
    RetryPolicy,
    RunRequest,
    ScheduleDefinition,
    SkipReason,
    ValidationFailed,
    asset,
    asset_check,
    schedule,
    sensor,
)
from servo.core.mappings import mapping_from_spec
from servo.project import build_manifest
from servo.sdk.schedules import as_requests


def manifest_of(defs: Definitions):  # type: ignore[no-untyped-def]
    m, problems = build_manifest(defs, project="t", code_version="cv", raise_on_problems=False)
    assert not problems, problems
    assert m is not None
    return m


@asset
def raw_orders():
    """Orders as the API returns them."""
    return [1, 2]


@asset(
    key_prefix="analytics",
    group="gold",
    tags={"tier": "1"},
    owners=["team@x.io"],
    code_version="v2",
)
def orders(context, raw_orders):
    return raw_orders


@asset(key="analytics/report", ins={"rows": AssetIn("analytics/orders")}, deps=[raw_orders])
def report(rows):
    return len(rows)


def test_bare_and_called_decorator_and_docstring() -> None:
    assert raw_orders.key_text == "raw_orders"
    assert raw_orders.description == "Orders as the API returns them."
    assert raw_orders() == [1, 2], "an asset can still be called like a function"


def test_keys_inputs_context_and_deps() -> None:
    assert orders.key_text == "analytics/orders"
    assert orders.context_param == "context"
    assert [i.param for i in orders.inputs] == ["raw_orders"]
    m = manifest_of(Definitions(assets=[raw_orders, orders, report]))
    deps = {a.key: [(d.asset, d.input_name) for d in a.deps] for a in m.assets}
    assert deps["analytics/orders"] == [("raw_orders", "raw_orders")]
    assert deps["analytics/report"] == [("analytics/orders", "rows"), ("raw_orders", None)]
    spec = m.asset("analytics/orders")
    assert (spec.group, spec.tags, spec.owners, spec.code_version) == (
        "gold",
        {"tier": "1"},
        ("team@x.io",),
        "v2",
    )


def test_sibling_input_resolves_within_the_prefix() -> None:
    @asset(key_prefix="shop")
    def customers():
        return []

    @asset(key_prefix="shop")
    def summary(customers):
        return customers

    m = manifest_of(Definitions(assets=[customers, summary]))
    assert [d.asset for d in m.asset("shop/summary").deps] == ["shop/customers"]


def test_retry_policy_timeout_pool_and_partitions_reach_the_manifest() -> None:
    daily = DailyPartitionsDefinition(start_date="2024-01-01")

    @asset(
        retry_policy=RetryPolicy(
            max_retries=3, delay=1.5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL
        ),
        timeout=timedelta(minutes=2),
        pool="warehouse",
        partitions=daily,
    )
    def loads():
        return 1

    @asset(partitions=daily, deps=[AssetDep(loads, partition_mapping=LastPartitionMapping())])
    def after():
        return 2

    m = manifest_of(Definitions(assets=[loads, after], pools={"warehouse": 2}))
    spec = m.asset("loads")
    assert spec.retry_policy is not None
    assert spec.retry_policy.model_dump() == {
        "max_retries": 3,
        "delay_ms": 1500,
        "backoff": "exponential",
        "jitter": "full",
        "max_delay_ms": None,
    }
    assert (spec.timeout_ms, spec.pool, m.pools) == (120_000, "warehouse", {"warehouse": 2})
    assert spec.partitions == daily.to_spec()
    dep = m.asset("after").deps[0]
    assert dep.input_name is None
    assert dep.mapping is not None
    assert type(mapping_from_spec(dep.mapping)).__name__ == "LastPartitionMapping"


def test_decorating_a_class_raises_at_once() -> None:
    with pytest.raises(DefinitionError, match="must decorate a function"):
        asset(type("NotAFunction", (), {}))


def test_unknown_ins_name_is_reported() -> None:
    @asset(ins={"missing": AssetIn("raw_orders")})
    def thing(raw_orders):
        return raw_orders

    with pytest.raises(ValidationFailed, match="ins names `missing`"):
        Definitions(assets=[raw_orders, thing]).validate()


def test_check_definition_and_manifest() -> None:
    @asset_check(asset=raw_orders, blocking=True)
    def not_empty(raw_orders):
        """Orders are never empty."""
        return CheckResult(passed=bool(raw_orders))

    assert not_empty.value_param == "raw_orders"
    m = manifest_of(Definitions(assets=[raw_orders], asset_checks=[not_empty]))
    (c,) = m.checks
    assert (c.name, c.asset, c.blocking, c.description) == (
        "not_empty",
        "raw_orders",
        True,
        "Orders are never empty.",
    )
    assert not_empty([1]).passed


def test_check_on_unknown_asset_is_reported() -> None:
    @asset_check(asset="nope")
    def c(nope):
        return True

    with pytest.raises(
        ValidationFailed, match="check `c` is for asset `nope`, which is not defined"
    ):
        Definitions(assets=[raw_orders], asset_checks=[c]).validate()


def test_schedules_and_sensors_definitions() -> None:
    s = ScheduleDefinition(
        name="nightly",
        cron_schedule="0 1 * * *",
        target=[raw_orders, orders],
        timezone="Europe/Berlin",
    )
    assert s.selection == "raw_orders or analytics/orders"

    @schedule(cron_schedule="*/5 * * * *", target="raw_orders")
    def every_five(context):
        return RunRequest(run_key="x")

    @sensor(target=raw_orders, minimum_interval_seconds=10)
    def new_files(context):
        yield RunRequest(run_key="f1")
        yield SkipReason("nothing else")

    m = manifest_of(
        Definitions(assets=[raw_orders, orders], schedules=[s, every_five], sensors=[new_files])
    )
    assert [x.name for x in m.schedules] == ["every_five", "nightly"]
    assert m.sensors[0].minimum_interval_s == 10
    assert m.sensors[0].target == "raw_orders"
    assert as_requests(new_files.fn(None)) == [RunRequest(run_key="f1"), SkipReason("nothing else")]  # type: ignore[misc]
    with pytest.raises(DefinitionError, match="return RunRequest"):
        as_requests(42)


def test_duplicate_schedule_and_sensor_names() -> None:
    a = ScheduleDefinition(name="s", cron_schedule="0 1 * * *", target="raw_orders")
    b = ScheduleDefinition(name="s", cron_schedule="0 2 * * *", target="raw_orders")
    with pytest.raises(ValidationFailed, match="schedule name `s` is used twice"):
        Definitions(assets=[raw_orders], schedules=[a, b]).validate()
