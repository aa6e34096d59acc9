"""Deterministic stand-ins for the shop's source systems (an orders API, a CRM, an FX API).

Real projects would call HTTP APIs or read from a bucket here; these functions generate the
same rows for the same day every time, so the example is reproducible offline.
"""

from __future__ import annotations

import hashlib
from datetime import date

CUSTOMERS = [
    {"id": 1, "name": "Ada Lovelace", "country": "GB"},
    {"id": 2, "name": "Grace Hopper", "country": "US"},
    {"id": 3, "name": "Hedy Lamarr", "country": "AT"},
    {"id": 4, "name": "Katherine Johnson", "country": "US"},
    {"id": 5, "name": "Emmy Noether", "country": "DE"},
]


def _n(*parts: object) -> int:
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def fetch_orders(day: date) -> list[dict[str, object]]:
    """The orders placed on ``day``: 3-8 orders with 1-4 lines each."""
    orders = []
    for i in range(3 + _n(day, "count") % 6):
        lines = 1 + _n(day, i, "lines") % 4
        amount_cents = sum(500 + _n(day, i, j) % 9500 for j in range(lines))
        orders.append(
            {
                "order_id": f"{day:%Y%m%d}-{i:03d}",
                "customer_id": 1 + _n(day, i, "customer") % len(CUSTOMERS),
                "currency": "EUR" if _n(day, i, "ccy") % 3 else "USD",
                "amount_cents": amount_cents,
                "status": "refunded" if _n(day, i, "status") % 11 == 0 else "paid",
            }
        )
    return orders


def fetch_customers() -> list[dict[str, object]]:
    return [dict(c) for c in CUSTOMERS]


def fetch_usd_per_eur() -> int:
    """The exchange rate in micro-dollars per euro."""
    return 1_085_000
