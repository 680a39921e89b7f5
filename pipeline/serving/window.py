"""Sliding-window log: the amounts recorded in the last `window_s` seconds, exactly.

A server limit of "N per minute" promises that no window of a minute holds more than N. A log of
(time, amount) events answers that exactly, and also says when enough of it will have expired
for a new amount to fit, which is what `Retry-After` reports. A token bucket (the client's
`pipeline.core.ratelimit`) only approximates both.

The log never reads a clock: callers pass `now`, from a monotonic clock that never goes back,
so tests state times instead of waiting for them.
"""

from __future__ import annotations

import math
from collections import deque


class WindowEntry:
    """One recorded amount. Mutable on purpose: a reservation is settled to the real amount."""

    __slots__ = ("amount", "expires_at", "live")

    def __init__(self, expires_at: float, amount: int) -> None:
        self.expires_at = expires_at
        self.amount = amount
        # False once the entry left the log; settling it then must not touch the total.
        self.live = True


class SlidingWindowLog:
    """Amounts recorded within a window ending now.

    Invariants: `_entries` is ordered by `expires_at` (times only move forward and the window
    length is fixed per log); `_total` is the sum of their amounts. An entry counts while
    `now < expires_at`; `_expire` drops the others before every read.
    """

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._entries: deque[WindowEntry] = deque()
        self._total = 0

    def used(self, now: float) -> int:
        """Sum of the amounts recorded in the window ending at `now`."""
        self._expire(now)
        return self._total

    def record(self, now: float, amount: int) -> WindowEntry:
        """Add `amount` at `now`; the returned entry can be settled later."""
        self._expire(now)
        entry = WindowEntry(now + self.window_s, amount)
        self._entries.append(entry)
        self._total += amount
        return entry

    def settle(self, entry: WindowEntry, amount: int) -> None:
        """Replace a recorded amount (a reservation) with the real one; its time is unchanged."""
        if entry.live:
            self._total += amount - entry.amount
        entry.amount = amount

    def wait_s(self, now: float, amount: int, limit: int) -> float:
        """Seconds from `now` until `amount` more fits under `limit`.

        0.0 exactly when it fits now, and then never less than 0; `math.inf` when `amount` alone
        exceeds `limit`, so no wait can make it fit.
        """
        self._expire(now)
        excess = self._total + amount - limit
        if excess <= 0:
            return 0.0
        if amount > limit:
            return math.inf
        # The oldest entries leave first; the wait ends when enough of them have left.
        for entry in self._entries:
            excess -= entry.amount
            if excess <= 0:
                # > 0: `_expire` kept only entries with now < expires_at.
                return entry.expires_at - now
        return math.inf  # unreachable while every amount is >= 0: kept for the type checker

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries and entries[0].expires_at <= now:
            entry = entries.popleft()
            entry.live = False
            self._total -= entry.amount
