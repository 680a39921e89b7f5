"""Per-endpoint request and token limits, enforced the way Model Serving enforces them.

Each served endpoint name has two sliding-window logs (`window.py`): admitted requests, and
tokens. A request is admitted when one more request and its token reservation both fit;
otherwise it is refused with the wait until they would. The reservation is the prompt's tokens
plus max_tokens, which is the server's `max_tokens_limit` when the request sets none. After the
model answers, the reservation is settled to the real prompt + completion count; a
request that produced no completion (fault, overload, client gone) settles to 0 tokens.

A log only records while its limit is set, and a changed `window_s` starts fresh logs: history
measured against another window length would not mean what the new limit says.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.serving.chat_model import Message
from pipeline.serving.settings import ServingSettings
from pipeline.serving.window import SlidingWindowLog, WindowEntry

Clock = Callable[[], float]

# OpenAI's informational header names; clients that pace themselves read these.
LIMIT_REQUESTS = "x-ratelimit-limit-requests"
REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
LIMIT_TOKENS = "x-ratelimit-limit-tokens"
REMAINING_TOKENS = "x-ratelimit-remaining-tokens"


@dataclass(frozen=True)
class Limits:
    """The limits in force for one request; None is unlimited."""

    requests: int | None
    tokens: int | None
    window_s: float

    @classmethod
    def of(cls, settings: ServingSettings) -> Limits:
        """The limits `settings` ask for."""
        return cls(settings.requests_per_minute, settings.tokens_per_minute, settings.window_s)

    @property
    def unlimited(self) -> bool:
        """True when neither limit is set: nothing is recorded or checked."""
        return self.requests is None and self.tokens is None


def reservation(messages: Sequence[Message], max_tokens: int) -> int:
    """Tokens to reserve before the model runs: the prompt's words plus the output budget.

    Words are the echo model's tokens; for another model this is a guess that `settle`
    replaces with the model's own count once it has answered.
    """
    return sum(len(message["content"].split()) for message in messages) + max_tokens


class Admission:
    """An admitted request's token reservation, settled once to the real count.

    Mutable on purpose: it is the handle through which the request's own entry is corrected.
    """

    __slots__ = ("_entry", "_log")

    def __init__(self, log: SlidingWindowLog | None, entry: WindowEntry | None) -> None:
        self._log = log
        self._entry = entry

    def settle(self, tokens: int) -> None:
        """Record the real token count in place of the reservation; later calls do nothing."""
        if self._log is not None and self._entry is not None:
            self._log.settle(self._entry, tokens)
        self._log = self._entry = None

    def release(self) -> None:
        """Settle to 0 tokens unless already settled: call it in `finally`."""
        self.settle(0)


@dataclass(frozen=True)
class Refused:
    """A request over a limit; `wait_s` is when it would fit (`math.inf`: never)."""

    wait_s: float
    message: str

    @property
    def retry_after(self) -> str:
        """The Retry-After header: whole seconds rounded up, at least 1.

        A request that can never fit gets the window length: retrying sooner cannot help.
        """
        return str(max(1, math.ceil(self.wait_s)))


class _EndpointLogs:
    """The two logs of one endpoint name, for one window length."""

    def __init__(self, window_s: float) -> None:
        self.requests = SlidingWindowLog(window_s)
        self.tokens = SlidingWindowLog(window_s)


class EndpointLimiter:
    """Admission against `Limits`, one pair of logs per endpoint name.

    Never awaits, so on one event loop every admit is atomic with its own check.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, _EndpointLogs] = {}

    def admit(self, endpoint: str, tokens: int, limits: Limits) -> Admission | Refused:
        """Admit one request reserving `tokens`, or refuse it with the wait until it fits."""
        if limits.unlimited:
            return Admission(None, None)
        now = self._clock()
        logs = self._logs_for(endpoint, limits.window_s)
        refused = _check(logs, now, tokens, limits)
        if refused is not None:
            return refused
        if limits.requests is not None:
            logs.requests.record(now, 1)
        if limits.tokens is None:
            return Admission(None, None)
        return Admission(logs.tokens, logs.tokens.record(now, tokens))

    def headers(self, endpoint: str, limits: Limits) -> dict[str, str]:
        """OpenAI-style x-ratelimit headers for each limit set; empty when unlimited.

        The limits are announced per minute, as OpenAI's are, whatever the window; what
        remains is what remains in the current window.
        """
        if limits.unlimited:
            return {}
        now = self._clock()
        logs = self._logs_for(endpoint, limits.window_s)
        headers: dict[str, str] = {}
        if limits.requests is not None:
            headers[LIMIT_REQUESTS] = _per_minute(limits.requests, limits.window_s)
            headers[REMAINING_REQUESTS] = str(max(0, limits.requests - logs.requests.used(now)))
        if limits.tokens is not None:
            headers[LIMIT_TOKENS] = _per_minute(limits.tokens, limits.window_s)
            headers[REMAINING_TOKENS] = str(max(0, limits.tokens - logs.tokens.used(now)))
        return headers

    def reset(self) -> None:
        """Forget every endpoint's history; reservations still held settle harmlessly."""
        self._logs.clear()

    def _logs_for(self, endpoint: str, window_s: float) -> _EndpointLogs:
        logs = self._logs.get(endpoint)
        if logs is None or logs.requests.window_s != window_s:
            logs = self._logs[endpoint] = _EndpointLogs(window_s)
        return logs


def _check(logs: _EndpointLogs, now: float, tokens: int, limits: Limits) -> Refused | None:
    """The refusal for the tighter of the two limits, or None when both admit the request."""
    waits: list[tuple[float, str]] = []
    if limits.requests is not None:
        wait = logs.requests.wait_s(now, 1, limits.requests)
        waits.append((wait, f"requests_per_minute={limits.requests}"))
    if limits.tokens is not None:
        wait = logs.tokens.wait_s(now, tokens, limits.tokens)
        if math.isinf(wait):
            return Refused(
                limits.window_s,
                f"request needs {tokens} tokens (prompt + max_tokens), more than "
                f"tokens_per_minute={limits.tokens} allows at all",
            )
        waits.append((wait, f"tokens_per_minute={limits.tokens}"))
    wait, limit = max(waits, default=(0.0, ""))
    if wait <= 0:
        return None
    return Refused(
        wait, f"rate limit exceeded: {limit} over {limits.window_s:g} s; retry in {wait:.3f} s"
    )


def _per_minute(per_window: int, window_s: float) -> str:
    return f"{per_window * 60 / window_s:.0f}"
