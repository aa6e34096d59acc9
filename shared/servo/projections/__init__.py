"""Projections: the ledger folded into queryable Parquet tables.

* :mod:`.schema` — event and table versions, upcasting;
* :mod:`.fold` — events -> table rows (idempotent, order-independent merges);
* :mod:`.store` — immutable Parquet files and the published pointer;
* :mod:`.compaction` — incremental folding, tiered merges, retention, garbage collection;
* :mod:`.rebuild` — recompute from the ledger alone and verify;
* :mod:`.query` — runs, events, assets and partitions for the CLI and the API.
"""

from servo.projections.compaction import CompactionSettings, Compactor, compact
from servo.projections.query import (
    ProjectionReader,
    asset_view,
    list_runs,
    partition_status,
    run_events,
    run_view,
)
from servo.projections.rebuild import rebuild_projections

__all__ = [
    "CompactionSettings",
    "Compactor",
    "ProjectionReader",
    "asset_view",
    "compact",
    "list_runs",
    "partition_status",
    "rebuild_projections",
    "run_events",
    "run_view",
]
