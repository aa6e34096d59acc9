"""Partitions definitions: keys, parsing, ranges, windows, DST, problems and specs."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servo.core import partitions as partitions_module
from servo.core.canonical import canonical_json
from servo.core.errors import DefinitionError, PartitionError
from servo.core.keys import PartitionKey
from servo.core.partitions import (
    NO_CONTEXT,
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    HourlyPartitionsDefinition,
    MonthlyPartitionsDefinition,
    MultiPartitionsDefinition,
    PartitionContext,
    PartitionsDefinition,
    StaticPartitionsDefinition,
    TimeWindow,
    TimeWindowPartitionsDefinition,
    WeeklyPartitionsDefinition,
    partition_value_problems,
    partitions_from_spec,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "time_partitions.json"
TIME_CASES: list[dict[str, Any]] = json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]


def values(keys: list[PartitionKey]) -> list[str]:
    return [k.user_string() for k in keys]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def single(value: str) -> PartitionKey:
    return PartitionKey.single(value)


# -- golden time partitions -------------------------------------------------------------------


def _build(case: dict[str, Any]) -> TimeWindowPartitionsDefinition:
    cls = getattr(partitions_module, case["class"])
    defn = cls(**case["args"])
    assert isinstance(defn, TimeWindowPartitionsDefinition)
    return defn


@pytest.mark.parametrize("case", TIME_CASES, ids=[c["name"] for c in TIME_CASES])
def test_time_partitions_match_golden(case: dict[str, Any]) -> None:
    defn = _build(case)
    assert defn.problems() == []
    ctx = PartitionContext(now=at(case["now"])) if "now" in case else NO_CONTEXT
    keys = values(defn.keys(ctx))
    assert len(keys) == len(set(keys))
    if "count" in case:
        assert len(keys) == case["count"]
    if "first_keys" in case:
        assert keys[: len(case["first_keys"])] == case["first_keys"]
    if "last_keys" in case:
        assert keys[-len(case["last_keys"]) :] == case["last_keys"]
    for key, (start, end) in case.get("windows", {}).items():
        window = defn.window(key)
        assert window.start.isoformat() == start
        assert window.end.isoformat() == end
        assert key in keys
    for key, hours in case.get("hours", {}).items():
        assert defn.window(key).duration == timedelta(hours=hours)
    for bad in case.get("not_keys", []):
        if bad:
            assert not defn.has_key(single(bad), ctx)
        with pytest.raises(PartitionError):
            defn.parse_key(bad, ctx)
    for moment, expected in case.get("key_for_time", []):
        found = defn.key_for_time(at(moment))
        assert (found.user_string() if found else None) == expected
    for now, expected in case.get("last_closed", []):
        found = defn.last_closed_key(at(now))
        assert (found.user_string() if found else None) == expected


@pytest.mark.parametrize("case", TIME_CASES, ids=[c["name"] for c in TIME_CASES])
def test_time_partitions_are_consistent(case: dict[str, Any]) -> None:
    """Every key parses, is a member, and the windows tile time in order without gaps."""
    defn = _build(case)
    ctx = PartitionContext(now=at(case["now"])) if "now" in case else NO_CONTEXT
    keys = defn.keys(ctx)
    previous: TimeWindow | None = None
    for key in keys:
        assert defn.parse_key(key.user_string(), ctx) == key
        assert defn.has_key(key, ctx)
        window = defn.window(key)
        assert window.duration > timedelta(0)
        assert defn.key_for_time(window.start) == key
        assert defn.key_for_time(window.end.astimezone(UTC) - timedelta(microseconds=1)) == key
        if previous is not None:
            assert previous.end.astimezone(UTC) == window.start.astimezone(UTC)
        previous = window
    if keys:
        first, last = keys[0].user_string(), keys[-1].user_string()
        assert defn.key_range(first, last, ctx) == keys


# -- C4/C6 and friends -----------------------------------------------------------------------


def test_daily_key_range_covers_january() -> None:
    daily = DailyPartitionsDefinition("2024-01-01", "2024-02-01")
    picked = daily.key_range("2024-01-01", "2024-01-31")
    assert len(picked) == 31
    assert picked[0] == single("2024-01-01")
    assert picked[-1] == single("2024-01-31")
    assert daily.key_range("2024-01-10", "2024-01-10") == [single("2024-01-10")]


def test_key_range_rejects_reversed_and_foreign_bounds() -> None:
    daily = DailyPartitionsDefinition("2024-01-01", "2024-02-01")
    with pytest.raises(PartitionError, match="reversed"):
        daily.key_range("2024-01-31", "2024-01-01")
    with pytest.raises(PartitionError, match="2024-02-01"):
        daily.key_range("2024-01-01", "2024-02-01")


def test_open_ended_key_range_needs_no_current_time() -> None:
    daily = DailyPartitionsDefinition("2024-01-01")
    assert values(daily.key_range("2030-01-01", "2030-01-03")) == [
        "2030-01-01",
        "2030-01-02",
        "2030-01-03",
    ]


def test_hourly_day_has_23_keys_on_spring_forward_and_24_on_fall_back() -> None:
    for day, expected in [("2024-03-10", 23), ("2024-03-11", 24), ("2024-11-03", 24)]:
        end = date.fromisoformat(day) + timedelta(days=1)
        hourly = HourlyPartitionsDefinition(day, end, timezone="America/New_York")
        assert len(hourly.keys()) == expected, day


# -- parse_key messages ------------------------------------------------------------------------


def test_parse_key_error_names_definition_value_and_fix() -> None:
    daily = DailyPartitionsDefinition("2024-01-01", "2024-02-01")
    with pytest.raises(PartitionError) as info:
        daily.parse_key("2024-13-01")
    message = str(info.value)
    assert message.startswith(
        "'2024-13-01' is not a partition of daily partitions from 2024-01-01 until "
        "2024-02-01 (UTC): expected a date written %Y-%m-%d between 2024-01-01 and 2024-01-31"
    )


def test_parse_key_suggests_the_written_form() -> None:
    daily = DailyPartitionsDefinition("2024-01-01", "2024-02-01")
    with pytest.raises(PartitionError, match="write it as '2024-01-05'"):
        daily.parse_key("2024-1-5")
    weekly = WeeklyPartitionsDefinition("2024-01-01", "2024-03-01")
    with pytest.raises(PartitionError, match="the one containing it is '2024-01-07'"):
        weekly.parse_key("2024-01-10")


def test_parse_key_explains_skipped_local_hour() -> None:
    hourly = HourlyPartitionsDefinition("2024-03-01", timezone="America/New_York")
    with pytest.raises(PartitionError, match="does not exist in America/New_York"):
        hourly.parse_key("2024-03-10-02:00")


def test_open_ended_without_now() -> None:
    daily = DailyPartitionsDefinition("2024-01-01")
    with pytest.raises(PartitionError, match="needs the current time"):
        daily.keys()
    # Without a current time only the lower bound is checked.
    assert daily.parse_key("2999-01-01") == single("2999-01-01")
    assert daily.has_key(single("2999-01-01"))
    assert not daily.has_key(single("2023-12-31"))
    with pytest.raises(PartitionError, match="from 2024-01-01 on"):
        daily.parse_key("2023-12-31")


def test_open_ended_with_now_rejects_partition_in_progress() -> None:
    daily = DailyPartitionsDefinition("2024-01-01")
    ctx = PartitionContext(now=datetime(2024, 1, 5, 12, tzinfo=UTC))
    with pytest.raises(PartitionError, match="has not ended yet"):
        daily.parse_key("2024-01-05", ctx)
    assert daily.has_key(single("2024-01-04"), ctx)
    assert not daily.has_key(single("2024-01-05"), ctx)
    daily.keys(ctx)  # fills the cache; membership must agree with it
    assert daily.has_key(single("2024-01-04"), ctx)
    assert not daily.has_key(single("2024-01-05"), ctx)


def test_open_ended_before_first_partition_has_no_keys() -> None:
    daily = DailyPartitionsDefinition("2024-01-01")
    ctx = PartitionContext(now=datetime(2023, 6, 1, tzinfo=UTC))
    assert daily.keys(ctx) == []
    with pytest.raises(PartitionError, match="none yet"):
        daily.parse_key("2024-01-01", ctx)


def test_single_dimension_parse_rejects_mappings_and_multi_keys() -> None:
    daily = DailyPartitionsDefinition("2024-01-01", "2024-02-01")
    with pytest.raises(PartitionError, match="single dimension"):
        daily.parse_key({"date": "2024-01-01"})
    with pytest.raises(PartitionError, match="single dimension"):
        daily.parse_key(PartitionKey.multi({"date": "2024-01-01"}))
    assert not daily.has_key(PartitionKey.multi({"date": "2024-01-01"}))
    assert daily.parse_key(single("2024-01-02")) == single("2024-01-02")


# -- time helpers ------------------------------------------------------------------------------


def test_window_and_key_for_time_need_aware_datetimes() -> None:
    daily = DailyPartitionsDefinition("2024-01-01", "2024-02-01")
    with pytest.raises(PartitionError, match="timezone-aware"):
        daily.key_for_time(datetime(2024, 1, 2))
    with pytest.raises(PartitionError, match="timezone-aware"):
        daily.last_closed_key(datetime(2024, 1, 2))
    with pytest.raises(PartitionError, match="timezone-aware"):
        PartitionContext(now=datetime(2024, 1, 2))


def test_window_is_expressed_in_the_definitions_timezone() -> None:
    daily = DailyPartitionsDefinition("2024-01-01", "2024-02-01", timezone="Europe/Berlin")
    window = daily.window("2024-01-02")
    assert window.start.tzinfo == ZoneInfo("Europe/Berlin")
    assert window.start.date() == date(2024, 1, 2)
    assert window.contains(datetime(2024, 1, 1, 23, 0, tzinfo=UTC))
    assert not window.contains(datetime(2024, 1, 2, 23, 0, tzinfo=UTC))
    assert window == TimeWindow(
        datetime(2024, 1, 1, 23, tzinfo=UTC), datetime(2024, 1, 2, 23, tzinfo=UTC)
    )
    assert hash(window) == hash(
        TimeWindow(datetime(2024, 1, 1, 23, tzinfo=UTC), datetime(2024, 1, 2, 23, tzinfo=UTC))
    )


def test_calendar_window_and_overlap_ignore_nothing_they_should_not() -> None:
    daily = DailyPartitionsDefinition("2024-01-10", "2024-01-20")
    before = daily.calendar_window_at(datetime(2024, 1, 10, 5, tzinfo=UTC), -3)
    assert before.start == datetime(2024, 1, 7, tzinfo=UTC)
    overlapping = daily.keys_overlapping(
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 12, 0, 1, tzinfo=UTC)
    )
    assert values(overlapping) == ["2024-01-10", "2024-01-11", "2024-01-12"]
    assert (
        daily.keys_overlapping(datetime(2024, 1, 12, tzinfo=UTC), datetime(2024, 1, 12, tzinfo=UTC))
        == []
    )


def test_start_and_end_accept_dates_datetimes_and_iso_strings() -> None:
    reference = DailyPartitionsDefinition("2024-01-01", "2024-02-01")
    same = [
        DailyPartitionsDefinition(date(2024, 1, 1), date(2024, 2, 1)),
        DailyPartitionsDefinition(datetime(2024, 1, 1), "2024-02-01T00:00"),
        DailyPartitionsDefinition(datetime(2024, 1, 1, tzinfo=UTC), "2024-02-01T00:00:00+00:00"),
        TimeWindowPartitionsDefinition("day", "2024-01-01", "2024-02-01"),
    ]
    for other in same:
        assert other == reference
        assert hash(other) == hash(reference)
        assert other.keys() == reference.keys()
    # An aware start is converted to the definition's timezone.
    berlin = DailyPartitionsDefinition(
        datetime(2023, 12, 31, 23, tzinfo=UTC), "2024-01-03", timezone="Europe/Berlin"
    )
    assert values(berlin.keys()) == ["2024-01-01", "2024-01-02"]


def test_describe_mentions_unit_offsets_and_zone() -> None:
    assert DailyPartitionsDefinition("2024-01-01").describe() == (
        "daily partitions from 2024-01-01 (UTC)"
    )
    assert WeeklyPartitionsDefinition("2024-01-07", day_offset=1).describe() == (
        "weekly partitions starting Monday from 2024-01-07 (UTC)"
    )
    assert (
        HourlyPartitionsDefinition("2024-01-01", "2024-01-02", timezone="Europe/Berlin").describe()
        == "hourly partitions from 2024-01-01-00:00 until 2024-01-02-00:00 (Europe/Berlin)"
    )
    assert (
        "starting 06:30"
        in DailyPartitionsDefinition("2024-01-01", hour_offset=6, minute_offset=30).describe()
    )
    assert (
        "starting on day 15" in MonthlyPartitionsDefinition("2024-01-01", day_offset=15).describe()
    )


# -- problems ----------------------------------------------------------------------------------


def test_time_problems_are_all_reported_at_once() -> None:
    defn = TimeWindowPartitionsDefinition(
        "fortnight",
        "2024-13-01",
        "soon",
        timezone="Mars/Olympus_Mons",
        minute_offset=61,
        hour_offset=-1,
        day_offset=3,
        end_offset=1.5,  # type: ignore[arg-type]
    )
    found = defn.problems()
    assert len(found) == 8
    joined = "\n".join(found)
    for fragment in [
        "'fortnight'",
        "Mars/Olympus_Mons",
        "minute_offset",
        "hour_offset",
        "day_offset",
        "end_offset",
        "'2024-13-01'",
        "'soon'",
    ]:
        assert fragment in joined
    with pytest.raises(DefinitionError) as info:
        defn.keys()
    assert "8 problem(s)" in str(info.value)
    # Describing and serialising an invalid definition still works.
    assert "fortnight" in defn.describe()
    canonical_json(defn.to_spec())


@pytest.mark.parametrize(
    ("defn", "fragment"),
    [
        (DailyPartitionsDefinition("2024-02-01", "2024-01-01"), "is not after start"),
        (DailyPartitionsDefinition("2024-01-01", "2024-01-01"), "is not after start"),
        (WeeklyPartitionsDefinition("2024-01-01", "2024-01-05"), "no weekly partitions"),
        (DailyPartitionsDefinition("2024-01-01", fmt="%Y-%m"), "cannot write daily keys"),
        (HourlyPartitionsDefinition("2024-01-01", fmt="%Y-%m-%d"), "cannot write hourly keys"),
        (DailyPartitionsDefinition("2024-01-01", fmt="%Y|%m|%d"), "'|'"),
        (DailyPartitionsDefinition("2024-01-01", fmt=""), "fmt must be"),
        (DailyPartitionsDefinition("2024-01-01", timezone=""), "not a known IANA timezone"),
        (DailyPartitionsDefinition("2024-01-01", timezone=5), "IANA name string"),  # type: ignore[arg-type]
        (DailyPartitionsDefinition(20240101), "must be a date"),  # type: ignore[arg-type]
        (DailyPartitionsDefinition("9999-01-01"), "out of range"),
        (HourlyPartitionsDefinition("2024-01-01", minute_offset=True), "minute_offset"),
        (TimeWindowPartitionsDefinition("hour", "2024-01-01", hour_offset=2), "hour_offset"),
        (MonthlyPartitionsDefinition("2024-01-01", day_offset=29), "day_offset"),
        (MonthlyPartitionsDefinition("2024-01-01", day_offset=0), "day_offset"),
        (WeeklyPartitionsDefinition("2024-01-01", day_offset=7), "day_offset"),
    ],
)
def test_time_problem(defn: PartitionsDefinition, fragment: str) -> None:
    found = defn.problems()
    assert found, defn
    assert any(fragment in p for p in found), found
    with pytest.raises(DefinitionError):
        defn.require_valid()
    with pytest.raises(DefinitionError):
        defn.parse_key("2024-01-01")


def test_valid_definitions_have_no_problems() -> None:
    for defn in [
        DailyPartitionsDefinition("2024-01-01"),
        HourlyPartitionsDefinition("2024-01-01", minute_offset=15, timezone="Asia/Kathmandu"),
        WeeklyPartitionsDefinition("2024-01-01", day_offset=6, hour_offset=23),
        MonthlyPartitionsDefinition("2024-01-01", day_offset=28, minute_offset=59),
        TimeWindowPartitionsDefinition("month", "2024-01-01"),
        StaticPartitionsDefinition(["a", "b"]),
        DynamicPartitionsDefinition("customers"),
    ]:
        assert defn.problems() == []
        defn.require_valid()


# -- static ------------------------------------------------------------------------------------


def test_static_keys_keep_given_order() -> None:
    static = StaticPartitionsDefinition(["us", "eu", "apac"])
    assert values(static.keys()) == ["us", "eu", "apac"]
    assert static.parse_key("eu") == single("eu")
    assert static.has_key(single("apac"))
    assert not static.has_key(single("mars"))
    assert values(static.key_range("eu", "apac")) == ["eu", "apac"]
    with pytest.raises(PartitionError, match="reversed"):
        static.key_range("apac", "us")
    assert static.dimension_names() == []
    assert static.last_key() == single("apac")


def test_static_parse_error_suggests_a_close_key() -> None:
    static = StaticPartitionsDefinition(["north", "south"])
    with pytest.raises(PartitionError, match="did you mean 'north'"):
        static.parse_key("nroth")
    with pytest.raises(PartitionError, match="not a partition of static partitions"):
        static.parse_key("")


def test_static_keys_may_hold_separator_characters() -> None:
    odd = ["a=b", "c,d", "e/f", "50%", "two words", "straße", "東京"]
    static = StaticPartitionsDefinition(odd)
    assert static.problems() == []
    for value in odd:
        key = static.parse_key(value)
        assert PartitionKey.parse_canonical(key.canonical()) == key


def test_static_problems_are_all_reported() -> None:
    found = StaticPartitionsDefinition(["a", "", "b|c", "a", "tab\t", 3, "b|c"]).problems()  # type: ignore[list-item]
    joined = "\n".join(found)
    assert "empty string" in joined
    assert "'|'" in joined
    assert "control character" in joined
    assert "int, not a string" in joined
    assert "repeat" in joined
    assert "'a'" in joined
    assert StaticPartitionsDefinition([]).problems() == [
        "static partitions have no keys; list at least one partition key"
    ]
    assert StaticPartitionsDefinition("abc").problems()
    assert StaticPartitionsDefinition(None).problems()  # type: ignore[arg-type]


def test_static_accepts_any_iterable_once() -> None:
    static = StaticPartitionsDefinition(v for v in ["x", "y"])  # type: ignore[arg-type]
    assert values(static.keys()) == ["x", "y"]
    assert values(static.keys()) == ["x", "y"]


def test_partition_value_problems() -> None:
    assert partition_value_problems("ok") == []
    assert partition_value_problems("\ud800")
    assert partition_value_problems("\x85")
    assert partition_value_problems(None)


# -- dynamic -----------------------------------------------------------------------------------


def test_dynamic_keys_come_from_the_context() -> None:
    dynamic = DynamicPartitionsDefinition("customers")
    assert dynamic.keys() == []
    ctx = PartitionContext(dynamic_keys={"customers": ["acme", "globex", "acme", "initech"]})
    assert values(dynamic.keys(ctx)) == ["acme", "globex", "initech"]
    assert dynamic.parse_key("globex", ctx) == single("globex")
    assert dynamic.has_key(single("initech"), ctx)
    assert not dynamic.has_key(single("initech"))
    with pytest.raises(PartitionError, match="add the key"):
        dynamic.parse_key("hooli", ctx)
    with pytest.raises(PartitionError, match="has no keys"):
        dynamic.parse_key("hooli")
    assert values(dynamic.key_range("globex", "initech", ctx)) == ["globex", "initech"]


def test_dynamic_context_is_a_snapshot() -> None:
    dynamic = DynamicPartitionsDefinition("customers")
    live = ["acme"]
    ctx = PartitionContext(dynamic_keys={"customers": live})
    assert values(dynamic.keys(ctx)) == ["acme"]
    live.append("globex")
    assert values(dynamic.keys(ctx)) == ["acme"]
    newer = PartitionContext(dynamic_keys={"customers": live})
    assert values(dynamic.keys(newer)) == ["acme", "globex"]
    assert values(dynamic.keys(ctx)) == ["acme"]


def test_dynamic_rejects_invalid_stored_keys_and_names() -> None:
    dynamic = DynamicPartitionsDefinition("customers")
    with pytest.raises(PartitionError, match=r"'\|'"):
        dynamic.keys(PartitionContext(dynamic_keys={"customers": ["a|b"]}))
    with pytest.raises(PartitionError, match="sequence of keys"):
        PartitionContext(dynamic_keys={"customers": "abc"})
    assert DynamicPartitionsDefinition("").problems()
    assert DynamicPartitionsDefinition("-x").problems()
    assert DynamicPartitionsDefinition(7).problems()  # type: ignore[arg-type]


# -- multi -------------------------------------------------------------------------------------


def _three_dims() -> MultiPartitionsDefinition:
    return MultiPartitionsDefinition(
        {
            "region": StaticPartitionsDefinition(["us", "eu"]),
            "date": DailyPartitionsDefinition("2024-01-01", "2024-01-03"),
            "color": StaticPartitionsDefinition(["red", "blue", "green"]),
        }
    )


def test_multi_with_three_dimensions() -> None:
    multi = _three_dims()
    assert multi.problems() == []
    assert multi.dimension_names() == ["color", "date", "region"]
    keys = multi.keys()
    assert len(keys) == 3 * 2 * 2
    assert keys == sorted(keys)
    assert keys[0] == PartitionKey.multi({"color": "blue", "date": "2024-01-01", "region": "eu"})
    assert keys[-1] == PartitionKey.multi({"color": "red", "date": "2024-01-02", "region": "us"})
    expected = PartitionKey.multi({"color": "green", "date": "2024-01-02", "region": "eu"})
    assert multi.parse_key("green|2024-01-02|eu") == expected
    assert multi.parse_key("color=green,date=2024-01-02,region=eu") == expected
    assert multi.parse_key({"region": "eu", "color": "green", "date": "2024-01-02"}) == expected
    assert multi.parse_key(expected) == expected
    assert multi.has_key(expected)
    assert not multi.has_key(
        PartitionKey.multi({"color": "pink", "date": "2024-01-02", "region": "eu"})
    )
    assert not multi.has_key(PartitionKey.multi({"color": "red", "date": "2024-01-02"}))
    assert not multi.has_key(single("red"))
    picked = multi.key_range("blue|2024-01-02|eu", "green|2024-01-01|us")
    assert picked == keys[2:6]
    assert values(multi.keys_with({"date": "2024-01-01", "region": "us"})) == [
        "blue|2024-01-01|us",
        "green|2024-01-01|us",
        "red|2024-01-01|us",
    ]
    assert multi.keys_with({"date": "2030-01-01"}) == []
    with pytest.raises(PartitionError, match="no dimension"):
        multi.keys_with({"planet": "mars"})


def test_multi_parse_errors_name_the_dimension() -> None:
    multi = _three_dims()
    with pytest.raises(PartitionError, match="in dimension 'date'"):
        multi.parse_key("red|2024-02-30|us")
    with pytest.raises(PartitionError, match=r"color\|date\|region"):
        multi.parse_key("red|us")
    with pytest.raises(PartitionError, match="names dimensions"):
        multi.parse_key({"color": "red", "date": "2024-01-01"})
    with pytest.raises(PartitionError, match="one value"):
        multi.parse_key(single("red"))


def test_multi_values_with_separators_and_single_dimension() -> None:
    multi = MultiPartitionsDefinition(
        {"k": StaticPartitionsDefinition(["a=b", "c,d"]), "x": StaticPartitionsDefinition(["1"])}
    )
    assert multi.parse_key("a=b|1") == PartitionKey.multi({"k": "a=b", "x": "1"})
    assert multi.parse_key("k=c%2Cd,x=1") == PartitionKey.multi({"k": "c,d", "x": "1"})
    one = MultiPartitionsDefinition({"d": StaticPartitionsDefinition(["d=v", "v"])})
    # The canonical form wins when the text is canonical with exactly these dimensions.
    assert one.parse_key("d=v") == PartitionKey.multi({"d": "v"})
    assert one.parse_key("d=d%3Dv") == PartitionKey.multi({"d": "d=v"})
    assert one.parse_key("v") == PartitionKey.multi({"d": "v"})


def test_multi_with_dynamic_dimension_uses_context() -> None:
    multi = MultiPartitionsDefinition(
        {
            "date": DailyPartitionsDefinition("2024-01-01", "2024-01-03"),
            "customer": DynamicPartitionsDefinition("customers"),
        }
    )
    assert multi.keys() == []
    ctx = PartitionContext(dynamic_keys={"customers": ["b", "a"]})
    assert values(multi.keys(ctx)) == [
        "a|2024-01-01",
        "a|2024-01-02",
        "b|2024-01-01",
        "b|2024-01-02",
    ]
    assert multi.has_key(multi.parse_key("b|2024-01-02", ctx), ctx)
    assert not multi.has_key(PartitionKey.multi({"customer": "b", "date": "2024-01-02"}))


def test_multi_problems_are_all_reported() -> None:
    nested = _three_dims()
    found = MultiPartitionsDefinition(
        {
            "date": DailyPartitionsDefinition("2024-13-01"),
            "inner": nested,
            "": StaticPartitionsDefinition(["a"]),
            "x": "static",  # type: ignore[dict-item]
            "y": StaticPartitionsDefinition([]),
        }
    ).problems()
    joined = "\n".join(found)
    assert "dimension 'date': start '2024-13-01'" in joined
    assert "'inner' is itself multi-dimensional" in joined
    assert "dimension name is an empty string" in joined
    assert "'x' is str" in joined
    assert "dimension 'y': static partitions have no keys" in joined
    assert MultiPartitionsDefinition({}).problems()
    assert MultiPartitionsDefinition(["a"]).problems()  # type: ignore[arg-type]


# -- specs and equality ------------------------------------------------------------------------


SPEC_EXAMPLES: list[PartitionsDefinition] = [
    DailyPartitionsDefinition("2024-01-01"),
    DailyPartitionsDefinition("2024-01-01", "2024-03-01", timezone="Europe/Berlin", hour_offset=3),
    HourlyPartitionsDefinition("2024-01-01T05:00", minute_offset=15, end_offset=2),
    WeeklyPartitionsDefinition("2024-01-01", day_offset=3),
    MonthlyPartitionsDefinition("2024-01-01", day_offset=5, fmt="%Y/%m/%d"),
    DailyPartitionsDefinition("01.02.2024", fmt="%d.%m.%Y"),
    StaticPartitionsDefinition(["b", "a", "a=b"]),
    DynamicPartitionsDefinition("customers"),
    _three_dims(),
    DailyPartitionsDefinition("2024-13-01", timezone="Nowhere/Else"),
    StaticPartitionsDefinition(["a", "a"]),
]


@pytest.mark.parametrize("defn", SPEC_EXAMPLES, ids=[d.describe() for d in SPEC_EXAMPLES])
def test_spec_round_trip(defn: PartitionsDefinition) -> None:
    spec = defn.to_spec()
    assert isinstance(spec["kind"], str)
    text = canonical_json(spec)
    rebuilt = partitions_from_spec(json.loads(text))
    assert rebuilt == defn
    assert hash(rebuilt) == hash(defn)
    assert canonical_json(rebuilt.to_spec()) == text
    assert rebuilt.problems() == defn.problems()
    if not defn.problems() and not (
        isinstance(defn, TimeWindowPartitionsDefinition) and defn.is_open_ended
    ):
        assert rebuilt.keys() == defn.keys()


def test_unequal_definitions_differ() -> None:
    specs = {canonical_json(d.to_spec()) for d in SPEC_EXAMPLES}
    assert len(specs) == len(SPEC_EXAMPLES)
    assert DailyPartitionsDefinition("2024-01-01") != StaticPartitionsDefinition(["2024-01-01"])
    assert DailyPartitionsDefinition("2024-01-01") != "daily"


def test_partitions_from_spec_rejects_malformed_specs() -> None:
    with pytest.raises(DefinitionError, match="unknown kind"):
        partitions_from_spec({"kind": "lunar"})
    with pytest.raises(DefinitionError, match="lacks the field 'keys'"):
        partitions_from_spec({"kind": "static"})
    with pytest.raises(DefinitionError, match="must be a mapping"):
        partitions_from_spec(["static"])  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="'dimensions' must be a mapping"):
        partitions_from_spec({"kind": "multi", "dimensions": []})


@settings(max_examples=60, deadline=None)
@given(
    unit=st.sampled_from(["hour", "day", "week", "month"]),
    start=st.dates(min_value=date(1990, 1, 1), max_value=date(2060, 1, 1)),
    length=st.integers(min_value=1, max_value=40),
    timezone=st.sampled_from(
        ["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"]
    ),
    minute=st.integers(min_value=0, max_value=59),
    hour=st.integers(min_value=0, max_value=23),
    end_offset=st.integers(min_value=-3, max_value=3),
)
def test_time_spec_round_trip_property(
    unit: str,
    start: date,
    length: int,
    timezone: str,
    minute: int,
    hour: int,
    end_offset: int,
) -> None:
    days = {"hour": 1, "day": length, "week": 7 * length, "month": 31 * length}[unit]
    defn = TimeWindowPartitionsDefinition(
        unit,
        start,
        start + timedelta(days=days + 31),
        timezone=timezone,
        minute_offset=minute,
        hour_offset=0 if unit == "hour" else hour,
        end_offset=end_offset,
    )
    assert defn.problems() == []
    rebuilt = partitions_from_spec(json.loads(canonical_json(defn.to_spec())))
    assert rebuilt == defn
    assert rebuilt.keys() == defn.keys()


DST_ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # 30-minute shifts
    "Antarctica/Troll",  # 2-hour shifts
    "America/Sao_Paulo",
    "Pacific/Apia",  # skipped 2011-12-30 entirely
]


def _transition_days(zone: str, year: int) -> list[date]:
    """Local dates on which the UTC offset of ``zone`` changes during ``year``."""
    tz = ZoneInfo(zone)
    moment = datetime(year, 1, 1, tzinfo=UTC)
    found: list[date] = []
    offset = moment.astimezone(tz).utcoffset()
    while moment.year == year:
        moment += timedelta(hours=1)
        local = moment.astimezone(tz)
        if local.utcoffset() != offset:
            offset = local.utcoffset()
            found.append(local.date())
    return found


TRANSITIONS = [
    (zone, day)
    for zone in DST_ZONES
    for year in (2011, 2024)
    for day in _transition_days(zone, year)
]


def test_transition_table_covers_the_interesting_zones() -> None:
    assert {zone for zone, _ in TRANSITIONS} == set(DST_ZONES)
    assert ("Pacific/Apia", date(2011, 12, 31)) in TRANSITIONS


GRIDS = [("hour", 0, 0), ("hour", 0, 30), ("hour", 0, 45)] + [
    ("day", hour, minute) for hour, minute in [(0, 0), (1, 0), (2, 0), (2, 30), (3, 0), (23, 0)]
]


@pytest.mark.parametrize(("zone", "day"), TRANSITIONS, ids=[f"{z}-{d}" for z, d in TRANSITIONS])
def test_time_windows_tile_time_across_transitions(zone: str, day: date) -> None:
    """Across any DST rule: keys unique and ordered, windows non-empty and contiguous."""
    for unit, hour, minute in GRIDS:
        defn = TimeWindowPartitionsDefinition(
            unit,
            day - timedelta(days=2),
            day + timedelta(days=2),
            timezone=zone,
            minute_offset=minute,
            hour_offset=hour,
        )
        keys = defn.keys()
        assert len(set(keys)) == len(keys)
        windows = [defn.window(k) for k in keys]
        for before, after in itertools.pairwise(windows):
            assert before.end.astimezone(UTC) == after.start.astimezone(UTC)
        for key, window in zip(keys, windows, strict=True):
            assert window.duration > timedelta(0)
            assert defn.parse_key(key.user_string()) == key
            assert defn.key_for_time(window.start) == key
            midpoint = window.start.astimezone(UTC) + window.duration / 2
            assert defn.key_for_time(midpoint) == key
            last = window.end.astimezone(UTC) - timedelta(microseconds=1)
            assert defn.key_for_time(last) == key


def test_a_skipped_day_has_no_key() -> None:
    daily = DailyPartitionsDefinition("2011-12-28", "2012-01-02", timezone="Pacific/Apia")
    assert values(daily.keys()) == ["2011-12-28", "2011-12-29", "2011-12-31", "2012-01-01"]
    with pytest.raises(PartitionError, match="does not exist"):
        daily.parse_key("2011-12-30")


# -- performance -------------------------------------------------------------------------------


def test_hundred_thousand_keys_enumerate_and_look_up() -> None:
    hourly = HourlyPartitionsDefinition(
        "2020-01-01", datetime(2020, 1, 1) + timedelta(hours=100_000), timezone="America/New_York"
    )
    keys = hourly.keys()
    # 100,000 local hours less one skipped hour per spring-forward day.
    assert len(keys) == 100_000 - 12
    assert all(hourly.has_key(k) for k in keys)
    static = StaticPartitionsDefinition([f"k{i}" for i in range(1000)])
    multi = MultiPartitionsDefinition(
        {"a": static, "b": StaticPartitionsDefinition([f"v{i}" for i in range(100)])}
    )
    multi_keys = multi.keys()
    assert len(multi_keys) == 100_000
    assert all(multi.has_key(k) for k in multi_keys)
    assert (
        len(multi.key_range(multi_keys[10].user_string(), multi_keys[-10].user_string())) == 99_981
    )


# -- robustness --------------------------------------------------------------------------------

ROBUST = [
    DailyPartitionsDefinition("2024-01-01"),
    DailyPartitionsDefinition(
        "2024-01-01", "2024-03-01", hour_offset=6, timezone="America/New_York"
    ),
    HourlyPartitionsDefinition("2024-01-01", minute_offset=30, timezone="Europe/Berlin"),
    WeeklyPartitionsDefinition("2024-01-01", day_offset=2),
    MonthlyPartitionsDefinition("2024-01-01", day_offset=28),
    StaticPartitionsDefinition(["a", "b"]),
    _three_dims(),
]
key_like_text = st.one_of(
    st.text(max_size=20),
    st.from_regex(r"-?[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}(-[0-9]{1,2}:[0-9]{2})?", fullmatch=True),
)


@settings(max_examples=200, deadline=None)
@given(text=key_like_text, which=st.integers(min_value=0, max_value=len(ROBUST) - 1))
def test_parse_key_accepts_members_and_raises_only_partition_errors(text: str, which: int) -> None:
    defn = ROBUST[which]
    ctx = PartitionContext(now=datetime(2024, 6, 1, tzinfo=UTC))
    try:
        key = defn.parse_key(text, ctx)
    except PartitionError:
        return
    assert defn.has_key(key, ctx)


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime.max.replace(tzinfo=UTC), "9999-12-31"),
        (datetime.min.replace(tzinfo=UTC), "0001-01-01"),
    ],
)
def test_extreme_times_raise_partition_errors(moment: datetime, text: str) -> None:
    daily = DailyPartitionsDefinition("2024-01-01")
    with pytest.raises(PartitionError, match="out of range"):
        daily.key_for_time(moment)
    with pytest.raises(PartitionError, match="out of range"):
        daily.keys(PartitionContext(now=moment))
    with pytest.raises(PartitionError, match="out of range"):
        daily.parse_key(text)
