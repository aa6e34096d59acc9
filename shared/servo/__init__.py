"""Servo: an asset-centric data orchestrator with a serverless control plane.

The public SDK. Define assets with :func:`asset`, collect them in :class:`Definitions`, and
point ``servo`` at the module (``[tool.servo] module = "pkg.defs"`` in ``pyproject.toml``).
"""

from servo.core.errors import DefinitionError, ServoError, ValidationFailed
from servo.core.keys import AssetKey, PartitionKey
from servo.core.mappings import (
    AllPartitionMapping,
    IdentityPartitionMapping,
    LastPartitionMapping,
    MultiPartitionMapping,
    MultiToSingleDimensionPartitionMapping,
    PartitionMapping,
    StaticPartitionMapping,
    TimeWindowPartitionMapping,
)
from servo.core.partitions import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    HourlyPartitionsDefinition,
    MonthlyPartitionsDefinition,
    MultiPartitionsDefinition,
    PartitionsDefinition,
    StaticPartitionsDefinition,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
)
from servo.sdk.assets import (
    AssetDep,
    AssetIn,
    AssetsDefinition,
    Backoff,
    Jitter,
    RetryPolicy,
    asset,
)
from servo.sdk.checks import AssetCheckDefinition, CheckResult, Severity, asset_check
from servo.sdk.context import AssetExecutionContext
from servo.sdk.definitions import Definitions
from servo.sdk.evaluation_context import (
    PubSubMessage,
    PubSubSensorContext,
    RunStatusChange,
    RunStatusSensorContext,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
)
from servo.sdk.event_sensors import (
    gcs_object_notification,
    gcs_sensor,
    pubsub_sensor,
    run_status_sensor,
)
from servo.sdk.schedules import (
    DefaultStatus,
    RunRequest,
    ScheduleDefinition,
    SensorDefinition,
    SkipReason,
    schedule,
    sensor,
)
from servo.worker.runtime import Failure

__version__ = "0.1.0"

__all__ = [
    "AllPartitionMapping",
    "AssetCheckDefinition",
    "AssetDep",
    "AssetExecutionContext",
    "AssetIn",
    "AssetKey",
    "AssetsDefinition",
    "Backoff",
    "CheckResult",
    "DailyPartitionsDefinition",
    "DefaultStatus",
    "DefinitionError",
    "Definitions",
    "DynamicPartitionsDefinition",
    "Failure",
    "HourlyPartitionsDefinition",
    "IdentityPartitionMapping",
    "Jitter",
    "LastPartitionMapping",
    "MonthlyPartitionsDefinition",
    "MultiPartitionMapping",
    "MultiPartitionsDefinition",
    "MultiToSingleDimensionPartitionMapping",
    "PartitionKey",
    "PartitionMapping",
    "PartitionsDefinition",
    "PubSubMessage",
    "PubSubSensorContext",
    "RetryPolicy",
    "RunRequest",
    "RunStatusChange",
    "RunStatusSensorContext",
    "ScheduleDefinition",
    "ScheduleEvaluationContext",
    "SensorDefinition",
    "SensorEvaluationContext",
    "ServoError",
    "Severity",
    "SkipReason",
    "StaticPartitionMapping",
    "StaticPartitionsDefinition",
    "TimeWindowPartitionMapping",
    "TimeWindowPartitionsDefinition",
    "ValidationFailed",
    "WeeklyPartitionsDefinition",
    "asset",
    "asset_check",
    "gcs_object_notification",
    "gcs_sensor",
    "pubsub_sensor",
    "run_status_sensor",
    "schedule",
    "sensor",
]
