"""The worker service's entry point on Cloud Run: ``python /app/entrypoint.py``.

Serves ``POST /execute`` (Cloud Tasks deliveries of task attempts), ``POST /evaluate``
(schedule and sensor functions, for the tick and sensor functions) and ``GET /healthz`` on
``$PORT``; see :mod:`servo.worker.service` for the behaviour and the environment variables.
"""

from __future__ import annotations

import sys

from servo.worker.service import main

if __name__ == "__main__":
    sys.exit(main())
