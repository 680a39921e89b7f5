import pytest

from pipeline.core.errors import (
    AuthenticationError,
    BadRequest,
    EndpointNotFound,
    RateLimited,
    RetryableClientError,
    ServerError,
    describe,
    error_from_response,
    parse_retry_after,
    should_retry,
)
from pipeline.wire import wire_for

# The error bodies every built-in format reads (Databricks and OpenAI shapes).
READ_BODY = wire_for("invocations").error_body


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (400, BadRequest, False),
        (401, AuthenticationError, False),
        (403, AuthenticationError, False),
        (404, EndpointNotFound, False),
        (408, RetryableClientError, True),
        (409, RetryableClientError, True),
        (418, BadRequest, False),
        (429, RateLimited, True),
        (500, ServerError, True),
        (503, ServerError, True),
    ],
)
def test_class_and_retryability_follow_status(status: int, cls: type, retryable: bool) -> None:
    error = error_from_response(status, {}, "", READ_BODY)
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.status == status


def test_databricks_body_is_understood() -> None:
    body = '{"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Exceeded workspace rate limit"}'
    error = error_from_response(429, {"Retry-After": "3"}, body, READ_BODY)
    assert error.error_code == "REQUEST_LIMIT_EXCEEDED"
    assert str(error) == "HTTP 429 REQUEST_LIMIT_EXCEEDED: Exceeded workspace rate limit"
    assert error.retry_after == 3.0
    assert describe(error).startswith("rate_limited: HTTP 429")


def test_openai_body_is_understood() -> None:
    body = '{"error": {"type": "invalid_request_error", "message": "bad max_tokens"}}'
    error = error_from_response(400, {}, body, READ_BODY)
    assert error.error_code == "invalid_request_error"
    assert "bad max_tokens" in str(error)


def test_non_json_body_is_kept_short() -> None:
    error = error_from_response(502, {}, "<html>" + "x" * 5000 + "</html>", READ_BODY)
    assert len(str(error)) < 400


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"Retry-After-Ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480) == 10
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_retry_after_beyond_cap_is_not_retried() -> None:
    short = error_from_response(429, {"Retry-After": "5"}, "", READ_BODY)
    long = error_from_response(429, {"Retry-After": "500"}, "", READ_BODY)
    assert should_retry(short, retry_after_cap_s=60)
    assert not should_retry(long, retry_after_cap_s=60)
    assert not should_retry(error_from_response(401, {}, "", READ_BODY), retry_after_cap_s=60)
    assert not should_retry(ValueError("x"), retry_after_cap_s=60)
