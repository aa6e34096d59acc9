"""``bench/event_latency.py`` keeps working: a tiny run on the session's emulators. Only the
shape of the results is checked, never a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servo.testing.serverless import checkout_root

pytestmark = [pytest.mark.emulators, pytest.mark.slow]


def test_the_event_latency_benchmark_measures_both_backends(
    gcp_emulators: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "latency.json"
    bench = checkout_root() / "bench"
    command = [sys.executable, str(bench / "event_latency.py"), "--events", "2", "--warmup", "1"]
    done = subprocess.run(
        [*command, "--json", str(out)],
        cwd=bench,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["events"] == 2
    for backend in ("serverless", "embedded"):
        for kind in ("gcs", "pubsub"):
            figures = results[backend][kind]
            assert figures["events"] == 2
            assert figures["max_ms"] >= figures["p95_ms"] >= figures["p50_ms"] >= 0
    assert "object finalize -> run created" in done.stdout
