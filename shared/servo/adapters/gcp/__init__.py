"""The Google Cloud backend: Firestore state, GCS ledger and blobs, Cloud Tasks, Pub/Sub.

Every adapter implements a port of :mod:`servo.ports`, passes the same contract suites as the
embedded backend (on the Google emulators and Servo's Cloud Tasks fake), translates
``google.*`` exceptions into :mod:`servo.core.errors`, and counts its billable operations in
an :class:`OperationCounter`. :func:`open_gcp` wires them all from a :class:`GcpConfig`.

``google.*`` is imported only inside this package.
"""

from servo.adapters.gcp.cloud_tasks import CloudTasksQueue, task_id
from servo.adapters.gcp.config import (
    FIRESTORE_EMULATOR_HOST,
    PUBSUB_EMULATOR_HOST,
    STORAGE_EMULATOR_HOST,
    TASKS_EMULATOR_HOST,
    GcpConfig,
    firestore_client,
    open_gcp,
    publisher_client,
    storage_client,
    tasks_client,
)
from servo.adapters.gcp.costs import OperationCounter
from servo.adapters.gcp.firestore_state import FirestoreStateStore, FirestoreTxn
from servo.adapters.gcp.gcs import GcsBlobs, GcsLedger
from servo.adapters.gcp.pubsub import PubSubBus

__all__ = [
    "FIRESTORE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "TASKS_EMULATOR_HOST",
    "CloudTasksQueue",
    "FirestoreStateStore",
    "FirestoreTxn",
    "GcpConfig",
    "GcsBlobs",
    "GcsLedger",
    "OperationCounter",
    "PubSubBus",
    "firestore_client",
    "open_gcp",
    "publisher_client",
    "storage_client",
    "task_id",
    "tasks_client",
]
