"""The byte form of a ledger segment, shared by every Ledger adapter.

A segment is the JSON object ``{"stream", "seq", "events"}``, gzip-compressed (event JSON
compresses about tenfold, which keeps the ledger small at rest). Readers also accept the
uncompressed JSON that earlier versions wrote, so old ledgers stay readable.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from typing import Any

from servo.core.errors import ServoError
from servo.ports import Doc

GZIP_MAGIC = b"\x1f\x8b"


def encode_segment(stream: str, seq: int, events: Sequence[Doc]) -> bytes:
    body: dict[str, Any] = {"stream": stream, "seq": seq, "events": list(events)}
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ServoError(
            f"segment {seq} of ledger stream {stream!r} is not JSON-compatible ({exc}); "
            "events may hold only str, int, bool, None, lists and dicts"
        ) from exc
    # mtime=0 keeps the bytes a pure function of the events.
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def decode_segment(data: bytes) -> dict[str, Any]:
    if data[:2] == GZIP_MAGIC:
        data = gzip.decompress(data)
    body = json.loads(data)
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise ServoError("a ledger segment must be a JSON object with an `events` list")
    return body
