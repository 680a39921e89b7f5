"""The fault plan: which requests answer an injected fault instead of a completion.

At most one fault per request, decided in this order:

1. `fail_first`: the first `fail_first` attempts of every distinct request fail with
   `fail_status`. Keyed per request rather than globally, so under any concurrency or ordering
   each distinct prompt fails exactly `fail_first` times and then succeeds.
2. Random faults: one uniform draw in [0, 1) is matched against the rates laid end to end in
   the order of `ServingSettings.fault_rates` (error, timeout, reset, malformed, truncated,
   empty_choices), so each kind hits exactly its own fraction of requests and the rest complete.
   `error` then draws its status from `error_statuses`.

Random faults use a private RNG seeded by the `seed` setting; with every rate at 0 nothing is
drawn. This module only decides; `fault_replies.py` puts each fault on the wire.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from pipeline.serving.rng import seeded_rng
from pipeline.serving.settings import RateFaultKind, ServingSettings
from pipeline.serving.shapes import error_code_for_status

FaultKind = Literal[
    "fail_first", "error", "timeout", "reset", "malformed", "truncated", "empty_choices"
]
# Every kind, as /stats lists them in `faults_by_kind`.
FAULT_KINDS: tuple[FaultKind, ...] = (
    "error",
    "timeout",
    "reset",
    "malformed",
    "truncated",
    "empty_choices",
    "fail_first",
)


@dataclass(frozen=True)
class Fault:
    """An injected error response (kinds `fail_first` and `error`)."""

    status: int
    error_code: str
    message: str
    retry_after_s: float | None
    kind: Literal["fail_first", "error"] = "fail_first"


@dataclass(frozen=True)
class BrokenReply:
    """An injected misbehaviour of the connection or the body (every other kind).

    `hold_s` is how long a `timeout` holds the request before answering 504.
    """

    kind: Literal["timeout", "reset", "malformed", "truncated", "empty_choices"]
    hold_s: float = 0.0


class FaultPlan:
    """Per-request fault memory, the random-fault RNG, and the rules that read them.

    Invariant: `_attempts[digest]` is how many requests with that key reached `decide` since the
    last reset. `decide` never awaits, so on one event loop a read-and-increment is atomic.
    """

    def __init__(self, seed: int = 0) -> None:
        # Keys are sha256 digests, not the prompts: memory stays 32 bytes per distinct request.
        self._attempts: dict[bytes, int] = {}
        self._rng = seeded_rng(seed, "faults")

    @property
    def distinct_keys(self) -> int:
        """How many distinct request keys were seen since the last reset."""
        return len(self._attempts)

    def decide(self, key: str, settings: ServingSettings) -> Fault | BrokenReply | None:
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
        kind = self._draw(settings)
        return None if kind is None else self._fault(kind, settings)

    def reset(self, seed: int) -> None:
        """Forget every request seen and restart the random sequence from `seed`."""
        self._attempts.clear()
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random sequence from `seed`; request memory is kept."""
        self._rng = seeded_rng(seed, "faults")

    def _draw(self, settings: ServingSettings) -> RateFaultKind | None:
        rates = settings.fault_rates
        if not any(rate for _, rate in rates):
            return None
        draw = self._rng.random()
        for kind, rate in rates:
            if draw < rate:
                return kind
            draw -= rate
        return None

    def _fault(self, kind: RateFaultKind, settings: ServingSettings) -> Fault | BrokenReply:
        if kind == "error":
            status = self._rng.choice(settings.error_statuses)
            return Fault(
                status=status,
                error_code=error_code_for_status(status),
                message=f"injected fault: random error {status}",
                retry_after_s=settings.retry_after_s,
                kind="error",
            )
        hold_s = settings.timeout_hold_s if kind == "timeout" else 0.0
        return BrokenReply(kind, hold_s)
