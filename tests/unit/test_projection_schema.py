"""Event versions and upcasting (G7): golden files of every event version are read correctly,
and events of unknown types or newer versions never wedge the fold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servo.projections.fold import fold, fold_with_stats
from servo.projections.schema import DATA_VERSIONS, classify, event_data, input_ref

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "events"


def _golden() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(GOLDEN.glob("*.json"))}


def test_every_known_event_version_has_a_golden_file() -> None:
    names = set(_golden())
    missing = [
        f"{type_}@v{v}.json"
        for type_, newest in DATA_VERSIONS.items()
        for v in range(1, newest + 1)
        if f"{type_}@v{v}.json" not in names
    ]
    assert not missing, f"add golden files for {missing}"


@pytest.mark.parametrize("name", sorted(_golden()))
def test_golden_event_upcasts_to_its_recorded_current_shape(name: str) -> None:
    doc = _golden()[name]
    event = doc["event"]
    assert classify(event) == "current"
    assert event_data(event) == doc["upcast_data"]
    # Upcasting is idempotent: the current shape stays as it is.
    current = {**event, "data": doc["upcast_data"], "dataversion": DATA_VERSIONS.get(event["type"])}
    assert event_data(current) == doc["upcast_data"]


def test_old_version_events_fold_like_their_current_version() -> None:
    docs = _golden()
    v1 = docs["servo.task.state_changed@v1.json"]["event"]
    tables = fold([docs["servo.tasks.created@v1.json"]["event"], v1])
    (task,) = [t for t in tables["tasks"].to_pylist() if t["task_id"] == v1["task_id"]]
    assert task["state"] == "RETRY_WAIT"
    assert task["error"] == "ConnectionError: the source timed out", "v1 error from the reason"
    assert task["asset"] == "raw_orders" and task["partition"] == "2024-01-05"
    (attempt,) = tables["attempts"].to_pylist()
    assert attempt["outcome"] == "RETRY_WAIT" and attempt["error"] == task["error"]
    (row,) = [e for e in tables["events"].to_pylist() if e["id"] == v1["id"]]
    assert json.loads(row["data"])["error"] == task["error"]
    assert row["dataversion"] == DATA_VERSIONS["servo.task.state_changed"]

    old = docs["servo.asset.materialized@v1.json"]["event"]
    new = docs["servo.asset.materialized@v2.json"]["event"]
    for event, path in ((old, None), (new, new["data"]["inputs"][0]["output_path"])):
        (lineage,) = fold([event])["lineage"].to_pylist()
        assert (lineage["upstream_asset"], lineage["upstream_partition"]) == (
            "raw_orders",
            "2024-01-05",
        )
        assert lineage["upstream_output_path"] == path


def test_ticks_fold_from_schedule_and_sensor_events() -> None:
    docs = _golden()
    tables = fold(
        [
            docs["servo.schedule.ticked@v1.json"]["event"],
            docs["servo.sensor.ticked@v1.json"]["event"],
        ]
    )
    ticks = {t["kind"]: t for t in tables["ticks"].to_pylist()}
    assert ticks["schedule"]["name"] == "nightly" and ticks["schedule"]["status"] == "SUCCESS"
    assert json.loads(ticks["schedule"]["run_ids"]) == ["r01HKQ0000000000000000000A"]
    assert ticks["sensor"]["cursor"] == "2024-01-05/003.csv"
    assert ticks["sensor"]["reason"] == "no new files"


def test_unknown_future_and_malformed_events_are_kept_or_skipped_not_fatal() -> None:
    docs = _golden()
    created = docs["servo.run.created@v1.json"]["event"]
    future_type = {**created, "id": "e-future-type", "type": "servo.widget.spun", "data": {"x": 1}}
    future_version = {
        **docs["servo.run.state_changed@v1.json"]["event"],
        "id": "e-future-version",
        "dataversion": 99,
        "data": {"state": {"nested": "new shape"}},
    }
    future_envelope = {**created, "id": "e-future-envelope", "specversion": 7}
    malformed = [
        {"type": "servo.run.created"},  # no id
        {"id": "e-no-type"},
        {**created, "id": "e-bad-body", "type": "servo.task.state_changed", "data": None},
        {**created, "id": "e-bad-types", "run_id": 17, "lc": "x", "time_ms": "soon"},
    ]
    tables, stats = fold_with_stats(
        [created, future_type, future_version, future_envelope, *malformed]
    )
    assert stats.unknown == 3
    assert stats.malformed == 2
    events = {e["id"]: e for e in tables["events"].to_pylist()}
    assert not events["e-future-type"]["known"] and json.loads(events["e-future-type"]["data"]) == {
        "x": 1
    }
    assert not events["e-future-version"]["known"]
    assert events["e-bad-types"]["run_id"] == "17", "a malformed value is coerced, not fatal"
    # Only the well-formed, known run.created (and the coerced one) shaped the runs table.
    runs = {r["run_id"]: r for r in tables["runs"].to_pylist()}
    assert runs[created["run_id"]]["state"] == "QUEUED"
    assert runs[created["run_id"]]["selection"] == "raw_orders+"


def _folded_data(event: dict[str, Any]) -> Any:
    (row,) = fold([event])["events"].to_pylist()
    return json.loads(row["data"])


@pytest.mark.parametrize("name", sorted(_golden()))
def test_the_fold_upcasts_golden_events_in_sql_as_the_python_upcasters_do(name: str) -> None:
    doc = _golden()[name]
    assert _folded_data(doc["event"]) == doc["upcast_data"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)


@given(
    st.dictionaries(
        st.sampled_from(["event", "reason", "error", "duration_ms", "asset", "é"]),
        st.sampled_from(["FAIL", "SUCCEED", "HEARTBEAT_TIMEOUT"]) | json_values,
    )
)
@settings(max_examples=60, deadline=None)
def test_task_state_data_upcasts_in_sql_as_in_python(data: dict[str, Any]) -> None:
    event = {"id": "e1", "type": "servo.task.state_changed", "lc": 1, "time_ms": 1, "data": data}
    assert _folded_data(event) == event_data(event)


input_items = (
    st.text(alphabet="ab|", max_size=5)
    | st.fixed_dictionaries(
        {"asset": st.sampled_from(["a", 1, None])},
        optional={
            "partition": st.sampled_from(["p", None, 3]),
            "output_path": st.sampled_from(["o", None, 4]),
            "path": st.sampled_from(["q", None]),
            "extra": json_values,
        },
    )
    | json_values
)


@given(st.lists(input_items, max_size=4) | json_values, st.sampled_from([None, 1, 2]))
@settings(max_examples=60, deadline=None)
def test_materialization_inputs_normalize_in_sql_as_in_python(
    inputs: Any, version: int | None
) -> None:
    event = {
        "id": "e1",
        "type": "servo.asset.materialized",
        "lc": 1,
        "time_ms": 1,
        "dataversion": version,
        "data": {"asset": "x", "inputs": inputs},
    }
    refs = [input_ref(i) for i in inputs] if isinstance(inputs, list) else []
    expected = {"asset": "x", "inputs": [r for r in refs if r is not None]}
    assert _folded_data(event) == expected
