"""Event-driven latency: from an event to the run it starts, on both backends.

    .venv/bin/python bench/event_latency.py                  # 30 events of each kind
    .venv/bin/python bench/event_latency.py --events 100 --json out.json

One project, two sensors — a GCS object sensor (partition key from the object name by a
regular expression) and a Pub/Sub message sensor (attribute filter, partition from an
attribute) — measured the same way on

* **serverless** (:class:`servo.testing.serverless.ServerlessStack`, on the emulators): an
  object written to a fake-gcs-server that publishes its notification to the Pub/Sub
  emulator, which pushes it to the ``sensor_evaluate`` function; a message published to the
  emulator and pushed the same way. The GCS latency starts at the object's finalize time
  (its ``timeCreated``), the Pub/Sub one when the publish call starts;
* **embedded** (``servo dev``'s machinery, as in ``bench/automation.py``): the same
  notification or message published on the embedded bus, handled by the local automation.

Latency ends at the run's ``created_ms`` (written by the trigger service in the transaction
that creates the run), so how often the benchmark looks for the run does not change the
figure. Events are sent one at a time after a warm-up (the first requests build each
process's clients), and each event's run finishes before the next event is sent: this is the
latency of one event, not of a burst. (Runs created while earlier ones still execute contend
with them for Firestore documents, and the Firestore emulator resolves such contention only
by its 2 s lock timeout, which production Firestore does not.) p50 and p95 are printed
against the target (p50 <= 1 s). Everything, emulators included, shares this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from automation import percentile
from servo.control.automation_common import run_key_doc_id
from servo.control.common import RUN_KEYS, RUNS
from servo.ports import Doc, Ports
from servo.testing.serverless import ServerlessStack, StackOptions

TARGET_P50_MS = 1000.0
# Fresh names: runs sharing the emulators (a test session) never see each other's events.
_SUFFIX = secrets.token_hex(3)
BUCKET = f"bench-landing-{_SUFFIX}"
TOPIC = f"bench-orders-{_SUFFIX}"

PROJECT = """
from servo import DailyPartitionsDefinition, Definitions, asset, gcs_sensor, pubsub_sensor

daily = DailyPartitionsDefinition(start_date="2000-01-01")


@asset(partitions=daily)
def orders(context):
    return context.partition_key


landing = gcs_sensor(
    name="landing",
    bucket="{bucket}",
    prefix="landing/",
    partition_key=r"landing/(\\d{{4}}-\\d{{2}}-\\d{{2}})/",
    target="orders",
)
messages = pubsub_sensor(
    name="messages",
    topic="{topic}",
    target="orders",
    attributes={{"kind": "order"}},
    partition_attribute="day",
)

defs = Definitions(assets=[orders], sensors=[landing, messages])
"""


def write_project(root: Path) -> Path:
    """The benchmark's project under ``root``."""
    package = root / "benchevents"
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "benchevents"\n\n[tool.servo]\nmodule = "benchevents.defs"\n'
    )
    (package / "__init__.py").write_text("")
    (package / "defs.py").write_text(textwrap.dedent(PROJECT).format(bucket=BUCKET, topic=TOPIC))
    return root


def days(first: int, count: int) -> list[str]:
    """``count`` distinct partition keys (days) from day ``first`` after 2001-01-01."""
    start = date(2001, 1, 1)
    return [(start + timedelta(days=first + i)).isoformat() for i in range(count)]


TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def wait_run(ports: Ports, run_key: str, poll_s: float, timeout_s: float = 120.0) -> Doc:
    """Poll until the run of ``run_key`` has ended; its document."""
    deadline = time.monotonic() + timeout_s
    key_id = run_key_doc_id(run_key)
    while True:
        doc = ports.state.get(RUN_KEYS, key_id)
        run: Doc | None = ports.state.get(RUNS, doc["run_id"]) if doc else None
        if run is not None and run["state"] in TERMINAL:
            if run["state"] != "SUCCEEDED":
                raise RuntimeError(f"the run of {run_key} ended {run['state']}")
            return run
        if time.monotonic() > deadline:
            state = run["state"] if run else "not created"
            raise TimeoutError(f"the run of {run_key} is {state} after {timeout_s:g} s")
        time.sleep(poll_s)


Send = Callable[[str], tuple[float, str]]
"""Send the event of one partition key; (when it happened, wall ms; the run_key it makes)."""


def measure(ports: Ports, send: Send, keys: Sequence[str], poll_s: float) -> list[float]:
    """Send one event per key, one at a time; each one's latency in milliseconds."""
    latencies: list[float] = []
    for key in keys:
        sent_ms, run_key = send(key)
        run = wait_run(ports, run_key, poll_s)
        # created_ms is whole milliseconds (floored): add half of one on average.
        latencies.append(max(0.0, float(run["created_ms"]) + 0.5 - sent_ms))
    return latencies


def summary(latencies: Sequence[float]) -> dict[str, float]:
    """p50, p95 and max of ``latencies`` (ms), with their count."""
    return {
        "events": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(percentile(list(latencies), 0.95), 1),
        "max_ms": round(max(latencies), 1),
    }


# ---------------------------------------------------------------------------------------------
# Serverless


def bench_serverless(work: Path, events: int, warmup: int) -> dict[str, Any]:
    """The latencies through the functions on the emulators."""
    root = write_project(work / "project")
    options = StackOptions(sweep_interval_s=5.0, tick_every_minute=False)
    began = time.monotonic()
    with ServerlessStack(work / "stack", options) as stack:
        started_s = time.monotonic() - began
        stack.deploy(root)
        stack.wire_event_sensors()
        ports = stack.ports()

        def upload(key: str) -> tuple[float, str]:
            name = f"landing/{key}/orders.csv"
            blob = stack.event_storage_client(BUCKET).bucket(BUCKET).blob(name)
            blob.upload_from_string(b"id,amount\n1,10\n")
            finalized_ms = blob.time_created.timestamp() * 1000
            return finalized_ms, f"gcs:landing:{BUCKET}/{name}#{blob.generation}"

        def publish(key: str) -> tuple[float, str]:
            sent_ms = time.time() * 1000
            message_id = stack.publish(TOPIC, b"{}", {"kind": "order", "day": key})
            return sent_ms, f"pubsub:messages:{message_id}"

        measure(ports, upload, days(0, warmup), 0.05)
        gcs = measure(ports, upload, days(warmup, events), 0.05)
        measure(ports, publish, days(0, warmup), 0.05)
        pubsub = measure(ports, publish, days(warmup, events), 0.05)
    return {"stack_start_s": round(started_s, 2), "gcs": summary(gcs), "pubsub": summary(pubsub)}


# ---------------------------------------------------------------------------------------------
# Embedded


def bench_embedded(work: Path, events: int, warmup: int) -> dict[str, Any]:
    """The latencies on the embedded backend with ``servo dev``'s machinery (the local
    control plane and the local automation, as ``bench/automation.py`` measures them)."""
    from servo.cli.workspace import deploy_project, open_workspace
    from servo.local import LocalControlPlane, LocalOptions
    from servo.local_automation import LocalAutomation
    from servo.project import find_project
    from servo.sdk.event_sensors import default_gcs_topic, gcs_object_notification

    root = write_project(work / "embedded")
    ws = open_workspace(find_project(root))
    deploy_project(ws, "user:bench")
    ports = ws.ports
    counter = iter(range(1, 1_000_000))

    def notify(key: str) -> tuple[float, str]:
        name = f"landing/{key}/orders.csv"
        data, attributes = gcs_object_notification(BUCKET, name, 1)
        sent_ms = time.time() * 1000
        ports.bus.publish(default_gcs_topic(BUCKET), data, attributes)
        return sent_ms, f"gcs:landing:{BUCKET}/{name}#1"

    def publish(key: str) -> tuple[float, str]:
        sent_ms = time.time() * 1000
        message_id = ports.bus.publish(TOPIC, {"n": next(counter)}, {"kind": "order", "day": key})
        return sent_ms, f"pubsub:messages:{message_id}"

    plane = LocalControlPlane(ports, ws.home, LocalOptions(workers=2))
    with plane, LocalAutomation(ports, ws.home) as automation:
        automation.refresh_subscriptions()
        measure(ports, notify, days(0, warmup), 0.005)
        gcs = measure(ports, notify, days(warmup, events), 0.005)
        measure(ports, publish, days(0, warmup), 0.005)
        pubsub = measure(ports, publish, days(warmup, events), 0.005)
    return {"gcs": summary(gcs), "pubsub": summary(pubsub)}


# ---------------------------------------------------------------------------------------------


def bench_event_latency(work: Path, events: int = 30, warmup: int = 3) -> dict[str, Any]:
    """Every figure (see the module docstring)."""
    embedded = bench_embedded(work, events, warmup)
    serverless = bench_serverless(work, events, warmup)
    return {"events": events, "embedded": embedded, "serverless": serverless}


def rows(results: dict[str, Any]) -> list[tuple[str, str, float, float, float | None]]:
    """``(backend, event, p50 ms, p95 ms, target p50 ms)`` lines of the table."""
    labels = {
        ("serverless", "gcs"): "object finalize -> run created",
        ("serverless", "pubsub"): "message publish -> run created",
        ("embedded", "gcs"): "notification on the bus -> run created",
        ("embedded", "pubsub"): "message on the bus -> run created",
    }
    return [
        (backend, labels[(backend, kind)], r["p50_ms"], r["p95_ms"], TARGET_P50_MS)
        for backend in ("serverless", "embedded")
        for kind in ("gcs", "pubsub")
        for r in [results[backend][kind]]
    ]


def _ms(value: float) -> str:
    return f"{value:>6.1f} ms" if value < 10 else f"{value:>6.0f} ms"


def table(results: dict[str, Any]) -> str:
    """The results as a small text table."""
    lines = [
        f"{'backend':<11} {'event':<40} {'p50':>9} {'p95':>9}  target p50",
        "-" * 84,
    ]
    for backend, label, p50, p95, goal in rows(results):
        verdict = "" if goal is None else ("ok" if p50 <= goal else "MISSED")
        lines.append(f"{backend:<11} {label:<40} {_ms(p50)} {_ms(p95)}  <= {goal:g} ms {verdict}")
    lines.append(f"({results['events']} events of each kind, one at a time, after a warm-up)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=30, help="events of each kind")
    parser.add_argument("--warmup", type=int, default=3, help="events sent before measuring")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.events < 1 or args.warmup < 0:
        parser.error("--events must be at least 1 and --warmup at least 0")
    with tempfile.TemporaryDirectory(prefix="servo-bench-events-") as tmp:
        results = bench_event_latency(Path(tmp), args.events, args.warmup)
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
