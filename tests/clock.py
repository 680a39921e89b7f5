"""The one fake clock of the tests, for code that takes `clock` (and `sleep`): see
`pipeline.core.timing`. Sleeping advances time at once, so tests control time instead of
waiting for it; tests may also move `now` themselves."""

from __future__ import annotations


class FakeClock:
    """Reads `now`; `sleep(s)` records `s` in `sleeps` and adds it to `now`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
