"""The one interface the chat client has to rate limits, and the choice of which to use.

A task's requests go through a `Limiter`: its own token buckets (`ratelimit.RateLimits`, the
task's static share of the job's budgets) or, when the driver keeps a job-wide budget, permits
leased from it (`control.agents.SharedLimits`, which falls back to the static share). The client
does not know which: whoever builds the client builds the limiter with `build_limiter` and
passes it in, and closes it when done.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

from pipeline.control.agents import DriverLessor, Lessor, LocalLessor, SharedLimits
from pipeline.control.budget import JobBudget
from pipeline.control.peers import HostPeers
from pipeline.core.ratelimit import RateLimits
from pipeline.core.timing import Clock, Sleep
from pipeline.http.settings import ClientSettings


class Limiter(Protocol):
    """Admits requests under the limits. Create and use inside one running event loop.

    The client follows each `acquire` with one `settle` for the same estimate when the attempt
    ends (answered or failed), so a token reservation is corrected exactly once.
    """

    def check(self, estimated_tokens: int) -> None:
        """Refuse at once a request no amount of waiting could admit.

        Raises:
            TokenBudgetExceeded: the estimate alone is over the whole per-minute token budget.
        """

    async def acquire(self, estimated_tokens: int) -> None:
        """Wait for one request permit and `estimated_tokens` of token budget.

        Raises:
            TokenBudgetExceeded: as `check`.
        """

    def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        """Correct the reservation with the real usage (None: nothing was used). The client
        settles a 429 at its estimate: refused, it still keeps its place in the schedule."""

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """An answer's status and headers (429s, announced limits), for limits that adapt."""

    def ending(self) -> None:
        """No request will come beyond those already waiting for a permit (a retry may): what
        is held for more can go back to the budget, for the tasks still running."""

    async def close(self) -> None:
        """Release what the limiter holds (a session to the driver)."""


def build_limiter(
    settings: ClientSettings, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
) -> Limiter:
    """The task's limiter: the driver's budget when `settings.budget_url` is set, else, for a
    task that cannot reach the driver (`settings.alone`), a budget of its own that its slot's
    next task goes on with; each with the task's static share to fall back on. Else that static
    share alone."""
    own_share = RateLimits(
        settings.requests_per_minute,
        settings.tokens_per_minute,
        job_tokens_per_minute=settings.limits.tokens_per_minute,
        clock=clock,
        sleep=sleep,
    )
    if settings.budget_url is not None:
        lessor: Lessor = DriverLessor(settings.budget_url)
    elif settings.alone and (
        settings.limits.adaptive or (settings.requests_per_minute, settings.tokens_per_minute)
        != (None, None)
    ):
        lessor = LocalLessor(_own_budget(settings, clock), share=1.0 / max(1, settings.tasks))
    else:
        return own_share
    return SharedLimits(
        lessor,
        own_share,
        batch=settings.limits.concurrency,
        uses_tokens=settings.limits.tokens_per_minute is not None,
        limit_headers=settings.endpoint.wire.limit_headers,
        clock=clock,
        sleep=sleep,
    )


# The budget of the last task run in this process without the driver's (`alone`), by its run
# (every task of a run carries the same shares) and clock. Spark runs a slot's next task in the
# same Python worker (`spark.python.worker.reuse`, on by default), so the next task of the run
# goes on at the rate this one found, where a budget of its own would start from none and find
# it again, 429s first.
_kept: dict[tuple[object, ...], JobBudget] = {}


def _own_budget(settings: ClientSettings, clock: Clock) -> JobBudget:
    """The slot's budget for a task that cannot reach the driver: the one the task before it
    in this worker used, when that task was of the same run; else a new one."""
    key = (settings.run_id, clock)
    budget = _kept.get(key) if settings.run_id else None
    if budget is None:
        budget = JobBudget(
            settings.requests_per_minute,
            settings.tokens_per_minute,
            adaptive=settings.limits.adaptive,
            clock=clock,
            sees_all=False,
            peers=HostPeers(settings.run_id) if settings.run_id else None,
        )
        _kept.clear()  # one run at a time in a worker: an earlier run's budget is done
        if settings.run_id:
            _kept[key] = budget
    return budget
