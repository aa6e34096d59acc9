"""Counting the billable operations the Google Cloud adapters perform.

Every GCP adapter takes an :class:`OperationCounter` (one is created if none is given) and adds
to it as it talks to its service, so that one counter shared by all the adapters of a control
plane tells what a piece of work cost: a benchmark resets it, runs N tasks and divides.

The kinds follow how each service bills:

* Firestore: document reads, writes and deletes. A query is billed one read per document it
  returns and at least one read, even when it returns nothing; reading a missing document is
  one read.
* Cloud Storage: class A operations (uploads, listings), class B operations (downloads,
  metadata reads) and free ones (deletes).
* Cloud Tasks: API operations (creating a task). Deliveries are billed too but happen inside
  the service, so the adapter cannot see them.
* Pub/Sub: published messages, and their bytes (Pub/Sub bills throughput, with a minimum of
  1000 bytes per publish request).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

FIRESTORE_READ = "firestore.read"
FIRESTORE_WRITE = "firestore.write"
FIRESTORE_DELETE = "firestore.delete"
GCS_CLASS_A = "gcs.class_a"
GCS_CLASS_B = "gcs.class_b"
GCS_FREE = "gcs.free"
TASKS_OPERATION = "tasks.operation"
PUBSUB_MESSAGE = "pubsub.message"
PUBSUB_BYTES = "pubsub.bytes"

KINDS: tuple[str, ...] = (
    FIRESTORE_READ,
    FIRESTORE_WRITE,
    FIRESTORE_DELETE,
    GCS_CLASS_A,
    GCS_CLASS_B,
    GCS_FREE,
    TASKS_OPERATION,
    PUBSUB_MESSAGE,
    PUBSUB_BYTES,
)
"""Every kind the adapters count."""


class OperationCounter:
    """A thread-safe tally of billable operations by kind (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        """Count ``n`` operations of ``kind``."""
        if n < 0:
            raise ValueError(f"cannot count a negative number of {kind} operations: {n}")
        if n:
            with self._lock:
                self._counts[kind] += n

    def count(self, kind: str) -> int:
        """How many operations of ``kind`` were counted so far."""
        with self._lock:
            return self._counts[kind]

    def snapshot(self) -> dict[str, int]:
        """Every non-zero count, by kind."""
        with self._lock:
            return {kind: n for kind, n in sorted(self._counts.items()) if n}

    def since(self, before: Mapping[str, int]) -> dict[str, int]:
        """The counts added after ``before`` (an earlier :meth:`snapshot`)."""
        now = self.snapshot()
        return {kind: n - before.get(kind, 0) for kind, n in now.items() if n != before.get(kind)}

    def reset(self) -> None:
        """Start counting from zero again."""
        with self._lock:
            self._counts.clear()

    def __repr__(self) -> str:
        return f"OperationCounter({self.snapshot()!r})"
