"""The context handed to asset and check functions at run time."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from servo.core.keys import AssetKey, PartitionKey


@dataclass
class AssetExecutionContext:
    """What an asset function knows about the run it is part of.

    ``context.log`` writes to the attempt's log (``servo logs RUN_ID``); ``partition_key`` is
    the partition as users write it (``"2024-01-01"``, or ``"2024-01-01|eu"`` for several
    dimensions); ``add_output_metadata`` attaches metadata to the materialization.
    """

    asset_key: AssetKey
    partition: PartitionKey | None = None
    run_id: str = "local"
    attempt: int = 1
    resources: Mapping[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("servo.user"))
    partition_window: tuple[datetime, datetime] | None = None
    run_tags: Mapping[str, str] = field(default_factory=dict)
    output_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def partition_key(self) -> str | None:
        return self.partition.user_string() if self.partition is not None else None

    @property
    def partition_keys_by_dimension(self) -> dict[str, str]:
        if self.partition is None:
            return {}
        if self.partition.is_multi:
            return self.partition.dimensions()
        return {"": self.partition.user_string()}

    @property
    def has_partition_key(self) -> bool:
        return self.partition is not None

    @property
    def partition_time_window(self) -> tuple[datetime, datetime]:
        if self.partition_window is None:
            raise ValueError(f"asset `{self.asset_key}` is not time-partitioned in this run")
        return self.partition_window

    def add_output_metadata(self, metadata: Mapping[str, Any]) -> None:
        self.output_metadata.update(metadata)
