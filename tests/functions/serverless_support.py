"""A small project for the Cloud Functions and worker-service tests (helpers, not fixtures).

``write_project(root, effects)`` writes it; its assets record what they do into JSON-lines
files under ``effects/`` (outside the project, so that the files do not change its code
version), which the tests read from outside the worker processes.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WAIT_S = 120.0

DEFS = '''\
"""Assets of the serverless tests."""

import json
import os
import time
from pathlib import Path

from servo import Backoff, Definitions, RetryPolicy, asset
from servo.worker.runtime import Failure

EFFECTS = Path({effects!r})


def record(context, kind="ran", **fields):
    entry = {{
        "asset": context.asset_key.to_string(),
        "run_id": context.run_id,
        "attempt": context.attempt,
        "kind": kind,
        "pid": os.getpid(),
        "time": time.time(),
        **fields,
    }}
    with open(EFFECTS / (context.asset_key.to_string() + ".jsonl"), "a") as handle:
        handle.write(json.dumps(entry) + "\\n")


@asset
def source(context):
    record(context)
    return 1


@asset
def middle(context, source):
    record(context)
    return source + 1


@asset
def final(context, middle):
    record(context)
    print("final is", middle + 1)
    return middle + 1


@asset
def broken(context):
    record(context)
    raise Failure("broken on purpose")


@asset
def after_broken(context, broken):
    record(context)
    return broken


@asset(retry_policy=RetryPolicy(max_retries=2, delay=0.3, backoff=Backoff.EXPONENTIAL))
def flaky(context):
    record(context)
    if context.attempt < 3:
        raise ConnectionError(f"attempt {{context.attempt}} fails on purpose")
    return context.attempt


@asset
def slow(context):
    record(context, "started")
    deadline = time.time() + 60
    while time.time() < deadline and not (EFFECTS / "release_slow").exists():
        time.sleep(0.05)
    record(context, "finished")
    return 1


@asset
def crasher(context):
    record(context)
    os._exit(3)


@asset
def fan_root(context):
    record(context)
    return 0


{fan}

@asset
def fan_sink(context, {fan_params}):
    record(context)
    return {fan_sum}


defs = Definitions(
    assets=[
        source, middle, final, broken, after_broken, flaky, slow, crasher, fan_root,
        {fan_names}, fan_sink,
    ]
)
'''

FAN_WIDTH = 12
FAN_SLEEP_S = 0.8


def write_project(root: Path, effects: Path) -> Path:
    """Write the project under ``root``; returns ``root``."""
    names = [f"fan_{i:02d}" for i in range(FAN_WIDTH)]
    fan = "\n".join(
        textwrap.dedent(
            f"""\
            @asset(retry_policy=RetryPolicy(max_retries=2, delay=0.2))
            def {n}(context, fan_root):
                record(context)
                time.sleep({FAN_SLEEP_S})
                return fan_root + 1
            """
        )
        for n in names
    )
    text = DEFS.format(
        effects=str(effects),
        fan=fan,
        fan_params=", ".join(names),
        fan_sum=" + ".join(names),
        fan_names=", ".join(names),
    )
    (root / "svtest").mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "svtest"\nversion = "0.1.0"\n\n[tool.servo]\nmodule = "svtest.defs"\n'
    )
    (root / "svtest" / "__init__.py").write_text("")
    (root / "svtest" / "defs.py").write_text(text)
    effects.mkdir(parents=True, exist_ok=True)
    return root


def effects_of(effects: Path, asset: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The lines ``asset`` recorded (optionally only one kind)."""
    path = effects / f"{asset}.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if kind is None or e["kind"] == kind]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``predicate`` until it holds (a generous timeout: no speed is asserted)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)
