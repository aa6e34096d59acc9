"""Partitions definitions: which partitions an asset has and how their keys are written.

A definition only records its arguments when it is built; :meth:`PartitionsDefinition.problems`
lists everything wrong with them, so that validating a project can report every problem at
once. Every other method (except ``to_spec`` and ``describe``) first checks that the definition
is valid and raises :class:`~servo.core.errors.DefinitionError` if it is not.

Time windows
    A time-window partition covers the half-open interval ``[start, end)``. Period boundaries
    are computed in the *local wall-clock time* of the definition's timezone: a daily partition
    starts at local midnight (plus ``hour_offset``/``minute_offset``), so it lasts 23 hours on a
    spring-forward day and 25 hours on a fall-back day. A partition's key is its nominal local
    start formatted with ``fmt``.

    Daylight-saving rules, chosen so that keys are unique, ordered and cover time without gaps:

    * a partition starts at the first instant at which the local clock reads its nominal start
      or later. An ambiguous start (the repeated hour after clocks go back) therefore means its
      first occurrence, and a nonexistent start (inside the hour skipped when clocks go
      forward) means the instant of the clock change;
    * a partition whose window would be empty has no key. In practice: hourly partitions
      have no key for the skipped local hour (``2024-03-10-02:00`` does not exist in
      America/New_York), and the key of the repeated hour (``2024-11-03-01:00``) covers both
      occurrences, two real hours. A local day thus has 23 or 24 hourly keys, and every instant
      belongs to exactly one partition.

    The partitions are the periods that lie wholly within ``[start, end)``: the first starts
    at the first period boundary at or after ``start`` and the last ends at or before ``end``
    (so weekly partitions with ``end="2024-02-01"`` stop at the week that ends by then). With no
    ``end`` the set is open-ended and grows with time: given a current time
    (``PartitionContext.now``) it holds the partitions whose window has ended by then, shifted
    by ``end_offset`` partitions (``end_offset=1`` also admits the partition in progress).

Keys and order
    Static partitions keep the order they were given in, dynamic partitions the order they
    were added in, time windows are chronological, and multi-dimensional partitions follow the
    order of :class:`~servo.core.keys.PartitionKey`.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import product
from types import MappingProxyType
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from servo.core.canonical import canonical_json
from servo.core.errors import DefinitionError, PartitionError
from servo.core.keys import PartitionKey

__all__ = [
    "NO_CONTEXT",
    "DailyPartitionsDefinition",
    "DynamicPartitionsDefinition",
    "HourlyPartitionsDefinition",
    "MonthlyPartitionsDefinition",
    "MultiPartitionsDefinition",
    "PartitionContext",
    "PartitionsDefinition",
    "StaticPartitionsDefinition",
    "TimeWindow",
    "TimeWindowPartitionsDefinition",
    "WeeklyPartitionsDefinition",
    "partition_value_problems",
    "partitions_from_spec",
]

_TINY = timedelta(microseconds=1)


@dataclass(frozen=True)
class PartitionContext:
    """What the set of partitions may depend on besides the definition itself.

    ``now`` is the current time (timezone-aware); open-ended time partitions admit only the
    partitions that have ended by then. ``dynamic_keys`` maps the name of each dynamic
    partitions set to its keys in the order they were added.

    The context is a snapshot: the key sequences are copied into tuples when it is built, so
    changing the caller's lists afterwards has no effect. Definitions cache the keys they
    enumerate for the context they were last asked about, so reuse one context for a batch
    of questions (a plan) rather than building a new one per call.
    """

    now: datetime | None = None
    dynamic_keys: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.now is not None and (
            not isinstance(self.now, datetime) or self.now.utcoffset() is None
        ):
            raise PartitionError(
                f"PartitionContext.now must be a timezone-aware datetime, got {self.now!r}; "
                "attach a timezone, e.g. datetime(..., tzinfo=timezone.utc)"
            )
        snapshot: dict[str, tuple[str, ...]] = {}
        for name, keys in self.dynamic_keys.items():
            if isinstance(keys, str) or not isinstance(keys, Iterable):
                raise PartitionError(
                    f"PartitionContext.dynamic_keys[{name!r}] must be a sequence of keys, "
                    f"got {type(keys).__name__}"
                )
            snapshot[name] = tuple(keys)
        object.__setattr__(self, "dynamic_keys", MappingProxyType(snapshot))


NO_CONTEXT = PartitionContext()
"""A context without a current time or dynamic keys: enough for static and bounded partitions."""


def partition_value_problems(value: object, what: str = "partition key") -> list[str]:
    """Everything that keeps ``value`` from being a single partition value.

    Values are non-empty strings without control characters and without ``|``, which
    separates dimensions in the user form of multi-dimensional keys.
    """
    if not isinstance(value, str):
        return [f"{what} {value!r} is a {type(value).__name__}, not a string"]
    if value == "":
        return [f"{what} is an empty string; partition keys are non-empty"]
    found: list[str] = []
    if "|" in value:
        found.append(
            f"{what} {value!r} contains '|', which separates the dimensions of "
            "multi-dimensional keys; use another character"
        )
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        found.append(f"{what} {value!r} contains a control character; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        found.append(f"{what} {value!r} contains a lone surrogate and cannot be encoded as UTF-8")
    return found


def _jsonable(value: object) -> Any:
    """The value itself when it is canonical-JSON-able, else its repr (only for bad arguments)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return repr(value)


def _preview(values: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    if len(values) > limit:
        shown += f", … ({len(values)} in all)"
    return shown


class _KeyIndex:
    """Keys in definition order plus their positions, for O(1) membership and ranges."""

    __slots__ = ("keys", "position")

    def __init__(self, keys: Sequence[PartitionKey]) -> None:
        self.keys: tuple[PartitionKey, ...] = tuple(keys)
        self.position: dict[PartitionKey, int] = {k: i for i, k in enumerate(self.keys)}


class PartitionsDefinition(ABC):
    """How an asset is partitioned: the set of its partition keys and how they are written.

    Definitions compare equal (and hash) by their spec, so two definitions built from the
    same arguments are interchangeable.
    """

    kind: ClassVar[str]

    def __init__(self) -> None:
        self._problems_found: list[str] | None = None
        self._spec_text: str | None = None
        self._keys_cache: tuple[object, _KeyIndex] | None = None

    # -- validation -------------------------------------------------------------------------

    @abstractmethod
    def _find_problems(self) -> list[str]:
        """Every problem with the constructor arguments."""

    def problems(self) -> list[str]:
        """Every problem with the definition's arguments; ``[]`` when it is valid."""
        if self._problems_found is None:
            self._problems_found = self._find_problems()
        return list(self._problems_found)

    def require_valid(self) -> None:
        """Raise :class:`DefinitionError` listing every problem, if there is any."""
        found = self.problems()
        if found:
            listed = "\n".join(f"  - {p}" for p in found)
            raise DefinitionError(
                f"{self.describe()} is not valid ({len(found)} problem(s)):\n{listed}"
            )

    # -- identity ---------------------------------------------------------------------------

    @abstractmethod
    def to_spec(self) -> dict[str, Any]:
        """A canonical-JSON-able description with a ``kind``; equal definitions, equal specs."""

    @abstractmethod
    def describe(self) -> str:
        """Short human text, e.g. ``daily partitions from 2024-01-01 (UTC)``."""

    def _spec_json(self) -> str:
        if self._spec_text is None:
            self._spec_text = canonical_json(self.to_spec())
        return self._spec_text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionsDefinition):
            return NotImplemented
        return self._spec_json() == other._spec_json()

    def __hash__(self) -> int:
        return hash(self._spec_json())

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"

    def dimension_names(self) -> list[str]:
        """Names of the dimensions, sorted; ``[]`` for single-dimension definitions."""
        return []

    # -- enumeration ------------------------------------------------------------------------

    @abstractmethod
    def _cache_token(self, ctx: PartitionContext) -> object:
        """What the key set depends on in ``ctx``; equal tokens mean equal key sets."""

    @abstractmethod
    def _enumerate(self, ctx: PartitionContext) -> list[PartitionKey]:
        """All keys in definition order (the definition is valid)."""

    def _index(self, ctx: PartitionContext) -> _KeyIndex:
        token = self._cache_token(ctx)
        cached = self._keys_cache
        # Identity first: dynamic tokens are the (possibly long) key tuples themselves.
        if cached is not None and (cached[0] is token or cached[0] == token):
            return cached[1]
        index = _KeyIndex(self._enumerate(ctx))
        self._keys_cache = (token, index)
        return index

    def keys(self, ctx: PartitionContext = NO_CONTEXT) -> list[PartitionKey]:
        """All partition keys, in the definition's order."""
        self.require_valid()
        return list(self._index(ctx).keys)

    def keys_view(self, ctx: PartitionContext = NO_CONTEXT) -> Sequence[PartitionKey]:
        """Like :meth:`keys` but returns the cached, read-only tuple: cheap to call repeatedly."""
        self.require_valid()
        return self._index(ctx).keys

    def last_key(self, ctx: PartitionContext = NO_CONTEXT) -> PartitionKey | None:
        """The last key in the definition's order, or None when there are no keys."""
        keys = self.keys_view(ctx)
        return keys[-1] if keys else None

    @abstractmethod
    def parse_key(
        self, key: str | PartitionKey | Mapping[str, str], ctx: PartitionContext = NO_CONTEXT
    ) -> PartitionKey:
        """Validate user input and return the partition key it names.

        Raises :class:`PartitionError` naming the definition, the value and the fix.
        """

    def has_key(self, key: PartitionKey, ctx: PartitionContext = NO_CONTEXT) -> bool:
        """Whether ``key`` is one of this definition's partitions."""
        self.require_valid()
        return key in self._index(ctx).position

    def key_range(
        self, start: str, end: str, ctx: PartitionContext = NO_CONTEXT
    ) -> list[PartitionKey]:
        """The keys from ``start`` to ``end``, both included, in the definition's order."""
        self.require_valid()
        first = self.parse_key(start, ctx)
        last = self.parse_key(end, ctx)
        index = self._index(ctx)
        i, j = index.position[first], index.position[last]
        if i > j:
            raise _reversed_range(self, first, last)
        return list(index.keys[i : j + 1])

    def _single_value(self, key: str | PartitionKey | Mapping[str, str]) -> str:
        """The value of a single-dimension key given as text or a key."""
        if isinstance(key, PartitionKey):
            if key.value is None:
                raise PartitionError(
                    f"{key.user_string()!r} is a multi-dimensional key but {self.describe()} "
                    "has a single dimension; pass just the value"
                )
            return key.value
        if isinstance(key, str):
            return key
        raise PartitionError(
            f"{key!r} is not a partition of {self.describe()}: it has a single dimension, "
            "so pass the key as a string"
        )


def _reversed_range(
    defn: PartitionsDefinition, first: PartitionKey, last: PartitionKey
) -> Exception:
    return PartitionError(
        f"partition range {first.user_string()!r}..{last.user_string()!r} of {defn.describe()} "
        "is reversed: its start comes after its end; swap them"
    )


# -- static -----------------------------------------------------------------------------------


class StaticPartitionsDefinition(PartitionsDefinition):
    """A fixed list of partition keys, kept in the order given."""

    kind = "static"

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__()
        arg: object = keys
        if isinstance(arg, Iterable) and not isinstance(arg, (str, bytes, Mapping)):
            arg = tuple(arg)
        self._arg = arg

    def _values(self) -> tuple[str, ...]:
        """The keys as strings (the definition is valid)."""
        assert isinstance(self._arg, tuple)
        return self._arg

    def _find_problems(self) -> list[str]:
        arg = self._arg
        if not isinstance(arg, tuple):
            return [
                f"static partitions need a list of key strings, got {type(arg).__name__} "
                f"{arg!r}; write StaticPartitionsDefinition(['a', 'b'])"
            ]
        if not arg:
            return ["static partitions have no keys; list at least one partition key"]
        found: list[str] = []
        for i, value in enumerate(arg):
            found.extend(partition_value_problems(value, f"static partition key #{i + 1}"))
        seen: set[object] = set()
        repeated: list[str] = []
        for value in arg:
            if isinstance(value, str):
                if value in seen and value not in repeated:
                    repeated.append(value)
                seen.add(value)
        if repeated:
            found.append(
                f"static partitions repeat the key(s) {_preview(repeated)}; list each key once"
            )
        return found

    def to_spec(self) -> dict[str, Any]:
        arg = self._arg
        keys = [_jsonable(v) for v in arg] if isinstance(arg, tuple) else _jsonable(arg)
        return {"kind": self.kind, "keys": keys}

    def describe(self) -> str:
        arg = self._arg
        if isinstance(arg, tuple):
            shown = ", ".join(str(v) for v in arg[:5])
            more = f", … ({len(arg)} keys)" if len(arg) > 5 else ""
            return f"static partitions [{shown}{more}]"
        return f"static partitions {arg!r}"

    def _cache_token(self, ctx: PartitionContext) -> object:
        return None

    def _enumerate(self, ctx: PartitionContext) -> list[PartitionKey]:
        return [PartitionKey.single(v) for v in self._values()]

    def parse_key(
        self, key: str | PartitionKey | Mapping[str, str], ctx: PartitionContext = NO_CONTEXT
    ) -> PartitionKey:
        self.require_valid()
        value = self._single_value(key)
        index = self._index(ctx)
        found = PartitionKey.single(value) if value else None
        if found is not None and found in index.position:
            return found
        values = self._values()
        close = difflib.get_close_matches(value, values[:2000], n=1) if value else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PartitionError(
            f"{value!r} is not a partition of {self.describe()}: expected one of "
            f"{_preview(values)}{hint}"
        )


# -- dynamic ----------------------------------------------------------------------------------

_DYNAMIC_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


class DynamicPartitionsDefinition(PartitionsDefinition):
    """Partitions added and removed at run time; their keys come from the context."""

    kind = "dynamic"

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name: object = name

    @property
    def name(self) -> str:
        """The name of the dynamic partitions set."""
        return str(self._name)

    def _find_problems(self) -> list[str]:
        name = self._name
        if not isinstance(name, str) or not _DYNAMIC_NAME.fullmatch(name):
            return [
                f"dynamic partitions name {name!r} is not valid: use 1-128 characters of "
                "letters, digits, '_', '.' or '-', not starting with '.' or '-'"
            ]
        return []

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": _jsonable(self._name)}

    def describe(self) -> str:
        return f"dynamic partitions {self._name!r}"

    def _cache_token(self, ctx: PartitionContext) -> object:
        return ctx.dynamic_keys.get(self.name, ())

    def _enumerate(self, ctx: PartitionContext) -> list[PartitionKey]:
        out: list[PartitionKey] = []
        seen: set[str] = set()
        for value in ctx.dynamic_keys.get(self.name, ()):
            if value in seen:
                continue
            found = partition_value_problems(value, "key")
            if found:
                raise PartitionError(
                    f"{self.describe()} holds an invalid {found[0]}; remove it from the set"
                )
            seen.add(value)
            out.append(PartitionKey.single(value))
        return out

    def parse_key(
        self, key: str | PartitionKey | Mapping[str, str], ctx: PartitionContext = NO_CONTEXT
    ) -> PartitionKey:
        self.require_valid()
        value = self._single_value(key)
        index = self._index(ctx)
        found = PartitionKey.single(value) if value else None
        if found is not None and found in index.position:
            return found
        known = [k.user_string() for k in index.keys]
        has = f"it has {len(known)} key(s) ({_preview(known)})" if known else "it has no keys"
        raise PartitionError(
            f"{value!r} is not a partition of {self.describe()}: {has}; add the key to the "
            "dynamic partitions set first"
        )


# -- time windows -----------------------------------------------------------------------------

_UNITS = ("hour", "day", "week", "month")
_DEFAULT_FMT = {
    "hour": "%Y-%m-%d-%H:%M",
    "day": "%Y-%m-%d",
    "week": "%Y-%m-%d",
    "month": "%Y-%m-%d",
}
_ADJECTIVE = {"hour": "hourly", "day": "daily", "week": "weekly", "month": "monthly"}
_WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MIN_YEAR, _MAX_YEAR = 2, 9000
_INSTANT_CACHE_SIZE = 200_000


@dataclass(frozen=True, eq=False)
class TimeWindow:
    """The half-open interval ``[start, end)`` of a partition, as aware datetimes.

    ``start`` and ``end`` are expressed in the definition's timezone. Python compares and
    subtracts datetimes that share a timezone by wall-clock time, which is wrong across a
    clock change, so use :attr:`duration` and :meth:`contains` (they work in UTC).
    """

    start: datetime
    end: datetime

    @property
    def duration(self) -> timedelta:
        """The real elapsed time of the window (23 h for a day when clocks go forward)."""
        return self.end.astimezone(UTC) - self.start.astimezone(UTC)

    def contains(self, moment: datetime) -> bool:
        """Whether the aware datetime ``moment`` lies in the window."""
        instant = moment.astimezone(UTC)
        return self.start.astimezone(UTC) <= instant < self.end.astimezone(UTC)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimeWindow):
            return NotImplemented
        return (self.start.astimezone(UTC), self.end.astimezone(UTC)) == (
            other.start.astimezone(UTC),
            other.end.astimezone(UTC),
        )

    def __hash__(self) -> int:
        return hash((self.start.astimezone(UTC), self.end.astimezone(UTC)))


class _Calendar:
    """Period arithmetic in the local wall-clock time of a timezone.

    A *nominal* start is a naive local datetime on the period grid; an *instant* is an aware
    UTC datetime. Arithmetic on instants is always done in UTC because Python adds to and
    compares same-zone datetimes by wall-clock time.
    """

    def __init__(
        self, unit: str, tz: ZoneInfo, fmt: str, *, minute: int, hour: int, day: int
    ) -> None:
        self.unit = unit
        self.tz = tz
        self.fmt = fmt
        self.minute = minute
        self.hour = hour
        self.day = day
        self._step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
        if unit == "week":
            self._step = timedelta(days=7)
        # Mapping calls ask for the same few boundaries over and over; remembering them makes
        # per-key work cheap. Cleared when large so memory stays bounded.
        self._instants: dict[datetime, datetime] = {}

    def shift(self, nominal: datetime, count: int) -> datetime:
        """The nominal start ``count`` grid periods away (empty windows count too)."""
        if self.unit == "month":
            months = nominal.month - 1 + count
            return nominal.replace(year=nominal.year + months // 12, month=months % 12 + 1)
        return nominal + self._step * count

    def floor(self, wall: datetime) -> datetime:
        """The latest nominal start at or before the naive local time ``wall``."""
        base = wall.replace(second=0, microsecond=0)
        if self.unit == "hour":
            start = base.replace(minute=self.minute)
        elif self.unit == "day":
            start = base.replace(hour=self.hour, minute=self.minute)
        elif self.unit == "week":
            back = ((wall.weekday() + 1) % 7 - self.day) % 7
            start = (base - timedelta(days=back)).replace(hour=self.hour, minute=self.minute)
        else:
            start = base.replace(day=self.day, hour=self.hour, minute=self.minute)
        if start > wall:
            start = self.shift(start, -1)
        return start

    def ceil(self, wall: datetime) -> datetime:
        """The earliest nominal start at or after ``wall``."""
        start = self.floor(wall)
        return start if start == wall else self.shift(start, 1)

    def _wall(self, instant: datetime) -> datetime:
        return instant.astimezone(self.tz).replace(tzinfo=None)

    def instant(self, nominal: datetime) -> datetime:
        """The first instant at which the local clock reads ``nominal`` or later."""
        found = self._instants.get(nominal)
        if found is None:
            if len(self._instants) >= _INSTANT_CACHE_SIZE:
                self._instants.clear()
            found = self._instants[nominal] = self._compute_instant(nominal)
        return found

    def _compute_instant(self, nominal: datetime) -> datetime:
        local = nominal.replace(tzinfo=self.tz)
        before = local.utcoffset()
        after = local.replace(fold=1).utcoffset()
        assert before is not None
        assert after is not None
        if before >= after:
            # Unambiguous, or repeated (clocks went back): fold=0 is the first occurrence.
            return (nominal - before).replace(tzinfo=UTC)
        # Skipped (clocks went forward): the clock change happens between these two instants;
        # find it to the second.
        low = (nominal - after).replace(tzinfo=UTC)
        below, above = 0, int((after - before).total_seconds())
        while above - below > 1:
            middle = (below + above) // 2
            if self._wall(low + timedelta(seconds=middle)) >= nominal:
                above = middle
            else:
                below = middle
        return low + timedelta(seconds=above)

    def is_empty(self, nominal: datetime) -> bool:
        return self.instant(nominal) >= self.instant(self.shift(nominal, 1))

    def label(self, nominal: datetime) -> str:
        return nominal.strftime(self.fmt)

    def parse(self, value: str) -> tuple[datetime | None, str]:
        """The nominal start written ``value``, or None and the reason it is not one."""
        try:
            parsed = datetime.strptime(value, self.fmt)
        except ValueError:
            example = self.label(self.floor(datetime(2024, 1, 15, 12, 0)))
            return None, f"it does not match that format (a key looks like {example!r})"
        if not _MIN_YEAR <= parsed.year < _MAX_YEAR:
            return None, f"its year is out of range ({_MIN_YEAR} to {_MAX_YEAR - 1})"
        nominal = self.ceil(parsed)
        if self.label(nominal) == value:
            if self.is_empty(nominal):
                return None, (
                    f"that local time does not exist in {self.tz.key} "
                    "(the clocks are moved forward over it)"
                )
            return nominal, ""
        written = self.label(parsed)
        if written != value:
            return None, f"write it as {written!r}"
        below = self.floor(parsed)
        return (
            None,
            f"it is not the start of a partition; the one containing it is {self.label(below)!r}",
        )

    def containing(self, instant: datetime) -> datetime:
        """The nominal start of the window that contains the aware datetime ``instant``."""
        moment = instant.astimezone(UTC)
        if not _MIN_YEAR <= moment.year < _MAX_YEAR:
            raise PartitionError(
                f"{instant.isoformat()} is out of range for time partitions: use a year from "
                f"{_MIN_YEAR} to {_MAX_YEAR - 1}"
            )
        nominal = self.floor(self._wall(moment))
        # After clocks go back the wall time can lie before the window that holds the instant.
        while self.instant(self.shift(nominal, 1)) <= moment:
            nominal = self.shift(nominal, 1)
        while self.instant(nominal) > moment:
            nominal = self.shift(nominal, -1)
        return nominal

    def step(self, nominal: datetime, count: int) -> datetime:
        """Move ``count`` non-empty windows away from the non-empty window ``nominal``."""
        while count > 0:
            nominal = self.shift(nominal, 1)
            if not self.is_empty(nominal):
                count -= 1
        while count < 0:
            nominal = self.shift(nominal, -1)
            if not self.is_empty(nominal):
                count += 1
        return nominal

    def first_at_or_after(self, wall: datetime) -> datetime:
        nominal = self.ceil(wall)
        while self.is_empty(nominal):
            nominal = self.shift(nominal, 1)
        return nominal

    def last_before(self, wall: datetime) -> datetime:
        nominal = self.floor(wall - _TINY)
        while self.is_empty(nominal):
            nominal = self.shift(nominal, -1)
        return nominal

    def window(self, nominal: datetime) -> TimeWindow:
        return TimeWindow(
            self.instant(nominal).astimezone(self.tz),
            self.instant(self.shift(nominal, 1)).astimezone(self.tz),
        )

    def labels(self, first: datetime, upper: datetime) -> list[str]:
        """Labels of the non-empty windows with nominal start in ``[first, upper)``."""
        out: list[str] = []
        nominal, start = first, self.instant(first)
        while nominal < upper:
            following = self.shift(nominal, 1)
            following_start = self.instant(following)
            if following_start > start:
                out.append(nominal.strftime(self.fmt))
            nominal, start = following, following_start
        return out


def _describe_offsets(unit: str, minute: object, hour: object, day: object) -> str:
    def two(value: object) -> str:
        return f"{value:02d}" if isinstance(value, int) else str(value)

    if unit == "hour":
        return f" at minute {two(minute)}" if minute else ""
    clock = f"{two(hour)}:{two(minute)}"
    if unit == "day":
        return f" starting {clock}" if hour or minute else ""
    if unit == "week":
        weekday = _WEEKDAYS[day] if isinstance(day, int) and 0 <= day < 7 else f"day {day!r}"
        return f" starting {weekday} {clock}" if hour or minute else f" starting {weekday}"
    if unit == "month":
        text = f" starting on day {day}" if day != 1 else ""
        return text + (f" at {clock}" if hour or minute else "")
    return ""


class TimeWindowPartitionsDefinition(PartitionsDefinition):
    """Partitions that each cover one period (hour, day, week or month) of a timezone.

    ``start`` and ``end`` accept a string (written in ``fmt``, or ISO ``YYYY-MM-DD`` /
    ``YYYY-MM-DDTHH:MM``), a date or a datetime (naive values are local time); ``end`` is
    exclusive (partitions end at or before it) and ``None`` makes the set open-ended. ``minute_offset`` applies to every unit, ``hour_offset`` to days, weeks and
    months, ``day_offset`` to weeks (0 = Sunday … 6 = Saturday, default 0) and months (1-28,
    default 1). ``end_offset`` shifts the last admitted partition of an open-ended set.
    """

    kind = "time_window"

    def __init__(
        self,
        unit: str,
        start: str | date | datetime,
        end: str | date | datetime | None = None,
        *,
        timezone: str = "UTC",
        fmt: str | None = None,
        minute_offset: int = 0,
        hour_offset: int = 0,
        day_offset: int | None = None,
        end_offset: int = 0,
    ) -> None:
        super().__init__()
        self._unit: object = unit
        self._start: object = start
        self._end: object = end
        self._timezone: object = timezone
        self._fmt: object = fmt
        self._minute: object = minute_offset
        self._hour: object = hour_offset
        self._day: object = day_offset
        self._end_offset: object = end_offset
        self._analysed = False
        self._tz: ZoneInfo | None = None
        self._start_wall: datetime | None = None
        self._end_wall: datetime | None = None
        # Exclusive bound on nominal starts implied by `end`: a partition is in the set only
        # when its whole window lies before `end`.
        self._end_limit: datetime | None = None
        self._calendar: _Calendar | None = None
        self._first: datetime | None = None
        self._found: list[str] = []

    # -- analysis ---------------------------------------------------------------------------

    @property
    def _unit_name(self) -> str | None:
        return self._unit if isinstance(self._unit, str) and self._unit in _UNITS else None

    @property
    def _resolved_fmt(self) -> object:
        unit = self._unit_name
        if self._fmt is None and unit is not None:
            return _DEFAULT_FMT[unit]
        return self._fmt

    @property
    def _resolved_day(self) -> object:
        if self._day is None:
            return 1 if self._unit == "month" else 0
        return self._day

    def _analyse(self) -> None:
        """Check every argument once, remembering what parsed for the other methods."""
        if self._analysed:
            return
        self._analysed = True
        found = self._found
        unit = self._unit_name
        if unit is None:
            found.append(
                f"time partitions unit {self._unit!r} is not one of 'hour', 'day', 'week', 'month'"
            )
        if isinstance(self._timezone, str):
            try:
                self._tz = ZoneInfo(self._timezone)
            except (ZoneInfoNotFoundError, ValueError):
                found.append(
                    f"timezone {self._timezone!r} is not a known IANA timezone; use a name "
                    "like 'UTC', 'Europe/Berlin' or 'America/New_York'"
                )
        else:
            found.append(f"timezone must be an IANA name string, got {self._timezone!r}")
        fmt = self._resolved_fmt
        if not isinstance(fmt, str) or not fmt:
            if fmt is not None or unit is not None:
                found.append(f"fmt must be a non-empty strftime format string, got {fmt!r}")
            fmt = None
        found.extend(self._offset_problems(unit))
        end_offset = self._end_offset
        if not isinstance(end_offset, int) or isinstance(end_offset, bool):
            found.append(f"end_offset must be an integer, got {end_offset!r}")
        self._start_wall = self._parse_bound(self._start, "start", fmt)
        if self._end is not None:
            self._end_wall = self._parse_bound(self._end, "end", fmt)
            if (
                self._start_wall is not None
                and self._end_wall is not None
                and self._end_wall <= self._start_wall
            ):
                found.append(
                    f"end {self._end!r} is not after start {self._start!r}; the end is "
                    "exclusive, so it must come later"
                )
        if found or unit is None or self._tz is None or fmt is None:
            return
        assert self._start_wall is not None
        assert isinstance(self._minute, int)
        assert isinstance(self._hour, int)
        day = self._resolved_day
        assert isinstance(day, int)
        calendar = _Calendar(unit, self._tz, fmt, minute=self._minute, hour=self._hour, day=day)
        fmt_problem = self._fmt_problem(calendar, self._start_wall)
        if fmt_problem:
            found.append(fmt_problem)
            return
        first = calendar.first_at_or_after(self._start_wall)
        end_limit = None if self._end_wall is None else calendar.floor(self._end_wall)
        if end_limit is not None and first >= end_limit:
            found.append(
                f"there are no {_ADJECTIVE[unit]} partitions between start {self._start!r} "
                f"and end {self._end!r}; move the end later"
            )
            return
        self._calendar = calendar
        self._first = first
        self._end_limit = end_limit

    def _offset_problems(self, unit: str | None) -> list[str]:
        found: list[str] = []

        def check(value: object, name: str, low: int, high: int) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                found.append(f"{name} must be an integer from {low} to {high}, got {value!r}")

        check(self._minute, "minute_offset", 0, 59)
        if unit == "hour":
            if self._hour != 0:
                found.append(
                    f"hour_offset does not apply to hourly partitions (got {self._hour!r}); "
                    "remove it"
                )
        else:
            check(self._hour, "hour_offset", 0, 23)
        day = self._resolved_day
        if unit == "week":
            check(day, "day_offset", 0, 6)
        elif unit == "month":
            check(day, "day_offset", 1, 28)
        elif day != 0:
            found.append(
                f"day_offset applies only to weekly and monthly partitions (got {day!r}); remove it"
            )
        return found

    def _parse_bound(self, value: object, name: str, fmt: str | None) -> datetime | None:
        """``value`` as a naive local datetime, or None after recording why it is not one."""
        wall: datetime | None = None
        if isinstance(value, datetime):
            if value.utcoffset() is None:
                wall = value
            elif self._tz is not None:
                wall = value.astimezone(self._tz).replace(tzinfo=None)
            else:
                return None  # the timezone problem is already reported
        elif isinstance(value, date):
            wall = datetime(value.year, value.month, value.day)
        elif isinstance(value, str):
            if fmt is not None:
                try:
                    wall = datetime.strptime(value, fmt)
                except ValueError:
                    wall = None
            if wall is None:
                try:
                    parsed = datetime.fromisoformat(value)
                except ValueError:
                    written = f"as {fmt} or " if fmt else ""
                    self._found.append(
                        f"{name} {value!r} is not a valid date: write it {written}in ISO form "
                        "'YYYY-MM-DD' or 'YYYY-MM-DDTHH:MM'"
                    )
                    return None
                return self._parse_bound(parsed, name, fmt)
        else:
            self._found.append(
                f"{name} must be a date, a datetime or a string, got {type(value).__name__} "
                f"{value!r}"
            )
            return None
        if not _MIN_YEAR <= wall.year < _MAX_YEAR:
            self._found.append(
                f"{name} {value!r} is out of range: use a year from {_MIN_YEAR} to {_MAX_YEAR - 1}"
            )
            return None
        return wall

    def _fmt_problem(self, calendar: _Calendar, start: datetime) -> str | None:
        """Why ``fmt`` cannot write keys that read back as the same partitions, if it cannot."""
        first = calendar.ceil(start)
        samples = [first, calendar.shift(first, 1), calendar.shift(first, 2)]
        try:
            labels = [calendar.label(n) for n in samples]
            for nominal, label in zip(samples, labels, strict=True):
                found = partition_value_problems(label, f"key written with fmt {calendar.fmt!r}")
                if found:
                    return found[0]
                parsed = datetime.strptime(label, calendar.fmt)
                if calendar.ceil(parsed) != nominal:
                    raise ValueError(label)
        except ValueError:
            return (
                f"fmt {calendar.fmt!r} cannot write {_ADJECTIVE[calendar.unit]} keys that read "
                f"back as the same partition; include every field down to the "
                f"{'hour and minute' if calendar.unit == 'hour' else 'day'}, e.g. "
                f"{_DEFAULT_FMT[calendar.unit]!r}"
            )
        return None

    def _find_problems(self) -> list[str]:
        self._analyse()
        return list(self._found)

    def _cal(self) -> _Calendar:
        """The period arithmetic; exists exactly when the definition is valid."""
        if self._calendar is None:
            self.require_valid()
        assert self._calendar is not None
        return self._calendar

    # -- identity ---------------------------------------------------------------------------

    @property
    def unit(self) -> str:
        """``hour``, ``day``, ``week`` or ``month``."""
        return str(self._unit)

    @property
    def timezone(self) -> str:
        """The IANA name of the timezone the periods are computed in."""
        return str(self._timezone)

    @property
    def fmt(self) -> str:
        """The strftime format of the keys."""
        return str(self._resolved_fmt)

    @property
    def end_offset(self) -> int:
        """How many partitions past the last ended one an open-ended set admits."""
        return self._end_offset if isinstance(self._end_offset, int) else 0

    @property
    def is_open_ended(self) -> bool:
        """True when there is no end: the set grows with time."""
        return self._end is None

    def to_spec(self) -> dict[str, Any]:
        self._analyse()

        def bound(raw: object, wall: datetime | None) -> Any:
            return wall.isoformat() if wall is not None else _jsonable(raw)

        return {
            "kind": self.kind,
            "unit": _jsonable(self._unit),
            "start": bound(self._start, self._start_wall),
            "end": bound(self._end, self._end_wall),
            "timezone": _jsonable(self._timezone),
            "fmt": _jsonable(self._resolved_fmt),
            "minute_offset": _jsonable(self._minute),
            "hour_offset": _jsonable(self._hour),
            "day_offset": _jsonable(self._resolved_day),
            "end_offset": _jsonable(self._end_offset),
        }

    def describe(self) -> str:
        self._analyse()
        unit = self._unit_name
        name = f"{_ADJECTIVE[unit]} partitions" if unit else f"{self._unit!r} time partitions"
        offsets = _describe_offsets(unit or "", self._minute, self._hour, self._resolved_day)
        fmt = self._resolved_fmt

        def written(raw: object, wall: datetime | None) -> str:
            if wall is not None and isinstance(fmt, str) and self._calendar is not None:
                return wall.strftime(fmt)
            return str(raw)

        text = f"{name}{offsets} from {written(self._start, self._start_wall)}"
        if self._end is not None:
            text += f" until {written(self._end, self._end_wall)}"
        return f"{text} ({self._timezone})"

    # -- admission --------------------------------------------------------------------------

    def _upper(self, ctx: PartitionContext) -> datetime | None:
        """Exclusive upper bound on nominal starts; None when open-ended without a time."""
        if self._end_limit is not None:
            return self._end_limit
        if ctx.now is None:
            return None
        calendar = self._cal()
        last = calendar.step(calendar.containing(ctx.now), self.end_offset - 1)
        return calendar.shift(last, 1)

    def _admitted(self, nominal: datetime, upper: datetime | None) -> bool:
        assert self._first is not None
        return nominal >= self._first and (upper is None or nominal < upper)

    def _cache_token(self, ctx: PartitionContext) -> object:
        upper = self._upper(ctx)
        if upper is None:
            raise PartitionError(
                f"{self.describe()} has no end, so listing its partitions needs the current "
                "time; pass PartitionContext(now=...) or give the definition an end"
            )
        return upper

    def _enumerate(self, ctx: PartitionContext) -> list[PartitionKey]:
        calendar = self._cal()
        upper = self._cache_token(ctx)
        assert isinstance(upper, datetime)
        assert self._first is not None
        return [PartitionKey.single(v) for v in calendar.labels(self._first, upper)]

    def _range_text(self, upper: datetime | None, ctx: PartitionContext) -> str:
        calendar = self._cal()
        assert self._first is not None
        first = calendar.label(self._first)
        if upper is None:
            return f"from {first} on"
        last = calendar.last_before(upper)
        if last < self._first:
            return f"(there are none yet at {ctx.now.isoformat() if ctx.now else upper})"
        suffix = ""
        if self._end_wall is None:
            suffix = (
                " (the latest that has ended)"
                if self.end_offset == 0
                else " (the latest admitted now)"
            )
        return f"between {first} and {calendar.label(last)}{suffix}"

    def _nominal(self, value: str, ctx: PartitionContext, use_now: bool) -> datetime:
        """The nominal start of the admitted partition written ``value``, or PartitionError."""
        calendar = self._cal()
        upper = self._upper(ctx) if use_now else self._end_limit
        nominal, reason = calendar.parse(value)
        if nominal is not None:
            assert self._first is not None
            if nominal < self._first:
                reason = "it is before the first partition"
            elif upper is not None and nominal >= upper:
                if self._end_wall is not None:
                    reason = "it is after the last partition"
                elif self.end_offset == 0:
                    reason = f"it has not ended yet at {ctx.now.isoformat() if ctx.now else '?'}"
                else:
                    reason = (
                        f"it is later than the partitions admitted at "
                        f"{ctx.now.isoformat() if ctx.now else '?'} (end_offset={self.end_offset})"
                    )
            else:
                return nominal
        if calendar.unit == "week":
            noun = f"a week start (a {_WEEKDAYS[calendar.day]})"
        elif calendar.unit == "month":
            noun = f"a month start (day {calendar.day})"
        else:
            noun = "an hour" if calendar.unit == "hour" else "a date"
        raise PartitionError(
            f"{value!r} is not a partition of {self.describe()}: expected {noun} written "
            f"{calendar.fmt} {self._range_text(upper, ctx)}; {reason}"
        )

    # -- public API -------------------------------------------------------------------------

    def parse_key(
        self, key: str | PartitionKey | Mapping[str, str], ctx: PartitionContext = NO_CONTEXT
    ) -> PartitionKey:
        """Validate a key. Without ``ctx.now`` an open-ended set only checks the lower bound."""
        self.require_valid()
        value = self._single_value(key)
        self._nominal(value, ctx, use_now=True)
        return PartitionKey.single(value)

    def has_key(self, key: PartitionKey, ctx: PartitionContext = NO_CONTEXT) -> bool:
        """Whether ``key`` is a partition. Without ``ctx.now`` an open-ended set only checks
        the lower bound."""
        calendar = self._cal()
        if key.value is None:
            return False
        upper = self._upper(ctx)
        cached = self._keys_cache
        if upper is not None and cached is not None and cached[0] == upper:
            return key in cached[1].position
        nominal, _ = calendar.parse(key.value)
        return nominal is not None and self._admitted(nominal, upper)

    def key_range(
        self, start: str, end: str, ctx: PartitionContext = NO_CONTEXT
    ) -> list[PartitionKey]:
        """The keys from ``start`` to ``end``, both included, in chronological order."""
        calendar = self._cal()
        first = self._nominal(start, ctx, use_now=True)
        last = self._nominal(end, ctx, use_now=True)
        if first > last:
            raise _reversed_range(self, PartitionKey.single(start), PartitionKey.single(end))
        return [PartitionKey.single(v) for v in calendar.labels(first, calendar.shift(last, 1))]

    def window(self, key: str | PartitionKey) -> TimeWindow:
        """The time window of a partition (its end bound checked, not the current time)."""
        calendar = self._cal()
        return calendar.window(self._nominal(self._single_value(key), NO_CONTEXT, use_now=False))

    def key_for_time(self, moment: datetime) -> PartitionKey | None:
        """The partition whose window contains ``moment``, or None when it has none.

        The current time is not considered: a partition still in progress is returned.
        """
        calendar = self._cal()
        instant = _aware(moment, "key_for_time")
        nominal = calendar.containing(instant)
        if not self._admitted(nominal, self._end_limit):
            return None
        return PartitionKey.single(calendar.label(nominal))

    def last_closed_key(self, now: datetime) -> PartitionKey | None:
        """The latest partition whose window ended at or before ``now``; None if none has.

        This is the partition a schedule running shortly after a period boundary processes
        (a daily schedule at 01:00 runs yesterday).
        """
        calendar = self._cal()
        instant = _aware(now, "last_closed_key")
        last = calendar.step(calendar.containing(instant), -1)
        if self._end_limit is not None:
            last = min(last, calendar.last_before(self._end_limit))
        assert self._first is not None
        if last < self._first:
            return None
        return PartitionKey.single(calendar.label(last))

    def calendar_window_at(self, moment: datetime, periods: int = 0) -> TimeWindow:
        """The window containing ``moment``, moved by ``periods`` partitions.

        It follows the definition's period grid but ignores its start and end, so the window
        may lie outside the definition.
        """
        calendar = self._cal()
        nominal = calendar.containing(_aware(moment, "calendar_window_at"))
        return calendar.window(calendar.step(nominal, periods))

    def keys_overlapping(
        self, start: datetime, end: datetime, ctx: PartitionContext = NO_CONTEXT
    ) -> list[PartitionKey]:
        """The partitions whose windows overlap ``[start, end)``, chronologically.

        Without ``ctx.now`` an open-ended set is bounded by ``end`` alone.
        """
        calendar = self._cal()
        begin = _aware(start, "keys_overlapping").astimezone(UTC)
        finish = _aware(end, "keys_overlapping").astimezone(UTC)
        if begin >= finish:
            return []
        assert self._first is not None
        nominal = max(calendar.containing(begin), self._first)
        upper = self._upper(ctx)
        out: list[PartitionKey] = []
        window_start = calendar.instant(nominal)
        while window_start < finish and (upper is None or nominal < upper):
            following = calendar.shift(nominal, 1)
            following_start = calendar.instant(following)
            if following_start > window_start:
                out.append(PartitionKey.single(calendar.label(nominal)))
            nominal, window_start = following, following_start
        return out


def _aware(moment: datetime, where: str) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise PartitionError(
            f"{where} needs a timezone-aware datetime, got {moment!r}; attach a timezone, "
            "e.g. datetime(..., tzinfo=timezone.utc)"
        )
    return moment


class HourlyPartitionsDefinition(TimeWindowPartitionsDefinition):
    """One partition per hour, keyed ``2024-01-01-13:00`` by default."""

    def __init__(
        self,
        start_date: str | date | datetime,
        end_date: str | date | datetime | None = None,
        *,
        timezone: str = "UTC",
        fmt: str = _DEFAULT_FMT["hour"],
        minute_offset: int = 0,
        end_offset: int = 0,
    ) -> None:
        super().__init__(
            "hour",
            start_date,
            end_date,
            timezone=timezone,
            fmt=fmt,
            minute_offset=minute_offset,
            end_offset=end_offset,
        )


class DailyPartitionsDefinition(TimeWindowPartitionsDefinition):
    """One partition per day, keyed ``2024-01-01`` by default."""

    def __init__(
        self,
        start_date: str | date | datetime,
        end_date: str | date | datetime | None = None,
        *,
        timezone: str = "UTC",
        fmt: str = _DEFAULT_FMT["day"],
        hour_offset: int = 0,
        minute_offset: int = 0,
        end_offset: int = 0,
    ) -> None:
        super().__init__(
            "day",
            start_date,
            end_date,
            timezone=timezone,
            fmt=fmt,
            minute_offset=minute_offset,
            hour_offset=hour_offset,
            end_offset=end_offset,
        )


class WeeklyPartitionsDefinition(TimeWindowPartitionsDefinition):
    """One partition per week, starting on ``day_offset`` (0 = Sunday), keyed by its first day."""

    def __init__(
        self,
        start_date: str | date | datetime,
        end_date: str | date | datetime | None = None,
        *,
        timezone: str = "UTC",
        fmt: str = _DEFAULT_FMT["week"],
        day_offset: int = 0,
        hour_offset: int = 0,
        minute_offset: int = 0,
        end_offset: int = 0,
    ) -> None:
        super().__init__(
            "week",
            start_date,
            end_date,
            timezone=timezone,
            fmt=fmt,
            minute_offset=minute_offset,
            hour_offset=hour_offset,
            day_offset=day_offset,
            end_offset=end_offset,
        )


class MonthlyPartitionsDefinition(TimeWindowPartitionsDefinition):
    """One partition per month, starting on day ``day_offset``, keyed by its first day."""

    def __init__(
        self,
        start_date: str | date | datetime,
        end_date: str | date | datetime | None = None,
        *,
        timezone: str = "UTC",
        fmt: str = _DEFAULT_FMT["month"],
        day_offset: int = 1,
        hour_offset: int = 0,
        minute_offset: int = 0,
        end_offset: int = 0,
    ) -> None:
        super().__init__(
            "month",
            start_date,
            end_date,
            timezone=timezone,
            fmt=fmt,
            minute_offset=minute_offset,
            hour_offset=hour_offset,
            day_offset=day_offset,
            end_offset=end_offset,
        )


# -- multi-dimensional ------------------------------------------------------------------------


class MultiPartitionsDefinition(PartitionsDefinition):
    """The cartesian product of named single-dimension definitions (any number of them).

    Keys are ``PartitionKey.multi`` in key order. :meth:`parse_key` accepts the user form
    ``v1|v2|v3`` (values in sorted-dimension-name order), the canonical form
    ``d1=v1,d2=v2`` (preferred when the text is canonical with exactly these dimensions) or a
    mapping of dimension name to value.
    """

    kind = "multi"

    def __init__(self, dimensions: Mapping[str, PartitionsDefinition]) -> None:
        super().__init__()
        arg: object = dimensions
        self._arg = dict(arg) if isinstance(arg, Mapping) else arg

    @property
    def dimensions(self) -> dict[str, PartitionsDefinition]:
        """The dimensions by name, in sorted name order (the definition is valid)."""
        self.require_valid()
        assert isinstance(self._arg, dict)
        return {name: self._arg[name] for name in sorted(self._arg)}

    def dimension_names(self) -> list[str]:
        return list(self.dimensions)

    def _find_problems(self) -> list[str]:
        arg = self._arg
        if not isinstance(arg, dict):
            return [
                "multi-dimensional partitions need a mapping of dimension name to partitions "
                f"definition, got {type(arg).__name__} {arg!r}"
            ]
        if not arg:
            return ["multi-dimensional partitions have no dimensions; give at least one"]
        found: list[str] = []
        for name in sorted(arg, key=str):
            dimension = arg[name]
            if not isinstance(name, str):
                found.append(f"dimension name {name!r} is not a string")
                continue
            for problem in partition_value_problems(name, "dimension name"):
                if "'|'" not in problem:
                    found.append(problem)
            if not isinstance(dimension, PartitionsDefinition):
                found.append(
                    f"dimension {name!r} is {type(dimension).__name__} {dimension!r}, not a "
                    "partitions definition"
                )
            elif isinstance(dimension, MultiPartitionsDefinition):
                found.append(
                    f"dimension {name!r} is itself multi-dimensional; list its dimensions "
                    "directly instead of nesting"
                )
            else:
                found.extend(f"dimension {name!r}: {p}" for p in dimension.problems())
        return found

    def to_spec(self) -> dict[str, Any]:
        arg = self._arg
        if not isinstance(arg, dict):
            return {"kind": self.kind, "dimensions": _jsonable(arg)}
        dims: dict[str, Any] = {}
        for name, dimension in arg.items():
            spec = (
                dimension.to_spec()
                if isinstance(dimension, PartitionsDefinition)
                else _jsonable(dimension)
            )
            dims[name if isinstance(name, str) else repr(name)] = spec
        return {"kind": self.kind, "dimensions": dims}

    def describe(self) -> str:
        arg = self._arg
        if not isinstance(arg, dict):
            return f"multi-dimensional partitions {arg!r}"
        parts = []
        for name in sorted(arg, key=str):
            dimension = arg[name]
            text = (
                dimension.describe()
                if isinstance(dimension, PartitionsDefinition)
                else repr(dimension)
            )
            parts.append(f"{name}: {text}")
        return f"multi-dimensional partitions ({'; '.join(parts)})"

    def _cache_token(self, ctx: PartitionContext) -> object:
        return tuple(d._cache_token(ctx) for d in self.dimensions.values())

    def _enumerate(self, ctx: PartitionContext) -> list[PartitionKey]:
        return self.keys_with({}, ctx)

    def keys_with(
        self, fixed: Mapping[str, str], ctx: PartitionContext = NO_CONTEXT
    ) -> list[PartitionKey]:
        """The keys whose dimensions named in ``fixed`` have the given values, in key order."""
        dimensions = self.dimensions
        unknown = sorted(set(fixed) - set(dimensions))
        if unknown:
            raise PartitionError(
                f"{self.describe()} has no dimension(s) {unknown}; its dimensions are "
                f"{list(dimensions)}"
            )
        names = list(dimensions)
        values: list[list[str]] = []
        for name, dimension in dimensions.items():
            if name in fixed:
                key = PartitionKey.single(fixed[name]) if fixed[name] else None
                values.append([fixed[name]] if key and dimension.has_key(key, ctx) else [])
            else:
                values.append(sorted(str(k.value) for k in dimension.keys_view(ctx)))
        # Values sorted per dimension, dimensions sorted by name: the product is in key order.
        return [
            PartitionKey(dims=tuple(zip(names, combo, strict=True))) for combo in product(*values)
        ]

    def has_key(self, key: PartitionKey, ctx: PartitionContext = NO_CONTEXT) -> bool:
        dimensions = self.dimensions
        if [d for d, _ in key.dims] != list(dimensions):
            return False
        return all(dimensions[d].has_key(PartitionKey.single(v), ctx) for d, v in key.dims)

    def _split(self, key: str | PartitionKey | Mapping[str, str]) -> dict[str, str]:
        names = list(self.dimensions)
        if isinstance(key, PartitionKey):
            if not key.is_multi:
                raise PartitionError(
                    f"{key.user_string()!r} is not a partition of {self.describe()}: it has one "
                    f"value but the definition has dimensions {names}"
                )
            return key.dimensions()
        if isinstance(key, Mapping):
            return {str(k): v for k, v in key.items()}
        if not isinstance(key, str):
            raise PartitionError(
                f"{key!r} is not a partition of {self.describe()}: pass a string or a mapping "
                "of dimension name to value"
            )
        if "=" in key:
            try:
                canonical = PartitionKey.parse_canonical(key)
            except PartitionError:
                canonical = None
            if canonical is not None and [d for d, _ in canonical.dims] == names:
                return canonical.dimensions()
        values = key.split("|")
        if len(values) != len(names):
            raise PartitionError(
                f"{key!r} is not a partition of {self.describe()}: write one value per "
                f"dimension, separated by '|', in the order {'|'.join(names)} "
                "(or canonically as " + ",".join(f"{n}=…" for n in names) + ")"
            )
        return dict(zip(names, values, strict=True))

    def parse_key(
        self, key: str | PartitionKey | Mapping[str, str], ctx: PartitionContext = NO_CONTEXT
    ) -> PartitionKey:
        self.require_valid()
        dimensions = self.dimensions
        given = self._split(key)
        if sorted(given) != list(dimensions):
            raise PartitionError(
                f"{key!r} is not a partition of {self.describe()}: it names dimensions "
                f"{sorted(given)} but the definition has {list(dimensions)}"
            )
        parsed: dict[str, str] = {}
        for name, dimension in dimensions.items():
            try:
                parsed[name] = str(dimension.parse_key(given[name], ctx).value)
            except PartitionError as exc:
                raise PartitionError(f"in dimension {name!r}: {exc}") from exc
        return PartitionKey.multi(parsed)


# -- specs ------------------------------------------------------------------------------------


def _field(spec: Mapping[str, Any], name: str) -> Any:
    if name not in spec:
        raise DefinitionError(f"partitions spec {dict(spec)!r} lacks the field {name!r}")
    return spec[name]


def _bound_from_spec(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def partitions_from_spec(spec: Mapping[str, Any]) -> PartitionsDefinition:
    """Rebuild a definition from :meth:`PartitionsDefinition.to_spec` output.

    The result may still have problems (a spec can record an invalid definition); check
    :meth:`~PartitionsDefinition.problems`.
    """
    if not isinstance(spec, Mapping):
        raise DefinitionError(f"a partitions spec must be a mapping, got {spec!r}")
    kind = spec.get("kind")
    if kind == StaticPartitionsDefinition.kind:
        return StaticPartitionsDefinition(_field(spec, "keys"))
    if kind == DynamicPartitionsDefinition.kind:
        return DynamicPartitionsDefinition(_field(spec, "name"))
    if kind == MultiPartitionsDefinition.kind:
        dims = _field(spec, "dimensions")
        if not isinstance(dims, Mapping):
            raise DefinitionError(f"partitions spec {dict(spec)!r}: 'dimensions' must be a mapping")
        return MultiPartitionsDefinition({n: partitions_from_spec(d) for n, d in dims.items()})
    if kind == TimeWindowPartitionsDefinition.kind:
        return TimeWindowPartitionsDefinition(
            unit=_field(spec, "unit"),
            start=_bound_from_spec(_field(spec, "start")),
            end=_bound_from_spec(spec.get("end")),
            timezone=spec.get("timezone", "UTC"),
            fmt=spec.get("fmt"),
            minute_offset=spec.get("minute_offset", 0),
            hour_offset=spec.get("hour_offset", 0),
            day_offset=spec.get("day_offset"),
            end_offset=spec.get("end_offset", 0),
        )
    raise DefinitionError(
        f"partitions spec has unknown kind {kind!r}; expected one of 'static', 'dynamic', "
        "'time_window', 'multi'"
    )
