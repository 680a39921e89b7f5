"""Bounded server concurrency: at most `limit` requests are served at once.

Beyond the bound a request either waits for a slot in arrival order (`queue`, what a loaded
Model Serving endpoint does until its own timeout) or is turned away at once (`reject`, which
the app answers with 503). The limit can change while requests wait: a larger one lets
waiters in at once, a smaller one only stops new entries until enough holders have left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class ConcurrencyGate:
    """A resizable FIFO gate; None as limit is unbounded.

    Invariants: `active` counts holders. A waiter's future is resolved only by `_wake`, which
    counts it in `active` at that moment: the slot is handed over, never re-contended, so a
    newcomer cannot overtake a waiter. Room only appears in `leave` and `resize`, and both drain
    the line while there is room, so nobody waits while a slot is free. Never awaits except
    inside `enter`'s wait, so on one event loop every check-and-take is atomic.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        """Requests waiting for a slot right now (a cancelled one leaves as its task resumes)."""
        return len(self._waiters)

    def resize(self, limit: int | None) -> None:
        """Change the bound; waiters that now fit are let in."""
        self.limit = limit
        self._wake()

    async def enter(self, *, queue: bool) -> bool:
        """Take a slot: True once held (call `leave` later), False when refused without queueing.

        With `queue` the call waits in arrival order; cancelling it gives up its place, or
        passes on a slot handed over at the same moment.
        """
        if not self._waiters and self._has_room():
            self.active += 1
            return True
        if not queue:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                # `_wake` skips cancelled waiters, so it may have popped this one already.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            else:
                self.leave()  # handed a slot just as we were cancelled: pass it on
            raise
        return True

    def leave(self) -> None:
        """Give back a slot taken by `enter`; the longest waiter gets it."""
        self.active -= 1
        self._wake()

    def _has_room(self) -> bool:
        return self.limit is None or self.active < self.limit

    def _wake(self) -> None:
        while self._waiters and self._has_room():
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.active += 1
