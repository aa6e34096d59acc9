"""Every kind of definition mistake `servo validate` reports, all at once, with file:line."""

from servo import (
    AssetIn,
    DailyPartitionsDefinition,
    Definitions,
    IdentityPartitionMapping,
    MonthlyPartitionsDefinition,
    ScheduleDefinition,
    StaticPartitionsDefinition,
    asset,
)

daily = DailyPartitionsDefinition(start_date="2024-01-01")
regions = StaticPartitionsDefinition(["eu", "us"])


@asset
def customers() -> list[str]:
    return ["ada", "grace"]


@asset
def orders(customer: list[str]) -> list[str]:  # typo: the asset is `customers`
    return customer


# A dependency cycle: invoices -> payments -> refunds -> invoices.
@asset
def invoices(refunds: list[str]) -> list[str]:
    return refunds


@asset
def payments(invoices: list[str]) -> list[str]:
    return invoices


@asset
def refunds(payments: list[str]) -> list[str]:
    return payments


@asset(partitions=DailyPartitionsDefinition(start_date="2024-13-01"))
def sessions() -> None:
    """The start date does not exist."""


@asset(partitions=regions)
def regional_sales() -> None:
    pass


@asset(partitions=daily)
def daily_sales(regional_sales: None) -> None:
    """Daily partitions cannot be derived from region partitions without a mapping."""


@asset(
    partitions=MonthlyPartitionsDefinition(start_date="2024-01-01"),
    ins={"daily_sales": AssetIn(partition_mapping=IdentityPartitionMapping())},
)
def monthly_sales(daily_sales: None) -> None:
    """Identity cannot map monthly partitions onto daily ones."""


@asset(name="customers")
def customers_again() -> None:
    """The key `customers` is already taken."""


bad_cron = ScheduleDefinition(name="hourly_orders", cron_schedule="61 * * * *", target="orders")
bad_zone = ScheduleDefinition(
    name="nightly_orders", cron_schedule="0 1 * * *", timezone="Mars/Olympus_Mons", target="orders"
)

defs = Definitions(
    assets=[
        customers,
        orders,
        invoices,
        payments,
        refunds,
        sessions,
        regional_sales,
        daily_sales,
        monthly_sales,
        customers_again,
    ],
    schedules=[bad_cron, bad_zone],
)
