"""A task's limiter when it cannot reach the driver: the budget its slot keeps for the run."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from pipeline.control.budget import MARGIN
from pipeline.core.config import EndpointConfig, LimitsConfig
from pipeline.http.limiter import build_limiter
from pipeline.http.settings import ClientSettings
from tests.clock import FakeClock

# One task's share: 10 requests a second (less the margin under a known limit).
SHARE = ClientSettings(
    endpoint=EndpointConfig(name="chat", host="http://127.0.0.1:9"),
    limits=LimitsConfig(requests_per_minute=1200, adaptive=False),
    requests_per_minute=600,
    alone=True,
    tasks=2,
    run_id="run-a",
)
INTERVAL = 1 / (10 * MARGIN)


def task(settings: ClientSettings, clock: FakeClock, requests: int) -> float:
    """One task sending `requests` through its limiter: how long its first permit waited."""
    limiter = build_limiter(settings, clock=clock, sleep=clock.sleep)

    async def scenario() -> float:
        started = clock.now
        await limiter.acquire(10)
        first = clock.now - started
        for _ in range(requests - 1):
            await limiter.acquire(10)
        await limiter.close()
        return first

    return asyncio.run(scenario())


def test_the_next_task_of_the_run_goes_on_where_the_slots_last_task_stopped() -> None:
    clock = FakeClock(1000.0)
    assert task(SHARE, clock, 5) == 0  # a budget of its own: the first permit goes at once
    assert clock.now - 1000.0 == pytest.approx(4 * INTERVAL)  # the rest paced
    # The run's next task in this worker goes on with that budget: paced from the last permit
    # (what the task before held and did not use went back to it), not at once.
    assert task(SHARE, clock, 1) == pytest.approx(INTERVAL)
    # A task of another run starts a budget of its own.
    assert task(replace(SHARE, run_id="run-b"), clock, 1) == 0
