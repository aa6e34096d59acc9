"""Errors shared by every layer.

Every error a user can cause carries a message that names the object, what is wrong and how to
fix it. Adapters translate their backend's failures into these so that callers never see
``google.*`` or ``sqlite3`` exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ServoError(Exception):
    """Base class of every error Servo raises on purpose."""


class DefinitionError(ServoError):
    """A user definition (asset, check, partitions, schedule, sensor…) is malformed."""


@dataclass(frozen=True)
class Problem:
    """One problem found while validating a project, with where it was defined."""

    message: str
    location: str | None = None  # "path/to/file.py:12"
    subject: str | None = None  # "asset `orders`"

    def render(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.message}"


class ValidationFailed(ServoError):
    """Validation found one or more problems; all of them are listed."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p.render()}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) found:\n{lines}")


class SelectionError(ServoError):
    """An asset selection expression is malformed or names something unknown."""


class PartitionError(ServoError):
    """A partition key or range is malformed or not part of a partitions definition."""


class NotFound(ServoError):
    """The requested object does not exist."""


class AlreadyExists(ServoError):
    """A create-only write found the object already present."""


class Conflict(ServoError):
    """A compare-and-set precondition did not hold, or a request conflicts with recorded state."""


class TransientError(ServoError):
    """A backend failed in a way that is worth retrying (contention, unavailability)."""


class InvalidRequest(ServoError):
    """A request to a control service is malformed; retrying it will not help."""
