"""The public SDK surface is small, sorted and pinned: changing it is a deliberate act."""

import servo

EXPECTED = [
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


def test_all_is_sorted_and_pinned() -> None:
    assert servo.__all__ == sorted(servo.__all__)
    assert servo.__all__ == EXPECTED


def test_every_exported_name_exists() -> None:
    for name in servo.__all__:
        assert getattr(servo, name) is not None, name
