"""Cloud Function ``sweep`` (entry point ``sweep``).

Cloud Scheduler, every minute: the safety-net sweep, then the outbox drained into the
ledger.

A thin shell around :mod:`servo.api.functions`, which documents the status codes and the
environment variables (:mod:`servo.cloud`).
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from servo.api import functions

functions.configure_logging()


@functions_framework.http
def sweep(request: Request) -> Response:
    """Serve one request (see the module docstring)."""
    return functions.sweep(request)
