"""One error tree for the whole pipeline.

Whether an endpoint failure is worth retrying is a property of its class, decided in one place
(`error_from_response`) from the status code, headers and body. Messages never carry a prompt or a
token: server text is cut short, and the client redacts the token from it before it is kept.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from typing import ClassVar

# Server-provided text kept in an error message, at most (bodies can be whole HTML pages).
MAX_SERVER_MESSAGE_CHARS = 300


class PipelineError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """A configuration value is missing, unknown or of the wrong type; `key` names it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


class JobAborted(PipelineError):
    """The job stopped on purpose: an answer that retrying cannot fix came back repeatedly."""


class SinkBusy(JobAborted):
    """Another run holds the sink's lease: this one stops before sending anything."""


class TaskSuperseded(PipelineError):
    """A newer attempt of this Spark task started (a stage run again while this attempt went on,
    or a speculative copy): this one stops sending and fails, so only one of them pays."""


class InvalidInput(PipelineError):
    """A row cannot become a request; the row is answered with an error and never sent."""

    code = "invalid_input"


class EndpointError(PipelineError):
    """A request that did not produce a completion.

    `retryable` says whether sending the same request again can succeed; `code` is the short,
    stable prefix written to the output's `error` column.
    """

    retryable: ClassVar[bool] = False
    # Every other row would get the same answer (bad token, no such endpoint): stop the job.
    stops_job: ClassVar[bool] = False
    # Before any request of a task succeeded, every row would most likely get it too (a
    # parameter the endpoint refuses, a host that cannot be reached): stop the job then.
    stops_job_before_success: ClassVar[bool] = False
    code: ClassVar[str] = "endpoint_error"
    # How the job-stopping sentence says what happened, and what to check.
    outcome: ClassVar[str] = "were answered {code}"
    hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.retry_after = retry_after


class RateLimited(EndpointError):
    retryable = True
    code = "rate_limited"


class ServerError(EndpointError):
    retryable = True
    code = "server_error"


class RetryableClientError(EndpointError):
    """408 Request Timeout and 409 Conflict: the server says a resend may succeed."""

    retryable = True
    code = "retryable_client_error"


class BadRequest(EndpointError):
    stops_job_before_success = True
    code = "bad_request"
    hint = "check the request section (e.g. max_tokens above the endpoint's limit)"


class AuthenticationError(EndpointError):
    stops_job = True
    code = "authentication_error"
    hint = "check the token in the variable named by endpoint.token_env"


class EndpointNotFound(EndpointError):
    stops_job = True
    code = "endpoint_not_found"
    hint = "check endpoint.name and endpoint.host"


class ConnectionFailed(EndpointError):
    """The connection broke while a request was under way (reset, closed early)."""

    retryable = True
    code = "connection_error"


class EndpointUnreachable(ConnectionFailed):
    """No connection could be opened: refused, unknown host, or no answer to connect."""

    stops_job_before_success = True
    outcome = "could not connect"
    hint = "check endpoint.host (or endpoint.base_url) and that the endpoint is up"


class CertificateRefused(EndpointUnreachable):
    """The endpoint's TLS certificate did not verify: no CA the tasks trust signed it, or it
    names another host."""

    hint = (
        "check endpoint.host; a certificate no CA in the tasks' trust store signed needs that "
        "CA there, or endpoint.verify_tls: false"
    )


class Stopped(EndpointError):
    """Not sent: the task stopped sending (see `limits.max_fatal_errors`)."""

    code = "aborted"


class RequestTimedOut(EndpointError):
    retryable = True
    code = "timeout"


class MalformedResponse(EndpointError):
    """A 2xx answer whose body is not the expected JSON (truncated, not JSON, no choices)."""

    retryable = True
    code = "malformed_response"


class TokenBudgetExceeded(EndpointError):
    """The request alone needs more tokens than the whole per-minute budget allows."""

    code = "token_budget_exceeded"


_BY_STATUS: Mapping[int, type[EndpointError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: AuthenticationError,
    404: EndpointNotFound,
    408: RetryableClientError,
    409: RetryableClientError,
    422: BadRequest,
    429: RateLimited,
}


def error_class_for_status(status: int) -> type[EndpointError]:
    """The error class for a non-2xx HTTP status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return BadRequest


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: str,
    error_body: Callable[[str], tuple[str | None, str | None]],
    *,
    now: float | None = None,
) -> EndpointError:
    """Build the error for a non-2xx answer from its status, headers and body, read by the
    wire format's `error_body` into (code, message)."""
    error_code, message = error_body(body)
    text = f"HTTP {status}"
    if error_code:
        text += f" {error_code}"
    if message:
        text += f": {shorten(message)}"
    cls = error_class_for_status(status)
    return cls(
        text, status=status, error_code=error_code, retry_after=parse_retry_after(headers, now=now)
    )


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def should_retry(error: BaseException, retry_after_cap_s: float) -> bool:
    """True when sending again can help: a retryable class whose wait is within the cap.

    A server asking for a longer pause than the cap ends the row instead of holding a slot.
    """
    if not isinstance(error, EndpointError) or not error.retryable:
        return False
    return error.retry_after is None or error.retry_after <= retry_after_cap_s


def shorten(text: str, limit: int = MAX_SERVER_MESSAGE_CHARS) -> str:
    """`text` on one line, cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe(error: BaseException) -> str:
    """The text of the output's `error` column: a stable code, then the message."""
    if isinstance(error, EndpointError | InvalidInput):
        return f"{error.code}: {error}"
    return f"internal_error: {type(error).__name__}: {shorten(str(error))}"
