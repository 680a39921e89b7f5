"""The fault plan (faults.py), then each fault as a plain aiohttp client sees it (fault_replies.py).

Wire tests run against their own server whose log is checked after every test: a fault must
look broken to the client, never to the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline.serving.fault_replies import MALFORMED_BODY
from pipeline.serving.faults import BrokenReply, Fault, FaultPlan
from pipeline.serving.process import LocalEndpoint
from pipeline.serving.settings import ServingSettings

from .conftest import ENDPOINT
from .wire_client import wait_for_stats

FAIL_TWICE = ServingSettings(fail_first=2)
RATE_FAULTS = ("error", "timeout", "reset", "malformed", "truncated", "empty_choices")
# Bounds waits on the server; a passing test never comes near it.
DEADLINE_S = 10.0

# --- the plan --------------------------------------------------------------------------------


def outcomes(plan: FaultPlan, key: str, attempts: int, settings: ServingSettings) -> list[bool]:
    """True for each attempt that got a fault."""
    return [plan.decide(key, settings) is not None for _ in range(attempts)]


def kinds(plan: FaultPlan, settings: ServingSettings, n: int) -> list[str | None]:
    """The fault kind (or None) of `n` distinct requests in a row."""
    decided = (plan.decide(f"request {i}", settings) for i in range(n))
    return [None if fault is None else fault.kind for fault in decided]


def test_each_distinct_request_fails_exactly_fail_first_times() -> None:
    plan = FaultPlan()

    assert outcomes(plan, "a", 4, FAIL_TWICE) == [True, True, False, False]
    assert outcomes(plan, "b", 3, FAIL_TWICE) == [True, True, False]
    assert plan.distinct_keys == 2


def test_interleaved_requests_keep_separate_counts() -> None:
    plan = FaultPlan()

    got = [plan.decide(key, FAIL_TWICE) is not None for key in ["a", "b", "a", "b", "a", "b"]]

    assert got == [True, True, True, True, False, False]


def test_fault_carries_status_code_and_retry_after() -> None:
    settings = ServingSettings(fail_first=1, fail_status=429, retry_after_s=0.25)

    fault = FaultPlan().decide("a", settings)

    assert fault == Fault(
        status=429,
        error_code="REQUEST_LIMIT_EXCEEDED",
        message="injected fault: attempt 1 of 1 failing",
        retry_after_s=0.25,
        kind="fail_first",
    )


def test_no_faults_by_default_but_requests_are_still_remembered() -> None:
    plan = FaultPlan()

    assert outcomes(plan, "a", 2, ServingSettings()) == [False, False]
    assert plan.distinct_keys == 1


def test_reset_forgets_every_request() -> None:
    plan = FaultPlan()
    outcomes(plan, "a", 2, FAIL_TWICE)

    plan.reset(seed=0)

    assert plan.distinct_keys == 0
    assert outcomes(plan, "a", 1, FAIL_TWICE) == [True]


@pytest.mark.parametrize("kind", RATE_FAULTS)
def test_rate_one_gives_that_fault_to_every_request(kind: str) -> None:
    settings = ServingSettings.from_dict({f"{kind}_rate": 1.0, "timeout_hold_s": 7.0})

    assert kinds(FaultPlan(), settings, 20) == [kind] * 20


def test_broken_replies_carry_the_timeout_hold() -> None:
    settings = ServingSettings(timeout_rate=1.0, timeout_hold_s=7.0)

    assert FaultPlan().decide("a", settings) == BrokenReply("timeout", hold_s=7.0)
    assert FaultPlan().decide("a", ServingSettings(reset_rate=1.0)) == BrokenReply("reset")


def test_random_errors_use_the_configured_statuses() -> None:
    settings = ServingSettings(error_rate=1.0, error_statuses=(502, 504), retry_after_s=1.5)
    plan = FaultPlan()

    faults = [plan.decide(f"r{i}", settings) for i in range(40)]

    assert {f.status for f in faults if isinstance(f, Fault)} == {502, 504}
    assert all(isinstance(f, Fault) and f.kind == "error" and f.retry_after_s == 1.5
               and f.error_code == "TEMPORARILY_UNAVAILABLE" for f in faults)


def test_each_kind_hits_its_own_fraction() -> None:
    settings = ServingSettings(error_rate=0.1, timeout_rate=0.05, reset_rate=0.1,
                               malformed_rate=0.05, truncated_rate=0.1, empty_choices_rate=0.2)

    counts = Counter(kinds(FaultPlan(), settings, 20_000))

    expected = {"error": 0.1, "timeout": 0.05, "reset": 0.1, "malformed": 0.05,
                "truncated": 0.1, "empty_choices": 0.2, None: 0.4}
    for kind, fraction in expected.items():
        assert counts[kind] / 20_000 == pytest.approx(fraction, abs=0.01), kind


def test_fail_first_comes_before_random_faults() -> None:
    settings = ServingSettings(fail_first=1, empty_choices_rate=1.0)
    plan = FaultPlan()

    assert [plan.decide("a", settings).kind for _ in range(3)] == [  # type: ignore[union-attr]
        "fail_first", "empty_choices", "empty_choices"]


MIXED = ServingSettings(error_rate=0.2, reset_rate=0.2, empty_choices_rate=0.2)


def test_the_same_seed_replays_the_same_faults() -> None:
    assert kinds(FaultPlan(seed=5), MIXED, 50) == kinds(FaultPlan(seed=5), MIXED, 50)
    assert kinds(FaultPlan(seed=5), MIXED, 50) != kinds(FaultPlan(seed=6), MIXED, 50)


def test_reseed_restarts_the_sequence() -> None:
    plan = FaultPlan(seed=5)
    first = kinds(plan, MIXED, 30)

    plan.reseed(5)

    assert kinds(plan, MIXED, 30) == first


def test_nothing_is_drawn_while_every_rate_is_zero() -> None:
    plan = FaultPlan(seed=5)
    kinds(plan, ServingSettings(), 30)

    assert kinds(plan, MIXED, 30) == kinds(FaultPlan(seed=5), MIXED, 30)


# --- on the wire -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _logged_process(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalEndpoint, Path]]:
    log = tmp_path_factory.mktemp("serving") / "server.log"
    with LocalEndpoint("--endpoint-name", ENDPOINT, log_path=log) as endpoint:
        yield endpoint, log


@pytest.fixture
def server(_logged_process: tuple[LocalEndpoint, Path]) -> Iterator[LocalEndpoint]:
    """A reset server; fails the test if the server logged an error or a traceback meanwhile."""
    endpoint, log = _logged_process
    endpoint.reset()
    logged_before = len(log.read_text())
    yield endpoint
    logged = log.read_text()[logged_before:]
    assert "Traceback" not in logged and " ERROR " not in logged, logged


def user(content: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


def invocations(endpoint: LocalEndpoint) -> str:
    return f"{endpoint.base_url}/{ENDPOINT}/invocations"


def with_session(
    scenario: Callable[[aiohttp.ClientSession], Awaitable[None]], timeout_s: float = DEADLINE_S
) -> None:
    async def main() -> None:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await scenario(session)

    asyncio.run(main())


def faults_seen(endpoint: LocalEndpoint) -> dict[str, int]:
    """The non-zero fault counters."""
    stats = endpoint.stats()
    seen = {kind: n for kind, n in stats["faults_by_kind"].items() if n}
    assert stats["faults_injected"] == sum(seen.values())
    return seen


def test_error_rate_answers_databricks_errors(server: LocalEndpoint) -> None:
    server.control(error_rate=1.0, error_statuses=[502], retry_after_s=0.5)

    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.post(invocations(server), json=user("hi")) as reply:
            assert reply.status == 502
            assert reply.content_type == "application/json"
            assert reply.headers["Retry-After"] == "0.5"
            assert await reply.json() == {"error_code": "TEMPORARILY_UNAVAILABLE",
                                          "message": "injected fault: random error 502"}

    with_session(scenario)

    assert faults_seen(server) == {"error": 1}


def test_random_errors_spread_over_the_default_statuses(server: LocalEndpoint) -> None:
    server.control(error_rate=1.0)

    async def scenario(session: aiohttp.ClientSession) -> None:
        statuses = set()
        for i in range(30):
            async with session.post(invocations(server), json=user(f"r{i}")) as reply:
                statuses.add(reply.status)
        assert statuses == {500, 502, 503}

    with_session(scenario)


def test_timeout_holds_until_the_client_gives_up(server: LocalEndpoint) -> None:
    server.control(timeout_rate=1.0)

    async def scenario(session: aiohttp.ClientSession) -> None:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(invocations(server), json=user("hi")) as reply:
                await reply.read()
        assert time.monotonic() - started >= 0.5 - 0.01
        # The client is gone: the server stops holding (no 300 s hold left behind).
        stats = await wait_for_stats(server, lambda s: s["in_flight"] == 0)
        assert stats["by_status"] == {"499": 1}

    with_session(scenario, timeout_s=0.5)

    assert faults_seen(server) == {"timeout": 1}


def test_a_held_request_does_not_block_others(server: LocalEndpoint) -> None:
    server.control(timeout_rate=1.0)

    async def scenario(session: aiohttp.ClientSession) -> None:
        async def held() -> None:
            async with session.post(invocations(server), json=user("held")) as reply:
                await reply.read()

        holding = asyncio.create_task(held())
        await wait_for_stats(server, lambda s: s["faults_by_kind"]["timeout"] == 1)
        server.control(timeout_rate=0)
        async with session.post(invocations(server), json=user("other")) as reply:
            assert reply.status == 200
        assert server.stats()["in_flight"] == 1  # still holding the first
        holding.cancel()
        await asyncio.gather(holding, return_exceptions=True)
        await wait_for_stats(server, lambda s: s["in_flight"] == 0)

    with_session(scenario)


def test_a_timeout_hold_ends_in_a_504(server: LocalEndpoint) -> None:
    server.control(timeout_rate=1.0, timeout_hold_s=0.05)

    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.post(invocations(server), json=user("hi")) as reply:
            assert reply.status == 504
            assert await reply.json() == {"error_code": "TEMPORARILY_UNAVAILABLE",
                                          "message": "upstream request timeout"}

    with_session(scenario)


def test_shutdown_ends_a_timeout_hold_at_once() -> None:
    with LocalEndpoint("--endpoint-name", ENDPOINT, "--timeout-rate", "1") as endpoint:
        stop_while_holding(endpoint)


def stop_while_holding(endpoint: LocalEndpoint) -> None:
    async def scenario(session: aiohttp.ClientSession) -> None:
        async def held() -> int:
            async with session.post(invocations(endpoint), json=user("held")) as reply:
                return reply.status

        holding = asyncio.create_task(held())
        await wait_for_stats(endpoint, lambda s: s["in_flight"] == 1)
        started = time.monotonic()
        await asyncio.to_thread(endpoint.stop)
        # Well inside aiohttp's grace period (5 s, then 5 more before it gives up waiting).
        assert time.monotonic() - started < 4.0
        assert await holding == 504

    with_session(scenario)


def test_reset_drops_the_connection_without_a_response(server: LocalEndpoint) -> None:
    server.control(reset_rate=1.0)

    async def scenario(session: aiohttp.ClientSession) -> None:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            async with session.post(invocations(server), json=user("hi")) as reply:
                await reply.read()
        server.control(reset_rate=0)
        async with session.post(invocations(server), json=user("hi")) as reply:
            assert reply.status == 200

    with_session(scenario)

    assert server.stats()["by_status"] == {"200": 1, "444": 1}
    assert faults_seen(server) == {"reset": 1}


def test_malformed_is_a_200_json_reply_that_is_not_json(server: LocalEndpoint) -> None:
    server.control(malformed_rate=1.0)

    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.post(invocations(server), json=user("hi")) as reply:
            assert (reply.status, reply.content_type) == (200, "application/json")
            raw = await reply.read()
        assert raw == MALFORMED_BODY
        with pytest.raises(ValueError):
            json.loads(raw)

    with_session(scenario)

    assert faults_seen(server) == {"malformed": 1}


def test_truncated_promises_more_bytes_than_it_sends(server: LocalEndpoint) -> None:
    server.control(truncated_rate=1.0)

    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.post(invocations(server), json=user("hi")) as reply:
            assert (reply.status, reply.content_type) == (200, "application/json")
            assert int(reply.headers["Content-Length"]) > 0
            with pytest.raises(aiohttp.ClientPayloadError):
                await reply.read()

    with_session(scenario)

    assert server.stats()["by_status"] == {"200": 1}
    assert faults_seen(server) == {"truncated": 1}


@pytest.mark.parametrize(
    ("route", "body", "empty_key"),
    [
        (f"/{ENDPOINT}/invocations", user("hi"), "choices"),
        ("/chat/completions", {"model": ENDPOINT, **user("hi")}, "choices"),
        ("/responses", {"model": ENDPOINT, "input": "hi"}, "output"),
    ],
)
def test_empty_choices_is_valid_json_with_nothing_in_it(
    server: LocalEndpoint, route: str, body: dict[str, Any], empty_key: str
) -> None:
    server.control(empty_choices_rate=1.0)

    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.post(server.base_url + route, json=body) as reply:
            assert reply.status == 200
            answer = await reply.json()
        assert answer[empty_key] == []
        assert answer["object"] == ("response" if route == "/responses" else "chat.completion")
        assert answer["model"] == ENDPOINT

    with_session(scenario)

    assert faults_seen(server) == {"empty_choices": 1}


def test_faults_apply_only_to_valid_requests(server: LocalEndpoint) -> None:
    server.control(reset_rate=1.0)

    async def scenario(session: aiohttp.ClientSession) -> None:
        async with session.post(invocations(server), json={"messages": []}) as reply:
            assert reply.status == 400
        async with session.post(f"{server.base_url}/nope/invocations", json=user("x")) as reply:
            assert reply.status == 404

    with_session(scenario)

    assert faults_seen(server) == {}


def test_the_seed_replays_the_same_faults(server: LocalEndpoint) -> None:
    def run_plan() -> list[int]:
        server.control(seed=11, error_rate=0.3, empty_choices_rate=0.3, error_statuses=[500])
        statuses: list[int] = []

        async def scenario(session: aiohttp.ClientSession) -> None:
            for i in range(20):
                async with session.post(invocations(server), json=user(f"r{i}")) as reply:
                    body = await reply.read()
                    statuses.append(-1 if b'"choices": []' in body else reply.status)

        with_session(scenario)
        return statuses

    first = run_plan()
    assert run_plan() == first  # posting `seed` restarts the sequence
    assert set(first) == {-1, 200, 500}


def test_mixed_plan_counters_add_up_to_what_the_client_saw(server: LocalEndpoint) -> None:
    server.control(error_rate=0.15, timeout_rate=0.15, reset_rate=0.15, malformed_rate=0.15,
                   truncated_rate=0.15, empty_choices_rate=0.15, timeout_hold_s=0.05)
    seen: Counter[str] = Counter()
    tokens = 0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal tokens
        kind, used = await classify(session, invocations(server), user(f"prompt {i}"))
        seen[kind] += 1
        tokens += used

    async def scenario(session: aiohttp.ClientSession) -> None:
        gate = asyncio.Semaphore(20)

        async def bounded(i: int) -> None:
            async with gate:
                await one(session, i)

        await asyncio.gather(*(bounded(i) for i in range(200)))

    with_session(scenario)

    stats = server.stats()
    assert all(seen[kind] > 0 for kind in (*RATE_FAULTS, "ok")), seen
    assert stats["faults_by_kind"] == {**{kind: seen[kind] for kind in RATE_FAULTS},
                                       "fail_first": 0}
    assert stats["faults_injected"] == 200 - seen["ok"]
    assert stats["requests_total"] == 200
    by_status = Counter({int(s): n for s, n in stats["by_status"].items()})
    assert by_status[200] == seen["ok"] + seen["malformed"] + seen["truncated"] + seen[
        "empty_choices"]
    assert (by_status[444], by_status[504]) == (seen["reset"], seen["timeout"])
    assert by_status[500] + by_status[502] + by_status[503] == seen["error"]
    assert stats["tokens_served"] == tokens
    assert stats["in_flight"] == 0


async def classify(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[str, int]:
    """What one request looked like to the client, and the tokens a good answer reported."""
    try:
        async with session.post(url, json=body) as reply:
            raw = await reply.read()
    except aiohttp.ClientPayloadError:
        return "truncated", 0
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return "reset", 0
    if reply.status == 504:
        return "timeout", 0
    if reply.status != 200:
        return "error", 0
    try:
        answer = json.loads(raw)
    except ValueError:
        return "malformed", 0
    if not answer["choices"]:
        return "empty_choices", 0
    return "ok", int(answer["usage"]["total_tokens"])
