"""Building the GCP ports from a small configuration, on Google Cloud or on the emulators.

The clients honour the usual emulator variables: ``FIRESTORE_EMULATOR_HOST`` (``host:port``),
``PUBSUB_EMULATOR_HOST`` (``host:port``), ``STORAGE_EMULATOR_HOST`` (``http://host:port``) and,
for Servo's Cloud Tasks fake, ``SERVO_TASKS_EMULATOR_HOST`` (``host:port``). A client pointed
at an emulator uses anonymous credentials, so nothing looks for Application Default
Credentials or probes the GCE metadata server; tools that start the emulators also export
``NO_GCE_CHECK=true`` for any other library in the process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, tasks_v2
from google.cloud.pubsub_v1 import PublisherClient
from google.cloud.storage import Client as StorageClient
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from servo.adapters.embedded.clock import SystemClock, UlidIds
from servo.adapters.gcp.cloud_tasks import CloudTasksQueue
from servo.adapters.gcp.costs import OperationCounter
from servo.adapters.gcp.firestore_state import FirestoreStateStore
from servo.adapters.gcp.gcs import GcsBlobs, GcsLedger
from servo.adapters.gcp.pubsub import PubSubBus
from servo.core.errors import ServoError
from servo.ports import Ports

FIRESTORE_EMULATOR_HOST = "FIRESTORE_EMULATOR_HOST"
PUBSUB_EMULATOR_HOST = "PUBSUB_EMULATOR_HOST"
STORAGE_EMULATOR_HOST = "STORAGE_EMULATOR_HOST"
TASKS_EMULATOR_HOST = "SERVO_TASKS_EMULATOR_HOST"

_SCOPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")


@dataclass(frozen=True)
class GcpConfig:
    """Where a control plane's state lives on Google Cloud.

    ``tasks_queue_path`` is the full Cloud Tasks queue name and ``task_targets`` maps each
    queue topic to the URL of its handler. Ledger segments and blobs of a tenant and workspace
    go under ``gs://{bucket}/{prefix}/tenants/{tenant}/workspaces/{workspace}/``.
    """

    project: str
    bucket: str
    tasks_queue_path: str
    task_targets: Mapping[str, str] = field(default_factory=dict)
    database: str = "(default)"
    prefix: str = ""
    tenant: str = "default"
    workspace: str = "default"
    service_account_email: str | None = None
    oidc_audience: str | None = None
    topic_prefix: str = ""
    dispatch_deadline_s: float = 600.0

    def storage_prefix(self) -> str:
        """The object name prefix of this tenant and workspace (no trailing ``/``)."""
        parts = [self.prefix.strip("/")] if self.prefix.strip("/") else []
        return "/".join([*parts, "tenants", self.tenant, "workspaces", self.workspace])


def _anonymous() -> Any:
    return AnonymousCredentials()  # type: ignore[no-untyped-call]


def firestore_client(project: str, database: str = "(default)") -> Any:
    """A Firestore client (on the emulator when ``FIRESTORE_EMULATOR_HOST`` is set)."""
    if os.environ.get(FIRESTORE_EMULATOR_HOST):
        return firestore.Client(project=project, database=database, credentials=_anonymous())
    return firestore.Client(project=project, database=database)


def storage_client(project: str) -> Any:
    """A Cloud Storage client (on the emulator when ``STORAGE_EMULATOR_HOST`` is set)."""
    if os.environ.get(STORAGE_EMULATOR_HOST):
        return StorageClient(project=project, credentials=_anonymous())
    return StorageClient(project=project)


def publisher_client() -> Any:
    """A Pub/Sub publisher (on the emulator when ``PUBSUB_EMULATOR_HOST`` is set)."""
    return PublisherClient()


def tasks_client() -> Any:
    """A Cloud Tasks client (on Servo's fake when ``SERVO_TASKS_EMULATOR_HOST`` is set)."""
    host = os.environ.get(TASKS_EMULATOR_HOST)
    if host:
        transport = CloudTasksGrpcTransport(channel=grpc.insecure_channel(host))
        return tasks_v2.CloudTasksClient(transport=transport)
    return tasks_v2.CloudTasksClient()


def open_gcp(config: GcpConfig, *, counter: OperationCounter | None = None) -> Ports:
    """The ports of one tenant and workspace on Google Cloud (or the emulators).

    All adapters share ``counter`` (a new one if not given); it is also the ``counter``
    attribute of each adapter and ``ports.settings["operation_counter"]``.
    """
    for label, value in (("tenant", config.tenant), ("workspace", config.workspace)):
        if not isinstance(value, str) or not _SCOPE_NAME.match(value):
            raise ServoError(
                f"invalid {label} name {value!r}: use 1-63 letters, digits, '_' or '-', "
                "starting with a letter or digit"
            )
    if not config.project or not config.bucket:
        raise ServoError("GcpConfig needs a project and a bucket")
    counter = counter if counter is not None else OperationCounter()
    clock = SystemClock()
    bucket = storage_client(config.project).bucket(config.bucket)
    prefix = config.storage_prefix()
    return Ports(
        state=FirestoreStateStore(
            firestore_client(config.project, config.database),
            config.tenant,
            config.workspace,
            counter=counter,
        ),
        ledger=GcsLedger(bucket, prefix, counter=counter),
        blobs=GcsBlobs(bucket, prefix, counter=counter),
        queue=CloudTasksQueue(
            tasks_client(),
            config.tasks_queue_path,
            config.task_targets,
            config.service_account_email,
            oidc_audience=config.oidc_audience,
            dispatch_deadline_s=config.dispatch_deadline_s,
            clock=clock,
            counter=counter,
        ),
        bus=PubSubBus(
            publisher_client(), config.project, topic_prefix=config.topic_prefix, counter=counter
        ),
        clock=clock,
        ids=UlidIds(),
        tenant=config.tenant,
        workspace=config.workspace,
        settings={"backend": "gcp", "project": config.project, "operation_counter": counter},
    )
