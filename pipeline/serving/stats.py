"""Counters of the model routes, served at GET /stats."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.serving.shapes import WIRE_FORMATS, WireFormat


class ServingStats:
    """Request, status and token counters plus the in-flight gauge.

    Mutated only from handlers on the server's single event loop, so plain ints suffice.
    """

    def __init__(self) -> None:
        # A gauge, not a counter: it tracks requests running right now and survives `reset`.
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter. Requests still in flight stay counted in `in_flight`."""
        self.requests_total = 0
        self.by_status: Counter[int] = Counter()
        self.by_route: Counter[WireFormat] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.faults_injected = 0
        self.peak_in_flight = self.in_flight

    def request_started(self, wire_format: WireFormat) -> None:
        """Count a request entering a model route."""
        self.requests_total += 1
        self.by_route[wire_format] += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def request_finished(self, status: int) -> None:
        """Count a request leaving a model route with `status`."""
        self.in_flight -= 1
        self.by_status[status] += 1

    def completed(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Add the tokens of one successful completion."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def fault_injected(self) -> None:
        """Count one injected fault."""
        self.faults_injected += 1

    def snapshot(self, *, distinct_requests: int) -> dict[str, Any]:
        """The /stats body; `distinct_requests` comes from the fault plan's memory."""
        return {
            "requests_total": self.requests_total,
            "by_status": {str(status): n for status, n in sorted(self.by_status.items())},
            "by_route": {route: self.by_route[route] for route in WIRE_FORMATS},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "faults_injected": self.faults_injected,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "distinct_requests": distinct_requests,
        }
