"""The driver's budget server (`control.server`) and the tasks' leasing client
(`control.agents`), over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web

from pipeline.control.agents import MAX_LEASE_FAILURES, DriverLessor, LocalLessor, SharedLimits
from pipeline.control.budget import MARGIN, JobBudget
from pipeline.control.progress import Tally
from pipeline.control.protocol import LeaseAsk, LeaseGrant, ProgressReport, TokenReply
from pipeline.control.server import DriverServer
from pipeline.core.ratelimit import RateLimits
from pipeline.core.secrets import Secret
from pipeline.serving.process import free_port
from tests.clock import FakeClock
from tests.conftest import one_route


def test_tasks_share_the_drivers_budget_and_report_what_they_saw() -> None:
    budget = JobBudget(6000, None, adaptive=False)  # 100 requests/s

    async def two_tasks(url: str) -> None:
        tasks = [SharedLimits(DriverLessor(url), RateLimits(None, None), batch=8, uses_tokens=False)
                 for _ in range(2)]  # fmt: skip

        async def task(limits: SharedLimits) -> None:
            for _ in range(10):
                await limits.acquire(10)
                limits.observe(200, {"x-ratelimit-limit-requests": "12000"})
            limits.observe(429, {})
            await limits.acquire(10)  # the next lease carries the reports
            await limits.close()

        await asyncio.gather(*(task(t) for t in tasks))

    with DriverServer(budget, bind="127.0.0.1", advertise="127.0.0.1") as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/lease")
        asyncio.run(two_tasks(server.url))
    assert budget.rate_limited == 2
    assert 0 < budget.ok <= 20
    # The announced 12000/min is above the configured limit.
    assert budget.rate_per_s == pytest.approx(100 * MARGIN)


def test_an_unreachable_driver_leaves_each_task_its_static_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    async def scenario() -> None:
        url = f"http://127.0.0.1:{free_port()}/key/lease"  # nothing listens there
        limits = SharedLimits(DriverLessor(url), RateLimits(None, None), batch=4, uses_tokens=False,
                              sleep=no_wait)  # fmt: skip
        for _ in range(3):
            await limits.acquire(10)  # never blocks: the fallback has no limits
        await limits.close()

    with caplog.at_level(logging.WARNING, logger="pipeline.control.agents"):
        asyncio.run(scenario())
    assert len(waits) == MAX_LEASE_FAILURES - 1  # retried, then gave up on the driver
    assert "static share" in caplog.text


def test_what_is_seen_while_a_lease_is_in_flight_goes_with_the_next_lease() -> None:
    """A 429 observed while the driver takes its time to answer a lease is reported later,
    not lost (the adaptive rate must see exactly the 429s of busy moments)."""
    asks: list[dict[str, float]] = []

    async def scenario() -> None:
        asked, answer = asyncio.Event(), asyncio.Event()

        async def lease(request: web.Request) -> web.Response:
            asks.append(await request.json())
            asked.set()
            await answer.wait()  # a slow driver: the task keeps working meanwhile
            return web.json_response({"requests": 1, "tokens": 0.0, "wait_s": 0.0})

        async with one_route("/lease", lease) as port:
            lessor = DriverLessor(f"http://127.0.0.1:{port}/lease")
            limits = SharedLimits(lessor, RateLimits(None, None), batch=1, uses_tokens=False)
            limits.observe(429, {})
            first = asyncio.create_task(limits.acquire(10))
            await asked.wait()
            limits.observe(429, {})  # while the first lease is in flight
            limits.observe(200, {})
            answer.set()
            await first
            await limits.acquire(10)  # the next lease carries what the first could not
            await limits.close()

    asyncio.run(scenario())
    assert [(a["rate_limited"], a["ok"]) for a in asks[:2]] == [(1, 0), (1, 1)]
    assert [a["requests"] for a in asks[2:]] == [0]  # closing: the last ask, nothing more


def test_every_message_reads_back_as_sent_and_ignores_fields_it_does_not_know() -> None:
    """Both sides use `control.protocol`: a field one side adds never breaks the other."""
    messages: list[LeaseAsk | LeaseGrant | ProgressReport | TokenReply] = [
        LeaseAsk(requests=8, tokens=80.0, rate_limited=2, endpoint_requests_per_minute=600.0),
        LeaseGrant(3, 30.0, 0.0),
        ProgressReport("task-a", 4, Tally(rows=3, ok=2, errors=1, requests=5)),
        TokenReply(Secret("dapi-driver-token")),
    ]
    for message in messages:
        sent = json.loads(json.dumps({**message.to_json(), "added_later": 1}))
        assert type(message).from_json(sent) == message
    assert "dapi-driver-token" not in repr(messages[-1])


def test_a_task_alone_keeps_its_part_of_an_announced_endpoint_limit() -> None:
    # Four tasks that cannot reach the driver: the endpoint's 6000/min is the whole endpoint's,
    # so each task's own budget may take a quarter of it (less the headers' margin).
    budget = JobBudget(None, None, adaptive=True)
    lessor = LocalLessor(budget, share=0.25)
    ask = LeaseAsk(requests=8, ok=8, endpoint_requests_per_minute=6000)
    asyncio.run(lessor.lease(ask))
    assert budget.rate_per_s is not None
    assert budget.rate_per_s <= 6000 / 60 * 0.25


def test_a_tasks_permits_go_at_their_times_and_what_it_did_not_use_goes_back() -> None:
    clock = FakeClock(1000.0)
    budget = JobBudget(6000, None, adaptive=False, clock=clock)  # 98.5/s, with the margin
    limits = SharedLimits(LocalLessor(budget), RateLimits(None, None), batch=8,
                          uses_tokens=False, clock=clock, sleep=clock.sleep)  # fmt: skip

    async def scenario() -> None:
        for _ in range(30):
            await limits.acquire(10)
        await limits.close()

    asyncio.run(scenario())
    # Paced, not sent at once: the 30th permit is due 29 intervals after the first.
    assert clock.now - 1000.0 == pytest.approx(29 / (100 * MARGIN), abs=0.001)
    # What the task held beyond its 30 went back: the next permit is due one interval after
    # the last one used, not after those it held.
    next_one = budget.lease(LeaseAsk(requests=1, task="next"))
    assert next_one.start_s == pytest.approx(1 / (100 * MARGIN))


def test_a_task_whose_input_ended_gives_back_what_nobody_waits_for_and_asks_only_for_retries(
) -> None:
    clock = FakeClock(1000.0)
    budget = JobBudget(6000, None, adaptive=False, clock=clock)  # 98.5/s, with the margin
    limits = SharedLimits(LocalLessor(budget), RateLimits(None, None), batch=8,
                          uses_tokens=False, clock=clock, sleep=clock.sleep)  # fmt: skip

    async def scenario() -> None:
        await limits.acquire(10)  # holds the rest of its lease
        limits.ending()
        await asyncio.sleep(0)  # the permits go back in the background
        # Given back at once, and the task no longer counts as running: another task's
        # permit is due one interval after the one used, and it books as the oldest.
        other = budget.lease(LeaseAsk(requests=8, task="other"))
        assert other.start_s == pytest.approx(1 / (100 * MARGIN) - (clock.now - 1000.0))
        assert other.requests > 1
        # A retry asks for one permit, not a batch.
        asked: list[int] = []
        lease = budget.lease

        def counted(ask: LeaseAsk) -> LeaseGrant:
            asked.append(ask.requests)
            return lease(ask)

        budget.lease = counted  # type: ignore[method-assign]
        await limits.acquire(10)
        assert asked[0] == 1
        await limits.close()

    asyncio.run(scenario())


def test_a_task_whose_input_ended_asks_only_for_what_its_permits_do_not_cover() -> None:
    # What it asked for beyond that would go back only after its last request: permits booked
    # ahead, which the tasks after it find only when they next ask.
    clock = FakeClock(1000.0)
    budget = JobBudget(60_000, None, adaptive=False, clock=clock)  # 985/s: 50 per lease
    limits = SharedLimits(LocalLessor(budget), RateLimits(None, None), batch=64,
                          uses_tokens=False, clock=clock, sleep=clock.sleep)  # fmt: skip
    asks: list[LeaseAsk] = []
    lease = budget.lease

    def recorded(ask: LeaseAsk) -> LeaseGrant:
        asks.append(ask)
        return lease(ask)

    budget.lease = recorded  # type: ignore[method-assign]

    async def scenario() -> None:
        await limits.acquire(10)  # one lease: 49 permits held after it
        limits.ending()
        await asyncio.gather(*(limits.acquire(10) for _ in range(70)))
        await limits.close()

    asyncio.run(scenario())
    ended = [ask.requests for ask in asks].index(0)  # ending(): nobody waits, all go back
    assert asks[ended].returned == 49
    # Then 70 requests (retries): leased as they are needed, and nothing left to give back.
    assert asks[ended + 1].requests == 70
    assert sum(ask.returned for ask in asks[ended + 1 :]) == 0
