"""Rate limits and the concurrency bound: window.py, limits.py and concurrency.py, then the wire.

Unit tests state times through a fake clock; wire tests hold requests with `latency_s` and poll
/stats for the state they need instead of waiting a fixed time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import pytest

from pipeline.serving.concurrency import ConcurrencyGate
from pipeline.serving.limits import Admission, EndpointLimiter, Limits, Refused, reservation
from pipeline.serving.process import LocalEndpoint
from pipeline.serving.window import SlidingWindowLog
from tests.clock import FakeClock

from .conftest import ENDPOINT, OTHER_ENDPOINT
from .wire_client import Reply, post, wait_for_stats

# Bounds waits on the server; a passing test never comes near it.
DEADLINE_S = 10.0

# --- window.py -------------------------------------------------------------------------------


def test_window_counts_only_the_last_window_s() -> None:
    log = SlidingWindowLog(window_s=10)
    log.record(100.0, 3)
    log.record(105.0, 4)

    assert [log.used(t) for t in (105.0, 109.9, 110.0, 114.9, 115.0)] == [7, 7, 4, 4, 0]


def test_wait_is_zero_exactly_when_the_amount_fits() -> None:
    log = SlidingWindowLog(window_s=10)
    log.record(100.0, 6)
    log.record(104.0, 3)

    assert log.wait_s(105.0, amount=1, limit=10) == 0.0
    # 11 > 10: the oldest entry (6) must leave, at 110.
    assert log.wait_s(105.0, amount=2, limit=10) == pytest.approx(5.0)
    # 17 > 10, and still 11 without the 6: the 3 must leave too, at 114.
    assert log.wait_s(105.0, amount=8, limit=10) == pytest.approx(9.0)
    assert log.wait_s(105.0, amount=11, limit=10) == math.inf


def test_settling_replaces_a_reservation_while_it_is_in_the_window() -> None:
    log = SlidingWindowLog(window_s=10)
    reserved = log.record(100.0, 50)
    log.settle(reserved, 20)
    assert log.used(101.0) == 20

    log.settle(log.record(101.0, 5), 0)
    assert log.used(101.0) == 20


def test_settling_an_expired_entry_leaves_the_total_alone() -> None:
    log = SlidingWindowLog(window_s=10)
    entry = log.record(100.0, 50)
    assert log.used(111.0) == 0

    log.settle(entry, 20)

    assert log.used(111.0) == 0


# --- limits.py -------------------------------------------------------------------------------

RPM_2 = Limits(requests=2, tokens=None, window_s=60)


def test_requests_beyond_the_limit_are_refused_until_the_oldest_leaves() -> None:
    clock = FakeClock(start=0.0)
    limiter = EndpointLimiter(clock)

    assert isinstance(limiter.admit("a", 1, RPM_2), Admission)
    clock.now = 10.0
    assert isinstance(limiter.admit("a", 1, RPM_2), Admission)
    clock.now = 15.5
    refused = limiter.admit("a", 1, RPM_2)

    assert isinstance(refused, Refused)
    assert refused.wait_s == pytest.approx(44.5)  # the request at 0 leaves at 60
    assert refused.retry_after == "45"
    assert "requests_per_minute=2" in refused.message
    clock.now = 60.0
    assert isinstance(limiter.admit("a", 1, RPM_2), Admission)


def test_each_endpoint_name_has_its_own_window() -> None:
    limiter = EndpointLimiter(FakeClock())
    one = Limits(requests=1, tokens=None, window_s=60)

    assert isinstance(limiter.admit("a", 1, one), Admission)
    assert isinstance(limiter.admit("b", 1, one), Admission)
    assert isinstance(limiter.admit("a", 1, one), Refused)


def test_tokens_reserve_then_settle_to_the_real_count() -> None:
    clock = FakeClock(start=0.0)
    limiter = EndpointLimiter(clock)
    tpm = Limits(requests=None, tokens=100, window_s=60)

    first = limiter.admit("a", 60, tpm)
    assert isinstance(first, Admission)
    assert isinstance(limiter.admit("a", 60, tpm), Refused)  # 60 reserved + 60 > 100
    first.settle(30)
    first.settle(99)  # settled once: later calls change nothing
    second = limiter.admit("a", 60, tpm)
    assert isinstance(second, Admission)
    second.release()  # no completion: the reservation goes back

    assert limiter.headers("a", tpm) == {
        "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "70"}


def test_token_refusal_waits_for_enough_tokens_to_leave() -> None:
    clock = FakeClock(start=0.0)
    limiter = EndpointLimiter(clock)
    tpm = Limits(requests=None, tokens=100, window_s=60)
    for at, tokens in ((0.0, 40), (20.0, 40), (30.0, 20)):
        clock.now = at
        admitted = limiter.admit("a", tokens, tpm)
        assert isinstance(admitted, Admission)
    clock.now = 30.5

    refused = limiter.admit("a", 50, tpm)

    # 100 used: 50 more fit once 50 have left, i.e. after both 40s (the second leaves at 80).
    assert isinstance(refused, Refused)
    assert refused.wait_s == pytest.approx(49.5)
    assert "tokens_per_minute=100" in refused.message


def test_a_request_larger_than_the_token_limit_can_never_fit() -> None:
    limiter = EndpointLimiter(FakeClock())

    refused = limiter.admit("a", 101, Limits(requests=None, tokens=100, window_s=30))

    assert isinstance(refused, Refused)
    assert refused.retry_after == "30"
    assert "101 tokens (prompt + max_tokens)" in refused.message


def test_the_tighter_limit_decides_the_wait() -> None:
    clock = FakeClock(start=0.0)
    limiter = EndpointLimiter(clock)
    both = Limits(requests=1, tokens=100, window_s=60)
    first = limiter.admit("a", 10, both)
    assert isinstance(first, Admission)
    clock.now = 1.0

    refused = limiter.admit("a", 10, both)

    assert isinstance(refused, Refused) and refused.wait_s == pytest.approx(59.0)
    assert "requests_per_minute=1" in refused.message


@pytest.mark.parametrize(
    ("wait_s", "header"), [(0.0, "1"), (0.01, "1"), (1.0, "1"), (1.2, "2"), (59.5, "60")]
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    wait_s: float, header: str
) -> None:
    assert Refused(wait_s, "m").retry_after == header


def test_headers_report_each_limit_set_and_nothing_when_unlimited() -> None:
    limiter = EndpointLimiter(FakeClock())
    limiter.admit("a", 10, Limits(requests=5, tokens=None, window_s=60))

    assert limiter.headers("a", Limits(requests=5, tokens=None, window_s=60)) == {
        "x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "4"}
    assert limiter.headers("a", Limits(requests=None, tokens=None, window_s=60)) == {}
    # Announced per minute whatever the window, as OpenAI's are: 5 per second is 300/min.
    assert limiter.headers("b", Limits(requests=5, tokens=None, window_s=1)) == {
        "x-ratelimit-limit-requests": "300", "x-ratelimit-remaining-requests": "5"}


def test_unlimited_admits_without_recording() -> None:
    limiter = EndpointLimiter(FakeClock())
    unlimited = Limits(requests=None, tokens=None, window_s=60)
    for _ in range(3):
        assert isinstance(limiter.admit("a", 10, unlimited), Admission)

    # Nothing was recorded while unlimited, so a limit set now starts from an empty window.
    assert limiter.headers("a", RPM_2)["x-ratelimit-remaining-requests"] == "2"


def test_a_new_window_length_starts_fresh_windows() -> None:
    limiter = EndpointLimiter(FakeClock())
    limiter.admit("a", 1, RPM_2)
    limiter.admit("a", 1, RPM_2)

    assert isinstance(limiter.admit("a", 1, Limits(requests=2, tokens=None, window_s=5)), Admission)


def test_reset_forgets_every_window() -> None:
    limiter = EndpointLimiter(FakeClock())
    limiter.admit("a", 1, RPM_2)
    limiter.admit("a", 1, RPM_2)

    limiter.reset()

    assert isinstance(limiter.admit("a", 1, RPM_2), Admission)


def test_reservation_is_prompt_words_plus_the_output_budget() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b c"}]

    assert reservation(messages, max_tokens=10) == 15


# --- concurrency.py --------------------------------------------------------------------------


async def yield_to_tasks() -> None:
    """Let every ready task run up to its next wait: zero-length yields, not a timed wait."""
    for _ in range(5):
        await asyncio.sleep(0)


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a gate scenario; one that never finishes fails at the deadline instead of hanging."""
    asyncio.run(asyncio.wait_for(coro, DEADLINE_S))


def test_gate_admits_up_to_the_limit_then_queues_in_arrival_order() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(limit=2)
        assert await gate.enter(queue=True) and await gate.enter(queue=True)
        order: list[str] = []

        async def wait(name: str) -> None:
            await gate.enter(queue=True)
            order.append(name)

        tasks = [asyncio.create_task(wait(name)) for name in ("first", "second")]
        await yield_to_tasks()
        assert (gate.active, gate.queued, order) == (2, 2, [])
        gate.leave()
        await yield_to_tasks()
        assert (gate.active, gate.queued, order) == (2, 1, ["first"])
        gate.leave()
        await asyncio.gather(*tasks)
        assert (gate.active, gate.queued, order) == (2, 0, ["first", "second"])

    run(scenario())


def test_gate_in_reject_mode_refuses_at_once() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(limit=1)
        assert await gate.enter(queue=False)
        assert not await gate.enter(queue=False)
        gate.leave()
        assert await gate.enter(queue=False)

    run(scenario())


def test_unbounded_gate_never_waits() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(limit=None)
        for _ in range(100):
            assert await gate.enter(queue=False)
        assert gate.active == 100

    run(scenario())


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(limit=1)
        await gate.enter(queue=True)
        quitter = asyncio.create_task(gate.enter(queue=True))
        stayer = asyncio.create_task(gate.enter(queue=True))
        await yield_to_tasks()
        quitter.cancel()
        await yield_to_tasks()
        assert gate.queued == 1
        gate.leave()
        assert await stayer
        assert gate.active == 1

    run(scenario())


def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(limit=1)
        await gate.enter(queue=True)
        unlucky = asyncio.create_task(gate.enter(queue=True))
        next_in_line = asyncio.create_task(gate.enter(queue=True))
        await yield_to_tasks()
        gate.leave()  # hands the slot to `unlucky`...
        unlucky.cancel()  # ...which is cancelled before it can run
        assert await next_in_line
        assert unlucky.cancelled()
        assert (gate.active, gate.queued) == (1, 0)

    run(scenario())


def test_raising_the_limit_lets_waiters_in() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(limit=1)
        await gate.enter(queue=True)
        waiters = [asyncio.create_task(gate.enter(queue=True)) for _ in range(2)]
        await yield_to_tasks()
        gate.resize(None)
        assert await asyncio.gather(*waiters) == [True, True]
        assert gate.active == 3

    run(scenario())


def test_lowering_the_limit_holds_newcomers_until_enough_leave() -> None:
    async def scenario() -> None:
        gate = ConcurrencyGate(limit=3)
        for _ in range(3):
            await gate.enter(queue=True)
        gate.resize(1)
        assert not await gate.enter(queue=False)
        gate.leave()
        gate.leave()
        assert not await gate.enter(queue=False)
        gate.leave()
        assert await gate.enter(queue=False)

    run(scenario())


# --- wire: rate limits -----------------------------------------------------------------------


def user(content: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


def invoke(endpoint: LocalEndpoint, body: object, name: str = ENDPOINT) -> Reply:
    return post(f"{endpoint.base_url}/{name}/invocations", body)


def assert_limited(reply: Reply) -> str:
    """Check a rate-limit refusal; return its message."""
    assert reply.status == 429, reply.body
    assert set(reply.body) == {"error_code", "message"}
    assert reply.body["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    message: str = reply.body["message"]
    return message


def test_requests_over_the_limit_get_429_with_retry_after(endpoint: LocalEndpoint) -> None:
    endpoint.control(requests_per_minute=2, window_s=10)

    replies = [invoke(endpoint, user(f"r{i}")) for i in range(3)]

    assert [r.status for r in replies] == [200, 200, 429]
    assert "requests_per_minute=2" in assert_limited(replies[2])
    # The first request leaves the 10 s window in a little under 10 s: rounded up, 10.
    assert replies[2].headers["Retry-After"] == "10"
    assert replies[2].headers["x-ratelimit-remaining-requests"] == "0"
    # Limits are per endpoint name: the other name still has its whole window.
    other = post(f"{endpoint.base_url}/chat/completions", {"model": OTHER_ENDPOINT, **user("x")})
    assert other.status == 200
    stats = endpoint.stats()
    assert (stats["rate_limited"], stats["by_status"]) == (1, {"200": 3, "429": 1})
    assert stats["faults_injected"] == 0


def test_reset_forgets_the_windows(endpoint: LocalEndpoint) -> None:
    endpoint.control(requests_per_minute=1)
    assert [invoke(endpoint, user(f"r{i}")).status for i in range(2)] == [200, 429]

    endpoint.reset()
    endpoint.control(requests_per_minute=1)

    assert invoke(endpoint, user("again")).status == 200


def test_the_window_slides(endpoint: LocalEndpoint) -> None:
    endpoint.control(requests_per_minute=1, window_s=0.3)
    assert invoke(endpoint, user("first")).status == 200
    admitted_at = time.monotonic()
    refused = invoke(endpoint, user("second"))
    assert_limited(refused)
    assert refused.headers["Retry-After"] == "1"  # < 1 s rounds up to the 1 s minimum

    deadline = admitted_at + DEADLINE_S
    while (reply := invoke(endpoint, user("again"))).status == 429:
        assert time.monotonic() < deadline, "the window never admitted again"

    assert reply.status == 200
    assert time.monotonic() - admitted_at >= 0.3 - 0.01  # not before the first one left


def test_tokens_count_prompt_and_completion_after_a_reservation(endpoint: LocalEndpoint) -> None:
    endpoint.control(tokens_per_minute=20, window_s=10)
    # Each reserves 3 prompt + 5 max_tokens = 8 and really uses 3 + 3 = 6 tokens.
    body = user("a b c", max_tokens=5)

    replies = [invoke(endpoint, body) for _ in range(4)]

    # With reservations kept instead of settled (8 each), the third would be refused already.
    assert [r.status for r in replies] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-tokens"] for r in replies] == ["14", "8", "2", "2"]
    assert "tokens_per_minute=20" in assert_limited(replies[3])
    assert replies[3].headers["Retry-After"] == "10"
    assert endpoint.stats()["tokens_served"] == 18


def test_a_request_over_the_whole_token_limit_is_refused(endpoint: LocalEndpoint) -> None:
    endpoint.control(tokens_per_minute=10, window_s=5)

    reply = invoke(endpoint, user("a b c", max_tokens=8))
    # Without max_tokens the reservation is the server's whole max_tokens_limit.
    unbudgeted = invoke(endpoint, user("a b c"))

    assert "11 tokens" in assert_limited(reply)
    assert reply.headers["Retry-After"] == "5"
    assert "4099 tokens" in assert_limited(unbudgeted)


def test_ratelimit_headers_on_model_route_replies(endpoint: LocalEndpoint) -> None:
    assert not any(h.startswith("x-ratelimit") for h in invoke(endpoint, user("a")).headers)
    endpoint.control(requests_per_minute=5, tokens_per_minute=100)

    ok = invoke(endpoint, user("a b", max_tokens=10))
    invalid = invoke(endpoint, {"messages": []})
    endpoint.control(error_rate=1.0)
    faulted = invoke(endpoint, user("c", max_tokens=10))

    assert {k: v for k, v in ok.headers.items() if k.startswith("x-ratelimit")} == {
        "x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "96"}
    endpoint.control(limit_headers=False)  # as Databricks: limits enforced, not announced
    silent = invoke(endpoint, user("d", max_tokens=10))
    assert not any(h.startswith("x-ratelimit") for h in silent.headers)
    assert invalid.status == 400
    assert invalid.headers["x-ratelimit-remaining-requests"] == "4"  # refused before admission
    assert faulted.status >= 500
    # A fault takes a request from the window but no tokens.
    assert faulted.headers["x-ratelimit-remaining-requests"] == "3"
    assert faulted.headers["x-ratelimit-remaining-tokens"] == "96"


# --- wire: bounded concurrency ---------------------------------------------------------------


async def send(session: aiohttp.ClientSession, endpoint: LocalEndpoint, prompt: str) -> int:
    url = f"{endpoint.base_url}/{ENDPOINT}/invocations"
    async with session.post(url, json=user(prompt)) as reply:
        await reply.read()
        return reply.status


async def cancel_all(tasks: list[asyncio.Task[int]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def with_session(scenario: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await scenario(session)

    asyncio.run(main())


def test_queue_mode_serves_everyone_within_the_bound(endpoint: LocalEndpoint) -> None:
    endpoint.control(max_concurrency=2, latency_s=0.15)

    async def scenario(session: aiohttp.ClientSession) -> None:
        statuses = await asyncio.gather(*(send(session, endpoint, f"p{i}") for i in range(6)))
        assert statuses == [200] * 6

    with_session(scenario)

    stats = endpoint.stats()
    assert stats["peak_in_flight"] == 2
    assert (stats["rejected_overload"], stats["queued"], stats["in_flight"]) == (0, 0, 0)


def test_queued_requests_wait_and_leave_with_their_client(endpoint: LocalEndpoint) -> None:
    endpoint.control(max_concurrency=1, latency_s=30)

    async def scenario(session: aiohttp.ClientSession) -> None:
        holder = [asyncio.create_task(send(session, endpoint, "holder"))]
        await wait_for_stats(endpoint, lambda s: s["in_flight"] == 1)
        waiter = [asyncio.create_task(send(session, endpoint, "waiter"))]
        await wait_for_stats(endpoint, lambda s: s["queued"] == 1)
        await cancel_all(waiter)
        await wait_for_stats(endpoint, lambda s: s["queued"] == 0 and bool(s["by_status"]))
        await cancel_all(holder)
        stats = await wait_for_stats(endpoint, lambda s: s["in_flight"] == 0)
        assert stats["by_status"] == {"499": 2}  # both clients went away
        endpoint.control(latency_s=0)
        # Neither slot leaked: a new request gets the only one at once.
        assert await send(session, endpoint, "after") == 200

    with_session(scenario)

    assert endpoint.stats()["peak_in_flight"] == 1


def test_reject_mode_answers_503_beyond_the_bound(endpoint: LocalEndpoint) -> None:
    endpoint.control(max_concurrency=2, overload="reject", latency_s=30)
    url = f"{endpoint.base_url}/{ENDPOINT}/invocations"

    async def scenario(session: aiohttp.ClientSession) -> None:
        held = [asyncio.create_task(send(session, endpoint, f"held {i}")) for i in range(2)]
        await wait_for_stats(endpoint, lambda s: s["in_flight"] == 2)
        for i in range(3):
            async with session.post(url, json=user(f"extra {i}")) as reply:
                assert reply.status == 503
                assert await reply.json() == {
                    "error_code": "TEMPORARILY_UNAVAILABLE",
                    "message": "endpoint is at max_concurrency=2; retry later"}
        await cancel_all(held)
        await wait_for_stats(endpoint, lambda s: s["in_flight"] == 0)

    with_session(scenario)

    stats = endpoint.stats()
    assert (stats["rejected_overload"], stats["peak_in_flight"]) == (3, 2)
    assert stats["by_status"] == {"499": 2, "503": 3}
    assert stats["faults_injected"] == 0
