"""Counters of the model routes, served at GET /stats.

Statuses in `by_status` are what each request ended with: real HTTP statuses, plus 444 for a
connection reset on purpose (no response sent) and 499 for a client that went away first.
`by_route` is keyed by served format name (`formats/`), so Azure's chat-completions path counts
as `chat_completions` together with the OpenAI one.
`connections` counts the client connections model requests came on (since the last reset).
`in_flight` counts requests being served (past rate limits and the concurrency bound), so in
queue mode `peak_in_flight` never exceeds `max_concurrency`; `queued` counts those waiting.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from typing import Any

from pipeline.serving.faults import FAULT_KINDS, FaultKind
from pipeline.serving.formats import FORMAT_NAMES


class ServingStats:
    """Request, status, limit, fault and token counters plus the in-flight gauge.

    Mutated only from handlers on the server's single event loop, so plain ints suffice.
    """

    def __init__(self) -> None:
        # A gauge, not a counter: it tracks requests being served now and survives `reset`.
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter. Requests still in flight stay counted in `in_flight`."""
        self.requests_total = 0
        self.by_status: Counter[int] = Counter()
        self.by_route: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.faults_by_kind: Counter[FaultKind] = Counter()
        self.rate_limited = 0
        self.rejected_overload = 0
        self.peak_in_flight = self.in_flight
        # Wall-clock times (epoch seconds) of the first and last request: the rate the
        # endpoint saw is requests_total over their difference.
        self.first_request_at: float | None = None
        self.last_request_at: float | None = None
        # Requests started in each whole second since the first one (gaps show as zeros).
        self.per_second: list[int] = []
        self.limited_per_second: list[int] = []  # of those, refused with 429 by a rate limit
        # Connections model requests came on, each counted once; only the open ones are held
        # (weakly), so a server that runs for days keeps none of the connections it closed.
        self.connections = 0
        self._open: weakref.WeakSet[object] = weakref.WeakSet()

    @property
    def faults_injected(self) -> int:
        """Faults of every kind."""
        return sum(self.faults_by_kind.values())

    def request_started(self, format_name: str, connection: object = None) -> None:
        """Count a request entering a route of the served format `format_name`, on
        `connection` (its transport; None: not known)."""
        self.requests_total += 1
        if connection is not None and connection not in self._open:
            self._open.add(connection)
            self.connections += 1
        self.by_route[format_name] += 1
        self.last_request_at = time.time()
        if self.first_request_at is None:
            self.first_request_at = self.last_request_at
        _count_in_second(self.per_second, self.last_request_at - self.first_request_at)

    def request_finished(self, status: int) -> None:
        """Count a request leaving a model route with `status`."""
        self.by_status[status] += 1

    def serving_started(self) -> None:
        """A request got past the limits and holds a concurrency slot."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def serving_finished(self) -> None:
        """A request gave its concurrency slot back."""
        self.in_flight -= 1

    def completed(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Add the tokens of one successful completion."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def fault_injected(self, kind: FaultKind) -> None:
        """Count one injected fault of `kind`."""
        self.faults_by_kind[kind] += 1

    def limited(self) -> None:
        """Count one request refused (429) by a rate limit."""
        self.rate_limited += 1
        if self.first_request_at is not None:
            _count_in_second(self.limited_per_second, time.time() - self.first_request_at)

    def overloaded(self) -> None:
        """Count one request refused (503) at the concurrency bound in reject mode."""
        self.rejected_overload += 1

    def snapshot(self, *, distinct_requests: int, queued: int) -> dict[str, Any]:
        """The /stats body; `distinct_requests` and `queued` come from the fault plan and gate."""
        return {
            "requests_total": self.requests_total,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "by_route": {name: self.by_route[name] for name in FORMAT_NAMES},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_served": self.prompt_tokens + self.completion_tokens,
            "faults_injected": self.faults_injected,
            "faults_by_kind": {kind: self.faults_by_kind[kind] for kind in FAULT_KINDS},
            "rate_limited": self.rate_limited,
            "rejected_overload": self.rejected_overload,
            "connections": self.connections,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "queued": queued,
            "distinct_requests": distinct_requests,
            "first_request_at": self.first_request_at,
            "last_request_at": self.last_request_at,
            "per_second": list(self.per_second),
            "limited_per_second": list(self.limited_per_second),
        }


def _count_in_second(counts: list[int], elapsed_s: float) -> None:
    """One more in the whole second `elapsed_s` falls in (zeros for the seconds before)."""
    second = int(elapsed_s)
    if second >= len(counts):
        counts.extend([0] * (second + 1 - len(counts)))
    counts[second] += 1
