"""Projections on Cloud Storage (fake-gcs-server): the pointer's compare-and-set uses object
generations, and queries read the Parquet files through pyarrow's GCS filesystem."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as google_errors

from servo.adapters.embedded import open_embedded
from servo.adapters.gcp.config import storage_client
from servo.adapters.gcp.gcs import GcsBlobs, GcsLedger
from servo.ports import Ports
from servo.projections.compaction import CompactionSettings, Compactor
from servo.projections.query import list_runs, partition_status, run_view
from servo.projections.rebuild import rebuild_projections
from servo.projections.synthetic import synthetic_runs

pytestmark = pytest.mark.emulators

BUCKET = "servo-projections"
_serial = itertools.count(1)


@pytest.fixture
def ports(storage_emulator: str, tmp_path: Path) -> Ports:
    client = storage_client("demo-servo")
    try:
        bucket = client.create_bucket(BUCKET)
    except google_errors.Conflict:
        bucket = client.bucket(BUCKET)
    prefix = f"proj-{os.getpid()}-{next(_serial)}"
    ports = open_embedded(tmp_path / "home")
    ports.ledger = GcsLedger(bucket, prefix)
    ports.blobs = GcsBlobs(bucket, prefix)
    return ports


def _record(ports: Ports, events: list[dict[str, Any]], per_segment: int = 100) -> None:
    start = ports.ledger.last_seq("events") + 1
    for i in range(0, len(events), per_segment):
        ports.ledger.append("events", start + i // per_segment, events[i : i + per_segment])


def test_compaction_and_queries_on_cloud_storage(ports: Ports) -> None:
    events = list(synthetic_runs(3, 12, seed=21))
    _record(ports, events[:150])
    settings = CompactionSettings(max_segments=1, fanout=2)
    assert Compactor(ports, settings).compact().published == 1
    _record(ports, events[150:], per_segment=10)
    result = Compactor(ports, settings).compact()
    assert result.published >= 1 and result.merges >= 1
    store = Compactor(ports).store
    assert store.local_root is None and store._gcs_name("x") is not None, "read through GCS"

    assert rebuild_projections(ports, repair=False).equal
    runs = list_runs(ports)
    assert {r["run_id"] for r in runs} == {"r00000000", "r00000001", "r00000002"}
    view = run_view(ports, "r00000001")
    assert len(view["tasks"]) == 12
    assert partition_status(ports, "a1", declared=[])


def test_a_stale_pointer_generation_is_refused(ports: Ports) -> None:
    _record(ports, list(synthetic_runs(1, 5, seed=22)))
    Compactor(ports).compact()
    store = Compactor(ports).store
    pointer, generation = store.load_pointer()
    assert pointer is not None
    pointer.epoch += 1
    assert store.publish(pointer, generation)
    assert not store.publish(pointer, generation), "the generation moved on"
