"""Cloud Function ``trigger`` (entry point ``trigger``).

HTTPS: a JSON TriggerRequest starts (or finds) a run; 201 created, 200 existing,
400 bad input, 409 run_key conflict.

A thin shell around :mod:`servo.api.functions`, which documents the status codes and the
environment variables (:mod:`servo.cloud`).
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from servo.api import functions

functions.configure_logging()


@functions_framework.http
def trigger(request: Request) -> Response:
    """Serve one request (see the module docstring)."""
    return functions.trigger(request)
