"""Partition mappings: upstream/downstream keys, problems, defaults and specs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servo.core.canonical import canonical_json
from servo.core.errors import DefinitionError, PartitionError
from servo.core.keys import PartitionKey
from servo.core.mappings import (
    AllPartitionMapping,
    IdentityPartitionMapping,
    LastPartitionMapping,
    MultiPartitionMapping,
    MultiToSingleDimensionPartitionMapping,
    PartitionMapping,
    StaticPartitionMapping,
    TimeWindowPartitionMapping,
    default_mapping,
    mapping_from_spec,
)
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
    WeeklyPartitionsDefinition,
)

JANUARY = DailyPartitionsDefinition("2024-01-01", "2024-02-01")
MONTHS = MonthlyPartitionsDefinition("2024-01-01", "2025-01-01")
REGIONS = StaticPartitionsDefinition(["us", "eu", "apac"])


def single(value: str) -> PartitionKey:
    return PartitionKey.single(value)


def texts(keys: list[PartitionKey | None]) -> list[str | None]:
    return [k.user_string() if k is not None else None for k in keys]


def up(
    mapping: PartitionMapping,
    key: str | PartitionKey | None,
    upstream: PartitionsDefinition | None,
    downstream: PartitionsDefinition | None,
    ctx: PartitionContext = NO_CONTEXT,
) -> list[str | None]:
    parsed = single(key) if isinstance(key, str) else key
    return texts(mapping.upstream_keys(parsed, upstream, downstream, ctx))


def down(
    mapping: PartitionMapping,
    key: str | PartitionKey | None,
    upstream: PartitionsDefinition | None,
    downstream: PartitionsDefinition | None,
    ctx: PartitionContext = NO_CONTEXT,
) -> list[str | None]:
    parsed = single(key) if isinstance(key, str) else key
    return texts(mapping.downstream_keys(parsed, upstream, downstream, ctx))


# -- time windows ------------------------------------------------------------------------------


def test_daily_rolls_up_into_monthly() -> None:
    """C4: the January monthly partition reads exactly the 31 January days."""
    mapping = default_mapping(JANUARY, MONTHS)
    assert mapping == TimeWindowPartitionMapping()
    assert mapping.problems(JANUARY, MONTHS) == []
    read = up(mapping, "2024-01-01", JANUARY, MONTHS)
    assert len(read) == 31
    assert read[0] == "2024-01-01"
    assert read[-1] == "2024-01-31"
    # February lies outside the upstream definition: nothing to read.
    assert up(mapping, "2024-02-01", JANUARY, MONTHS) == []
    assert down(mapping, "2024-01-15", JANUARY, MONTHS) == ["2024-01-01"]


def test_hourly_rolls_up_into_daily_across_dst() -> None:
    hourly = HourlyPartitionsDefinition("2024-01-01", "2025-01-01", timezone="America/New_York")
    daily = DailyPartitionsDefinition("2024-01-01", "2025-01-01", timezone="America/New_York")
    mapping = TimeWindowPartitionMapping()
    assert len(up(mapping, "2024-03-09", hourly, daily)) == 24
    spring = up(mapping, "2024-03-10", hourly, daily)
    assert len(spring) == 23
    assert "2024-03-10-02:00" not in spring
    # On the fall-back day the 01:00 key covers two real hours: still 24 keys, 25 hours.
    assert len(up(mapping, "2024-11-03", hourly, daily)) == 24
    assert down(mapping, "2024-03-10-03:00", hourly, daily) == ["2024-03-10"]
    assert down(mapping, "2024-11-03-01:00", hourly, daily) == ["2024-11-03"]


def test_hourly_utc_into_daily_new_york() -> None:
    hourly = HourlyPartitionsDefinition("2024-01-01", "2025-01-01")
    daily = DailyPartitionsDefinition("2024-01-01", "2025-01-01", timezone="America/New_York")
    read = up(TimeWindowPartitionMapping(), "2024-03-10", hourly, daily)
    assert len(read) == 23
    assert read[0] == "2024-03-10-05:00"
    assert read[-1] == "2024-03-11-03:00"
    # An upstream UTC hour straddles no NY day boundary, so it feeds exactly one day.
    assert down(TimeWindowPartitionMapping(), "2024-03-11-03:00", hourly, daily) == ["2024-03-10"]
    assert down(TimeWindowPartitionMapping(), "2024-03-11-04:00", hourly, daily) == ["2024-03-11"]


def test_daily_across_timezones_overlaps_two_days() -> None:
    utc = DailyPartitionsDefinition("2024-01-01", "2025-01-01")
    tokyo = DailyPartitionsDefinition("2024-01-01", "2025-01-01", timezone="Asia/Tokyo")
    assert up(TimeWindowPartitionMapping(), "2024-05-05", utc, tokyo) == [
        "2024-05-04",
        "2024-05-05",
    ]
    assert down(TimeWindowPartitionMapping(), "2024-05-05", utc, tokyo) == [
        "2024-05-05",
        "2024-05-06",
    ]


def test_monthly_fans_out_to_daily() -> None:
    daily = DailyPartitionsDefinition("2024-01-01", "2025-01-01")
    mapping = TimeWindowPartitionMapping()
    assert up(mapping, "2024-02-10", MONTHS, daily) == ["2024-02-01"]
    fanned = down(mapping, "2024-02-01", MONTHS, daily)
    assert len(fanned) == 29
    assert fanned[0] == "2024-02-01"
    assert fanned[-1] == "2024-02-29"


def test_weekly_from_daily() -> None:
    weekly = WeeklyPartitionsDefinition("2024-01-01", "2025-01-01")
    daily = DailyPartitionsDefinition("2024-01-01", "2025-01-01")
    assert up(TimeWindowPartitionMapping(), "2024-01-07", daily, weekly) == [
        f"2024-01-{d:02d}" for d in range(7, 14)
    ]
    assert down(TimeWindowPartitionMapping(), "2024-01-06", daily, weekly) == []


def test_time_window_offsets() -> None:
    previous_and_own = TimeWindowPartitionMapping(start_offset=-1)
    assert up(previous_and_own, "2024-01-10", JANUARY, JANUARY) == ["2024-01-09", "2024-01-10"]
    assert up(previous_and_own, "2024-01-01", JANUARY, JANUARY) == ["2024-01-01"]
    assert down(previous_and_own, "2024-01-09", JANUARY, JANUARY) == ["2024-01-09", "2024-01-10"]
    assert down(previous_and_own, "2024-01-31", JANUARY, JANUARY) == ["2024-01-31"]
    only_previous = TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
    assert up(only_previous, "2024-01-10", JANUARY, JANUARY) == ["2024-01-09"]
    assert down(only_previous, "2024-01-09", JANUARY, JANUARY) == ["2024-01-10"]
    ahead = TimeWindowPartitionMapping(end_offset=2)
    assert up(ahead, "2024-01-10", JANUARY, JANUARY) == ["2024-01-10", "2024-01-11", "2024-01-12"]
    assert down(ahead, "2024-01-12", JANUARY, JANUARY) == ["2024-01-10", "2024-01-11", "2024-01-12"]
    # Offsets count downstream periods: the previous month of daily upstream partitions.
    daily = DailyPartitionsDefinition("2023-01-01", "2025-01-01")
    last_month = TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)
    read = up(last_month, "2024-03-01", daily, MONTHS)
    assert len(read) == 29
    assert read[0] == "2024-02-01"


def test_time_window_inverse_agrees_with_forward_mapping() -> None:
    upstream = HourlyPartitionsDefinition("2024-03-08", "2024-03-13", timezone="Europe/Berlin")
    downstream = DailyPartitionsDefinition("2024-03-08", "2024-03-13", timezone="America/New_York")
    for start_offset, end_offset in [(0, 0), (-1, 0), (0, 1), (-2, -1), (1, 1)]:
        mapping = TimeWindowPartitionMapping(start_offset, end_offset)
        forward = {
            (u, d.user_string())
            for d in downstream.keys_view()
            for u in up(mapping, d, upstream, downstream)
        }
        backward = {
            (u.user_string(), d)
            for u in upstream.keys_view()
            for d in down(mapping, u, upstream, downstream)
        }
        assert forward == backward, (start_offset, end_offset)
        assert forward


def test_open_ended_upstream_drops_partitions_not_yet_ended() -> None:
    daily = DailyPartitionsDefinition("2024-01-01")
    monthly = MonthlyPartitionsDefinition("2024-01-01")
    ctx = PartitionContext(now=datetime(2024, 2, 10, 6, tzinfo=UTC))
    read = up(TimeWindowPartitionMapping(), "2024-02-01", daily, monthly, ctx)
    assert read[-1] == "2024-02-09"
    assert len(read) == 9
    # Without a current time only the definitions' start bounds apply.
    assert len(up(TimeWindowPartitionMapping(), "2024-02-01", daily, monthly)) == 29


def test_time_window_mapping_problems() -> None:
    mapping = TimeWindowPartitionMapping()
    assert mapping.problems(JANUARY, MONTHS) == []
    assert any("time-window partitions" in p for p in mapping.problems(REGIONS, MONTHS))
    assert any("partitioned upstream" in p for p in mapping.problems(None, MONTHS))
    assert any("partitioned downstream" in p for p in mapping.problems(JANUARY, None))
    reversed_window = TimeWindowPartitionMapping(start_offset=1, end_offset=0)
    assert any("empty window" in p for p in reversed_window.problems(JANUARY, JANUARY))
    found = TimeWindowPartitionMapping(start_offset=0.5, end_offset="x").problems(JANUARY, JANUARY)  # type: ignore[arg-type]
    assert len(found) == 2
    with pytest.raises(PartitionError, match="time-window partitions"):
        mapping.upstream_keys(single("us"), JANUARY, REGIONS, NO_CONTEXT)


# -- identity, all, last ---------------------------------------------------------------------


def test_identity_between_equal_and_overlapping_definitions() -> None:
    identity = IdentityPartitionMapping()
    assert up(identity, "eu", REGIONS, REGIONS) == ["eu"]
    smaller = StaticPartitionsDefinition(["us", "eu"])
    assert identity.problems(REGIONS, smaller) == []
    assert up(identity, "eu", smaller, REGIONS) == ["eu"]
    assert up(identity, "apac", smaller, REGIONS) == []
    assert down(identity, "apac", REGIONS, smaller) == []
    february = DailyPartitionsDefinition("2024-01-15", "2024-03-01")
    assert identity.problems(JANUARY, february) == []
    assert up(identity, "2024-02-01", JANUARY, february) == []
    assert up(identity, "2024-01-20", JANUARY, february) == ["2024-01-20"]


def test_identity_problems_explain_incompatibility() -> None:
    identity = IdentityPartitionMapping()
    found = identity.problems(JANUARY, REGIONS)
    assert len(found) == 1
    assert "daily partitions" in found[0]
    assert "static partitions" in found[0]
    assert identity.problems(
        JANUARY, DailyPartitionsDefinition("2024-01-01", timezone="Asia/Tokyo")
    )
    assert identity.problems(None, REGIONS)
    assert identity.problems(REGIONS, None)
    assert identity.problems(REGIONS, DynamicPartitionsDefinition("regions")) == []


def test_all_mapping() -> None:
    everything = AllPartitionMapping()
    assert everything.problems(JANUARY, REGIONS) == []
    assert up(everything, "eu", JANUARY, REGIONS) == texts(list(JANUARY.keys()))
    assert down(everything, "2024-01-05", JANUARY, REGIONS) == ["us", "eu", "apac"]
    assert up(everything, None, JANUARY, None) == texts(list(JANUARY.keys()))
    assert down(everything, "2024-01-05", JANUARY, None) == [None]


def test_last_mapping() -> None:
    last = LastPartitionMapping()
    assert up(last, "eu", JANUARY, REGIONS) == ["2024-01-31"]
    assert up(last, None, JANUARY, None) == ["2024-01-31"]
    assert down(last, "2024-01-31", JANUARY, REGIONS) == ["us", "eu", "apac"]
    assert down(last, "2024-01-30", JANUARY, REGIONS) == []
    assert down(last, "2024-01-31", JANUARY, None) == [None]
    assert down(last, "2024-01-30", JANUARY, None) == []
    assert up(last, "eu", DynamicPartitionsDefinition("empty"), REGIONS) == []
    daily = DailyPartitionsDefinition("2024-01-01")
    ctx = PartitionContext(now=datetime(2024, 3, 1, 12, tzinfo=UTC))
    assert up(last, None, daily, None, ctx) == ["2024-02-29"]
    assert last.problems(None, REGIONS)


def test_unpartitioned_sides() -> None:
    for mapping in [
        AllPartitionMapping(),
        IdentityPartitionMapping(),
        LastPartitionMapping(),
        TimeWindowPartitionMapping(),
        StaticPartitionMapping({"a": "b"}),
        MultiToSingleDimensionPartitionMapping(),
    ]:
        assert up(mapping, "eu", None, REGIONS) == [None]
        assert up(mapping, None, None, None) == [None]
        assert down(mapping, None, None, REGIONS) == ["us", "eu", "apac"]
        assert down(mapping, None, None, None) == [None]
    with pytest.raises(PartitionError, match="pass the downstream partition key"):
        AllPartitionMapping().upstream_keys(None, JANUARY, REGIONS, NO_CONTEXT)
    with pytest.raises(PartitionError, match="pass the upstream partition key"):
        AllPartitionMapping().downstream_keys(None, JANUARY, REGIONS, NO_CONTEXT)


# -- static ------------------------------------------------------------------------------------


def test_static_mapping() -> None:
    countries = StaticPartitionsDefinition(["us", "ca", "de", "fr"])
    mapping = StaticPartitionMapping({"us": "na", "ca": "na", "de": ["eu", "emea"], "fr": "eu"})
    continents = StaticPartitionsDefinition(["na", "eu", "emea"])
    assert mapping.problems(countries, continents) == []
    assert up(mapping, "na", countries, continents) == ["ca", "us"]
    assert up(mapping, "eu", countries, continents) == ["de", "fr"]
    assert up(mapping, "emea", countries, continents) == ["de"]
    assert down(mapping, "de", countries, continents) == ["emea", "eu"]
    assert down(mapping, "us", countries, continents) == ["na"]
    smaller = StaticPartitionsDefinition(["na"])
    assert down(mapping, "de", countries, smaller) == []


def test_static_mapping_problems() -> None:
    mapping = StaticPartitionMapping({"us": "na", "xx": "yy"})
    found = mapping.problems(StaticPartitionsDefinition(["us"]), StaticPartitionsDefinition(["na"]))
    assert len(found) == 2
    assert "['xx']" in found[0]
    assert "['yy']" in found[1]
    multi = MultiPartitionsDefinition({"a": REGIONS})
    assert any("single-dimension" in p for p in mapping.problems(multi, REGIONS))
    assert StaticPartitionMapping(["us"]).problems(REGIONS, REGIONS)  # type: ignore[arg-type]
    assert StaticPartitionMapping({"us": 3}).problems(REGIONS, REGIONS)  # type: ignore[dict-item]
    assert mapping.problems(None, REGIONS)


# -- multi -------------------------------------------------------------------------------------


def test_multi_mapping_by_dimension_defaults() -> None:
    upstream = MultiPartitionsDefinition({"date": JANUARY, "region": REGIONS})
    downstream = MultiPartitionsDefinition({"date": MONTHS, "region": REGIONS})
    mapping = default_mapping(upstream, downstream)
    assert mapping == MultiPartitionMapping(
        {"date": TimeWindowPartitionMapping(), "region": IdentityPartitionMapping()}
    )
    assert mapping.problems(upstream, downstream) == []
    read = up(
        mapping, PartitionKey.multi({"date": "2024-01-01", "region": "eu"}), upstream, downstream
    )
    assert len(read) == 31
    assert all(k is not None and k.endswith("|eu") for k in read)
    assert read == sorted(read, key=str)
    assert down(
        mapping, PartitionKey.multi({"date": "2024-01-20", "region": "us"}), upstream, downstream
    ) == ["2024-01-01|us"]


def test_multi_mapping_with_three_dimensions_and_explicit_mapping() -> None:
    colors = StaticPartitionsDefinition(["red", "blue"])
    upstream = MultiPartitionsDefinition({"date": JANUARY, "region": REGIONS, "color": colors})
    downstream = MultiPartitionsDefinition({"date": JANUARY, "region": REGIONS, "color": colors})
    mapping = MultiPartitionMapping(
        {"date": TimeWindowPartitionMapping(start_offset=-1), "color": AllPartitionMapping()}
    )
    assert mapping.problems(upstream, downstream) == []
    key = PartitionKey.multi({"date": "2024-01-10", "region": "apac", "color": "red"})
    assert up(mapping, key, upstream, downstream) == [
        "blue|2024-01-09|apac",
        "blue|2024-01-10|apac",
        "red|2024-01-09|apac",
        "red|2024-01-10|apac",
    ]
    upstream_key = PartitionKey.multi({"date": "2024-01-31", "region": "us", "color": "blue"})
    assert down(mapping, upstream_key, upstream, downstream) == [
        "blue|2024-01-31|us",
        "red|2024-01-31|us",
    ]
    assert (
        up(
            mapping,
            PartitionKey.multi({"date": "2024-01-01", "region": "xx", "color": "red"}),
            upstream,
            downstream,
        )
        == []
    )


def test_multi_mapping_problems() -> None:
    upstream = MultiPartitionsDefinition({"date": JANUARY, "region": REGIONS})
    other_names = MultiPartitionsDefinition({"day": JANUARY, "region": REGIONS})
    assert any(
        "same dimension names" in p for p in MultiPartitionMapping().problems(upstream, other_names)
    )
    assert any(
        "multi-dimensional definitions" in p
        for p in MultiPartitionMapping().problems(upstream, REGIONS)
    )
    no_default = MultiPartitionsDefinition(
        {"date": JANUARY, "region": StaticPartitionsDefinition(["x"])}
    )
    found = MultiPartitionMapping().problems(upstream, no_default)
    assert any("dimension 'region'" in p and "no default mapping" in p for p in found)
    assert default_mapping(upstream, no_default) is None
    fixed = MultiPartitionMapping({"region": StaticPartitionMapping({"us": "x", "eu": "x"})})
    assert fixed.problems(upstream, no_default) == []
    assert up(
        fixed, PartitionKey.multi({"date": "2024-01-02", "region": "x"}), upstream, no_default
    ) == [
        "2024-01-02|eu",
        "2024-01-02|us",
    ]
    bad = MultiPartitionMapping(
        {"planet": IdentityPartitionMapping(), "date": MultiPartitionMapping()}
    )
    found = bad.problems(upstream, upstream)
    assert any("'planet'" in p for p in found)
    assert any("single-dimension mapping" in p for p in found)
    assert MultiPartitionMapping({"date": "identity"}).problems(upstream, upstream)  # type: ignore[dict-item]


def test_multi_to_single_dimension() -> None:
    upstream = MultiPartitionsDefinition({"date": JANUARY, "region": REGIONS})
    mapping = default_mapping(upstream, JANUARY)
    assert mapping == MultiToSingleDimensionPartitionMapping("date")
    assert mapping.problems(upstream, JANUARY) == []
    assert up(mapping, "2024-01-02", upstream, JANUARY) == [
        "2024-01-02|apac",
        "2024-01-02|eu",
        "2024-01-02|us",
    ]
    assert down(
        mapping, PartitionKey.multi({"date": "2024-01-02", "region": "eu"}), upstream, JANUARY
    ) == ["2024-01-02"]
    # And the other way round: a single-dimension upstream feeding a multi downstream.
    reverse = default_mapping(REGIONS, upstream)
    assert reverse == MultiToSingleDimensionPartitionMapping("region")
    assert up(
        reverse, PartitionKey.multi({"date": "2024-01-02", "region": "eu"}), REGIONS, upstream
    ) == ["eu"]
    fanned = down(reverse, "eu", REGIONS, upstream)
    assert len(fanned) == 31
    assert fanned[0] == "2024-01-01|eu"


def test_multi_to_single_dimension_problems() -> None:
    upstream = MultiPartitionsDefinition({"a": REGIONS, "b": REGIONS})
    assert any(
        "cannot tell which dimension" in p
        for p in MultiToSingleDimensionPartitionMapping().problems(upstream, REGIONS)
    )
    assert default_mapping(upstream, REGIONS) is None
    assert MultiToSingleDimensionPartitionMapping("b").problems(upstream, REGIONS) == []
    assert up(MultiToSingleDimensionPartitionMapping("b"), "us", upstream, REGIONS) == [
        "apac|us",
        "eu|us",
        "us|us",
    ]
    assert any(
        "not a dimension" in p
        for p in MultiToSingleDimensionPartitionMapping("c").problems(upstream, REGIONS)
    )
    assert any(
        "does not match" in p
        for p in MultiToSingleDimensionPartitionMapping("a").problems(upstream, JANUARY)
    )
    assert MultiToSingleDimensionPartitionMapping().problems(REGIONS, REGIONS)
    assert MultiToSingleDimensionPartitionMapping().problems(upstream, upstream)
    with pytest.raises(PartitionError, match="cannot tell"):
        MultiToSingleDimensionPartitionMapping().upstream_keys(
            single("us"), upstream, REGIONS, NO_CONTEXT
        )


# -- defaults ----------------------------------------------------------------------------------


def test_default_mapping_table() -> None:
    multi = MultiPartitionsDefinition({"date": JANUARY, "region": REGIONS})
    assert default_mapping(None, REGIONS) == AllPartitionMapping()
    assert up(default_mapping(None, REGIONS), "eu", None, REGIONS) == [None]  # type: ignore[arg-type]
    assert default_mapping(REGIONS, None) == AllPartitionMapping()
    assert default_mapping(None, None) == AllPartitionMapping()
    assert (
        default_mapping(REGIONS, StaticPartitionsDefinition(["us", "eu", "apac"]))
        == IdentityPartitionMapping()
    )
    assert default_mapping(JANUARY, MONTHS) == TimeWindowPartitionMapping()
    assert default_mapping(multi, multi) == IdentityPartitionMapping()
    assert default_mapping(JANUARY, REGIONS) is None
    assert default_mapping(REGIONS, StaticPartitionsDefinition(["us"])) is None
    assert (
        default_mapping(DynamicPartitionsDefinition("a"), DynamicPartitionsDefinition("b")) is None
    )
    assert default_mapping(multi, MONTHS) is None


# -- specs -------------------------------------------------------------------------------------


MAPPINGS: list[PartitionMapping] = [
    AllPartitionMapping(),
    IdentityPartitionMapping(),
    LastPartitionMapping(),
    TimeWindowPartitionMapping(),
    TimeWindowPartitionMapping(start_offset=-2, end_offset=1),
    StaticPartitionMapping({"a": "x", "b": ["y", "x"]}),
    MultiPartitionMapping(
        {"date": TimeWindowPartitionMapping(-1, 0), "region": IdentityPartitionMapping()}
    ),
    MultiPartitionMapping(),
    MultiToSingleDimensionPartitionMapping(),
    MultiToSingleDimensionPartitionMapping("date"),
]


@pytest.mark.parametrize("mapping", MAPPINGS, ids=[repr(m) for m in MAPPINGS])
def test_mapping_spec_round_trip(mapping: PartitionMapping) -> None:
    text = canonical_json(mapping.to_spec())
    rebuilt = mapping_from_spec(json.loads(text))
    assert rebuilt == mapping
    assert hash(rebuilt) == hash(mapping)
    assert canonical_json(rebuilt.to_spec()) == text


def test_mapping_specs_are_distinct_and_normalised() -> None:
    assert len({canonical_json(m.to_spec()) for m in MAPPINGS}) == len(MAPPINGS)
    assert StaticPartitionMapping({"a": "x"}) == StaticPartitionMapping({"a": ["x", "x"]})
    assert IdentityPartitionMapping() != AllPartitionMapping()
    assert IdentityPartitionMapping() != "identity"


def test_mapping_from_spec_rejects_malformed_specs() -> None:
    with pytest.raises(DefinitionError, match="unknown kind"):
        mapping_from_spec({"kind": "sideways"})
    with pytest.raises(DefinitionError, match="must be a mapping"):
        mapping_from_spec("identity")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="upstream_to_downstream"):
        mapping_from_spec({"kind": "static", "upstream_to_downstream": []})
    with pytest.raises(DefinitionError, match="'dimensions' must be a mapping"):
        mapping_from_spec({"kind": "multi", "dimensions": 3})


@settings(max_examples=50, deadline=None)
@given(
    start_offset=st.integers(min_value=-5, max_value=5),
    width=st.integers(min_value=0, max_value=5),
    table=st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.one_of(
            st.text(min_size=1, max_size=5), st.lists(st.text(min_size=1, max_size=5), max_size=3)
        ),
        max_size=5,
    ),
)
def test_mapping_spec_round_trip_property(
    start_offset: int, width: int, table: dict[str, str | list[str]]
) -> None:
    for mapping in [
        TimeWindowPartitionMapping(start_offset, start_offset + width),
        StaticPartitionMapping(table),
        MultiPartitionMapping(
            {"d": TimeWindowPartitionMapping(start_offset, start_offset + width)}
        ),
    ]:
        rebuilt = mapping_from_spec(json.loads(canonical_json(mapping.to_spec())))
        assert rebuilt == mapping


# -- scale -------------------------------------------------------------------------------------


def test_mapping_a_hundred_thousand_partitions() -> None:
    """Per-key mapping calls stay proportional to their answers (no timing assertion)."""
    end = datetime(2020, 1, 1) + timedelta(days=4167)  # 100,008 hours
    hourly = HourlyPartitionsDefinition("2020-01-01", end)
    daily = DailyPartitionsDefinition("2020-01-01", end)
    ctx = PartitionContext()
    rollup = TimeWindowPartitionMapping()
    hours = hourly.keys_view(ctx)
    assert len(hours) == 100_008
    assert sum(len(rollup.downstream_keys(k, hourly, daily, ctx)) for k in hours) == 100_008
    assert (
        sum(len(rollup.upstream_keys(k, hourly, daily, ctx)) for k in daily.keys_view(ctx))
        == 100_008
    )
    last = LastPartitionMapping()
    assert sum(len(last.downstream_keys(k, hourly, None, ctx)) for k in hours) == 1
    customers = [f"c{i}" for i in range(1000)]
    multi = MultiPartitionsDefinition(
        {
            "customer": DynamicPartitionsDefinition("customers"),
            "bucket": StaticPartitionsDefinition([f"b{i}" for i in range(100)]),
        }
    )
    many = PartitionContext(dynamic_keys={"customers": customers})
    identity = IdentityPartitionMapping()
    keys = multi.keys_view(many)
    assert len(keys) == 100_000
    assert all(identity.upstream_keys(k, multi, multi, many) == [k] for k in keys)
    per_customer = MultiToSingleDimensionPartitionMapping("customer")
    single_customers = DynamicPartitionsDefinition("customers")
    assert (
        sum(len(per_customer.downstream_keys(k, multi, single_customers, many)) for k in keys)
        == 100_000
    )
