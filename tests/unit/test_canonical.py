"""Canonical JSON: exact text for golden values, rejected inputs, hashing properties."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servo.core.canonical import (
    CanonicalJsonError,
    canonical_bytes,
    canonical_json,
    content_hash,
    sha256_hex,
)

GOLDEN: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "golden" / "canonical_json.json").read_text(
        encoding="utf-8"
    )
)

CONSTRUCTED: dict[str, object] = {
    "nan": float("nan"),
    "infinity": float("inf"),
    "int_key": {1: "a"},
    "set": {1, 2},
    "bytes": b"abc",
    "object": object(),
}


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["text"][:30] for c in GOLDEN["cases"]])
def test_canonical_text_matches_golden(case: dict[str, Any]) -> None:
    assert canonical_json(case["value"]) == case["text"]
    assert canonical_bytes(case["value"]) == case["text"].encode("utf-8")
    assert content_hash(case["value"]) == case["sha256"]
    assert sha256_hex(case["text"]) == case["sha256"]
    assert json.loads(case["text"]) == case["value"]


@pytest.mark.parametrize(
    "case", GOLDEN["rejected"], ids=[json.dumps(c) for c in GOLDEN["rejected"]]
)
def test_rejected_values(case: dict[str, Any]) -> None:
    value = CONSTRUCTED[case["constructed"]] if "constructed" in case else case["value"]
    with pytest.raises(CanonicalJsonError):
        canonical_json(value)


def test_float_rejection_names_the_path_and_fix() -> None:
    with pytest.raises(CanonicalJsonError, match=r"at \.a\[1\]: 2\.5.*integer or a string"):
        canonical_json({"a": [1, 2.5]})


def test_tuples_encode_as_arrays() -> None:
    assert canonical_json({"t": (1, "a")}) == '{"t":[1,"a"]}'


def test_sha256_hex_of_bytes_and_text_agree() -> None:
    assert sha256_hex(b"abc") == sha256_hex("abc") == hashlib.sha256(b"abc").hexdigest()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_canonical_text_parses_back_and_is_stable(value: Any) -> None:
    text = canonical_json(value)
    assert json.loads(text) == value
    assert canonical_json(json.loads(text)) == text
    assert "\n" not in text.replace("\\n", "")
    assert content_hash(value) == hashlib.sha256(text.encode("utf-8")).hexdigest()


@given(st.dictionaries(st.text(max_size=6), st.integers(), max_size=6))
def test_key_order_does_not_matter(mapping: dict[str, int]) -> None:
    reordered = dict(reversed(list(mapping.items())))
    assert canonical_json(reordered) == canonical_json(mapping)
