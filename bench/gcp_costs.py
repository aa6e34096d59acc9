"""What a task costs on Google Cloud: billable operations per task, by kind, service and
collection, the most-written document, and the list price per million tasks.

    .venv/bin/python bench/gcp_costs.py                      # chain of 100, fan-out 1 -> 1000 -> 1
    .venv/bin/python bench/gcp_costs.py --chain 20 --fanout 50 --json out.json

The control plane runs on the emulators (Firestore, fake-gcs-server, Servo's Cloud Tasks fake,
started here unless their variables are set) with the real GCP adapters. Every function runs
in this process behind one HTTP server that Cloud Tasks delivers to, each with its own ports,
so the operations of each service are counted apart: ``trigger`` (called once per run),
``dispatch`` (dispatch, retry and finalize deliveries), ``worker`` (execute deliveries: the
attempt, its code, inputs, output and log), ``callback`` (the worker's reports), ``sweep``
(the safety net and the outbox drain, once after the run) and ``compaction`` (once after the
run). Each state store is wrapped to count reads, writes and deletes per collection and writes
per document.

Billable operations per task = every counted operation of every service, divided by the
number of tasks: Firestore document reads, writes and deletes; Cloud Storage class A and B
operations; Cloud Tasks operations (task creations and delivery attempts); function and Cloud
Run invocations. Compute time (CPU and memory seconds) is not counted.

List prices used (USD):
* Firestore Standard, multi-region nam5: $0.06 per 100,000 reads, $0.18 per 100,000 writes,
  $0.02 per 100,000 deletes;
* Cloud Storage Standard, regional: $0.005 per 1,000 class A and $0.0004 per 1,000 class B
  operations;
* Cloud Tasks: $0.40 per million billable operations (API calls and delivery attempts);
* Cloud Run functions and Cloud Run services: $0.40 per million invocations (requests);
* Pub/Sub: $40 per TiB (not used by a run).
Free tiers are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from projects import ProjectShape, chain, fan_out, write_servo
from servo.adapters.gcp import GcsBlobs, OperationCounter, storage_client
from servo.adapters.gcp.provision import ensure_bucket, ensure_queue
from servo.api.functions import Incoming, handle
from servo.cli.workspace import project_record
from servo.cloud import CloudConfig, open_cloud
from servo.control.common import RUNS
from servo.control.deploy import deploy
from servo.ports import Doc, Ports, StateStore, StateTxn, Where
from servo.project import build_bundle, find_project, load_and_build
from servo.testing.emulators import COMMON_ENV, ENV_VARIABLES, Emulators, free_port
from servo.worker.code import CodeCache
from servo.worker.envelope import TaskEnvelope
from servo.worker.http_channel import HttpControlChannel
from servo.worker.runtime import execute

T = TypeVar("T")

PROJECT = "demo-servo"
BUCKET = "servo-costs"
SERVICES = ("trigger", "dispatch", "worker", "callback", "sweep", "compaction")
INVOCATION = "function.invocation"
DELIVERY = "tasks.delivery"
RETRIED = "answered.5xx"  # not billed by itself: the retry it causes is

PRICES_PER_MILLION = {
    "firestore.read": 0.60,
    "firestore.write": 1.80,
    "firestore.delete": 0.20,
    "gcs.class_a": 5.00,
    "gcs.class_b": 0.40,
    "tasks.operation": 0.40,
    DELIVERY: 0.40,
    INVOCATION: 0.40,
    "pubsub.message": 0.0,  # billed by volume: 1 KB minimum x $40/TiB is $0.04 per million
}
"""USD per million operations of each kind (see the module docstring)."""

OPERATION_KINDS = tuple(PRICES_PER_MILLION)


# ---------------------------------------------------------------------------------------------
# Counting per collection and per document


@dataclass
class Tally:
    """Reads, writes and deletes per collection, and committed writes per document."""

    reads: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    deletes: Counter[str] = field(default_factory=Counter)
    per_document: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, collection: str, n: int) -> None:
        with self.lock:
            self.reads[collection] += n

    def commit(self, writes: Sequence[tuple[str, str, str]]) -> None:
        with self.lock:
            for kind, collection, doc_id in writes:
                if kind == "delete":
                    self.deletes[collection] += 1
                else:
                    self.writes[collection] += 1
                    self.per_document[f"{collection}/{doc_id}"] += 1


class _CountingTxn:
    def __init__(self, inner: StateTxn, tally: Tally) -> None:
        self.inner = inner
        self.tally = tally
        self.writes: list[tuple[str, str, str]] = []

    def get(self, collection: str, doc_id: str) -> Doc | None:
        self.tally.read(collection, 1)
        return self.inner.get(collection, doc_id)

    def get_many(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Doc]:
        self.tally.read(collection, len(set(doc_ids)))
        return self.inner.get_many(collection, doc_ids)

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        rows = self.inner.query(collection, where, order_by=order_by, limit=limit)
        self.tally.read(collection, max(1, len(rows)))
        return rows

    def create(self, collection: str, doc_id: str, data: Doc) -> None:
        self.writes.append(("create", collection, doc_id))
        self.inner.create(collection, doc_id, data)

    def set(self, collection: str, doc_id: str, data: Doc) -> None:
        self.writes.append(("set", collection, doc_id))
        self.inner.set(collection, doc_id, data)

    def update(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> None:
        self.writes.append(("update", collection, doc_id))
        self.inner.update(collection, doc_id, fields)

    def delete(self, collection: str, doc_id: str) -> None:
        self.writes.append(("delete", collection, doc_id))
        self.inner.delete(collection, doc_id)


class CountingState:
    """A state store that tallies what its transactions and reads touch."""

    def __init__(self, inner: StateStore, tally: Tally) -> None:
        self.inner = inner
        self.tally = tally

    def transact(self, fn: Callable[[StateTxn], T], *, max_attempts: int = 8) -> T:
        last: list[_CountingTxn] = []

        def body(txn: StateTxn) -> T:
            counting = _CountingTxn(txn, self.tally)
            last[:] = [counting]
            return fn(counting)

        result = self.inner.transact(body, max_attempts=max_attempts)
        if last:
            self.tally.commit(last[0].writes)
        return result

    def get(self, collection: str, doc_id: str) -> Doc | None:
        self.tally.read(collection, 1)
        return self.inner.get(collection, doc_id)

    def query(
        self,
        collection: str,
        where: Sequence[Where] = (),
        *,
        order_by: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[str, Doc]]:
        rows = self.inner.query(collection, where, order_by=order_by, limit=limit)
        self.tally.read(collection, max(1, len(rows)))
        return rows


# ---------------------------------------------------------------------------------------------
# The control plane in this process


@dataclass
class Service:
    name: str
    counter: OperationCounter
    tally: Tally
    ports: Ports | None = None


class Cloud:
    """Every function of one workspace behind one HTTP server in this process."""

    def __init__(self, workspace: str, work: Path, *, execute_concurrency: int = 16) -> None:
        self.port = free_port()
        base = f"http://127.0.0.1:{self.port}"
        queues = f"projects/{PROJECT}/locations/local/queues"
        self.env = {
            "SERVO_GCP_PROJECT": PROJECT,
            "SERVO_BUCKET": BUCKET,
            "SERVO_WORKSPACE": workspace,
            "SERVO_TASKS_QUEUE": f"{queues}/costs-control-{workspace}",
            "SERVO_EXECUTE_QUEUE": f"{queues}/costs-execute-{workspace}",
            "SERVO_TARGET_DISPATCH": f"{base}/dispatch",
            "SERVO_TARGET_EXECUTE": f"{base}/execute",
            "SERVO_CALLBACK_SECRET": "costs",
            "SERVO_DISPATCH_DEADLINE_S": "60",
        }
        ensure_bucket(PROJECT, BUCKET)
        ensure_queue(self.env["SERVO_TASKS_QUEUE"], max_backoff_s=1.0)
        ensure_queue(
            self.env["SERVO_EXECUTE_QUEUE"],
            max_concurrent_dispatches=execute_concurrency,
            max_backoff_s=1.0,
        )
        config = CloudConfig.from_env(self.env)
        self.services: dict[str, Service] = {}
        for name in SERVICES:
            counter = OperationCounter()
            service = Service(name, counter, Tally())
            if name != "worker":
                ports = open_cloud(config, counter=counter)
                ports.state = CountingState(ports.state, service.tally)
                service.ports = ports
            self.services[name] = service
        self.deploy_ports = open_cloud(config)
        worker = self.services["worker"]
        bucket = storage_client(PROJECT).bucket(BUCKET)
        prefix = f"tenants/default/workspaces/{workspace}"
        self.worker_blobs = GcsBlobs(bucket, prefix, counter=worker.counter)
        self.code = CodeCache(self.worker_blobs, work / "code")
        self.channel = HttpControlChannel(f"{base}/callback")
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                name = _service_for(self.path.strip("/"))
                service = cloud.services[name]
                service.counter.add(INVOCATION)
                if self.headers.get("X-CloudTasks-TaskName"):
                    service.counter.add(DELIVERY)
                if name == "worker":
                    status, answer = cloud.execute(body)
                else:
                    assert service.ports is not None
                    status, answer = handle(name, Incoming("POST", body=body), service.ports)
                if status >= 500:
                    service.counter.add(RETRIED)
                raw = json.dumps(answer, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        return Handler

    def execute(self, body: bytes) -> tuple[int, Any]:
        message = json.loads(body)
        envelope = TaskEnvelope.model_validate(message["payload"])
        outcome = execute(
            envelope,
            self.channel,
            self.worker_blobs,
            lambda: self.code.definitions(envelope.code_version),
        )
        return 200, {"status": outcome.status}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.channel.close()


# ``/execute`` is served by the worker service.
SERVICE_OF_PATH = {"execute": "worker"}


def _service_for(path: str) -> str:
    return SERVICE_OF_PATH.get(path, path)


# ---------------------------------------------------------------------------------------------
# One scenario


def run_scenario(name: str, shape: ProjectShape, work: Path) -> dict[str, Any]:
    """Deploy ``shape``, run all of it through the functions, and account for every operation."""
    root = write_servo(shape, work / f"project-{name}")
    cloud = Cloud(name.replace("_", "-"), work / name)
    try:
        ref = find_project(root)
        _, manifest = load_and_build(ref)
        deploy(cloud.deploy_ports, manifest, build_bundle(ref.root), project_record(ref))
        for service in cloud.services.values():
            service.counter.reset()
        began = time.monotonic()
        trigger = cloud.services["trigger"]
        trigger.counter.add(INVOCATION)
        assert trigger.ports is not None
        status, answer = handle(
            "trigger",
            Incoming("POST", body=json.dumps({"selection": "*"}).encode()),
            trigger.ports,
        )
        if status != 201:
            raise RuntimeError(f"trigger answered {status}: {answer}")
        run_id = str(answer["run_id"])
        tasks = int(answer["task_count"])
        run = _wait(cloud.deploy_ports, run_id, timeout_s=1800)
        wall = time.monotonic() - began
        if run["state"] != "SUCCEEDED":
            raise RuntimeError(f"the {name} run ended {run['state']}: {run.get('reason')}")
        # What Cloud Scheduler would do next: sweep (and drain the outbox), then compact.
        for scheduled in ("sweep", "compaction"):
            service = cloud.services[scheduled]
            service.counter.add(INVOCATION)
            assert service.ports is not None
            status, answer = handle(scheduled, Incoming("POST"), service.ports)
            if status != 200:
                raise RuntimeError(f"{scheduled} answered {status}: {answer}")
        return _account(name, tasks, wall, cloud)
    finally:
        cloud.close()


def _wait(ports: Ports, run_id: str, timeout_s: float) -> Doc:
    deadline = time.monotonic() + timeout_s
    while True:
        run = ports.state.get(RUNS, run_id)
        if run is not None and run["state"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not finish within {timeout_s} s")
        time.sleep(0.25)


def _account(name: str, tasks: int, wall: float, cloud: Cloud) -> dict[str, Any]:
    by_service: dict[str, dict[str, int]] = {}
    total: Counter[str] = Counter()
    collections: dict[str, Counter[str]] = {}
    documents: Counter[str] = Counter()
    retried: dict[str, int] = {}
    for service in cloud.services.values():
        snapshot = service.counter.snapshot()
        if snapshot.get(RETRIED):
            retried[service.name] = snapshot[RETRIED]
        counts = {k: v for k, v in snapshot.items() if k in OPERATION_KINDS}
        by_service[service.name] = counts
        total.update(counts)
        tally = service.tally
        for kind, counter in (
            ("read", tally.reads),
            ("write", tally.writes),
            ("delete", tally.deletes),
        ):
            for collection, n in counter.items():
                collections.setdefault(collection, Counter())[f"{kind}:{service.name}"] += n
        documents.update(tally.per_document)
    operations = sum(total.values())
    cost = {k: total[k] * PRICES_PER_MILLION[k] / tasks for k in total}  # $ per million tasks
    hottest = documents.most_common(5)
    return {
        "scenario": name,
        "tasks": tasks,
        "wall_s": round(wall, 2),
        "operations_per_task": round(operations / tasks, 2),
        "per_task_by_kind": {k: round(v / tasks, 3) for k, v in sorted(total.items())},
        "per_task_by_service": {
            s: round(sum(c.values()) / tasks, 3) for s, c in by_service.items()
        },
        "by_service": by_service,
        "firestore_by_collection": {
            c: dict(sorted(counter.items())) for c, counter in sorted(collections.items())
        },
        "hottest_documents": [{"document": d, "writes": n} for d, n in hottest],
        "answered_5xx": retried,
        "usd_per_million_tasks": round(sum(cost.values()), 2),
        "usd_per_million_tasks_by_kind": {k: round(v, 3) for k, v in sorted(cost.items())},
    }


# ---------------------------------------------------------------------------------------------
# Report


def render(result: dict[str, Any], target_ops: float, target_hot: int | None) -> str:
    lines = [
        f"== {result['scenario']}: {result['tasks']} tasks, {result['wall_s']} s on the emulators",
        f"billable operations per task: {result['operations_per_task']}"
        f"  (target <= {target_ops:g}: "
        f"{'ok' if result['operations_per_task'] <= target_ops else 'MISSED'})",
        "  by kind:    " + ", ".join(f"{k} {v:g}" for k, v in result["per_task_by_kind"].items()),
        "  by service: "
        + ", ".join(f"{k} {v:g}" for k, v in result["per_task_by_service"].items() if v),
        "  Firestore by collection (total, service):",
    ]
    for collection, counts in result["firestore_by_collection"].items():
        detail = ", ".join(f"{k} {v}" for k, v in counts.items())
        lines.append(f"    {collection:<18} {detail}")
    hot = result["hottest_documents"]
    if hot:
        top = hot[0]
        verdict = ""
        if target_hot is not None:
            verdict = (
                f"  (target <= {target_hot}: {'ok' if top['writes'] <= target_hot else 'MISSED'})"
            )
        lines.append(
            f"most-written document: {top['document']} with {top['writes']} writes{verdict}"
        )
        lines.append("  next: " + ", ".join(f"{d['document']} {d['writes']}" for d in hot[1:]))
    if result["answered_5xx"]:
        lines.append(
            "answers worth a retry (5xx, mostly contention): "
            + ", ".join(f"{k} {v}" for k, v in result["answered_5xx"].items())
        )
    lines.append(
        f"list price per million tasks: ${result['usd_per_million_tasks']:,.2f}  ("
        + ", ".join(f"{k} ${v:,.2f}" for k, v in result["usd_per_million_tasks_by_kind"].items())
        + ")"
    )
    return "\n".join(lines)


@contextlib.contextmanager
def emulators(work: Path) -> Any:
    """Use the emulators named by the environment, or start them."""
    if all(os.environ.get(v) for v in ENV_VARIABLES.values()):
        yield
        return
    with Emulators(work / "emulators", project=PROJECT) as pool:
        running = pool.start()
        saved = dict(os.environ)
        os.environ.update(COMMON_ENV)
        for record in running.values():
            os.environ.update(record.env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def bench_gcp_costs(work: Path, chain_length: int, fan_width: int) -> dict[str, Any]:
    """Both scenarios (a size of 0 skips one), for ``bench/run.py``: ``{"prices_per_million",
    "results": [...]}`` with the fields of :func:`run_scenario`'s results."""
    results = []
    # The functions log every retried answer; the results count them instead.
    logging.getLogger("servo.functions").setLevel(logging.ERROR)
    with emulators(work):
        if chain_length:
            results.append(run_scenario(f"chain{chain_length}", chain(chain_length), work))
        if fan_width:
            results.append(run_scenario(f"fanout{fan_width}", fan_out(fan_width), work))
    return {"prices_per_million": PRICES_PER_MILLION, "results": results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", type=int, default=100, help="length of the chain (0: skip)")
    parser.add_argument("--fanout", type=int, default=1000, help="fan-out width (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--target-ops", type=float, default=10.0)
    parser.add_argument("--target-hot", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="servo-costs-") as tmp:
        data = bench_gcp_costs(Path(tmp), args.chain, args.fanout)
    for result in data["results"]:
        wide = result["scenario"].startswith("fanout") and result["tasks"] >= 1000
        print(render(result, args.target_ops, args.target_hot if wide else None), flush=True)
    print(
        "prices (USD per million): "
        + ", ".join(f"{k} {v:g}" for k, v in PRICES_PER_MILLION.items())
        + "; compute time not included"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
