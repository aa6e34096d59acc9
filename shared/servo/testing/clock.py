"""A clock that only moves when told to, and predictable ids, for deterministic tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class ManualClock:
    """A clock whose time changes only through :meth:`advance` and :meth:`set`.

    Components that wait for a due time (such as ``InProcessQueue``'s background workers)
    register with :meth:`add_listener` so that they re-check at once when the time moves.
    """

    def __init__(self, start: datetime) -> None:
        self._now = _as_utc(start)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move the time forward by ``seconds`` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError(f"ManualClock.advance needs seconds >= 0, got {seconds}; use set()")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            now = self._now
        self._notify()
        return now

    def set(self, dt: datetime) -> None:
        """Jump to ``dt`` (forward or backward); ``dt`` must be timezone-aware."""
        with self._lock:
            self._now = _as_utc(dt)
        self._notify()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from the thread that moves the clock) after every change."""
        with self._lock:
            self._listeners.append(callback)

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            callback()


def _as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"ManualClock needs a timezone-aware datetime, got {dt!r}")
    return dt.astimezone(UTC)


class SequentialIds:
    """Deterministic ids ``f"{prefix}{self.prefix}{n:08d}"`` with one counter from 1.

    Zero padding keeps them sortable by creation order, as the real ids are.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self._next = 1
        self._lock = threading.Lock()

    def new_id(self, prefix: str = "") -> str:
        with self._lock:
            n = self._next
            self._next += 1
        return f"{prefix}{self.prefix}{n:08d}"
