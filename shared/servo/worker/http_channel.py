"""Talking to the control plane over HTTPS: a worker's reports, and evaluation requests.

:class:`HttpControlChannel` is the :class:`~servo.worker.envelope.ControlChannel` of the worker
service on Cloud Run: each report is a JSON :class:`~servo.control.callback.Report` POSTed to
the callback function, whose answer is an :class:`~servo.worker.envelope.Answer`.
:class:`HttpEvaluator` is the other direction: the tick and sensor functions POST an
:class:`~servo.worker.evaluate.EvaluationRequest` to the worker service's ``/evaluate``.

Both retry what is worth retrying — a connection failure, a timeout, 408, 429 and 5xx — with
capped exponential backoff, and give up at once on any other 4xx: the other side understood
the request and refused it, so sending it again cannot help.

On Google Cloud the services are private: with an ``id_token`` source every request carries
``Authorization: Bearer <Google ID token>`` (see :func:`metadata_id_token`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from servo.core.errors import ServoError, TransientError
from servo.worker.envelope import Answer, Outcome, TaskEnvelope
from servo.worker.evaluate import DEFAULT_TIMEOUT_S, EvaluationRequest, EvaluationResult

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
METADATA_HOST = "metadata.google.internal"
_TOKEN_LIFETIME_S = 50 * 60  # Google ID tokens live an hour; refresh well before

IdTokenSource = Callable[[], str | None]


class CallbackRejected(ServoError):
    """The other side refused a request (a 4xx answer other than 408 and 429)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class CallbackUnavailable(TransientError):
    """The other side could not be reached, or kept failing, within the retry budget."""


def metadata_id_token(audience: str) -> IdTokenSource:
    """A source of Google ID tokens for ``audience`` from the metadata server.

    Cloud Run and Cloud Functions serve tokens of their service account at
    ``http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity``
    (``GCE_METADATA_HOST`` overrides the host). Tokens are cached for 50 minutes.
    """
    lock = threading.Lock()
    cached: list[tuple[str, float]] = []

    def fetch() -> str | None:
        with lock:
            now = time.monotonic()
            if cached and cached[0][1] > now:
                return cached[0][0]
            host = os.environ.get("GCE_METADATA_HOST") or METADATA_HOST
            url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/identity"
            try:
                response = httpx.get(
                    url,
                    params={"audience": audience, "format": "full"},
                    headers={"Metadata-Flavor": "Google"},
                    timeout=10.0,
                )
            except httpx.HTTPError as exc:
                raise CallbackUnavailable(
                    f"cannot get an ID token for {audience} from the metadata server: {exc}"
                ) from exc
            if response.status_code != 200:
                raise CallbackUnavailable(
                    f"the metadata server answered {response.status_code} for an ID token of "
                    f"{audience}: {response.text[:200]}"
                )
            token = response.text.strip()
            cached[:] = [(token, now + _TOKEN_LIFETIME_S)]
            return token

    return fetch


class JsonPoster:
    """POSTs JSON to one URL with the retry rules of the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        client: httpx.Client | None = None,
        timeout_s: float = 30.0,
        id_token: IdTokenSource | None = None,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ServoError(f"the URL to report to must start with http:// or https://: {url!r}")
        self.url = url
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)
        self._id_token = id_token
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def post(self, body: Any, *, attempts: int, what: str, timeout_s: float | None = None) -> Any:
        """POST ``body``; returns the JSON answer of the first 2xx response.

        Raises CallbackRejected on a permanent refusal and CallbackUnavailable once
        ``attempts`` tries have failed in ways worth retrying.
        """
        last = ""
        for attempt in range(max(1, attempts)):
            if attempt:
                delay = min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
                self._sleep(delay)
            headers = {"Content-Type": "application/json"}
            if self._id_token is not None:
                token = self._id_token()
                if token:
                    headers["Authorization"] = f"Bearer {token}"
            try:
                kwargs: dict[str, Any] = {"json": body, "headers": headers}
                if timeout_s is not None:
                    kwargs["timeout"] = timeout_s
                response = self._client.post(self.url, **kwargs)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= response.status_code < 300:
                try:
                    return response.json()
                except ValueError:
                    last = f"a {response.status_code} answer that is not JSON"
                    continue
            detail = _error_text(response)
            if response.status_code not in RETRYABLE_STATUS:
                raise CallbackRejected(
                    response.status_code,
                    f"{what} was refused by {self.url} with {response.status_code}: {detail}",
                )
            last = f"{response.status_code}: {detail}"
        raise CallbackUnavailable(
            f"{what} did not reach {self.url} after {max(1, attempts)} tries (last: {last})"
        )


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:300]
    return str(data)[:300]


class HttpControlChannel:
    """Reports attempts to the callback function at ``url`` (see the module docstring).

    ``started`` and ``completed`` try ``attempts`` times (about a minute of backoff with the
    defaults) because losing them costs a retry of the whole attempt; a heartbeat tries
    ``heartbeat_attempts`` times, since the next heartbeat comes soon anyway.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.Client | None = None,
        id_token: IdTokenSource | None = None,
        attempts: int = 15,
        heartbeat_attempts: int = 2,
        timeout_s: float = 30.0,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._poster = JsonPoster(
            url,
            client=client,
            timeout_s=timeout_s,
            id_token=id_token,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            sleep=sleep,
        )
        self._attempts = attempts
        self._heartbeat_attempts = heartbeat_attempts

    @property
    def url(self) -> str:
        return self._poster.url

    def close(self) -> None:
        """Close the HTTP connections."""
        self._poster.close()

    def _report(
        self, kind: str, envelope: TaskEnvelope, outcome: Outcome | None, attempts: int
    ) -> Answer:
        body = {
            "kind": kind,
            "run_id": envelope.run_id,
            "task_id": envelope.task_id,
            "attempt": envelope.attempt,
            "token": envelope.token,
            "outcome": outcome.model_dump(mode="json") if outcome is not None else None,
        }
        what = f"the {kind} report of attempt {envelope.attempt} of task {envelope.task_id}"
        data = self._poster.post(body, attempts=attempts, what=what)
        try:
            return Answer.model_validate(data)
        except ValueError as exc:
            raise CallbackUnavailable(f"{what} got an answer that is not an Answer: {exc}") from exc

    def started(self, envelope: TaskEnvelope) -> Answer:
        return self._report("started", envelope, None, self._attempts)

    def heartbeat(self, envelope: TaskEnvelope) -> Answer:
        return self._report("heartbeat", envelope, None, self._heartbeat_attempts)

    def completed(self, envelope: TaskEnvelope, outcome: Outcome) -> Answer:
        return self._report("completed", envelope, outcome, self._attempts)


class HttpEvaluator:
    """An :class:`~servo.worker.evaluate.Evaluator` that asks the worker service at ``url``.

    The body is ``{"tenant", "workspace", "request"}`` (the worker service loads the code of
    that workspace); the answer is the :class:`EvaluationResult`. Failing to reach the service
    raises CallbackUnavailable, which the automation services treat as an infrastructure
    failure and try again at their next evaluation.
    """

    def __init__(
        self,
        url: str,
        tenant: str,
        workspace: str,
        *,
        client: httpx.Client | None = None,
        id_token: IdTokenSource | None = None,
        attempts: int = 3,
    ) -> None:
        self._poster = JsonPoster(
            url, client=client, timeout_s=DEFAULT_TIMEOUT_S + 30, id_token=id_token
        )
        self.tenant = tenant
        self.workspace = workspace
        self._attempts = attempts

    def close(self) -> None:
        """Close the HTTP connections."""
        self._poster.close()

    def evaluate(
        self, request: EvaluationRequest, *, timeout_s: float | None = None
    ) -> EvaluationResult:
        body = {
            "tenant": self.tenant,
            "workspace": self.workspace,
            "request": request.model_dump(mode="json"),
            "timeout_s": timeout_s,
        }
        wait = (timeout_s or DEFAULT_TIMEOUT_S) + 30
        data = self._poster.post(
            body,
            attempts=self._attempts,
            what=f"evaluating {request.kind} {request.name!r}",
            timeout_s=wait,
        )
        try:
            return EvaluationResult.model_validate(data)
        except ValueError as exc:
            raise CallbackUnavailable(
                f"the worker service answered an evaluation of {request.name!r} with something "
                f"that is not an EvaluationResult: {exc}"
            ) from exc


__all__ = [
    "CallbackRejected",
    "CallbackUnavailable",
    "HttpControlChannel",
    "HttpEvaluator",
    "IdTokenSource",
    "JsonPoster",
    "metadata_id_token",
]
