"""The job-wide request and token budgets, one for all tasks, kept on the driver.

Tasks lease permits in small batches (see `agents.SharedLimits`): a task that finished stops
asking, so the tasks still running get its share at once. The request rate also adapts to the
endpoint: it starts at a guess and doubles every busy second until the endpoint answers 429,
then halves; later 429s take 15 % off, and quiet seconds search back towards the rate that drew
them (halving the distance each second, as TCP BIC does) before probing a few percent further.
An `x-ratelimit-limit-*` header, when the endpoint sends one, sets the ceiling outright. A
configured `requests_per_minute` is never exceeded. Pure logic: the clock is injected.
"""

from __future__ import annotations

import logging
import math
import time

from pipeline.control.protocol import LeaseAsk, LeaseGrant
from pipeline.core.ratelimit import Bucket, burst_capacity
from pipeline.core.timing import Clock

log = logging.getLogger(__name__)

# A lease holds at most this many seconds of the job's rate, so tasks share it finely.
LEASE_SECONDS = 0.05
# Budget that may pile up unused (seconds of rate): a few leases, so a task that asks a
# little late loses nothing, and no window sees a burst worth mentioning.
BURST_SECONDS = 0.02
# A task refused a lease asks again after at least this long.
MIN_WAIT_S = 0.005
# The adaptive rate changes at most once per this many seconds.
ADAPT_PERIOD_S = 1.0
DECREASE = 0.5  # on 429s, before the first one: the rate that last worked
BACKOFF = 0.85  # on 429s afterwards
INCREASE = 0.03  # share of the rate added per quiet period, when probing
CEILING_STEP = 0.05  # ... or this share of a known ceiling, if more
# 429s keep coming for a while after a decrease (retries waiting out a full window): one
# decrease per this long.
DECREASE_COOLDOWN_S = 2 * ADAPT_PERIOD_S
# Stay this far under a limit the endpoint announces in its headers.
HEADER_MARGIN = 0.98
MIN_RATE = 0.1  # requests per second
# An adaptive budget starts at this many requests per second per in-flight slot of its tasks
# (a guess of 500 ms per answer), and doubles every second until the endpoint answers 429.
START_RATE_PER_SLOT = 2.0


class Allowance(Bucket):
    """The job's budget for one unit: starts empty (no burst above the rate at the start of a
    run), and its burst follows its rate."""

    def __init__(self, rate_per_s: float, clock: Clock = time.monotonic) -> None:
        super().__init__(
            rate_per_s, burst_capacity(rate_per_s, BURST_SECONDS), level=0.0, clock=clock
        )

    def set_rate(self, rate_per_s: float) -> None:
        self.reset_rate(rate_per_s, burst_capacity(rate_per_s, BURST_SECONDS))


class JobBudget:
    """Requests and tokens per second for the whole job, leased to its tasks."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        adaptive: bool,
        start_rate_per_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._clock = clock
        self._ceiling = None if requests_per_minute is None else requests_per_minute / 60.0
        self._adaptive = adaptive
        rate = start_rate_per_s if adaptive else self._ceiling
        if self._ceiling is not None and rate is not None:
            rate = min(rate, self._ceiling)
        self._requests = None if rate is None else Allowance(rate, clock)
        self._tokens = (
            None if tokens_per_minute is None else Allowance(tokens_per_minute / 60, clock)
        )
        self._slow_start = adaptive
        self._changed_at = self._decreased_at = clock()
        self._limited_since_change = False
        self._granted_since_change = 0
        # The rate that last drew 429s: increases search back towards it.
        self._too_fast: float | None = None
        self.ok = 0
        self.rate_limited = 0

    @property
    def rate_per_s(self) -> float | None:
        return None if self._requests is None else self._requests.rate_per_s

    def lease(self, ask: LeaseAsk) -> LeaseGrant:
        """Grant what the budgets allow now, after learning from what the task saw."""
        self._learn(ask)
        requests = self._take_requests(ask.requests)
        tokens = ask.tokens
        if requests and self._tokens is not None and ask.tokens > 0:
            tokens = self._tokens.take(ask.tokens, ask.tokens / max(1, ask.requests) * requests)
            if not tokens:  # no token budget for even these: give the requests back
                self._give_back_requests(requests)
                requests = 0
        if requests:
            self._granted_since_change += requests
            return LeaseGrant(requests, tokens, 0.0)
        return LeaseGrant(0, 0.0, self._wait_s(ask))

    def _take_requests(self, want: int) -> int:
        if self._requests is None:
            return want
        cap = max(1, math.floor(self._requests.rate_per_s * LEASE_SECONDS))
        return self._requests.take_whole(min(want, cap))

    def _give_back_requests(self, amount: int) -> None:
        if self._requests is not None:
            self._requests.give_back(amount)

    def _wait_s(self, ask: LeaseAsk) -> float:
        waits = [MIN_WAIT_S]
        if self._requests is not None:
            waits.append(self._requests.wait_s(1))
        if self._tokens is not None and ask.tokens > 0:
            waits.append(self._tokens.wait_s(ask.tokens / max(1, ask.requests)))
        return max(waits)

    def _learn(self, ask: LeaseAsk) -> None:
        self.ok += ask.ok
        self.rate_limited += ask.rate_limited
        if self._tokens is not None and ask.token_correction:
            self._tokens.give_back(-ask.token_correction)
        if ask.endpoint_requests_per_minute:
            announced = ask.endpoint_requests_per_minute / 60.0 * HEADER_MARGIN
            if self._ceiling is None or announced < self._ceiling:
                self._ceiling = announced
                self._slow_start = False  # the endpoint said where the limit is
                self._set_rate(min(self.rate_per_s or announced, announced))
                # 429s still to come answer requests sent before the ceiling was known.
                self._decreased_at = self._clock()
        if ask.endpoint_tokens_per_minute and self._tokens is None:
            self._tokens = Allowance(
                ask.endpoint_tokens_per_minute / 60 * HEADER_MARGIN, self._clock
            )
        if self._adaptive:
            self._adapt(ask.rate_limited)

    def _adapt(self, rate_limited: int) -> None:
        rate = self.rate_per_s
        if rate is None:
            return
        now = self._clock()
        if rate_limited:
            self._limited_since_change = True
            if now - self._decreased_at < DECREASE_COOLDOWN_S:
                return  # one decrease per burst of 429s: they answer requests sent before it
            self._too_fast = rate
            rate *= DECREASE if self._slow_start else BACKOFF
            self._slow_start = False
            self._decreased_at = now
        elif now - self._changed_at >= ADAPT_PERIOD_S:
            # Grow only a rate that is being used: a job held back by latency or concurrency
            # must not earn a rate it would burst into later.
            used = self._granted_since_change >= 0.5 * rate * (now - self._changed_at)
            if not self._limited_since_change and used:
                rate = rate * 2 if self._slow_start else self._increased(rate)
        else:
            return
        if self._ceiling is not None:
            rate = min(rate, self._ceiling)
        before = self.rate_per_s or rate
        if rate < before:
            log.info("request rate %.0f/min after 429s (was %.0f/min)", rate * 60, before * 60)
        self._set_rate(max(MIN_RATE, rate))
        self._changed_at = now
        self._limited_since_change = False
        self._granted_since_change = 0

    def _increased(self, rate: float) -> float:
        # A binary search back towards the rate that last drew 429s, then gentle probing past
        # it; below a known ceiling (configured, or announced) a climb of a few periods.
        step = rate * INCREASE
        if self._ceiling is not None:
            step = max(step, self._ceiling * CEILING_STEP)
        if self._too_fast is not None:
            if rate < self._too_fast * (1 - INCREASE):
                step = max(step, (self._too_fast - rate) / 2)
            else:
                self._too_fast = None  # quiet at that rate now: probe on
        return rate + step

    def _set_rate(self, rate: float) -> None:
        if self._requests is None:
            self._requests = Allowance(rate, self._clock)
        else:
            self._requests.set_rate(rate)
