"""Turning ``google.api_core`` exceptions into Servo's domain errors.

Callers of the GCP adapters never see a ``google.*`` exception: a missing object becomes
``NotFound``, a create-only write that found the object ``AlreadyExists``, a failed
precondition ``Conflict``, and anything worth retrying (contention, unavailability, quota,
timeouts) ``TransientError``. What is left is a ``ServoError`` carrying the service's message.
"""

from __future__ import annotations

from google.api_core import exceptions as google_errors

from servo.core.errors import AlreadyExists, Conflict, NotFound, ServoError, TransientError

RETRYABLE: tuple[type[BaseException], ...] = (
    google_errors.Aborted,
    google_errors.DeadlineExceeded,
    google_errors.InternalServerError,
    google_errors.ServiceUnavailable,
    google_errors.TooManyRequests,
    google_errors.ResourceExhausted,
    google_errors.GatewayTimeout,
    google_errors.BadGateway,
    google_errors.RetryError,
    google_errors.Unknown,
    ConnectionError,
    TimeoutError,
)
"""Exceptions a GCP call may raise that are worth retrying as they are."""


def translate(exc: BaseException, what: str) -> ServoError:
    """The domain error for ``exc`` raised while doing ``what`` (e.g. "read blob 'x'")."""
    detail = _message(exc)
    if isinstance(exc, ServoError):
        return exc
    if isinstance(exc, google_errors.NotFound):
        return NotFound(f"{what} failed: not found ({detail})")
    if isinstance(exc, google_errors.AlreadyExists):
        return AlreadyExists(f"{what} failed: it already exists ({detail})")
    if isinstance(exc, (google_errors.PreconditionFailed, google_errors.FailedPrecondition)):
        return Conflict(f"{what} failed: a precondition did not hold ({detail})")
    if isinstance(exc, RETRYABLE):
        return TransientError(f"{what} failed transiently, retry it: {detail}")
    if isinstance(exc, (google_errors.Forbidden, google_errors.Unauthorized)):
        return ServoError(
            f"{what} was refused ({detail}); check the service account's IAM roles and that "
            "the API is enabled in the project"
        )
    if isinstance(exc, google_errors.InvalidArgument):
        return ServoError(f"{what} was rejected as invalid: {detail}")
    return ServoError(f"{what} failed: {detail}")


def _message(exc: BaseException) -> str:
    if isinstance(exc, google_errors.GoogleAPICallError):
        text = exc.message or str(exc)
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:500]
