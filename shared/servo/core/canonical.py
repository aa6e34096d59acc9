"""Canonical JSON: the one byte form used for hashing and for fingerprints.

Rules: object keys sorted by code point, no insignificant whitespace, UTF-8 (no ``\\u``
escapes except where JSON requires them), integers only (floats are rejected because their
text form is not stable across producers), no NaN/Infinity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from servo.core.errors import ServoError

JsonValue = None | bool | int | str | Sequence["JsonValue"] | Mapping[str, "JsonValue"]


class CanonicalJsonError(ServoError):
    """A value cannot be represented in canonical JSON."""


def _check(value: Any, path: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CanonicalJsonError(
                f"canonical JSON needs valid Unicode text (at {path or '$'}: {value!r})"
            ) from None
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        raise CanonicalJsonError(
            f"canonical JSON rejects floats (at {path or '$'}: {value!r}); "
            "encode the number as an integer or a string"
        )
    if isinstance(value, Mapping):
        if not isinstance(value, dict):
            raise CanonicalJsonError(
                f"canonical JSON objects must be dicts (at {path or '$'}: {type(value).__name__})"
            )
        for k, v in value.items():
            if isinstance(k, str):
                _check(k, f"{path}.<key>")
            if not isinstance(k, str):
                raise CanonicalJsonError(
                    f"canonical JSON object keys must be strings (at {path or '$'}: {k!r})"
                )
            _check(v, f"{path}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
        return
    raise CanonicalJsonError(
        f"canonical JSON cannot encode {type(value).__name__} (at {path or '$'})"
    )


def canonical_json(value: Any) -> str:
    """Return the canonical JSON text of ``value``."""
    _check(value, "")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_bytes(value: Any) -> bytes:
    return canonical_json(value).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def content_hash(value: Any) -> str:
    """sha256 of the canonical JSON of ``value``, as lowercase hex."""
    return sha256_hex(canonical_bytes(value))
