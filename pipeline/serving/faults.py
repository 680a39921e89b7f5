"""The fault plan: which requests answer an injected error instead of a completion.

First version, one kind: the first `fail_first` attempts of every distinct request fail with
`fail_status`. Keyed per request rather than globally, so under any concurrency or ordering each
distinct prompt fails exactly `fail_first` times and then succeeds. New kinds add a rule to
`decide`; callers only see `Fault | None`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipeline.serving.settings import ServingSettings
from pipeline.serving.shapes import error_code_for_status


@dataclass(frozen=True)
class Fault:
    """An injected error response."""

    status: int
    error_code: str
    message: str
    retry_after_s: float | None


class FaultPlan:
    """Per-request fault memory plus the rules that read it.

    Invariant: `_attempts[digest]` is how many requests with that key reached `decide` since the
    last reset. `decide` never awaits, so on one event loop a read-and-increment is atomic.
    """

    def __init__(self) -> None:
        # Keys are sha256 digests, not the prompts: memory stays 32 bytes per distinct request.
        self._attempts: dict[bytes, int] = {}

    @property
    def distinct_keys(self) -> int:
        """How many distinct request keys were seen since the last reset."""
        return len(self._attempts)

    def decide(self, key: str, settings: ServingSettings) -> Fault | None:
        """Record one attempt of request `key`; return the fault to answer, or None to complete."""
        digest = hashlib.sha256(key.encode()).digest()
        attempt = self._attempts.get(digest, 0) + 1
        self._attempts[digest] = attempt
        if attempt <= settings.fail_first:
            return Fault(
                status=settings.fail_status,
                error_code=error_code_for_status(settings.fail_status),
                message=f"injected fault: attempt {attempt} of {settings.fail_first} failing",
                retry_after_s=settings.retry_after_s,
            )
        return None

    def reset(self) -> None:
        """Forget every request seen."""
        self._attempts.clear()
