"""The shop's assets: raw data -> cleaned tables -> revenue and customer analytics."""

from __future__ import annotations

from datetime import date

from servo import (
    AssetExecutionContext,
    Backoff,
    CheckResult,
    DailyPartitionsDefinition,
    Definitions,
    MonthlyPartitionsDefinition,
    RetryPolicy,
    ScheduleDefinition,
    Severity,
    asset,
    asset_check,
)
from shop import sources

# The shop's history in this example is January 2024 (end dates are exclusive).
daily = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-01")
monthly = MonthlyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-01")


@asset(partitions=daily, group="raw", owners=["data-eng@shop.example"], kinds=["python"])
def raw_orders(context: AssetExecutionContext) -> list[dict[str, object]]:
    """Orders placed on the partition's day, as the orders API returns them."""
    day = date.fromisoformat(context.partition_key or "")
    rows = sources.fetch_orders(day)
    context.log.info("fetched %d orders for %s", len(rows), day)
    return rows


@asset(group="raw", owners=["data-eng@shop.example"])
def raw_customers() -> list[dict[str, object]]:
    """The customer list from the CRM."""
    rows = sources.fetch_customers()
    print(f"fetched {len(rows)} customers")
    return rows


@asset(
    group="raw",
    retry_policy=RetryPolicy(max_retries=3, delay=0.2, backoff=Backoff.EXPONENTIAL),
    tags={"source": "fx-api"},
)
def exchange_rate(context: AssetExecutionContext) -> int:
    """USD per EUR (in micro-dollars). The FX API times out on the first call of every run,
    so this asset shows a retry with backoff."""
    if context.attempt == 1:
        raise ConnectionError("FX API timed out (it always does on the first call)")
    return sources.fetch_usd_per_eur()


@asset(partitions=daily, group="staging")
def orders_cleaned(
    context: AssetExecutionContext, raw_orders: list[dict[str, object]], exchange_rate: int
) -> list[dict[str, object]]:
    """Paid orders only, with amounts converted to euro cents."""
    out = []
    for row in raw_orders:
        if row["status"] != "paid":
            continue
        cents = int(row["amount_cents"])  # type: ignore[call-overload]
        if row["currency"] == "USD":
            cents = cents * 1_000_000 // exchange_rate
        out.append({**row, "amount_eur_cents": cents})
    context.log.info("%d of %d orders are paid", len(out), len(raw_orders))
    return out


@asset(partitions=daily, group="analytics", tags={"tier": "gold"})
def daily_revenue(orders_cleaned: list[dict[str, object]]) -> dict[str, int]:
    """Revenue and order count for one day."""
    return {
        "orders": len(orders_cleaned),
        "revenue_eur_cents": sum(int(o["amount_eur_cents"]) for o in orders_cleaned),  # type: ignore[call-overload]
    }


@asset(partitions=monthly, group="analytics", tags={"tier": "gold"})
def monthly_revenue(
    context: AssetExecutionContext, daily_revenue: dict[str, dict[str, int]]
) -> dict[str, int]:
    """The month's revenue, rolled up from its days."""
    days = daily_revenue
    context.log.info("rolling up %d days of %s", len(days), context.partition_key)
    return {
        "days": len(days),
        "orders": sum(d["orders"] for d in days.values()),
        "revenue_eur_cents": sum(d["revenue_eur_cents"] for d in days.values()),
    }


@asset(group="analytics")
def customer_summary(
    raw_customers: list[dict[str, object]], orders_cleaned: dict[str, list[dict[str, object]]]
) -> list[dict[str, object]]:
    """Orders and revenue per customer over the whole history."""
    totals: dict[int, list[int]] = {}
    for day_rows in orders_cleaned.values():
        for o in day_rows:
            t = totals.setdefault(int(o["customer_id"]), [0, 0])  # type: ignore[call-overload]
            t[0] += 1
            t[1] += int(o["amount_eur_cents"])  # type: ignore[call-overload]
    return [
        {
            **c,
            "orders": totals.get(int(c["id"]), [0, 0])[0],
            "revenue_eur_cents": totals.get(int(c["id"]), [0, 0])[1],
        }  # type: ignore[call-overload]
        for c in raw_customers
    ]


@asset_check(asset=orders_cleaned, blocking=True)
def no_negative_amounts(orders_cleaned: list[dict[str, object]]) -> CheckResult:
    """Cleaned orders never have a negative amount."""
    bad = [o["order_id"] for o in orders_cleaned if int(o["amount_eur_cents"]) < 0]  # type: ignore[call-overload]
    return CheckResult(passed=not bad, metadata={"negative_orders": len(bad)})


@asset_check(asset=daily_revenue)
def revenue_is_positive(daily_revenue: dict[str, int]) -> CheckResult:
    """A day with orders and no revenue is suspicious (a warning, not a blocker)."""
    return CheckResult(
        passed=daily_revenue["orders"] == 0 or daily_revenue["revenue_eur_cents"] > 0,
        severity=Severity.WARN,
    )


nightly = ScheduleDefinition(
    name="nightly_orders",
    cron_schedule="0 1 * * *",
    timezone="Europe/Berlin",
    target="raw_orders* or exchange_rate",
    description="Every night at 01:00 Berlin time: yesterday's orders and everything downstream.",
)

defs = Definitions(
    assets=[
        raw_orders,
        raw_customers,
        exchange_rate,
        orders_cleaned,
        daily_revenue,
        monthly_revenue,
        customer_summary,
    ],
    asset_checks=[no_negative_amounts, revenue_is_positive],
    schedules=[nightly],
)
