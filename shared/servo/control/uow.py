"""A unit of work: one state-store transaction plus the events it records (the outbox).

Control services read and write documents through a :class:`UnitOfWork` so that
* every document written and every event emitted carries a Lamport clock ``lc`` greater than
  that of everything read in the transaction (a causal order without a shared counter);
* the events are written to the ``outbox`` collection in the same transaction as the state
  change they describe — never a state change without its event, nor an event without its
  state change. The drain step later moves outbox batches into immutable ledger segments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from servo.core.errors import ServoError
from servo.core.events import EVENT_SPEC_VERSION, ms_to_iso, to_ms
from servo.ports import Doc, Ports, StateTxn, Where

T = TypeVar("T")

OUTBOX = "outbox"
OUTBOX_BATCH = 100  # events per outbox document


@dataclass
class Actor:
    """Who asked for a change: ``user:alice``, ``schedule:daily``, ``sensor:landing``, ``system``."""

    id: str = "system"


@dataclass
class Cause:
    """Correlation and causation of the events a service records."""

    actor: str = "system"
    correlation_id: str | None = None
    causation_id: str | None = None
    source: str = "servo"
    # The Lamport clock of what caused this work when it was read outside the transaction
    # (a query result, a queue message): events recorded now must sort after it.
    lc_floor: int = 0


@dataclass
class UnitOfWork:
    txn: StateTxn
    ports: Ports
    cause: Cause
    now_ms: int
    lc: int = 0
    events: list[Doc] = field(default_factory=list)
    writes: dict[tuple[str, str], tuple[str, Doc | None]] = field(default_factory=dict)

    # Reads ---------------------------------------------------------------------------------
    def _see(self, doc: Doc | None) -> Doc | None:
        if doc is not None:
            self.lc = max(self.lc, int(doc.get("lc", 0)))
        return doc

    def _before_read(self) -> None:
        if self.writes:
            raise ServoError(
                "a unit of work read after writing; read everything first (as Firestore "
                "transactions require)"
            )

    def get(self, collection: str, doc_id: str) -> Doc | None:
        self._before_read()
        return self._see(self.txn.get(collection, doc_id))

    def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Doc]:
        self._before_read()
        docs = self.txn.get_many(collection, doc_ids) if doc_ids else {}
        for d in docs.values():
            self._see(d)
        return docs

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        self._before_read()
        rows = self.txn.query(collection, where, order_by=order_by, limit=limit)
        for _, d in rows:
            self._see(d)
        return rows

    # Writes --------------------------------------------------------------------------------
    @property
    def next_lc(self) -> int:
        return self.lc + 1

    # Writes are buffered and applied when the unit of work ends, several changes to one
    # document coalescing into one write (a release and a dispatch of the same task in one
    # transaction cost one document write, not two).
    def _buffer(self, collection: str, doc_id: str, op: str, data: Doc | None) -> None:
        key = (collection, doc_id)
        pending = self.writes.get(key)
        if op == "update" and pending is not None and pending[0] in ("create", "set", "update"):
            assert data is not None
            assert pending[1] is not None
            pending[1].update(data)
            return
        self.writes.pop(key, None)
        self.writes[key] = (op, data)

    def create(self, collection: str, doc_id: str, data: Doc) -> None:
        data["lc"] = self.next_lc
        self._buffer(collection, doc_id, "create", data)

    def set(self, collection: str, doc_id: str, data: Doc) -> None:
        data["lc"] = self.next_lc
        self._buffer(collection, doc_id, "set", data)

    def update(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> None:
        self._buffer(collection, doc_id, "update", {**fields, "lc": self.next_lc})

    def delete(self, collection: str, doc_id: str) -> None:
        self._buffer(collection, doc_id, "delete", None)

    def flush_writes(self) -> None:
        for (collection, doc_id), (op, data) in self.writes.items():
            if op == "create":
                assert data is not None
                self.txn.create(collection, doc_id, data)
            elif op == "set":
                assert data is not None
                self.txn.set(collection, doc_id, data)
            elif op == "update":
                assert data is not None
                self.txn.update(collection, doc_id, data)
            else:
                self.txn.delete(collection, doc_id)
        self.writes.clear()

    def emit(
        self,
        type_: str,
        *,
        run_id: str | None = None,
        task_id: str | None = None,
        attempt: int | None = None,
        data: Mapping[str, Any] | None = None,
        data_version: int = 1,
    ) -> str:
        """Record an event in this transaction; returns its id. ``data_version`` is the shape
        of ``data`` for the event's type (readers upcast older shapes)."""
        eid = self.ports.ids.new_id("e")
        event: Doc = {
            "id": eid,
            "type": type_,
            "specversion": EVENT_SPEC_VERSION,
            "source": self.cause.source,
            "time": ms_to_iso(self.now_ms),
            "time_ms": self.now_ms,
            "tenant": self.ports.tenant,
            "workspace": self.ports.workspace,
            "run_id": run_id,
            "task_id": task_id,
            "attempt": attempt,
            "correlation_id": self.cause.correlation_id or run_id,
            "causation_id": self.cause.causation_id,
            "actor": self.cause.actor,
            "lc": self.next_lc,
            "seq": len(self.events),
            "data": dict(data or {}),
        }
        if data_version != 1:
            event["dataversion"] = data_version
        self.events.append(event)
        return eid

    def flush_events(self) -> None:
        # Large transactions (a run's first batch of tasks, a wide release) are split over
        # several outbox documents, keeping each far below Firestore's 1 MiB document limit.
        for start in range(0, len(self.events), OUTBOX_BATCH):
            chunk = self.events[start : start + OUTBOX_BATCH]
            self.txn.create(
                OUTBOX,
                chunk[0]["id"],
                {"events": chunk, "created_ms": self.now_ms, "lc": self.next_lc},
            )


def in_uow(ports: Ports, cause: Cause, fn: Callable[[UnitOfWork], T]) -> tuple[T, list[Doc]]:
    """Run ``fn`` in a transaction; returns its result and the events it recorded."""
    box: dict[str, list[Doc]] = {}

    def body(txn: StateTxn) -> T:
        uow = UnitOfWork(
            txn=txn, ports=ports, cause=cause, now_ms=to_ms(ports.clock.now()), lc=cause.lc_floor
        )
        result = fn(uow)
        uow.flush_writes()
        uow.flush_events()
        box["events"] = uow.events
        return result

    result = ports.state.transact(body)
    return result, box.get("events", [])
