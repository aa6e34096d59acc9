"""Wall-clock time and time-ordered unique ids for the embedded backend."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

from servo.ports import Clock

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1
_TIME_MAX_MS = (1 << 48) - 1
ULID_LENGTH = 26


class SystemClock:
    """The machine's clock, as timezone-aware UTC datetimes."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def encode_crockford(value: int, length: int) -> str:
    """``value`` in Crockford base32, zero-padded on the left to ``length`` characters."""
    if value < 0 or value >= 1 << (5 * length):
        raise ValueError(f"{value} does not fit in {length} Crockford base32 characters")
    chars = []
    for _ in range(length):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class UlidIds:
    """ULIDs: 48-bit millisecond time then 80 random bits, as 26 Crockford base32 characters.

    Ids from one instance are strictly increasing: within one millisecond (or if the clock
    steps back) the random part of the previous id is incremented instead of drawn anew, so
    string order equals creation order. ``new_id("r")`` returns ``"r" + ulid``.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def _now_ms(self) -> int:
        if self._clock is None:
            return time.time_ns() // 1_000_000
        return int(self._clock.now().timestamp() * 1000)

    def new_id(self, prefix: str = "") -> str:
        with self._lock:
            ms = self._now_ms()
            if ms > self._last_ms:
                self._last_ms = ms
                self._last_random = int.from_bytes(os.urandom(10), "big")
            elif self._last_random < _RANDOM_MAX:
                self._last_random += 1
            else:
                # The random space of this millisecond is used up; borrow the next one so
                # that ids keep increasing.
                self._last_ms += 1
                self._last_random = int.from_bytes(os.urandom(10), "big") >> 1
            if self._last_ms > _TIME_MAX_MS:
                raise OverflowError("the clock is beyond the ULID time range (year 10889)")
            value = (self._last_ms << _RANDOM_BITS) | self._last_random
        return prefix + encode_crockford(value, ULID_LENGTH)
