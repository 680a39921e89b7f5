"""The async client against the real local endpoint: wire formats, retries, error rows."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
import pytest

from pipeline.core.chat import ChatRequest, Message, RowResult
from pipeline.core.config import ApiName, EndpointConfig, LimitsConfig
from pipeline.core.errors import AuthenticationError, BadRequest, ServerError, Stopped
from pipeline.core.secrets import Secret
from pipeline.http.client import ChatClient
from pipeline.http.engine import open_session
from pipeline.http.guard import FatalAnswerGuard
from pipeline.http.limiter import build_limiter
from pipeline.http.settings import ClientSettings
from pipeline.serving.process import LocalEndpoint, free_port
from tests.clock import FakeClock
from tests.conftest import ENDPOINT_NAME, TOKEN

FAST_RETRIES = LimitsConfig(
    concurrency=4, max_attempts=4, backoff_initial_s=0.001, backoff_max_s=0.01, timeout_s=10
)
REQUEST = ChatRequest(
    "r1", (Message("system", "Be terse."), Message("user", "one two three four")), 3, 0.0
)


def settings(
    echo: LocalEndpoint, api: ApiName = "invocations", **changes: object
) -> ClientSettings:
    endpoint = EndpointConfig(name=ENDPOINT_NAME, host=echo.url, api=api)
    base = ClientSettings(endpoint=endpoint, limits=FAST_RETRIES, token=Secret(TOKEN))
    return replace(base, **changes)  # type: ignore[arg-type]


def client_for(client_settings: ClientSettings, session: aiohttp.ClientSession) -> ChatClient:
    """The client as the engine builds it: with the limiter its settings call for."""
    return ChatClient(client_settings, session, build_limiter(client_settings))


def send(client_settings: ClientSettings, request: ChatRequest = REQUEST) -> RowResult:
    async def scenario() -> RowResult:
        async with open_session(client_settings) as session:
            return await client_for(client_settings, session).send(request)

    return asyncio.run(scenario())


@pytest.mark.parametrize("api", ["invocations", "chat_completions", "responses"])
def test_each_wire_format_round_trips(echo: LocalEndpoint, api: ApiName) -> None:
    result = send(settings(echo, api))
    assert result.status == "ok", result.error
    assert result.completion is not None
    # Echo: the last user message cut to max_tokens=3 words; prompt = all words (2 + 4).
    assert result.completion.text == "one two three"
    assert result.completion.finish_reason == "length"
    assert (result.completion.prompt_tokens, result.completion.completion_tokens) == (6, 3)
    assert result.completion.total_tokens == 9
    assert result.completion.model == ENDPOINT_NAME
    assert result.completion.response_id
    assert (result.http_status, result.attempts) == (200, 1)
    assert result.latency_ms is not None and result.latency_ms > 0
    assert echo.stats()["by_route"][api] == 1


def test_retries_until_success_count_attempts(echo: LocalEndpoint) -> None:
    echo.control(fail_first=2, fail_status=503)
    result = send(settings(echo))
    assert (result.status, result.attempts, result.http_status) == ("ok", 3, 200)
    assert echo.stats()["requests_total"] == 3


def test_retry_after_from_429_is_honoured(echo: LocalEndpoint) -> None:
    echo.control(fail_first=1, fail_status=429, retry_after_s=0.01)
    result = send(settings(echo))
    assert (result.status, result.attempts) == ("ok", 2)


def test_exhausted_retries_become_an_error_row(echo: LocalEndpoint) -> None:
    echo.control(fail_first=10, fail_status=503)
    result = send(settings(echo))
    assert result.status == "error"
    assert (result.attempts, result.http_status) == (4, 503)
    assert result.error is not None and result.error.startswith("server_error: HTTP 503")
    assert result.completion is None
    assert echo.stats()["requests_total"] == 4


def test_bad_token_is_not_retried_and_not_echoed(echo: LocalEndpoint) -> None:
    result = send(settings(echo, token=Secret("dapi-wrong-token")))
    assert (result.status, result.http_status, result.attempts) == ("error", 403, 1)
    assert result.error is not None and result.error.startswith("authentication_error")
    assert "dapi-wrong-token" not in result.error and TOKEN not in result.error


def test_unknown_endpoint_is_not_retried(echo: LocalEndpoint) -> None:
    client_settings = settings(echo)
    other = replace(client_settings.endpoint, name="no-such-endpoint")
    result = send(replace(client_settings, endpoint=other))
    assert (result.status, result.http_status, result.attempts) == ("error", 404, 1)
    assert result.error is not None and "RESOURCE_DOES_NOT_EXIST" in result.error


def test_refused_connection_before_any_success_stops_the_task() -> None:
    """A host that cannot be reached is configuration: after limits.max_fatal_errors (3)
    connection attempts the task stops sending, the row ends with the connection error."""
    endpoint = EndpointConfig(name="x", host=f"http://127.0.0.1:{free_port()}", token_env=None)

    async def scenario() -> tuple[RowResult, RowResult, str | None]:
        client_settings = ClientSettings(endpoint=endpoint, limits=FAST_RETRIES)
        async with open_session(client_settings) as session:
            client = client_for(client_settings, session)
            first, second = await client.send(REQUEST), await client.send(REQUEST)
            return first, second, client.stop_reason

    first, second, stop_reason = asyncio.run(scenario())
    assert (first.status, first.attempts, first.http_status) == ("error", 3, None)
    assert first.error is not None and first.error.startswith("connection_error")
    assert (second.attempts, second.error) == (0, f"aborted: {stop_reason}")
    assert stop_reason is not None and "3 requests to http://127.0.0.1:" in stop_reason
    assert "could not connect" in stop_reason and "endpoint.host" in stop_reason


def test_connection_refused_after_a_success_is_retried_to_the_end() -> None:
    """Once the endpoint has answered, a refused connection is a passing fault: retried up to
    limits.max_attempts, and the task goes on."""
    async def scenario(server: LocalEndpoint) -> tuple[RowResult, RowResult, str | None]:
        endpoint = EndpointConfig(name=ENDPOINT_NAME, host=server.url, token_env=None)
        client_settings = ClientSettings(endpoint=endpoint, limits=FAST_RETRIES)
        async with open_session(client_settings) as session:
            client = client_for(client_settings, session)
            answered = await client.send(REQUEST)
            await asyncio.to_thread(server.stop)  # nothing listens on its port any more
            refused = await client.send(replace(REQUEST, request_id="r2"))
            return answered, refused, client.stop_reason

    with LocalEndpoint("--model", "echo", "--endpoint-name", ENDPOINT_NAME) as server:
        answered, refused, stop_reason = asyncio.run(scenario(server))
    assert answered.status == "ok"
    assert (refused.status, refused.attempts) == ("error", 4)
    assert refused.error is not None and refused.error.startswith("connection_error")
    assert stop_reason is None


def test_max_tokens_over_endpoint_limit_is_a_fatal_400(echo: LocalEndpoint) -> None:
    echo.control(max_tokens_limit=2)
    result = send(settings(echo))
    # max_tokens=3 is above the endpoint's limit of 2: a 400 naming the field, not retried.
    assert (result.status, result.http_status, result.attempts) == ("error", 400, 1)
    assert result.error is not None and "max_tokens" in result.error


def test_request_over_the_token_budget_is_never_sent(echo: LocalEndpoint) -> None:
    limits = replace(FAST_RETRIES, tokens_per_minute=5.0)
    result = send(settings(echo, limits=limits, tokens_per_minute=5.0))
    assert (result.status, result.attempts, result.http_status) == ("error", 0, None)
    assert result.error is not None and result.error.startswith("token_budget_exceeded:")
    assert echo.stats()["requests_total"] == 0


@pytest.mark.parametrize(("status", "waited"), [(429, 1.0), (503, 0.0)])
def test_a_429_keeps_its_token_booking_and_a_failed_attempt_gives_it_back(
    echo: LocalEndpoint, status: int, waited: float
) -> None:
    """A 429 says the endpoint's window is full: the attempt's tokens stay spent, so its retry
    waits for the budget instead of going at once into the same window. A 503 used nothing."""
    echo.control(fail_first=1, fail_status=status, retry_after_s=0.01)
    limits = replace(FAST_RETRIES, tokens_per_minute=600.0)  # 10 tokens a second, 10 at once
    client_settings = settings(echo, limits=limits, tokens_per_minute=600.0)
    clock = FakeClock()  # the budget's clock: time passes only while the limiter waits
    assert REQUEST.estimated_tokens() == 10  # the whole budget of a second

    async def scenario() -> RowResult:
        async with open_session(client_settings) as session:
            limiter = build_limiter(client_settings, clock=clock, sleep=clock.sleep)
            return await ChatClient(client_settings, session, limiter).send(REQUEST)

    result = asyncio.run(scenario())
    assert (result.status, result.attempts) == ("ok", 2)
    assert sum(clock.sleeps) == pytest.approx(waited)


def test_repeated_fatal_answers_stop_sending(echo: LocalEndpoint) -> None:
    limits = replace(FAST_RETRIES, max_fatal_errors=2)
    bad = settings(echo, limits=limits, token=Secret("dapi-wrong-token"))

    async def scenario() -> list[RowResult]:
        async with open_session(bad) as session:
            client = client_for(bad, session)
            results = [await client.send(replace(REQUEST, request_id=f"r{i}")) for i in range(5)]
            assert client.stop_reason is not None
            assert "2 requests to" in client.stop_reason
            assert "endpoint.token_env" in client.stop_reason
            assert "dapi-wrong-token" not in client.stop_reason
            return results

    results = asyncio.run(scenario())
    assert [r.attempts for r in results] == [1, 1, 0, 0, 0]
    assert all(r.error is not None and r.error.startswith("aborted: ") for r in results[2:])
    assert echo.stats()["requests_total"] == 2


def test_400s_stop_sending_only_before_any_success(echo: LocalEndpoint) -> None:
    limits = replace(FAST_RETRIES, max_fatal_errors=2)
    client_settings = settings(echo, limits=limits)
    too_long = replace(REQUEST, max_tokens=50)  # above the limit set below: a 400

    async def scenario(first: ChatRequest | None) -> ChatClient:
        async with open_session(client_settings) as session:
            client = client_for(client_settings, session)
            if first is not None:
                assert (await client.send(first)).status == "ok"
            for i in range(3):
                await client.send(replace(too_long, request_id=f"r{i}"))
            return client

    echo.control(max_tokens_limit=10)
    # Every request so far refused: the configuration is wrong, stop after 2.
    stopped = asyncio.run(scenario(None))
    assert stopped.stop_reason is not None and "bad_request (HTTP 400" in stopped.stop_reason
    assert "request section" in stopped.stop_reason
    assert echo.stats()["requests_total"] == 2
    # After a success, a 400 is about its own row: every row is still sent.
    echo.reset()
    echo.control(max_tokens_limit=10)
    assert asyncio.run(scenario(REQUEST)).stop_reason is None
    assert echo.stats()["requests_total"] == 4


def test_retry_after_above_the_cap_ends_the_row_instead_of_waiting(echo: LocalEndpoint) -> None:
    echo.control(fail_first=5, fail_status=429, retry_after_s=600)
    result = send(settings(echo, limits=replace(FAST_RETRIES, retry_after_cap_s=60)))
    assert (result.status, result.attempts, result.http_status) == ("error", 1, 429)
    assert result.error is not None and result.error.startswith("rate_limited: HTTP 429")
    assert echo.stats()["requests_total"] == 1


def test_the_guard_counts_only_answers_every_row_would_get() -> None:
    token = Secret("dapi-guarded")
    guard = FatalAnswerGuard(2, url="http://host/serving-endpoints/e", redact=token.redact)
    guard.judge(ServerError("HTTP 503", status=503))  # a passing fault: never counted
    guard.judge(BadRequest("HTTP 400", status=400))  # before any success: configuration
    assert not guard.stopping
    guard.judge(AuthenticationError("HTTP 403: dapi-guarded refused", status=403))
    assert guard.stop_reason is not None and "dapi-guarded" not in guard.stop_reason
    assert guard.stop_reason.startswith("2 requests to http://host/serving-endpoints/e")
    with pytest.raises(Stopped):
        guard.raise_if_stopping()
    after_success = FatalAnswerGuard(1, url="http://host")
    after_success.answered_ok()
    after_success.judge(BadRequest("HTTP 400", status=400))  # about its own row now
    assert after_success.stop_reason is None


@pytest.mark.parametrize("api", ["invocations", "chat_completions", "responses"])
def test_reasoning_comes_back_in_every_format(echo: LocalEndpoint, api: ApiName) -> None:
    echo.control(reasoning=True)
    result = send(settings(echo, api))
    assert result.status == "ok", result.error
    completion = result.completion
    assert completion is not None
    assert completion.text == "one two three"
    assert completion.reasoning == "The conversation holds 6 prompt tokens; answering it."
    # The reasoning's 8 words are reasoning tokens, within the completion tokens.
    assert (completion.completion_tokens, completion.reasoning_tokens) == (3 + 8, 8)
