"""Token-bucket rate limiting for requests per minute and tokens per minute.

A bucket refills at `rate` units per second up to `capacity`. `acquire(n)` waits until the level
covers `min(n, capacity)` and then takes all `n`, so a request larger than the burst can still go
once the bucket is full, leaving the level negative (a debt the next callers wait out). `adjust`
corrects a reservation once the real cost is known. `Bucket` is the same arithmetic without the
waiting, for the job-wide budget (`pipeline.control.budget`) that leases instead of waits. Time and
sleeping are injected so tests drive the clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping

from pipeline.core.errors import TokenBudgetExceeded
from pipeline.core.timing import Clock, Sleep

# How many seconds of budget may be spent at once after an idle spell. Small, so a job never
# bursts far above its per-minute rate in any window a server measures.
BURST_SECONDS = 1.0


def burst_capacity(rate_per_s: float, seconds: float) -> float:
    """What a bucket refilling at `rate_per_s` may hold: `seconds` of it, at least one unit."""
    return max(1.0, rate_per_s * seconds)


class Bucket:
    """Token-bucket arithmetic that never waits: the level refills at `rate_per_s` up to
    `capacity`; callers take what is there and learn when more will be.

    The level may go below zero: a request larger than the burst is let through once the
    bucket is full, and the debt is waited out by the next callers.
    """

    def __init__(
        self,
        rate_per_s: float,
        capacity: float,
        *,
        level: float | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._level = capacity if level is None else level  # full unless told otherwise
        self._stamp = clock()

    @property
    def level(self) -> float:
        """Units available now (negative while in debt)."""
        self._refill()
        return self._level

    def reset_rate(self, rate_per_s: float, capacity: float) -> None:
        """Refill at the old rate up to now, then at `rate_per_s` up to `capacity`."""
        self._refill()
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._level = min(self._level, capacity)

    def ready(self, need: float) -> bool:
        """Whether `need` may be taken now (a need above the capacity: once it is full)."""
        return self.level >= min(need, self.capacity)

    def take(self, want: float, minimum: float) -> float:
        """Up to `want` (all of it, if `minimum` is `want`), when `minimum` is ready; else 0."""
        if not self.ready(minimum):
            return 0.0
        granted = want if minimum >= want else min(want, max(self._level, minimum))
        self._level -= granted
        return granted

    def take_whole(self, want: int) -> int:
        """Up to `want` whole units; the fraction that is there stays for the next caller."""
        granted = min(want, math.floor(self.level))
        if granted < 1:
            return 0
        self._level -= granted
        return granted

    def wait_s(self, need: float) -> float:
        """Seconds until `need` (capped at the capacity) is ready."""
        return max(0.0, (min(need, self.capacity) - self.level) / self.rate_per_s)

    def give_back(self, amount: float) -> None:
        """Return `amount` (or charge it, if negative), never above the capacity."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate_per_s)
        self._stamp = now


class TokenBucket(Bucket):
    """A bucket that waits; waiters are served one at a time, in arrival order (FIFO lock)."""

    def __init__(
        self,
        rate_per_s: float,
        capacity: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(rate_per_s, capacity, clock=clock)
        self._sleep = sleep
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float) -> None:
        """Wait until `amount` may be spent, then spend it."""
        async with self._lock:
            while not self.ready(amount):
                await self._sleep(self.wait_s(amount))
            self.take(amount, amount)

    def adjust(self, delta: float) -> None:
        """Spend `delta` more (or give back `-delta`) after the real cost is known."""
        self.give_back(-delta)


class RateLimits:
    """The requests-per-minute and tokens-per-minute budgets of one Spark task (a `Limiter`).

    `job_tokens_per_minute` is the whole job's budget: a single request estimated above it can
    never be admitted anywhere and is refused instead of waiting forever.
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        job_tokens_per_minute: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._requests = _bucket(requests_per_minute, clock, sleep)
        self._tokens = _bucket(tokens_per_minute, clock, sleep)
        self._max_tokens = job_tokens_per_minute or tokens_per_minute

    def check(self, estimated_tokens: int) -> None:
        """Refuse a request that no amount of waiting could admit.

        Raises:
            TokenBudgetExceeded: the estimate alone is over the whole per-minute token budget.
        """
        if self._max_tokens is not None and estimated_tokens > self._max_tokens:
            raise TokenBudgetExceeded(
                f"request needs ~{estimated_tokens} tokens, over limits.tokens_per_minute="
                f"{self._max_tokens:g}"
            )

    async def acquire(self, estimated_tokens: int) -> None:
        """Wait for one request slot and `estimated_tokens` of token budget (see `check`)."""
        self.check(estimated_tokens)
        if self._requests is not None:
            await self._requests.acquire(1)
        if self._tokens is not None:
            await self._tokens.acquire(estimated_tokens)

    def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        """Correct the token reservation with the real usage (or release it: None)."""
        if self._tokens is not None:
            self._tokens.adjust((actual_tokens or 0) - estimated_tokens)

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """An answer's status and headers; a task's own buckets do not adapt."""

    def ending(self) -> None:
        """A task's own buckets hold nothing another task could use."""

    async def close(self) -> None:
        """Nothing to release."""


def _bucket(per_minute: float | None, clock: Clock, sleep: Sleep) -> TokenBucket | None:
    if per_minute is None:
        return None
    rate = per_minute / 60.0
    return TokenBucket(rate, burst_capacity(rate, BURST_SECONDS), clock=clock, sleep=sleep)
