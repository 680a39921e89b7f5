import asyncio

import pytest

from pipeline.core.errors import TokenBudgetExceeded
from pipeline.core.ratelimit import RateLimits, TokenBucket
from tests.clock import FakeClock


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_bucket_admits_burst_then_paces_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, capacity=2.0, clock=clock, sleep=clock.sleep)

    async def take(n: int) -> None:
        for _ in range(n):
            await bucket.acquire(1)

    start = clock.now
    run(take(12))
    # 2 from the full bucket, then 10 more at 2 per second.
    assert clock.now - start == pytest.approx(5.0)


def test_large_request_waits_for_full_bucket_then_leaves_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10.0, capacity=10.0, clock=clock, sleep=clock.sleep)
    run(bucket.acquire(30))  # larger than capacity: goes at once (bucket full), level -20
    assert bucket.level == pytest.approx(-20.0)
    start = clock.now
    run(bucket.acquire(10))  # must wait the debt out plus its own 10: 3 s
    assert clock.now - start == pytest.approx(3.0)


def test_adjust_refunds_up_to_capacity_and_charges_extra() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, capacity=100.0, clock=clock, sleep=clock.sleep)
    run(bucket.acquire(80))
    bucket.adjust(-50)  # real usage was 30
    assert bucket.level == pytest.approx(70.0)
    bucket.adjust(-500)
    assert bucket.level == pytest.approx(100.0)
    bucket.adjust(150)
    assert bucket.level == pytest.approx(-50.0)


def test_requests_per_minute_pace() -> None:
    clock = FakeClock()
    limits = RateLimits(120, None, clock=clock, sleep=clock.sleep)

    async def send(n: int) -> None:
        for _ in range(n):
            await limits.acquire(10)

    start = clock.now
    run(send(62))
    # 2/s with a 2-request burst: 60 more requests take 30 s.
    assert clock.now - start == pytest.approx(30.0)


def test_tokens_per_minute_is_corrected_by_usage() -> None:
    clock = FakeClock()
    limits = RateLimits(None, 600, clock=clock, sleep=clock.sleep)  # 10 tokens/s, burst 10

    async def scenario() -> None:
        await limits.acquire(10)
        limits.settle(10, 2)  # used only 2: 8 come back
        await limits.acquire(8)

    run(scenario())
    assert clock.sleeps == []


def test_request_over_whole_budget_is_refused() -> None:
    limits = RateLimits(None, 50, job_tokens_per_minute=100)
    with pytest.raises(TokenBudgetExceeded, match="tokens_per_minute"):
        run(limits.acquire(101))


def test_waiters_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1.0, capacity=1.0, clock=clock, sleep=clock.sleep)
    order: list[int] = []

    async def take(i: int) -> None:
        await bucket.acquire(1)
        order.append(i)

    async def scenario() -> None:
        await asyncio.gather(*(take(i) for i in range(5)))

    run(scenario())
    assert order == [0, 1, 2, 3, 4]
