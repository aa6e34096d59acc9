"""The narrow interfaces between Servo's control services and the outside world.

Every external service sits behind one of these Protocols and has two implementations:
``servo.adapters.embedded`` (SQLite, files, in-process queue; the default) and
``servo.adapters.gcp`` (Firestore, GCS, Cloud Tasks, Pub/Sub). Both raise the same domain
errors from :mod:`servo.core.errors` (``AlreadyExists``, ``NotFound``, ``Conflict``,
``TransientError``) and pass the same contract suites in :mod:`servo.testing.contracts`.

Documents are plain JSON-compatible ``dict`` values (str keys; str, int, bool, None, lists and
dicts; no floats in anything that is hashed). A store instance is bound to one tenant and
workspace; collection names are short identifiers such as ``runs`` or ``tasks``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

Doc = dict[str, Any]
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "array_contains"]


@dataclass(frozen=True, slots=True)
class Where:
    """One equality or range condition on a top-level document field."""

    field: str
    op: Op
    value: Any


class StateTxn(Protocol):
    """A transaction on the state store.

    As in Firestore, every read must happen before the first write; a read after a write
    raises ``ServoError``. Writes become visible atomically when the transaction function
    returns. ``create`` raises ``AlreadyExists`` (at the latest at commit) if the document
    exists; ``update`` raises ``NotFound`` if it does not.
    """

    def get(self, collection: str, doc_id: str) -> Doc | None: ...

    def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among ``doc_ids``, by id."""
        ...

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        """Matching documents as ``(id, doc)`` pairs, ordered by ``order_by`` then id.

        ``order_by="-field"`` sorts descending. Documents without the field are left out.
        """
        ...

    def create(self, collection: str, doc_id: str, data: Doc) -> None: ...

    def set(self, collection: str, doc_id: str, data: Doc) -> None: ...

    def update(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> None:
        """Replace the given top-level fields of an existing document."""
        ...

    def delete(self, collection: str, doc_id: str) -> None: ...


@runtime_checkable
class StateStore(Protocol):
    """Compare-and-set document storage for "what is happening now"."""

    def transact(self, fn: Callable[[StateTxn], T], *, max_attempts: int = 8) -> T:
        """Run ``fn`` in a serializable transaction, retrying it on contention.

        ``fn`` may run several times; it must not have side effects outside the transaction.
        Domain errors raised by ``fn`` abort the transaction and propagate unchanged.
        """
        ...

    def get(self, collection: str, doc_id: str) -> Doc | None:
        """A consistent read outside any transaction."""
        ...

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]: ...


@dataclass(frozen=True, slots=True)
class Segment:
    """One immutable ledger object: a batch of events under a sequence number."""

    stream: str
    seq: int
    events: tuple[Doc, ...]


@runtime_checkable
class Ledger(Protocol):
    """Append-only storage of immutable, numbered event segments ("what happened")."""

    def append(self, stream: str, seq: int, events: Sequence[Doc]) -> None:
        """Create segment ``seq`` of ``stream``; raise ``AlreadyExists`` if it exists."""
        ...

    def read(self, stream: str, after_seq: int = -1, limit: int | None = None) -> list[Segment]:
        """Segments with a sequence number greater than ``after_seq``, in order."""
        ...

    def last_seq(self, stream: str) -> int:
        """The highest sequence number written to ``stream``, or -1."""
        ...


@runtime_checkable
class Blobs(Protocol):
    """Object storage for manifests, code bundles, outputs, logs and projections.

    Every object has a generation (a positive integer that changes on every write), which
    makes compare-and-set possible: ``if_generation=0`` means "only if absent".
    """

    def put(self, path: str, data: bytes, *, if_generation: int | None = None) -> int:
        """Write an object and return its new generation.

        Raises ``AlreadyExists`` when ``if_generation == 0`` and the object exists, and
        ``Conflict`` when ``if_generation`` is another number that does not match.
        """
        ...

    def get(self, path: str) -> bytes:
        """The object's bytes; ``NotFound`` if absent."""
        ...

    def get_with_generation(self, path: str) -> tuple[bytes, int]: ...

    def exists(self, path: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Paths of the objects under ``prefix``, sorted."""
        ...

    def delete(self, path: str) -> None:
        """Delete the object if present."""
        ...


@runtime_checkable
class Queue(Protocol):
    """Delayed, at-least-once delivery of small JSON messages to a named handler.

    A message ``name`` deduplicates: while the name (or its tombstone) is remembered, a second
    message with the same name is dropped and ``enqueue`` returns False, like Cloud Tasks.
    """

    def enqueue(
        self,
        topic: str,
        payload: Doc,
        *,
        name: str | None = None,
        delay_s: float = 0.0,
    ) -> bool: ...


@runtime_checkable
class Bus(Protocol):
    """Publish/subscribe notifications (Pub/Sub)."""

    def publish(self, topic: str, data: Doc, attributes: Mapping[str, str] | None = None) -> str:
        """Publish and return the message id."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class Ids(Protocol):
    def new_id(self, prefix: str = "") -> str:
        """A new unique id, sortable by creation time, with an optional prefix."""
        ...


class CrashPoints(Protocol):
    """Marks a write boundary; tests make a chosen boundary raise to simulate a crash."""

    def __call__(self, name: str) -> None: ...


def no_crash(name: str) -> None:
    """The production crash-point hook: does nothing."""


@dataclass
class Ports:
    """Everything a control service may touch, bound to one tenant and workspace."""

    state: StateStore
    ledger: Ledger
    blobs: Blobs
    queue: Queue
    bus: Bus
    clock: Clock
    ids: Ids
    tenant: str = "default"
    workspace: str = "default"
    crash: CrashPoints = field(default=no_crash)
    settings: Mapping[str, Any] = field(default_factory=dict)
