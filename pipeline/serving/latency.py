"""The latency model: how long a completion takes before it is answered.

`latency_s + latency_per_token_s * completion_tokens + U(0, latency_jitter_s)`. The jitter comes
from a private RNG seeded by the `seed` setting (`rng.py`), so a sequential run draws the same
delays every time.
"""

from __future__ import annotations

from pipeline.serving.rng import seeded_rng
from pipeline.serving.settings import ServingSettings


class LatencyModel:
    """Delays per completion; owns the jitter RNG."""

    def __init__(self, seed: int) -> None:
        self._rng = seeded_rng(seed, "latency")

    def reseed(self, seed: int) -> None:
        """Restart the jitter sequence from `seed`."""
        self._rng = seeded_rng(seed, "latency")

    def delay_s(self, settings: ServingSettings, completion_tokens: int) -> float:
        """Seconds to hold a completion of `completion_tokens` tokens.

        Draws from the RNG only when jitter is on, so a jitter-free run leaves the sequence alone.
        """
        delay = settings.latency_s + settings.latency_per_token_s * completion_tokens
        if settings.latency_jitter_s > 0:
            delay += self._rng.uniform(0.0, settings.latency_jitter_s)
        return delay
