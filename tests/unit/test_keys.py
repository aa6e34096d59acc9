"""Asset, partition and task keys: canonical forms (golden fixtures), round trips and order."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servo.core.errors import DefinitionError, PartitionError
from servo.core.keys import (
    AssetKey,
    Operation,
    PartitionKey,
    TaskKey,
    escape_component,
    unescape_component,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / name).read_text(encoding="utf-8"))
    return data


PARTITION_GOLDEN = load("partition_keys.json")
TASK_GOLDEN = load("task_keys.json")
ASSET_GOLDEN = load("asset_keys.json")


def partition_from_case(case: dict[str, Any]) -> PartitionKey:
    if "dims" in case:
        return PartitionKey.multi(case["dims"])
    return PartitionKey.single(case["value"])


# -- golden: partition keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", PARTITION_GOLDEN["cases"], ids=[c["canonical"] for c in PARTITION_GOLDEN["cases"]]
)
def test_partition_key_forms_match_golden(case: dict[str, Any]) -> None:
    key = partition_from_case(case)
    assert key.canonical() == case["canonical"]
    assert key.user_string() == case["user"]
    assert str(key) == case["user"]
    assert PartitionKey.parse_canonical(case["canonical"]) == key
    assert key.is_multi == ("dims" in case)
    if "dims" in case:
        assert key.dimensions() == case["dims"]
        for name, value in case["dims"].items():
            assert key.get(name) == value


def test_partition_key_golden_covers_required_shapes() -> None:
    cases = PARTITION_GOLDEN["cases"]
    assert any(len(c.get("dims", {})) >= 3 for c in cases)
    user_values = [c.get("value", "") for c in cases] + [
        v for c in cases for v in c.get("dims", {}).values()
    ]
    for needle in ["=", ",", "/", "%", "|", " "]:
        assert any(needle in v for v in user_values), needle
    assert any(not v.isascii() for v in user_values)


def test_partition_key_order_matches_golden() -> None:
    ordered = [partition_from_case(c) for c in PARTITION_GOLDEN["order"]]
    shuffled = ordered[1::2] + ordered[::2]
    assert sorted(shuffled) == ordered
    for smaller, larger in itertools.pairwise(ordered):
        assert smaller < larger
        assert not larger < smaller
        assert smaller != larger


@pytest.mark.parametrize("text", PARTITION_GOLDEN["invalid_canonical"])
def test_invalid_canonical_partition_keys_are_rejected(text: str) -> None:
    with pytest.raises(PartitionError):
        PartitionKey.parse_canonical(text)


def test_partition_key_construction_errors() -> None:
    with pytest.raises(PartitionError):
        PartitionKey()
    with pytest.raises(PartitionError):
        PartitionKey(value="a", dims=(("d", "v"),))
    with pytest.raises(PartitionError, match="empty"):
        PartitionKey.single("")
    with pytest.raises(PartitionError, match="at least one dimension"):
        PartitionKey.multi({})
    with pytest.raises(PartitionError, match="empty"):
        PartitionKey.multi({"d": ""})
    with pytest.raises(PartitionError, match="sorted"):
        PartitionKey(dims=(("b", "1"), ("a", "2")))
    with pytest.raises(PartitionError, match="no dimension"):
        PartitionKey.multi({"a": "1"}).get("b")
    with pytest.raises(PartitionError, match="must be a string"):
        PartitionKey.single(5)  # type: ignore[arg-type]


# -- properties: partition keys ----------------------------------------------------------------

values = st.text(min_size=1, max_size=12)
single_keys = values.map(PartitionKey.single)
multi_keys = st.dictionaries(values, values, min_size=1, max_size=4).map(PartitionKey.multi)
partition_keys = st.one_of(single_keys, multi_keys)


@given(values)
def test_escape_round_trip(value: str) -> None:
    escaped = escape_component(value)
    assert escaped.isascii()
    assert not set(escaped) & set("=,/| ")
    assert re.fullmatch(r"(?:[A-Za-z0-9\-_.~:]|%[0-9A-F]{2})*", escaped)
    assert unescape_component(escaped) == value


@given(partition_keys)
def test_canonical_round_trip(key: PartitionKey) -> None:
    text = key.canonical()
    assert text.isascii()
    assert PartitionKey.parse_canonical(text) == key
    assert hash(PartitionKey.parse_canonical(text)) == hash(key)


@given(partition_keys, partition_keys)
def test_canonical_form_is_injective(a: PartitionKey, b: PartitionKey) -> None:
    assert (a.canonical() == b.canonical()) == (a == b)


@given(st.lists(partition_keys, max_size=8))
def test_order_is_total_and_consistent(keys: list[PartitionKey]) -> None:
    ordered = sorted(keys)
    for smaller, larger in itertools.pairwise(ordered):
        assert smaller <= larger
        assert not larger < smaller
    for a in keys:
        for b in keys:
            assert sum([a < b, a == b, b < a]) == 1


@given(st.dictionaries(values, values, min_size=1, max_size=4))
def test_user_string_lists_values_in_dimension_order(dims: dict[str, str]) -> None:
    key = PartitionKey.multi(dims)
    assert key.user_string() == "|".join(dims[name] for name in sorted(dims))
    assert list(key.dimensions()) == sorted(dims)


@given(single_keys, multi_keys)
def test_single_keys_sort_before_multi_keys_of_one_dimension(
    one: PartitionKey, many: PartitionKey
) -> None:
    if len(many.dims) == 1:
        assert one < many


# -- golden: asset keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ASSET_GOLDEN["valid"], ids=[c["text"][:20] for c in ASSET_GOLDEN["valid"]]
)
def test_asset_keys_match_golden(case: dict[str, Any]) -> None:
    key = AssetKey.parse(case["text"])
    assert key.path == tuple(case["path"])
    assert key.to_string() == case["text"]
    assert str(key) == case["text"]
    assert key.name == case["path"][-1]
    assert AssetKey.of(case["path"]) == key
    assert AssetKey.of(case["text"]) == key
    assert AssetKey.of(key) is key


@pytest.mark.parametrize("text", ASSET_GOLDEN["invalid"])
def test_invalid_asset_keys_are_rejected(text: str) -> None:
    with pytest.raises(DefinitionError):
        AssetKey.parse(text)


def test_asset_key_order_matches_golden() -> None:
    ordered = [AssetKey.parse(t) for t in ASSET_GOLDEN["order"]]
    shuffled = ordered[1::2] + ordered[::2]
    assert sorted(shuffled) == ordered


def test_asset_key_needs_a_component() -> None:
    with pytest.raises(DefinitionError, match="at least one component"):
        AssetKey(())
    with pytest.raises(DefinitionError):
        AssetKey.parse(None)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError):
        AssetKey((1,))  # type: ignore[arg-type]


components = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,20}", fullmatch=True)
asset_keys = st.lists(components, min_size=1, max_size=4).map(lambda p: AssetKey(tuple(p)))


@given(asset_keys)
def test_asset_key_round_trip(key: AssetKey) -> None:
    assert AssetKey.parse(key.to_string()) == key


@given(asset_keys, asset_keys)
def test_asset_key_order_follows_paths(a: AssetKey, b: AssetKey) -> None:
    assert (a < b) == (a.path < b.path)
    assert sum([a < b, a == b, b < a]) == 1


# -- golden: task keys -------------------------------------------------------------------------


def task_from_case(case: dict[str, Any]) -> TaskKey:
    part = case["partition"]
    return TaskKey(
        asset=AssetKey.parse(case["asset"]),
        partition=None if part is None else partition_from_case(part),
        operation=Operation(case["operation"]),
    )


@pytest.mark.parametrize(
    "case", TASK_GOLDEN["cases"], ids=[c["display"] for c in TASK_GOLDEN["cases"]]
)
def test_task_keys_match_golden(case: dict[str, Any]) -> None:
    key = task_from_case(case["key"])
    assert key.canonical() == case["canonical"]
    assert key.id == case["id"]
    assert key.display() == case["display"]
    assert str(key) == case["display"]
    assert TaskKey.from_json(json.loads(case["canonical"])) == key
    # The id is defined by the canonical text, independently of Servo's helpers.
    digest = hashlib.sha256(case["canonical"].encode("utf-8")).hexdigest()
    assert case["id"] == "t" + digest[:20]


def test_task_from_json_defaults_to_materialize() -> None:
    key = TaskKey.from_json({"asset": "a/b", "partition": None})
    assert key.operation is Operation.MATERIALIZE


task_keys = st.builds(
    TaskKey,
    asset=asset_keys,
    partition=st.one_of(st.none(), partition_keys),
    operation=st.sampled_from(list(Operation)),
)


@given(task_keys)
def test_task_key_round_trip(key: TaskKey) -> None:
    assert TaskKey.from_json(json.loads(key.canonical())) == key
    assert len(key.id) == 21
    assert key.id.startswith("t")


@given(task_keys, task_keys)
def test_task_key_ids_and_order(a: TaskKey, b: TaskKey) -> None:
    assert (a.id == b.id) == (a == b)
    assert sum([a < b, a == b, b < a]) == 1
    if a.asset != b.asset:
        assert (a < b) == (a.asset < b.asset)


@given(
    asset=st.lists(
        st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,8}", fullmatch=True), min_size=1, max_size=3
    ),
    value=st.one_of(st.none(), st.text(min_size=1, max_size=12)),
)
def test_task_key_text_is_its_canonical_json(asset: list[str], value: str | None) -> None:
    from servo.core.canonical import canonical_json as cj

    try:
        key = TaskKey(
            AssetKey(tuple(asset)), PartitionKey.single(value) if value is not None else None
        )
    except PartitionError:
        return
    assert key.canonical() == cj(key.to_json())
