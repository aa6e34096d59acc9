"""The worker service (worker_image/entrypoint.py) as a process: execute deliveries and
evaluation requests against fake-gcs-server, reporting to a stand-in callback function.

No container engine runs here, so the image's contents are checked statically and its entry
point is tested as the process the image would run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverless_support import effects_of, write_project

from servo.adapters.gcp import GcsBlobs, storage_client
from servo.adapters.gcp.provision import ensure_bucket
from servo.project import build_bundle, code_version_of, find_project
from servo.testing.emulators import free_port
from servo.testing.serverless import checkout_root
from servo.worker.code import bundle_path, project_path

pytestmark = pytest.mark.emulators

PROJECT = "demo-servo"
BUCKET = "servo-worker-tests"
PREFIX = "worker-tests"


class CallbackStub:
    """Stands in for the callback function: records reports, answers with ``policy``."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.policy: Callable[[dict[str, Any]], tuple[int, Any]] = lambda r: (
            200,
            {"accepted": True, "cancel": False},
        )
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                report = json.loads(raw)
                owner.reports.append(report)
                status, body = owner.policy(report)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> list[str]:
        return [r["kind"] for r in self.reports if r["kind"] != "heartbeat"]


@pytest.fixture(scope="module")
def deployed(storage_emulator: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A code version of the test project, stored in the bucket as `servo deploy` would."""
    base = tmp_path_factory.mktemp("worker-project")
    root = write_project(base / "project", base / "effects")
    ensure_bucket(PROJECT, BUCKET)
    blobs = GcsBlobs(
        storage_client(PROJECT).bucket(BUCKET), f"{PREFIX}/tenants/default/workspaces/default"
    )
    version = code_version_of(root)
    ref = find_project(root)
    blobs.put(bundle_path(version), build_bundle(ref.root))
    blobs.put(project_path(version), json.dumps({"module": ref.module, "name": ref.name}).encode())
    return version, base / "effects"


@pytest.fixture(scope="module")
def callback() -> Iterator[CallbackStub]:
    stub = CallbackStub()
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


@pytest.fixture(scope="module")
def worker(
    storage_emulator: str, callback: CallbackStub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "SERVO_GCP_PROJECT": PROJECT,
        "SERVO_BUCKET": BUCKET,
        "SERVO_STORAGE_PREFIX": PREFIX,
        "SERVO_CALLBACK_URL": callback.url,
        "SERVO_WORKER_PROCESSES": "1",
        "SERVO_CALLBACK_ATTEMPTS": "2",
        "SERVO_WORKER_BUSY_WAIT_S": "1",
        "SERVO_CODE_CACHE": str(tmp_path_factory.mktemp("code")),
    }
    log = tmp_path_factory.mktemp("worker-log") / "worker.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(checkout_root() / "worker_image" / "entrypoint.py")],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the worker service did not start"
        time.sleep(0.1)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=10)


def envelope(version: str, asset: str, run_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "tenant": "default",
        "workspace": "default",
        "run_id": run_id,
        "task_id": f"t-{asset}",
        "attempt": 1,
        "asset": asset,
        "code_version": version,
        "output_path": f"outputs/{asset}/{run_id}.pkl",
        "log_path": f"logs/{run_id}/{asset}.log",
        "heartbeat_interval_ms": 100,
        "token": "tok",
        **fields,
    }


def execute(worker: str, body: Any) -> httpx.Response:
    return httpx.post(f"{worker}/execute", json=body, timeout=120)


@pytest.fixture(autouse=True)
def fresh(callback: CallbackStub) -> None:
    callback.reports.clear()
    callback.policy = lambda r: (200, {"accepted": True, "cancel": False})


def test_an_attempt_runs_and_is_reported(
    worker: str, callback: CallbackStub, deployed: tuple[str, Path]
) -> None:
    version, effects = deployed
    body = {"topic": "execute", "payload": envelope(version, "source", "r-ok")}
    response = execute(worker, body)
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert callback.kinds() == ["started", "completed"]
    completed = callback.reports[-1]
    assert completed["outcome"]["output"]["path"] == "outputs/source/r-ok.pkl"
    assert completed["token"] == "tok"
    blobs = GcsBlobs(
        storage_client(PROJECT).bucket(BUCKET), f"{PREFIX}/tenants/default/workspaces/default"
    )
    assert blobs.exists("outputs/source/r-ok.pkl")
    # `source` prints nothing, and a silent attempt leaves no log object (one write saved).
    assert not blobs.exists("logs/r-ok/source.log")
    assert [e["run_id"] for e in effects_of(effects, "source")] == ["r-ok"]


def test_a_stale_attempt_stops_after_started(
    worker: str, callback: CallbackStub, deployed: tuple[str, Path]
) -> None:
    callback.policy = lambda r: (200, {"accepted": False, "cancel": True, "reason": "stale"})
    response = execute(worker, envelope(deployed[0], "source", "r-stale"))
    assert response.status_code == 200
    assert callback.kinds() == ["started"]


def test_an_unreachable_callback_makes_cloud_tasks_deliver_again(
    worker: str, callback: CallbackStub, deployed: tuple[str, Path]
) -> None:
    callback.policy = lambda r: (503, {"error": "down"})
    response = execute(worker, envelope(deployed[0], "source", "r-down"))
    assert response.status_code == 503
    assert len(callback.reports) == 2  # SERVO_CALLBACK_ATTEMPTS


def test_messages_that_cannot_succeed_are_acknowledged(
    worker: str, callback: CallbackStub, deployed: tuple[str, Path]
) -> None:
    callback.policy = lambda r: (400, {"error": "the token does not authorize reports"})
    refused = execute(worker, envelope(deployed[0], "source", "r-refused"))
    assert refused.status_code == 200
    assert "does not authorize" in refused.json()["error"]
    for body in (
        {"topic": "execute", "payload": {"run_id": "r"}},
        {"topic": "dispatch", "payload": {}},
    ):
        response = execute(worker, body)
        assert response.status_code == 200
        assert response.json()["dropped"] is True
    raw = httpx.post(f"{worker}/execute", content=b"{nope", timeout=30)
    assert raw.status_code == 200
    assert raw.json()["dropped"] is True
    assert httpx.post(f"{worker}/nowhere", json={}, timeout=30).status_code == 404


def test_a_crashed_process_is_replaced(
    worker: str, callback: CallbackStub, deployed: tuple[str, Path]
) -> None:
    version, effects = deployed
    lost = execute(worker, envelope(version, "crasher", "r-crash"))
    assert lost.status_code == 200
    assert lost.json() == {"lost": True}
    assert callback.kinds() == ["started"]  # the heartbeat timeout retries the attempt
    assert len(effects_of(effects, "crasher")) == 1
    again = execute(worker, envelope(version, "source", "r-after-crash"))
    assert again.status_code == 200
    assert again.json()["status"] == "succeeded"


def test_evaluation_requests_run_in_the_worker(worker: str, deployed: tuple[str, Path]) -> None:
    request = {"kind": "sensor", "code_version": deployed[0], "name": "no_such_sensor"}
    response = httpx.post(
        f"{worker}/evaluate",
        json={"tenant": "default", "workspace": "default", "request": request},
        timeout=120,
    )
    assert response.status_code == 200
    assert "no_such_sensor" in response.json()["error"]
    bad = httpx.post(f"{worker}/evaluate", json={"request": "x"}, timeout=30)
    assert bad.status_code == 400


def test_a_misconfigured_service_exits_naming_the_problem() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVO_")}
    env.pop("GOOGLE_CLOUD_PROJECT", None)
    result = subprocess.run(
        [sys.executable, str(checkout_root() / "worker_image" / "entrypoint.py")],
        env={**env, "SERVO_WORKER_PROCESSES": "zero"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    for name in (
        "SERVO_GCP_PROJECT",
        "SERVO_BUCKET",
        "SERVO_CALLBACK_URL",
        "SERVO_WORKER_PROCESSES",
    ):
        assert name in result.stderr


def test_the_image_is_pinned_runs_as_non_root_and_installs_the_worker() -> None:
    text = (checkout_root() / "worker_image" / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert froms
    for image in froms:
        # an exact patch-level tag or a digest, never "latest" or a floating tag
        assert re.search(r"@sha256:[0-9a-f]{64}$|:\d+\.\d+\.\d+[-\w.]*$", image), image
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users
    assert users[-1] not in ("root", "0")
    assert "servo[worker" in text
    assert "entrypoint.py" in text
