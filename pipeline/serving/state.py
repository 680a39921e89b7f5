"""The state every handler of the app shares, and the key it is stored under in the app.

Apart from `app.py` (which builds it) so the model routes' request pipeline (`model_route.py`)
reads it without importing the app that registers that pipeline.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from pipeline.serving.chat_model import ChatModel
from pipeline.serving.concurrency import ConcurrencyGate
from pipeline.serving.faults import FaultPlan
from pipeline.serving.latency import LatencyModel
from pipeline.serving.limits import EndpointLimiter
from pipeline.serving.settings import ServingSettings
from pipeline.serving.stats import ServingStats


@dataclass
class ServingState:
    """Everything the handlers share. Mutable on purpose: /control swaps `settings`.

    `executor` is the one worker thread of a blocking model (None for a non-blocking one).
    """

    initial_settings: ServingSettings
    settings: ServingSettings
    token: str | None
    model: ChatModel
    executor: ThreadPoolExecutor | None
    stats: ServingStats
    faults: FaultPlan
    latency: LatencyModel
    limiter: EndpointLimiter
    gate: ConcurrencyGate
    # Set when the server starts shutting down: ends timeout holds (see fault_replies.py).
    shutting_down: asyncio.Event

    def apply(self, settings: ServingSettings, *, reseed: bool) -> None:
        """Switch to `settings`; restart the random sequences from its seed when `reseed`."""
        self.settings = settings
        self.gate.resize(settings.max_concurrency)
        if reseed:
            self.faults.reseed(settings.seed)
            self.latency.reseed(settings.seed)

    def reset(self) -> None:
        """Back to the start-up settings with zeroed counters, memories and windows."""
        self.apply(self.initial_settings, reseed=True)
        self.stats.reset()
        self.faults.reset(self.initial_settings.seed)
        self.limiter.reset()


STATE = web.AppKey("serving_state", ServingState)
