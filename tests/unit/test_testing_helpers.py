"""Tests of servo.testing.assets: the helpers users call in their own unit tests."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from servo import (
    AssetExecutionContext,
    CheckResult,
    DailyPartitionsDefinition,
    DefinitionError,
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
    Severity,
    StaticPartitionsDefinition,
    asset,
    asset_check,
)
from servo.core.errors import PartitionError
from servo.testing.assets import AssetResult, build_asset_context, materialize_asset
from servo.worker.runtime import Failure

# -- build_asset_context -------------------------------------------------------------------------


def test_context_defaults() -> None:
    context = build_asset_context()
    assert context.asset_key.to_string() == "asset"
    assert context.partition_key is None
    assert context.run_id == "test"
    assert context.attempt == 1
    assert dict(context.resources) == {}


def test_context_with_key_partition_and_resources() -> None:
    context = build_asset_context(
        "analytics/orders", partition_key="2024-01-01", resources={"db": 1}, run_id="r9"
    )
    assert context.asset_key.to_string() == "analytics/orders"
    assert context.partition_key == "2024-01-01"
    assert context.resources["db"] == 1
    assert context.run_id == "r9"


def test_time_partition_gets_its_window() -> None:
    context = build_asset_context(
        "daily", partition_key="2024-03-05", partitions_def=DailyPartitionsDefinition("2024-01-01")
    )
    start, end = context.partition_time_window
    assert start == datetime(2024, 3, 5, tzinfo=UTC)
    assert end == datetime(2024, 3, 6, tzinfo=UTC)


def test_multi_partition_from_the_user_form() -> None:
    parts = MultiPartitionsDefinition(
        {
            "date": DailyPartitionsDefinition("2024-01-01"),
            "region": StaticPartitionsDefinition(["eu", "us"]),
        }
    )
    context = build_asset_context("sales", partition_key="2024-01-02|eu", partitions_def=parts)
    assert context.partition_keys_by_dimension == {"date": "2024-01-02", "region": "eu"}
    assert context.partition_key == "2024-01-02|eu"
    assert context.partition_time_window[0] == datetime(2024, 1, 2, tzinfo=UTC)


def test_multi_partition_from_a_mapping() -> None:
    context = build_asset_context("sales", partition_key={"region": "eu", "date": "2024-01-02"})
    assert context.partition_key == "2024-01-02|eu"


def test_invalid_partition_is_rejected_with_the_definition() -> None:
    with pytest.raises(PartitionError, match="apac"):
        build_asset_context(
            "x", partition_key="apac", partitions_def=StaticPartitionsDefinition(["eu", "us"])
        )


def test_dynamic_partition_accepts_any_key() -> None:
    context = build_asset_context(
        "x", partition_key="customer-7", partitions_def=DynamicPartitionsDefinition("customers")
    )
    assert context.partition_key == "customer-7"


def test_context_log_reaches_caplog(caplog: pytest.LogCaptureFixture) -> None:
    context = build_asset_context("orders")
    with caplog.at_level(logging.INFO):
        context.log.info("seen by caplog")
    assert "seen by caplog" in caplog.text


def test_context_can_be_passed_to_the_asset_directly() -> None:
    @asset
    def orders(context: AssetExecutionContext, raw: list[int]) -> int:
        return len(raw) + (1 if context.partition_key else 0)

    assert orders(build_asset_context("orders", partition_key="p"), [1, 2]) == 3


# -- materialize_asset ---------------------------------------------------------------------------


@asset(partitions=DailyPartitionsDefinition("2024-01-01"))
def totals(context: AssetExecutionContext, orders: list[int]) -> int:
    """Sum of one day's orders."""
    print(f"summing {len(orders)} orders")
    context.log.info("partition %s", context.partition_key)
    context.add_output_metadata({"count": len(orders)})
    factor: int = context.resources.get("factor", 1)
    return sum(orders) * factor


@asset_check(asset=totals)
def positive(totals: int) -> bool:
    return totals > 0


@asset_check(asset=totals, blocking=True)
def small(totals: int) -> CheckResult:
    return CheckResult(passed=totals < 10, severity=Severity.WARN, metadata={"total": totals})


@asset_check(asset=totals)
def exploding(totals: int) -> bool:
    raise RuntimeError("check bug")


def test_materialize_returns_value_checks_logs_and_metadata() -> None:
    result = materialize_asset(
        totals,
        inputs={"orders": [3, 4]},
        partition_key="2024-01-02",
        resources={"factor": 2},
        checks=[positive, small],
    )
    assert isinstance(result, AssetResult)
    assert result.value == 14
    assert result.metadata == {"count": 2}
    assert result.check("positive").passed is True
    assert result.check("small").passed is False
    assert result.check("small").severity == "WARN"
    assert result.check("small").blocking is True
    assert result.check("small").metadata == {"total": 14}
    assert result.checks_passed is False
    assert "summing 2 orders" in result.logs
    assert "partition 2024-01-02" in result.logs


def test_materialize_captures_subprocess_output() -> None:
    @asset
    def shell() -> int:
        return subprocess.run(
            [sys.executable, "-c", "print('from the child')"], check=True
        ).returncode

    result = materialize_asset(shell)
    assert result.value == 0
    assert "from the child" in result.logs


def test_materialize_records_a_check_that_raises() -> None:
    result = materialize_asset(
        totals, inputs={"orders": [1]}, partition_key="2024-01-02", checks=[exploding]
    )
    (outcome,) = result.checks
    assert outcome.passed is False
    assert "RuntimeError: check bug" in outcome.metadata["error"]


def test_materialize_names_a_missing_input() -> None:
    with pytest.raises(
        DefinitionError, match=r"no value for input\(s\) `orders`.*inputs=\{'orders'"
    ):
        materialize_asset(totals, partition_key="2024-01-02")


def test_materialize_rejects_an_unknown_input() -> None:
    with pytest.raises(DefinitionError, match="`order` is not an input"):
        materialize_asset(totals, inputs={"orders": [], "order": []}, partition_key="2024-01-02")


def test_materialize_rejects_a_check_of_another_asset() -> None:
    @asset
    def other() -> int:
        return 1

    with pytest.raises(DefinitionError, match="checks `totals`"):
        materialize_asset(other, checks=[positive])


def test_materialize_rejects_a_bad_partition() -> None:
    with pytest.raises(PartitionError):
        materialize_asset(totals, inputs={"orders": []}, partition_key="not-a-date")


def test_materialize_rejects_something_that_is_not_an_asset() -> None:
    with pytest.raises(DefinitionError, match="@asset"):
        materialize_asset(print)  # type: ignore[arg-type]


def test_asset_exception_propagates_with_its_output() -> None:
    @asset
    def broken() -> int:
        print("about to fail")
        raise KeyError("missing column")

    with pytest.raises(KeyError, match="missing column") as info:
        materialize_asset(broken)
    assert any("about to fail" in note for note in info.value.__notes__)


def test_failure_propagates() -> None:
    @asset
    def refuses() -> int:
        raise Failure("bad data", retryable=False)

    with pytest.raises(Failure, match="bad data") as info:
        materialize_asset(refuses)
    assert info.value.retryable is False


def test_async_asset_is_awaited() -> None:
    @asset
    async def fetched() -> str:
        await asyncio.sleep(0)
        return "payload"

    assert materialize_asset(fetched).value == "payload"


def test_stdout_is_back_after_materialize(capsys: pytest.CaptureFixture[str]) -> None:
    @asset
    def noisy() -> int:
        print("captured by servo")
        return 1

    materialize_asset(noisy)
    print("seen by pytest")
    out = capsys.readouterr().out
    assert "seen by pytest" in out
    assert "captured by servo" not in out
