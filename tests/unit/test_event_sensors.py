"""The sensor SDK (GCS, Pub/Sub and run-status sensors), notification matching, and the worker
side of schedule and sensor evaluation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from servo import Definitions, RunRequest, SkipReason, asset, schedule, sensor
from servo.control.sensors import (
    GcsObject,
    Notification,
    gcs_match,
    partition_from_pattern,
    pubsub_match,
)
from servo.core.errors import DefinitionError, InvalidRequest
from servo.project import build_manifest
from servo.sdk.evaluation_context import SensorEvaluationContext
from servo.sdk.event_sensors import (
    default_gcs_topic,
    gcs_object_notification,
    gcs_sensor,
    pubsub_sensor,
    run_status_sensor,
)
from servo.worker.evaluate import EvaluationRequest, evaluate


@asset
def orders() -> int:
    return 1


# ---------------------------------------------------------------------------------------------
# SDK


def test_gcs_sensor_config_is_data_and_its_function_is_code() -> None:
    plain = gcs_sensor(
        name="landing",
        bucket="b",
        prefix="landing/",
        glob="landing/*/orders.csv",
        partition_key=r"landing/(\d{4}-\d{2}-\d{2})/",
        target=orders,
    )
    assert plain.kind == "gcs"
    assert plain.fn is None
    assert plain.selection == "orders"
    assert plain.config == {
        "bucket": "b",
        "prefix": "landing/",
        "glob": "landing/*/orders.csv",
        "partition_pattern": r"landing/(\d{4}-\d{2}-\d{2})/",
        "topic": default_gcs_topic("b"),
        "event_types": ["OBJECT_FINALIZE"],
    }

    def key_of(name: str) -> str | None:
        return name.split("/")[1]

    with_fn = gcs_sensor(name="fn", bucket="b", partition_key=key_of, target="orders", topic="t")
    assert with_fn.fn is key_of
    assert with_fn.config["partition_pattern"] is None
    assert with_fn.config["topic"] == "t"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bucket": ""}, "needs bucket="),
        ({"partition_key": "(unclosed"}, "not a valid regular expression"),
        ({"partition_key": r"(\d+)/(\d+)"}, "name the one holding the key"),
        ({"event_types": ["OBJECT_EXPLODED"]}, "event_types"),
        ({"partition_key": 5}, "partition_key must be"),
        ({"prefix": ""}, "prefix must be a non-empty string"),
    ],
)
def test_gcs_sensor_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"name": "s", "bucket": "b", "target": "orders", **kwargs}
    with pytest.raises(DefinitionError, match=message):
        gcs_sensor(**args)


def test_pubsub_and_run_status_sensors() -> None:
    ps = pubsub_sensor(
        name="ps", topic="t", target="orders", attributes={"type": "ready", "tier": ["a", "b"]}
    )
    assert ps.config == {
        "topic": "t",
        "attributes": {"type": ["ready"], "tier": ["a", "b"]},
        "partition_attribute": None,
    }
    with pytest.raises(DefinitionError, match="attributes"):
        pubsub_sensor(name="ps", topic="t", target="orders", attributes={"n": [1]})  # type: ignore[list-item]

    def alert(context: Any) -> None:
        """Tell someone."""

    rs = run_status_sensor(statuses=["FAILED", "TIMED_OUT"], fn=alert, run_tags={"team": "x"})
    assert (rs.name, rs.kind, rs.description) == ("alert", "run_status", "Tell someone.")
    assert rs.config["statuses"] == ["FAILED", "TIMED_OUT"]
    with pytest.raises(DefinitionError, match="drawn from"):
        run_status_sensor(name="r", statuses=["BROKEN"], target="orders")
    with pytest.raises(DefinitionError, match="needs a target to run or a fn"):
        run_status_sensor(name="r", statuses=["FAILED"])


def test_event_sensors_go_into_the_manifest() -> None:
    defs = Definitions(
        assets=[orders],
        sensors=[
            gcs_sensor(name="landing", bucket="b", partition_key=r"(\d+)", target="orders"),
            run_status_sensor(name="watch", statuses=["SUCCEEDED"], target="orders"),
        ],
    )
    manifest, _ = build_manifest(defs, project="p", code_version="v")
    assert manifest is not None
    kinds = {s.name: (s.kind, s.target, s.code) for s in manifest.sensors}
    assert kinds == {"landing": ("gcs", "orders", None), "watch": ("run_status", "orders", None)}


# ---------------------------------------------------------------------------------------------
# Matching notifications


def test_partition_keys_from_object_names() -> None:
    assert partition_from_pattern(r"landing/(\d{4}-\d{2}-\d{2})/", "landing/2024-01-05/o.csv") == (
        "2024-01-05"
    )
    assert partition_from_pattern(r"(?P<region>\w+)/(?P<partition>\d+)", "eu/42") == "42"
    assert partition_from_pattern(r"\d{4}", "file-2024.csv") == "2024"
    assert partition_from_pattern(r"(\d{4})", "nothing.csv") is None


def test_gcs_and_pubsub_filters_name_why_they_ignore_a_message() -> None:
    config = {
        "bucket": "b",
        "prefix": "landing/",
        "glob": "landing/*.csv",
        "event_types": ["OBJECT_FINALIZE"],
    }
    ok = GcsObject("b", "landing/x.csv", "1", "OBJECT_FINALIZE")
    assert gcs_match(config, ok) is None
    assert "bucket" in (gcs_match(config, GcsObject("c", "landing/x.csv", "1", None)) or "")
    assert "start with" in (gcs_match(config, GcsObject("b", "x.csv", "1", None)) or "")
    assert "match" in (gcs_match(config, GcsObject("b", "landing/x.json", "1", None)) or "")
    deleted = GcsObject("b", "landing/x.csv", "1", "OBJECT_DELETE")
    assert "not watched" in (gcs_match(config, deleted) or "")
    note = Notification(id="1", data={}, attributes={"type": "ready"})
    assert pubsub_match({"attributes": {"type": ["ready", "late"]}}, note) is None
    assert "type" in (pubsub_match({"attributes": {"type": ["late"]}}, note) or "")


def test_notifications_from_push_payloads() -> None:
    data, attrs = gcs_object_notification("b", "x/y.csv", 12)
    note = Notification.from_json({"messageId": "m", "data": data, "attributes": attrs})
    assert note.id == "m" and note.data["generation"] == "12"
    text = Notification.from_json({"id": "m", "data": b'{"a": 1}', "attributes": {}})
    assert text.data == {"a": 1}
    plain = Notification.from_json({"id": "m", "data": "not json", "attributes": {}})
    assert plain.data == "not json"
    with pytest.raises(InvalidRequest, match="message id"):
        Notification.from_json({"data": {}})
    with pytest.raises(InvalidRequest, match="attributes"):
        Notification.from_json({"id": "m", "attributes": {"n": 1}})


# ---------------------------------------------------------------------------------------------
# The worker side of evaluation (servo.worker.evaluate.evaluate, called in-process here)


@sensor(target="orders")
def counting(context: SensorEvaluationContext) -> Any:
    n = int(context.cursor or "0")
    context.update_cursor(str(n + 1))
    if n == 0:
        return SkipReason("warming up")
    return [RunRequest(run_key=f"k{n}", partition_key="p", tags={"n": str(n)})]


@sensor(target="orders")
def generating() -> Iterator[RunRequest]:
    yield RunRequest(run_key="a")
    yield RunRequest(run_key="b")


@sensor(target="orders")
def failing(context: Any) -> Any:
    raise KeyError("missing")


@sensor(target="orders")
def wrong_type(context: Any) -> Any:
    return {"run": True}


@sensor(target="orders")
def mixed(context: Any) -> Any:
    return [RunRequest(), SkipReason("no")]


@sensor(target="orders")
def bad_cursor(context: Any) -> Any:
    context.update_cursor(5)


@sensor(target="orders")
async def asynchronous(context: Any) -> Any:
    await asyncio.sleep(0)
    return RunRequest(run_key="async")


@schedule(cron_schedule="0 1 * * *", target="orders", timezone="Europe/Berlin")
def nightly(context: Any) -> Any:
    return RunRequest(
        run_key=context.scheduled_execution_time.isoformat(), partition_key=context.partition_key
    )


DEFS = Definitions(
    assets=[orders],
    sensors=[counting, generating, failing, wrong_type, mixed, bad_cursor, asynchronous],
    schedules=[nightly],
)


def sensor_request(name: str, cursor: str | None = None) -> EvaluationRequest:
    return EvaluationRequest(kind="sensor", code_version="v", name=name, cursor=cursor)


def test_a_sensor_function_returns_requests_or_a_skip_and_moves_its_cursor() -> None:
    first = evaluate(DEFS, sensor_request("counting"))
    assert first.error is None
    assert first.outcomes[0].skip_reason == "warming up"
    assert (first.cursor, first.cursor_updated) == ("1", True)
    second = evaluate(DEFS, sensor_request("counting", cursor="1"))
    [req] = second.outcomes[0].requests
    assert (req.run_key, req.partition_key, req.tags) == ("k1", "p", {"n": "1"})
    assert second.cursor == "2"
    gen = evaluate(DEFS, sensor_request("generating"))
    assert [r.run_key for r in gen.outcomes[0].requests] == ["a", "b"]
    assert not gen.cursor_updated
    assert [
        r.run_key for r in evaluate(DEFS, sensor_request("asynchronous")).outcomes[0].requests
    ] == ["async"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("failing", "sensor `failing` raised KeyError: 'missing'"),
        ("wrong_type", "return RunRequest(...) or SkipReason(...)"),
        ("mixed", "both RunRequests and a SkipReason"),
        ("bad_cursor", "update_cursor needs a string or None"),
    ],
)
def test_errors_in_user_functions_are_reported_not_raised(name: str, message: str) -> None:
    result = evaluate(DEFS, sensor_request(name, cursor="c"))
    [outcome] = result.outcomes
    assert outcome.error is not None and message in outcome.error
    assert outcome.traceback is not None and "evaluate.py" not in outcome.traceback
    assert result.cursor == "c" and not result.cursor_updated


def test_an_unknown_function_is_an_error_naming_it() -> None:
    result = evaluate(DEFS, sensor_request("nope"))
    assert result.error is not None and "sensor `nope` is not defined" in result.error


def test_a_schedule_function_sees_its_tick_in_its_timezone() -> None:
    result = evaluate(
        DEFS,
        EvaluationRequest(
            kind="schedule",
            code_version="v",
            name="nightly",
            scheduled_time=datetime(2024, 1, 5, 0, 0, tzinfo=UTC).isoformat(),
            timezone="Europe/Berlin",
            partition_key="2024-01-04",
        ),
    )
    [req] = result.outcomes[0].requests
    assert req.run_key == "2024-01-05T01:00:00+01:00"
    assert req.partition_key == "2024-01-04"
