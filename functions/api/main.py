"""Cloud Function ``api`` (entry point ``api``).

HTTPS: the run and asset API (GET /api/runs/<id>, POST /api/runs/<id>/cancel, ...).

A thin shell around :mod:`servo.api.functions`, which documents the status codes and the
environment variables (:mod:`servo.cloud`).
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from servo.api import functions

functions.configure_logging()


@functions_framework.http
def api(request: Request) -> Response:
    """Serve one request (see the module docstring)."""
    return functions.api(request)
