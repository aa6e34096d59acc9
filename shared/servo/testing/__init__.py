"""Helpers for testing: unit-test one asset (``materialize_asset``), a manual clock, and the
per-port contract suites (``servo.testing.contracts``) every backend adapter passes."""

from servo.testing.assets import AssetResult, build_asset_context, materialize_asset
from servo.testing.clock import ManualClock, SequentialIds

__all__ = [
    "AssetResult",
    "ManualClock",
    "SequentialIds",
    "build_asset_context",
    "materialize_asset",
]
