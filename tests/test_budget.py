"""The job-wide budget and its adaptive rate, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import pytest

from pipeline.control.budget import (
    ADAPT_PERIOD_S,
    BACKOFF,
    DECREASE_COOLDOWN_S,
    HEADER_MARGIN,
    LEASE_SECONDS,
    Allowance,
    JobBudget,
)
from pipeline.control.protocol import LeaseAsk
from tests.clock import FakeClock

START = 100.0


def drain(budget: JobBudget, clock: FakeClock, seconds: float, tasks: int, step: float = 0.01,
          **seen: int) -> list[int]:  # fmt: skip
    """Every task asks for 8 permits every `step` for `seconds`, in turns (who asks first
    rotates, as arrival order does); permits granted per task."""
    granted = [0] * tasks
    end, turn = clock.now + seconds, 0
    while clock.now < end:
        for i in range(tasks):
            task = (turn + i) % tasks
            granted[task] += budget.lease(LeaseAsk(requests=8, **seen)).requests
        clock.now += step
        turn += 1
    return granted


def test_allowance_starts_empty_and_never_exceeds_its_rate() -> None:
    clock = FakeClock(START)
    allowance = Allowance(10.0, clock)
    assert allowance.take(1, 1) == 0  # no burst at the start
    assert allowance.wait_s(1) == pytest.approx(0.1)
    clock.now += 60
    taken = allowance.take(100, 1)  # a long idle spell piles up only the small burst
    assert taken == pytest.approx(allowance.capacity) and taken < 100


def test_job_rate_holds_whatever_the_number_of_tasks() -> None:
    for tasks in (1, 2, 7):
        clock = FakeClock(START)
        budget = JobBudget(600, None, adaptive=False, start_rate_per_s=1, clock=clock)
        granted = sum(drain(budget, clock, 30.0, tasks))
        assert 0.97 * 300 <= granted <= 300 + 10  # 10/s for 30 s, within one lease of it


def test_a_task_left_alone_gets_the_whole_rate() -> None:
    clock = FakeClock(START)
    budget = JobBudget(1200, None, adaptive=False, start_rate_per_s=1, clock=clock)
    together = drain(budget, clock, 10.0, tasks=2)
    assert together[0] == pytest.approx(together[1], rel=0.1)  # fair while both run
    alone = drain(budget, clock, 10.0, tasks=1)  # the other finished: no idle share
    assert alone[0] >= 0.97 * 20 * 10


def test_leases_are_small_slices_of_the_rate() -> None:
    clock = FakeClock(START)
    budget = JobBudget(60_000, None, adaptive=False, start_rate_per_s=1, clock=clock)
    clock.now += 10
    lease = budget.lease(LeaseAsk(requests=10_000))
    assert lease.requests <= 1000 * LEASE_SECONDS * 5  # at most the burst, never the backlog


def test_nothing_granted_says_how_long_to_wait() -> None:
    clock = FakeClock(START)
    budget = JobBudget(60, None, adaptive=False, start_rate_per_s=1, clock=clock)
    lease = budget.lease(LeaseAsk(requests=1))
    assert (lease.requests, lease.wait_s) == (0, pytest.approx(1.0))


def test_token_budget_is_reserved_then_corrected() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, 120_000, adaptive=False, start_rate_per_s=1, clock=clock)
    clock.now += 1  # 2000 tokens/s: the burst holds 40
    first = budget.lease(LeaseAsk(requests=1, tokens=20))
    assert (first.requests, first.tokens) == (1, 20)
    assert budget.lease(LeaseAsk(requests=1, tokens=20)).requests == 1
    assert budget.lease(LeaseAsk(requests=1, tokens=15)).requests == 0  # nothing left
    # The first request used 2 tokens, not 20: the 18 come back.
    assert budget.lease(LeaseAsk(requests=1, tokens=15, token_correction=-18)).requests == 1


def test_slow_start_doubles_until_429_then_halves_and_searches_back() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, start_rate_per_s=10, clock=clock)
    rates = []
    for _ in range(4):
        drain(budget, clock, ADAPT_PERIOD_S, tasks=2)
        rates.append(budget.rate_per_s)
    assert rates[-1] >= 8 * 10  # doubled each busy second
    too_fast = budget.rate_per_s
    assert too_fast is not None
    budget.lease(LeaseAsk(requests=1, rate_limited=3))
    assert budget.rate_per_s == pytest.approx(too_fast / 2)
    budget.lease(LeaseAsk(requests=1, rate_limited=3))  # the same burst of 429s: once
    assert budget.rate_per_s == pytest.approx(too_fast / 2)
    drain(budget, clock, ADAPT_PERIOD_S * 1.01, tasks=2)  # the period that saw 429s: no growth
    assert budget.rate_per_s == pytest.approx(too_fast / 2)
    for expected in (0.75, 0.875, 0.9375):  # quiet periods halve the distance
        drain(budget, clock, ADAPT_PERIOD_S * 1.01, tasks=2)
        assert budget.rate_per_s == pytest.approx(too_fast * expected)
    drain(budget, clock, ADAPT_PERIOD_S * 1.01, tasks=2)
    drain(budget, clock, ADAPT_PERIOD_S * 1.01, tasks=2)
    probing = budget.rate_per_s
    assert probing is not None and probing < too_fast * 1.1  # past it only by small steps


def test_later_429s_take_a_smaller_step_off() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, start_rate_per_s=100, clock=clock)
    clock.now += DECREASE_COOLDOWN_S
    budget.lease(LeaseAsk(requests=1, rate_limited=1))  # the first: halve
    clock.now += DECREASE_COOLDOWN_S
    halved = budget.rate_per_s
    assert halved is not None
    budget.lease(LeaseAsk(requests=1, rate_limited=1))
    assert budget.rate_per_s == pytest.approx(halved * BACKOFF)


def test_an_unused_rate_does_not_grow() -> None:
    clock = FakeClock(START)
    budget = JobBudget(None, None, adaptive=True, start_rate_per_s=100, clock=clock)
    for _ in range(5):  # one request a second: far under the rate
        clock.now += ADAPT_PERIOD_S
        budget.lease(LeaseAsk(requests=1))
    assert budget.rate_per_s == 100


def test_configured_rate_is_a_ceiling_and_headers_lower_it() -> None:
    clock = FakeClock(START)
    budget = JobBudget(600, None, adaptive=True, start_rate_per_s=1000, clock=clock)
    assert budget.rate_per_s == 10
    drain(budget, clock, 5 * ADAPT_PERIOD_S, tasks=2)
    assert budget.rate_per_s == 10
    budget.lease(LeaseAsk(requests=1, endpoint_requests_per_minute=300))
    assert budget.rate_per_s == pytest.approx(5 * HEADER_MARGIN)
