"""The endpoint token of one task: the current one, renewed through the driver, never shown.

A fixed token (from the environment) never changes. An OAuth token, which the Databricks SDK
renews on the driver, is fetched again from the driver's token URL (`control.server`) every
`TOKEN_RENEW_S`, and at once when the endpoint answers 401/403 to it. Every token this source
has held is remembered so that `redact` removes it from any text (error rows, the stop reason)
even after it was replaced: an answer to an older request may still quote it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from pipeline.control.protocol import TokenReply
from pipeline.core.secrets import Secret
from pipeline.core.timing import Clock

# A renewable token is asked for again after this long, and at once when the endpoint answers
# 401/403.
TOKEN_RENEW_S = 60.0
TOKEN_RENEW_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


class TokenSource:
    """The current token, renewed from `renew_url` (None: the token never changes).

    Use inside the task's event loop; `session` is the task's chat session (the renewal request
    carries no token of its own: the URL's key is the credential).
    """

    __slots__ = ("_clock", "_current", "_lock", "_renew_url", "_renewed_at", "_seen", "_session")

    def __init__(
        self,
        token: Secret | None,
        renew_url: str | None,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self._current = token
        self._renew_url = renew_url
        self._session = session
        self._clock = clock
        # Every token ever current here, the current one last; only ever grows.
        self._seen: list[Secret] = [] if token is None else [token]
        self._renewed_at = clock()
        # Held while asking the driver: one renewal at a time, the others wait and reuse it.
        self._lock = asyncio.Lock()

    @property
    def current(self) -> Secret | None:
        return self._current

    async def renew_if_due(self) -> None:
        """Renew a renewable token last fetched `TOKEN_RENEW_S` ago or more."""
        if self._renew_url is not None and self._clock() - self._renewed_at >= TOKEN_RENEW_S:
            await self.renew(self._current)

    async def renew(self, used: Secret | None) -> bool:
        """Ask the driver for the current token, unless another request already did since
        `used` was sent; whether the token is now another one than `used`.

        Never raises: a driver that cannot answer leaves the token as it is, with a warning.
        """
        if self._renew_url is None:
            return False
        async with self._lock:
            if self._current is used:
                fresh = await self._fetch(self._renew_url)
                if fresh is not None and fresh != self._current:
                    self._current = fresh
                    self._seen.append(fresh)
        return self._current is not used

    def redact(self, text: str) -> str:
        """`text` without any token this source has held."""
        for token in self._seen:
            text = token.redact(text)
        return text

    async def _fetch(self, url: str) -> Secret | None:
        try:
            timeout = aiohttp.ClientTimeout(total=TOKEN_RENEW_TIMEOUT_S)
            async with self._session.get(url, timeout=timeout) as reply:
                reply.raise_for_status()
                return TokenReply.from_json(await reply.json()).token
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as err:
            log.warning("could not renew the token from the driver (%s)", type(err).__name__)
            return None
        finally:
            self._renewed_at = self._clock()  # a failed renewal also waits a period
