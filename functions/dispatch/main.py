"""Cloud Function ``dispatch`` (entry point ``dispatch``).

Cloud Tasks deliveries of the dispatch, retry and finalize messages
({"topic", "payload"}).

A thin shell around :mod:`servo.api.functions`, which documents the status codes and the
environment variables (:mod:`servo.cloud`).
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from servo.api import functions

functions.configure_logging()


@functions_framework.http
def dispatch(request: Request) -> Response:
    """Serve one request (see the module docstring)."""
    return functions.dispatch(request)
