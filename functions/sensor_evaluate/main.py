"""Cloud Function ``sensor_evaluate`` (entry point ``sensor_evaluate``).

Pub/Sub push or Eventarc CloudEvents for GCS and Pub/Sub sensors; a plain POST
(Cloud Scheduler) evaluates the interval sensors.

A thin shell around :mod:`servo.api.functions`, which documents the status codes and the
environment variables (:mod:`servo.cloud`).
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from servo.api import functions

functions.configure_logging()


@functions_framework.http
def sensor_evaluate(request: Request) -> Response:
    """Serve one request (see the module docstring)."""
    return functions.sensor_evaluate(request)
