"""Session-wide fixtures: the Google emulators, started only when a test asks for them.

``gcp_emulators`` starts all four services at once (in parallel); ``firestore_emulator``,
``pubsub_emulator``, ``storage_emulator`` and ``tasks_emulator`` start just one. Each exports
its ``*_EMULATOR_HOST`` variable (plus ``NO_GCE_CHECK=true``) for the rest of the session, so
the GCP adapters' client builders and ``open_gcp`` find it, and everything is stopped when the
session ends. Tests isolate themselves by name (a Firestore database, a GCS prefix, a Pub/Sub
topic prefix or a Cloud Tasks queue of their own) rather than by restarting anything.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servo.testing.emulators import COMMON_ENV, DEFAULT_PROJECT, SERVICES, Emulators

# The Cloud Tasks fake is a script in emulators/, imported directly by its own tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "emulators"))

EMULATOR_PROJECT = DEFAULT_PROJECT


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    """The session's emulators; nothing runs until one of the fixtures below asks."""
    pool = Emulators(tmp_path_factory.mktemp("emulators"), project=EMULATOR_PROJECT)
    yield pool
    pool.stop()


def _started(pool: Emulators, services: tuple[str, ...]) -> Iterator[dict[str, str]]:
    began = time.monotonic()
    running = pool.start(services)
    elapsed = time.monotonic() - began
    if elapsed > 0.5:
        print(f"\n[emulators] {', '.join(services)} ready in {elapsed:.1f} s", file=sys.stderr)
    variables = dict(COMMON_ENV)
    for record in running.values():
        variables.update(record.env)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        yield variables


@pytest.fixture(scope="session")
def gcp_emulators(emulators: Emulators) -> Iterator[dict[str, str]]:
    """All four services, started together; yields the exported variables."""
    yield from _started(emulators, SERVICES)


@pytest.fixture(scope="session")
def firestore_emulator(emulators: Emulators) -> Iterator[str]:
    """The Firestore emulator's ``host:port``."""
    for variables in _started(emulators, ("firestore",)):
        yield variables["FIRESTORE_EMULATOR_HOST"]


@pytest.fixture(scope="session")
def pubsub_emulator(emulators: Emulators) -> Iterator[str]:
    """The Pub/Sub emulator's ``host:port``."""
    for variables in _started(emulators, ("pubsub",)):
        yield variables["PUBSUB_EMULATOR_HOST"]


@pytest.fixture(scope="session")
def storage_emulator(emulators: Emulators) -> Iterator[str]:
    """fake-gcs-server's ``http://host:port``."""
    for variables in _started(emulators, ("storage",)):
        yield variables["STORAGE_EMULATOR_HOST"]


@pytest.fixture(scope="session")
def tasks_emulator(emulators: Emulators) -> Iterator[str]:
    """The Cloud Tasks fake's ``host:port``."""
    for variables in _started(emulators, ("tasks",)):
        yield variables["SERVO_TASKS_EMULATOR_HOST"]
