"""The task side of the control plane: what each Spark task runs to talk to the driver.

`SharedLimits` leases permits from a budget (`control.budget`) in batches of at most
`budget.LEASE_SECONDS` of its rate, reporting what the task saw (successes, 429s, the endpoint's
`x-ratelimit-*` headers, token corrections) with each ask. The budget is the job's, on the
driver (`DriverLessor`, through `control.server`), or, when the tasks cannot reach the driver,
the task's own share kept in the task (`LocalLessor`): the same adaptive rate, learning from
this task's answers alone. `Reporter` posts the task's progress every second. Both live in the
task's event loop, each with an aiohttp session of its own (the chat session's requests carry
the endpoint's token, which the driver must never see). A task that cannot reach the driver
keeps working: the limits fall back to the task's static share of the budgets, with a warning,
and only its progress goes unseen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import aiohttp

from pipeline.control.budget import JobBudget
from pipeline.control.progress import REPORT_EVERY_S, Tally
from pipeline.control.protocol import LeaseAsk, LeaseGrant, ProgressReport
from pipeline.core.ratelimit import RateLimits
from pipeline.core.timing import Clock, Sleep
from pipeline.wire import WireFormat

log = logging.getLogger(__name__)

LEASE_TIMEOUT_S = 10.0
# After a failed lease, ask again after this long.
LEASE_RETRY_S = 0.5
# How many failed leases in a row make a task give up on the driver.
MAX_LEASE_FAILURES = 3
REPORT_TIMEOUT_S = 5.0
# Token budget is booked at the estimate until this many answers said what requests use ...
USAGE_SAMPLE = 8
USAGE_MARGIN = 1.1  # ... then at their mean use, and this much more


class LeaseFailed(Exception):
    """A lease that could not be asked for (the driver did not answer)."""


class Lessor(Protocol):
    """Where a task's `SharedLimits` leases permits from."""

    async def lease(self, ask: LeaseAsk) -> LeaseGrant:
        """The grant for `ask`.

        Raises:
            LeaseFailed: no answer this time (asking again may work).
        """

    async def close(self) -> None:
        """Release what the lessor holds."""


class DriverLessor:
    """The job's budget, on the driver's server at `url` (a `Lessor`)."""

    def __init__(self, url: str) -> None:
        self._url = url
        # Its own session: the chat session's requests carry the endpoint's token.
        self._session: aiohttp.ClientSession | None = None  # opened by the first lease

    async def lease(self, ask: LeaseAsk) -> LeaseGrant:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self._url, json=ask.to_json(), timeout=aiohttp.ClientTimeout(total=LEASE_TIMEOUT_S)
            ) as reply:
                reply.raise_for_status()
                return LeaseGrant.from_json(await reply.json())
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            raise LeaseFailed(type(err).__name__) from err

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class LocalLessor:
    """A budget kept in the task itself (a `Lessor`): its share of the job's, adapting to its
    own answers. For tasks that cannot reach the driver.

    `share` is this task's part of the job (1 / the tasks running at once): the endpoint's
    announced limits are the whole endpoint's, so the task takes that part of them.
    """

    def __init__(self, budget: JobBudget, share: float = 1.0) -> None:
        self._budget = budget
        self._share = share

    async def lease(self, ask: LeaseAsk) -> LeaseGrant:
        return self._budget.lease(
            dataclasses.replace(
                ask,
                endpoint_requests_per_minute=self._part(ask.endpoint_requests_per_minute),
                endpoint_tokens_per_minute=self._part(ask.endpoint_tokens_per_minute),
            )
        )

    def _part(self, announced: float | None) -> float | None:
        return None if announced is None else announced * self._share

    async def close(self) -> None:
        return None


@dataclass
class _Permits:
    """Permits of one grant: `count` left, the next one due at `at` (this task's clock), each
    after it `interval` later, each with `tokens` of token budget."""

    at: float
    interval: float
    count: int
    tokens: float


class SharedLimits:
    """`RateLimits` for one task, drawing on a budget through `lessor` (a `Limiter`).

    Use inside the task's event loop; `fallback` is the task's static share, used when the
    lessor cannot be reached. The next lease is asked for while the permits held still last
    (half a batch), in the background, so requests never wait for a lease round trip, and the
    budget's schedule has someone to give its next permits to. A 429 sends what was seen at
    once (the budget backs off on it), and drops permits that were granted unpaced (no rate
    yet). Closing gives the permits not used back.
    """

    def __init__(
        self,
        lessor: Lessor,
        fallback: RateLimits,
        *,
        batch: int,
        uses_tokens: bool,
        limit_headers: Mapping[str, str] = WireFormat.limit_headers,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._lessor = lessor
        # Response header → the `LeaseAsk` field it fills (the wire format's own header names).
        self._limit_headers = limit_headers
        self._fallback = fallback
        self._batch = max(1, batch)
        self._uses_tokens = uses_tokens
        self._clock = clock
        self._sleep = sleep
        # Held while taking a permit and waiting for its time: permits go in order.
        self._lock = asyncio.Lock()
        self._permits: deque[_Permits] = deque()
        self._held = 0  # permits in `_permits`
        self._refill: asyncio.Task[None] | None = None  # the lease being asked for
        # Seen since the last lease the driver answered: goes with the next ask.
        self._seen = {"ok": 0, "rate_limited": 0, "token_correction": 0.0}
        self._announced: dict[str, float] = {}
        self._failures = 0  # leases failed in a row
        self._detached = False  # gave up on the lessor: the fallback alone from now on
        self._estimate = 0  # the last request's estimated tokens: what the next ask assumes
        self._name = secrets.token_hex(8)  # names this task to the budget
        self._leased = False  # whether the lessor ever answered
        self._usage = [0, 0]  # tokens the answers used, and how many answers
        self._waiting = 0  # requests waiting for a permit
        self._ending = False  # no request beyond those waiting will come (see `ending`)
        self._returning: set[asyncio.Task[None]] = set()  # permits going back (see `_spare`)
        self._counted = False  # whether the budget counts this task as running

    def check(self, estimated_tokens: int) -> None:
        """See `RateLimits.check`."""
        self._fallback.check(estimated_tokens)

    async def acquire(self, estimated_tokens: int) -> None:
        """Wait for one request permit and `estimated_tokens` of token budget."""
        self.check(estimated_tokens)
        self._estimate = estimated_tokens
        self._waiting += 1
        waiting = True
        try:
            async with self._lock:
                while not self._held and not self._detached:
                    await asyncio.shield(self._refilling(estimated_tokens))
                self._waiting -= 1
                waiting = False
                if self._detached:  # the lessor is gone: this task's static share from now on
                    await self._fallback.acquire(estimated_tokens)
                    return
                permits = self._permits[0]
                due = permits.at
                permits.at += permits.interval
                permits.count -= 1
                self._held -= 1
                if not permits.count:
                    self._permits.popleft()
                if self._needs_tokens():
                    self._seen["token_correction"] += estimated_tokens - permits.tokens
                if not self._spare() and self._short():
                    self._refilling(estimated_tokens)
                wait = due - self._clock()
                if wait > 0:
                    await self._sleep(wait)
        finally:
            if waiting:
                self._waiting -= 1

    def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        """Report the real usage with the next lease."""
        self._fallback.settle(estimated_tokens, actual_tokens)
        self._seen["token_correction"] += (actual_tokens or 0) - estimated_tokens
        if actual_tokens is not None:
            self._usage[0] += actual_tokens
            self._usage[1] += 1

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Count an answer, and read the endpoint's announced limits."""
        if status == 429:
            self._seen["rate_limited"] += 1
        elif 200 <= status < 300:
            self._seen["ok"] += 1
        for header, name in self._limit_headers.items():
            value = headers.get(header)
            if value is not None:
                try:
                    self._announced[name] = float(value)
                except ValueError:
                    pass
        if status == 429 and not self._detached:
            unpaced = [p for p in self._permits if not p.interval]
            for permits in unpaced:  # granted with no rate: they would all go now, into 429s
                self._permits.remove(permits)
                self._held -= permits.count
            self._refilling(self._estimate)  # the budget learns of it now, not a batch later

    def ending(self) -> None:
        """See `Limiter.ending`: from now on, permits nobody waits for go back at once, and the
        budget counts this task as ended until a retry asks again (so the next task running
        books ahead as the oldest, without waiting for this one's Spark task to end)."""
        self._ending = True
        self._spare()

    async def close(self) -> None:
        """Give back the permits not used, and close the lessor (the session to the driver)."""
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
        if self._returning:
            await asyncio.gather(*self._returning, return_exceptions=True)
        if self._leased and not self._detached:  # its last ask: no longer counted as running
            await self._tell_ended(*self._drop())
        await self._lessor.close()

    def _spare(self) -> bool:
        """After `ending`, with no request waiting for a permit: give back every permit held
        and tell the budget this task is done, in the background. Whether it is so."""
        if not self._ending or self._waiting or self._detached or not self._leased:
            return False
        if self._permits or self._counted:
            told = asyncio.get_running_loop().create_task(self._tell_ended(*self._drop()))
            self._returning.add(told)
            told.add_done_callback(self._returning.discard)
        return True

    def _short(self) -> bool:
        """Whether to ask for more now: below half a batch, or, once the input ended, fewer
        than the requests waiting (more would be given back only after its last request)."""
        if self._ending:
            return self._held < self._waiting
        return self._held < (self._batch + 1) // 2

    def _drop(self) -> tuple[int, float]:
        """Drop the permits held: how many were paced, and the tokens booked for them all."""
        paced = sum(p.count for p in self._permits if p.interval)
        booked = sum(p.count * p.tokens for p in self._permits)
        self._permits.clear()
        self._held = 0
        self._counted = False
        return paced, booked

    async def _tell_ended(self, paced: int, booked: float) -> None:
        """An ask for nothing, with what was seen since the last ask: the budget takes back
        `paced` permits and `booked` tokens, and no longer counts this task as running."""
        if self._needs_tokens():
            self._seen["token_correction"] -= booked
        reported = dict(self._seen)
        last = replace(self._ask(0, reported), requests=0, tokens=0.0, returned=paced)
        try:
            await self._lessor.lease(last)
        except LeaseFailed:
            return  # the budget counts the task as ended after TASK_GONE_S
        for name, value in reported.items():
            self._seen[name] -= value

    def _needs_tokens(self) -> bool:
        return self._uses_tokens or "endpoint_tokens_per_minute" in self._announced

    def _refilling(self, estimated_tokens: int) -> asyncio.Task[None]:
        """The lease being asked for, asked for now if none is."""
        if self._refill is None or self._refill.done():
            self._refill = asyncio.get_running_loop().create_task(self._fill(estimated_tokens))
        return self._refill

    async def _fill(self, estimated_tokens: int) -> None:
        """Lease until something is granted (or the lessor is given up on)."""
        while True:
            grant = await self._lease(estimated_tokens)
            if grant is None:
                self._detached = True
                return
            if grant.requests:
                self._permits.append(
                    _Permits(
                        self._clock() + grant.start_s,
                        grant.interval_s,
                        grant.requests,
                        grant.tokens / grant.requests,
                    )
                )
                self._held += grant.requests
                self._spare()  # nobody waits any more: back at once
                return
            await self._sleep(grant.wait_s)

    def _booking(self, estimated_tokens: int) -> float:
        """Tokens to book per request: what answers used so far (a little more), once there
        are a few, and never more than the estimate (an upper bound: the whole `max_tokens`).
        What a request uses beyond its booking is charged with the next lease."""
        used, answers = self._usage
        if answers < USAGE_SAMPLE:
            return float(estimated_tokens)
        return min(float(estimated_tokens), used / answers * USAGE_MARGIN)

    def _ask(self, estimated_tokens: int, reported: Mapping[str, float]) -> LeaseAsk:
        # Once the input ended, only what the requests waiting need beyond the permits held.
        requests = max(1, self._waiting - self._held) if self._ending else self._batch
        tokens = self._booking(estimated_tokens) * requests if self._needs_tokens() else 0
        return LeaseAsk(
            requests=requests,
            tokens=float(tokens),
            ok=int(reported["ok"]),
            rate_limited=int(reported["rate_limited"]),
            token_correction=reported["token_correction"],
            endpoint_requests_per_minute=self._announced.get("endpoint_requests_per_minute"),
            endpoint_tokens_per_minute=self._announced.get("endpoint_tokens_per_minute"),
            task=self._name,
        )

    async def _lease(self, estimated_tokens: int) -> LeaseGrant | None:
        """The lessor's grant; a zero grant to wait on after a failure; None to give up."""
        # What was seen up to now goes with this ask; what is seen while it is in flight (the
        # 429s of a busy moment, above all) goes with the next one, never lost.
        reported = dict(self._seen)
        try:
            grant = await self._lessor.lease(self._ask(estimated_tokens, reported))
        except LeaseFailed as err:
            self._failures += 1
            if self._failures >= MAX_LEASE_FAILURES:
                log.warning("rate budget on the driver unreachable (%s); using this task's "
                            "static share", err)  # fmt: skip
                return None
            return LeaseGrant(0, 0.0, LEASE_RETRY_S)
        self._failures = 0
        self._leased = self._counted = True
        for name, value in reported.items():
            self._seen[name] -= value
        return grant


class Reporter:
    """Posts a task's counts so far to the driver every `REPORT_EVERY_S`; use in the task's
    loop. Each post carries the totals, its reporter id and a sequence number, so a post that
    arrives twice or late changes nothing (see `Board.report`)."""

    def __init__(
        self, url: str, tally: Tally, *, name: str | None = None, attempt: int = 0
    ) -> None:
        """`name`: the task's (see `ProgressReport`); None: one of its own."""
        self._url = url
        self._tally = tally
        self._id = name or secrets.token_hex(8)
        self._attempt = attempt
        self._seq = 0
        self._posted = Tally()  # the totals the driver has acknowledged
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._every_second())

    async def close(self) -> None:
        """Stop, after posting what is left.

        Never by cancelling a post under way: the driver may have counted it already, and the
        counts would be posted twice.
        """
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._session is not None:
            await self._session.close()

    async def _every_second(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), REPORT_EVERY_S)
            except asyncio.TimeoutError:
                pass
            await self._post()  # the last one after `close`: what is left

    async def _post(self) -> None:
        now = dataclasses.replace(self._tally)
        if now == self._posted or self._session is None:
            return
        self._seq += 1
        report = ProgressReport(self._id, self._seq, now, self._attempt)
        try:
            timeout = aiohttp.ClientTimeout(total=REPORT_TIMEOUT_S)
            async with self._session.post(
                self._url, json=report.to_json(), timeout=timeout
            ) as reply:
                reply.raise_for_status()
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            log.debug("progress not reported (%s)", type(err).__name__)
            return
        self._posted = now
