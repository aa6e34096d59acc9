"""Cron expressions in a timezone: the instants a schedule fires at, correct across DST.

Cron fields are matched against the wall-clock time of the schedule's timezone (croniter does
the matching on naive wall-clock times, where there is no DST). Each matching wall-clock time
is then turned into instants by these rules, the ones of the classic cron daemons:

* **Fixed-time schedules** — the hour field names particular hours (``30 2 * * *``,
  ``0 9-17 * * 1-5``) — fire once per matching wall-clock time. A time that does not exist
  (skipped by a spring-forward change, e.g. 02:30 in New York on the second Sunday of March)
  fires at the first instant after the gap (03:00 new time); a time that occurs twice
  (fall-back) fires at its first occurrence only. Two skipped times that land on the same
  instant (``0,30 2 * * *``) fire once.
* **Interval schedules** — the hour field is ``*`` (hourly, every 15 minutes, ...) — follow
  elapsed time: a wall-clock time that does not exist is not a tick (the 23-hour day has 23
  hourly ticks), and a wall-clock time that occurs twice is two ticks an hour apart (the
  25-hour day has 25 hourly ticks).

So no day's tick of a fixed-time schedule is skipped or doubled, and an interval schedule
fires exactly once at every real instant its fields describe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

from servo.core.errors import InvalidRequest

# Windows of at most this length are checked for a DST change at both ends only; longer ones
# are cut into pieces of this length.
_CHUNK = timedelta(days=7)
_EDGE = timedelta(days=1)
# How far around a DST change wall-clock matches are looked at: more than any offset change.
_MIN_MARGIN = timedelta(hours=3)
_FOREVER = timedelta(days=366 * 8)

_local = threading.local()


def _iterator(expression: str, start: datetime) -> croniter:
    """A croniter positioned at ``start`` (one cached instance per thread and expression:
    parsing an expression costs several times more than stepping it)."""
    cache: dict[str, croniter] | None = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    it = cache.get(expression)
    if it is None:
        if len(cache) > 4096:
            cache.clear()
        it = cache[expression] = croniter(expression, start)
    else:
        it.set_current(start, force=True)
    return it


@dataclass(frozen=True)
class CronSchedule:
    """A cron expression interpreted in an IANA timezone."""

    expression: str
    timezone: str
    zone: ZoneInfo = field(repr=False, compare=False)
    fixed_time: bool = field(compare=False)

    # -- public API --------------------------------------------------------------------------

    def ticks_between(
        self, after: datetime, until: datetime, limit: int | None = None
    ) -> list[datetime]:
        """The ticks in ``(after, until]``, ascending, as UTC datetimes (the first ``limit``
        of them when ``limit`` is given)."""
        after, until = _utc(after), _utc(until)
        out: list[datetime] = []
        lo = after
        while lo < until:
            hi = min(until, lo + _CHUNK)
            for t in self._chunk(lo, hi):
                out.append(t)
                if limit is not None and len(out) >= limit:
                    return out
            lo = hi
        return out

    def last_ticks(self, after: datetime, until: datetime, count: int) -> list[datetime]:
        """The last ``count`` ticks in ``(after, until]``, ascending.

        Looks back from ``until`` in growing windows, so a schedule that has not been
        evaluated for a long time costs about as much as one evaluated a minute ago.
        """
        after, until = _utc(after), _utc(until)
        if count < 1 or after >= until:
            return []
        window = timedelta(hours=1)
        while True:
            lo = max(after, until - window)
            found = self.ticks_between(lo, until)
            if len(found) >= count or lo == after:
                return found[-count:]
            window *= 4

    def next_tick(self, after: datetime) -> datetime | None:
        """The first tick after ``after``; None when there is none within eight years."""
        after = _utc(after)
        window = timedelta(hours=1)
        while window <= _FOREVER:
            found = self.ticks_between(after, after + window, limit=1)
            if found:
                return found[0]
            window *= 4
        return None

    # -- internals ---------------------------------------------------------------------------

    def _wall(self, instant: datetime) -> datetime:
        return instant.astimezone(self.zone).replace(tzinfo=None, fold=0)

    def _chunk(self, lo: datetime, hi: datetime) -> list[datetime]:
        before = self.zone.utcoffset(self._wall(lo - _EDGE))
        after = self.zone.utcoffset(self._wall(hi + _EDGE))
        if before == after and before is not None:
            # No DST change near: wall time is UTC plus a constant offset.
            return [
                (n - before).replace(tzinfo=UTC)
                for n in self._naive(self._wall(lo), self._wall(hi), False)
            ]
        assert before is not None
        assert after is not None
        margin = max(_MIN_MARGIN, abs(after - before) + timedelta(hours=1))
        instants: set[datetime] = set()
        for naive in self._naive(self._wall(lo) - margin, self._wall(hi) + margin, True):
            for t in self._instants(naive):
                if lo < t <= hi:
                    instants.add(t)
        return sorted(instants)

    def _naive(self, lo: datetime, hi: datetime, inclusive: bool) -> Iterator[datetime]:
        """Matching wall-clock times in ``(lo, hi]`` (``[lo, hi]`` when ``inclusive``)."""
        start = lo - timedelta(seconds=1) if inclusive else lo
        it = _iterator(self.expression, start)
        while True:
            n = it.get_next(datetime)
            if n > hi:
                return
            yield n

    def _instants(self, naive: datetime) -> list[datetime]:
        first = naive.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = naive.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if self._wall(first) != naive:
            # ``naive`` falls in a spring-forward gap.
            return [self._transition(second, first)] if self.fixed_time else []
        if first == second:
            return [first]
        return [first] if self.fixed_time else [first, second]

    def _transition(self, lo: datetime, hi: datetime) -> datetime:
        """The instant of the offset change between ``lo`` (old offset) and ``hi``."""
        old = self.zone.utcoffset(self._wall(lo))
        lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp())
        while hi_s - lo_s > 1:
            mid = (lo_s + hi_s) // 2
            instant = datetime.fromtimestamp(mid, UTC)
            if instant.astimezone(self.zone).utcoffset() == old:
                lo_s = mid
            else:
                hi_s = mid
        return datetime.fromtimestamp(hi_s, UTC)


@lru_cache(maxsize=4096)
def cron_schedule(expression: str, timezone: str = "UTC") -> CronSchedule:
    """Parse ``expression`` in ``timezone``; raises InvalidRequest naming what is wrong."""
    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise InvalidRequest(
            f"{expression!r} is not a valid cron expression; write five fields, e.g. "
            "'0 1 * * *' for 01:00 every day"
        )
    try:
        zone = ZoneInfo(timezone)
    except (KeyError, ValueError) as exc:
        raise InvalidRequest(
            f"timezone {timezone!r} is not an IANA timezone; use a name like 'UTC' or "
            "'Europe/Berlin'"
        ) from exc
    fields = croniter.expand(expression)[0]
    return CronSchedule(expression, timezone, zone, fixed_time=fields[1] != ["*"])


def _utc(moment: datetime) -> datetime:
    if moment.utcoffset() is None:
        raise InvalidRequest(f"cron times must be timezone-aware, got {moment!r}")
    return moment.astimezone(UTC)
