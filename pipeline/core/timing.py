"""The two injected notions of time, named once for every module that takes them.

Code whose behaviour depends on time (rate limits, retries, token renewal, the job budget) takes
a `Clock` and, if it waits, a `Sleep`; production passes `time.monotonic` and `asyncio.sleep`,
tests pass a fake clock whose sleep advances time instantly (`tests/clock.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias

# Seconds, monotonic: only differences between two readings mean anything.
Clock: TypeAlias = Callable[[], float]
# Wait this many seconds (on the running event loop).
Sleep: TypeAlias = Callable[[float], Awaitable[None]]
