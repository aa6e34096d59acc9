"""drain: move committed outbox batches into immutable, numbered ledger segments.

Safe under concurrency and crashes: a segment is created create-only at the next sequence
number; a drainer that loses the race (or finds the segment of a crashed predecessor) reads it,
deletes the outbox entries it contains and moves the head on. An event can therefore never be
in two segments, and no committed event is ever lost (it stays in the outbox until a segment
holding it exists).
"""

from __future__ import annotations

from servo.control.common import LEDGER_HEADS
from servo.control.uow import OUTBOX
from servo.core.errors import AlreadyExists
from servo.core.events import causal_order
from servo.ports import Doc, Ports, StateTxn

EVENTS_STREAM = "events"


def drain_outbox(
    ports: Ports, *, stream: str = EVENTS_STREAM, batch: int = 500, max_segments: int = 100
) -> int:
    """Drain up to ``max_segments`` segments; returns the number of events moved."""
    moved = 0
    for _ in range(max_segments):
        rows = ports.state.query(OUTBOX, order_by="created_ms", limit=batch)
        if not rows:
            break
        head = ports.state.get(LEDGER_HEADS, stream)
        seq = int(head["next_seq"]) if head else 0
        events: list[Doc] = [e for _, doc in rows for e in doc["events"]]
        try:
            ports.ledger.append(stream, seq, events)
            ports.crash("drain.after_segment")
            contained = {str(doc_id) for doc_id, _ in rows}
        except AlreadyExists:
            seg = ports.ledger.read(stream, after_seq=seq - 1, limit=1)
            ids = {str(e["id"]) for s in seg for e in s.events}
            # An outbox doc's id is the id of its first event.
            contained = {
                doc_id
                for doc_id, doc in rows
                if doc["events"] and str(doc["events"][0]["id"]) in ids
            }

        def commit(txn: StateTxn, seq: int = seq, contained: set[str] = contained) -> bool:
            cur = txn.get(LEDGER_HEADS, stream)
            cur_seq = int(cur["next_seq"]) if cur else 0
            if cur_seq != seq:
                return False
            txn.set(LEDGER_HEADS, stream, {"next_seq": seq + 1})
            # Deletes are idempotent: no need to read which outbox documents still exist.
            for doc_id in sorted(contained):
                txn.delete(OUTBOX, doc_id)
            return True

        if ports.state.transact(commit):
            moved += sum(len(doc["events"]) for doc_id, doc in rows if doc_id in contained)
    return moved


def read_events(
    ports: Ports, *, run_id: str | None = None, stream: str = EVENTS_STREAM
) -> list[Doc]:
    """Every recorded event (ledger segments plus not yet drained outbox batches), optionally
    of one run, in causal order without duplicates."""
    out: list[Doc] = []
    for seg in ports.ledger.read(stream):
        out.extend(e for e in seg.events if run_id is None or e.get("run_id") == run_id)
    for _, doc in ports.state.query(OUTBOX, order_by="created_ms"):
        out.extend(e for e in doc["events"] if run_id is None or e.get("run_id") == run_id)
    return causal_order(out)
