import asyncio

import pytest

from pipeline.core.config import LimitsConfig
from pipeline.core.errors import BadRequest, EndpointError, RateLimited, ServerError
from pipeline.http.retry import RetryPolicy
from tests.clock import FakeClock


def attempt_until(policy: RetryPolicy, errors: list[EndpointError]) -> tuple[int, list[float]]:
    """Run a call that raises `errors` in turn, then succeeds; (attempts made, sleeps)."""
    clock = FakeClock()
    calls = 0

    async def scenario() -> None:
        nonlocal calls
        async for attempt in policy.retrying(clock.sleep):
            with attempt:
                calls += 1
                if calls <= len(errors):
                    raise errors[calls - 1]

    try:
        asyncio.run(scenario())
    except EndpointError:
        pass
    return calls, clock.sleeps


POLICY = RetryPolicy.from_limits(
    LimitsConfig(max_attempts=4, backoff_initial_s=1.0, backoff_max_s=8.0, retry_after_cap_s=30.0)
)


def test_retry_after_is_honoured() -> None:
    calls, sleeps = attempt_until(POLICY, [RateLimited("429", retry_after=2.5)])
    assert calls == 2
    assert sleeps == [2.5]


def test_retry_after_over_cap_is_not_waited_for() -> None:
    calls, sleeps = attempt_until(POLICY, [RateLimited("429", retry_after=31.0)])
    assert calls == 1 and sleeps == []


def test_backoff_is_jittered_exponential_within_max() -> None:
    errors = [ServerError("503")] * 3
    calls, sleeps = attempt_until(POLICY, errors)
    assert calls == 4
    assert len(sleeps) == 3
    for n, slept in enumerate(sleeps):
        assert 0 <= slept <= min(8.0, 1.0 * 2 ** (n + 1))


def test_attempts_are_bounded() -> None:
    calls, sleeps = attempt_until(POLICY, [ServerError("503")] * 10)
    assert calls == 4 and len(sleeps) == 3


def test_fatal_errors_are_not_retried() -> None:
    calls, sleeps = attempt_until(POLICY, [BadRequest("400")])
    assert calls == 1 and sleeps == []


def test_last_error_is_reraised() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        async for attempt in POLICY.retrying(clock.sleep):
            with attempt:
                raise ServerError("boom", status=503)

    with pytest.raises(ServerError, match="boom"):
        asyncio.run(scenario())


def test_deadline_counts_from_the_rows_first_attempt() -> None:
    """The client makes a row's first attempt itself; the controller gets what is left."""
    policy = RetryPolicy.from_limits(LimitsConfig(max_attempts=5, row_deadline_s=30.0))
    clock = FakeClock()
    calls = 0

    async def scenario(spent_s: float) -> None:
        nonlocal calls
        calls = 0
        async for attempt in policy.retrying(clock.sleep, spent_s=spent_s):
            with attempt:
                calls += 1
                raise ServerError("503", status=503)

    with pytest.raises(ServerError):
        asyncio.run(scenario(spent_s=30.0))
    assert calls == 1  # the whole deadline went on the first attempt
    with pytest.raises(ServerError):
        asyncio.run(scenario(spent_s=0.0))
    assert calls == 5
