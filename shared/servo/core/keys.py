"""Identity of assets, partitions and tasks, with one canonical string form each.

AssetKey
    A path of one or more components. Canonical string: components joined by ``/``, e.g.
    ``analytics/orders``. A component is 1-64 characters of ``A-Z a-z 0-9 _ -`` and does
    not start with ``-``.

PartitionKey
    Either one value (a single-dimension partitions definition) or a mapping of dimension name
    to value (multi-dimensional, any number of dimensions). Canonical string:

    * single: the percent-escaped value, e.g. ``2024-01-01``;
    * multi: ``dim=value`` pairs sorted by dimension name and joined by ``,``, names and
      values percent-escaped, e.g. ``date=2024-01-01,region=eu%2Cwest``.

    Escaping keeps ``A-Z a-z 0-9 - _ . ~ :`` and encodes every other UTF-8 byte as ``%XX``
    (upper-case hex), so ``=``, ``,``, ``/``, ``%``, ``|`` and spaces can never be confused
    with the structure. Partition values and dimension names are never empty.

    Keys are totally ordered: first by number of dimensions, then by the sequence of
    (dimension, value) pairs in dimension order, comparing values as Python strings.

    The *user form* is what people type: the value itself for single keys, and values joined
    by ``|`` in dimension order for multi keys (as Dagster writes them).

TaskKey
    (asset, partition or none, operation). Canonical JSON
    ``{"asset":"a/b","operation":"materialize","partition":"2024-01-01"}``; its display form is
    ``a/b`` or ``a/b:2024-01-01``; its id is ``t`` + the first 20 hex digits of the sha256 of
    the canonical JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import total_ordering
from typing import Any

from servo.core.canonical import sha256_hex
from servo.core.errors import DefinitionError, PartitionError

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}")
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~:")


@total_ordering
@dataclass(frozen=True, slots=True)
class AssetKey:
    """The identity of an asset: a non-empty path of components."""

    path: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.path:
            raise DefinitionError("an asset key needs at least one component")
        for part in self.path:
            if not isinstance(part, str) or not _COMPONENT.fullmatch(part):
                raise DefinitionError(
                    f"asset key component {part!r} is not valid: use 1-64 characters of "
                    "letters, digits, '_' or '-' (not starting with '-'); separate "
                    "components with '/'"
                )

    @classmethod
    def parse(cls, text: str) -> AssetKey:
        """Parse the canonical string form (``a/b/c``)."""
        if not isinstance(text, str) or not text:
            raise DefinitionError(f"asset key {text!r} is empty; write it like 'analytics/orders'")
        return cls(tuple(text.split("/")))

    @classmethod
    def of(cls, value: AssetKey | str | Iterable[str]) -> AssetKey:
        """Coerce a key, a canonical string, or a sequence of components."""
        if isinstance(value, AssetKey):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls(tuple(value))

    def to_string(self) -> str:
        return "/".join(self.path)

    @property
    def name(self) -> str:
        """The last component, which is how an asset is usually referred to."""
        return self.path[-1]

    def __str__(self) -> str:
        return self.to_string()

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, AssetKey):
            return NotImplemented
        return self.path < other.path


def escape_component(value: str) -> str:
    """Percent-escape ``value`` for use inside a canonical partition key."""
    out: list[str] = []
    for byte in value.encode("utf-8"):
        if byte in _SAFE:
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def unescape_component(text: str) -> str:
    raw = bytearray()
    i = 0
    data = text.encode("utf-8")
    while i < len(data):
        byte = data[i]
        if byte == 0x25:  # '%'
            hexpart = data[i + 1 : i + 3]
            if len(hexpart) != 2 or not re.fullmatch(rb"[0-9A-F]{2}", bytes(hexpart)):
                raise PartitionError(f"malformed escape in partition key {text!r} at offset {i}")
            raw.append(int(hexpart, 16))
            i += 3
            continue
        if byte not in _SAFE:
            raise PartitionError(
                f"partition key {text!r} is not canonical: byte 0x{byte:02X} must be escaped"
            )
        raw.append(byte)
        i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PartitionError(f"partition key {text!r} does not decode as UTF-8") from exc


def _check_value(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise PartitionError(f"{what} must be a string, got {type(value).__name__}")
    if value == "":
        raise PartitionError(f"{what} is empty; partition values are non-empty strings")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PartitionError(f"{what} {value!r} is not valid Unicode text") from None
    return value


@total_ordering
@dataclass(frozen=True, slots=True)
class PartitionKey:
    """A partition of an asset: one value, or one value per named dimension.

    ``dims`` is ``()`` with ``value`` set for a single-dimension key, or a tuple of
    ``(dimension, value)`` pairs sorted by dimension name for a multi-dimensional key.
    """

    value: str | None = None
    dims: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.dims, tuple):
            raise PartitionError("partition key dimensions must be a tuple of (name, value) pairs")
        if (self.value is None) == (not self.dims):
            raise PartitionError("a partition key has either one value or named dimensions")
        if self.value is not None:
            _check_value(self.value, "partition key")
        names = [d for d, _ in self.dims]
        if names != sorted(names) or len(set(names)) != len(names):
            raise PartitionError(f"partition key dimensions must be unique and sorted: {names}")
        for d, v in self.dims:
            _check_value(d, "partition dimension name")
            _check_value(v, f"value of partition dimension {d!r}")

    @classmethod
    def single(cls, value: str) -> PartitionKey:
        return cls(value=value)

    @classmethod
    def multi(cls, dims: Mapping[str, str]) -> PartitionKey:
        if not dims:
            raise PartitionError("a multi-dimensional partition key needs at least one dimension")
        return cls(dims=tuple(sorted(dims.items())))

    @property
    def is_multi(self) -> bool:
        return bool(self.dims)

    def dimensions(self) -> dict[str, str]:
        return dict(self.dims)

    def get(self, dim: str) -> str:
        for d, v in self.dims:
            if d == dim:
                return v
        raise PartitionError(f"partition key {self.user_string()!r} has no dimension {dim!r}")

    def canonical(self) -> str:
        if self.value is not None:
            return escape_component(self.value)
        return ",".join(f"{escape_component(d)}={escape_component(v)}" for d, v in self.dims)

    @classmethod
    def parse_canonical(cls, text: str) -> PartitionKey:
        if not text:
            raise PartitionError("an empty string is not a canonical partition key")
        if "=" not in text:
            single = cls.single(unescape_component(text))
            if single.canonical() != text:
                raise PartitionError(f"partition key {text!r} is not in canonical form")
            return single
        dims: dict[str, str] = {}
        for part in text.split(","):
            name, sep, value = part.partition("=")
            if not sep:
                raise PartitionError(f"canonical partition key {text!r}: {part!r} lacks '='")
            dname = unescape_component(name)
            if dname in dims:
                raise PartitionError(f"canonical partition key {text!r} repeats {dname!r}")
            dims[dname] = unescape_component(value)
        key = cls.multi(dims)
        if key.canonical() != text:
            raise PartitionError(f"partition key {text!r} is not in canonical form")
        return key

    def user_string(self) -> str:
        """The form people type: ``2024-01-01`` or ``2024-01-01|eu`` (dimension order)."""
        if self.value is not None:
            return self.value
        return "|".join(v for _, v in self.dims)

    def _order(self) -> tuple[int, tuple[tuple[str, str], ...]]:
        if self.value is not None:
            return (1, (("", self.value),))
        return (len(self.dims), self.dims)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, PartitionKey):
            return NotImplemented
        return self._order() < other._order()

    def __str__(self) -> str:
        return self.user_string()


class Operation(StrEnum):
    """What a task does to its asset partition."""

    MATERIALIZE = "materialize"
    CHECK = "check"


def task_id_of(canonical_text: str) -> str:
    """The id of the task whose canonical JSON is ``canonical_text``."""
    return "t" + sha256_hex(canonical_text)[:20]


@total_ordering
@dataclass(frozen=True, slots=True)
class TaskKey:
    """The semantic identity of a task: stable across plans, processes and languages."""

    asset: AssetKey
    partition: PartitionKey | None = None
    operation: Operation = Operation.MATERIALIZE

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "operation", Operation(self.operation))
        except ValueError:
            raise DefinitionError(
                f"task operation {self.operation!r} is not one of "
                f"{', '.join(o.value for o in Operation)}"
            ) from None

    def to_json(self) -> dict[str, str | None]:
        return {
            "asset": self.asset.to_string(),
            "operation": self.operation.value,
            "partition": self.partition.canonical() if self.partition is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskKey:
        if not isinstance(data, Mapping) or not isinstance(data.get("asset"), str):
            raise DefinitionError(f"a task key needs an `asset` string, got {data!r}")
        part = data.get("partition")
        return cls(
            asset=AssetKey.parse(data["asset"]),
            partition=PartitionKey.parse_canonical(part) if part is not None else None,
            operation=data.get("operation", "materialize"),
        )

    def canonical(self) -> str:
        # Asset keys and escaped partition keys only use characters JSON writes as they are,
        # so the canonical text can be formatted directly (tests pin it to canonical_json).
        part = "null" if self.partition is None else f'"{self.partition.canonical()}"'
        return (
            f'{{"asset":"{self.asset.to_string()}","operation":"{self.operation.value}",'
            f'"partition":{part}}}'
        )

    @property
    def id(self) -> str:
        return task_id_of(self.canonical())

    def display(self) -> str:
        base = self.asset.to_string()
        if self.partition is not None:
            base = f"{base}:{self.partition.user_string()}"
        if self.operation is not Operation.MATERIALIZE:
            base = f"{base}#{self.operation.value}"
        return base

    def _order(self) -> tuple[AssetKey, int, tuple[Any, ...], str]:
        part = self.partition._order() if self.partition is not None else ()
        return (self.asset, 0 if self.partition is None else 1, part, self.operation.value)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, TaskKey):
            return NotImplemented
        return self._order() < other._order()

    def __str__(self) -> str:
        return self.display()
