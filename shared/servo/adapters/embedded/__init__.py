"""The embedded backend: everything on one machine, under a project's ``.servo/`` directory.

Layout of ``home`` (usually ``<project>/.servo``)::

    state.db                        SQLite state store (all tenants and workspaces)
    ledger/<tenant>/<workspace>/    ledger segments
    blobs/<tenant>/<workspace>/     objects

The queue and the bus live in memory and belong to the process that opened the ports.
"""

from __future__ import annotations

import re
from pathlib import Path

from servo.adapters.embedded.blobs import FileBlobs
from servo.adapters.embedded.bus import BusMessage, InProcessBus
from servo.adapters.embedded.clock import SystemClock, UlidIds
from servo.adapters.embedded.ledger import FileLedger
from servo.adapters.embedded.queue import DeadLetter, InProcessQueue
from servo.adapters.embedded.state import SqliteStateStore
from servo.core.errors import ServoError
from servo.ports import Ports

__all__ = [
    "BusMessage",
    "DeadLetter",
    "FileBlobs",
    "FileLedger",
    "InProcessBus",
    "InProcessQueue",
    "SqliteStateStore",
    "SystemClock",
    "UlidIds",
    "open_embedded",
]

_SCOPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")


def open_embedded(home: Path, tenant: str = "default", workspace: str = "default") -> Ports:
    """Open (creating if needed) the embedded backend under ``home`` for one workspace.

    The ledger and blobs of each tenant and workspace get their own subdirectories, just as
    the state store scopes its documents, so workspaces sharing ``home`` never see each
    other's data. The queue and bus are new and empty; the clock is the system clock.
    """
    for label, value in (("tenant", tenant), ("workspace", workspace)):
        if not isinstance(value, str) or not _SCOPE_NAME.match(value):
            raise ServoError(
                f"invalid {label} name {value!r}: use 1-63 letters, digits, '_' or '-', "
                "starting with a letter or digit"
            )
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    clock = SystemClock()
    return Ports(
        state=SqliteStateStore(home / "state.db", tenant, workspace),
        ledger=FileLedger(home / "ledger" / tenant / workspace),
        blobs=FileBlobs(home / "blobs" / tenant / workspace),
        queue=InProcessQueue(clock),
        bus=InProcessBus(),
        clock=clock,
        ids=UlidIds(),
        tenant=tenant,
        workspace=workspace,
    )
