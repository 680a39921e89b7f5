"""The retry policy, built once from the config: tenacity with bounded attempts and a deadline.

Exponential backoff with full jitter between attempts; a server's `Retry-After` replaces the
backoff when it is within the cap (a longer one ends the row: see `errors.should_retry`). Only
errors whose class is retryable are retried. The sleeper is injected so tests record the delays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from pipeline.core.config import LimitsConfig
from pipeline.core.errors import EndpointError, should_retry
from pipeline.core.timing import Sleep


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    deadline_s: float
    backoff_initial_s: float
    backoff_max_s: float
    retry_after_cap_s: float

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> RetryPolicy:
        return cls(
            max_attempts=limits.max_attempts,
            deadline_s=limits.row_deadline_s,
            backoff_initial_s=limits.backoff_initial_s,
            backoff_max_s=limits.backoff_max_s,
            retry_after_cap_s=limits.retry_after_cap_s,
        )

    def wait_seconds(self, retry_state: RetryCallState) -> float:
        """Seconds before the next attempt: the server's Retry-After, else jittered backoff."""
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, EndpointError) and error.retry_after is not None:
            return min(error.retry_after, self.retry_after_cap_s)
        backoff = wait_random_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s)
        return float(backoff(retry_state))

    def retrying(
        self,
        sleep: Sleep = asyncio.sleep,
        *,
        spent_s: float = 0.0,
        give_up: Callable[[], bool] = lambda: False,
    ) -> AsyncRetrying:
        """A fresh tenacity controller for one row; re-raises the last error when it gives up.

        `spent_s`: time the row has already used (its deadline counts from its first attempt).
        `give_up`: asked after each failed attempt; True ends the row there (the task stops).
        """
        cap = self.retry_after_cap_s
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts)
            | stop_after_delay(max(0.0, self.deadline_s - spent_s))
            | _stop_when(give_up),
            wait=self.wait_seconds,
            retry=retry_if_exception(lambda error: should_retry(error, cap)),
            sleep=sleep,
            reraise=True,
        )


class _stop_when(stop_base):
    """Stop as soon as `predicate` says so."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._predicate()
