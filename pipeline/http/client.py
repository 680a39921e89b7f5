"""The async chat client: sends one request under the limiter and the retry policy.

Knows nothing of Spark. `send` never raises for a request that failed: every outcome becomes a
`RowResult`, so no row is ever lost to an exception. The client owns only sending: attempts and
retries, the HTTP exchange, and transport failures turned into the error classes of
`core.errors` (in `_post`). The wire format encodes the body (`pipeline.wire`), `answers` says
what an answer means, the limiter is passed in (`limiter.Limiter`), the token comes from
`tokens.TokenSource`, and `guard.FatalAnswerGuard` decides when the task stops sending.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from pipeline.core.chat import Completion, EncodedRequest, Outgoing, RowResult
from pipeline.core.errors import (
    CertificateRefused,
    ConnectionFailed,
    EndpointError,
    EndpointUnreachable,
    MalformedResponse,
    RateLimited,
    RequestTimedOut,
    Stopped,
    describe,
)
from pipeline.core.secrets import Secret
from pipeline.core.timing import Clock, Sleep
from pipeline.http.answers import check_output, parse_answer
from pipeline.http.guard import FatalAnswerGuard
from pipeline.http.limiter import Limiter
from pipeline.http.retry import RetryPolicy
from pipeline.http.settings import ClientSettings
from pipeline.http.tokens import TokenSource
from pipeline.wire import WireFormat


@dataclass(eq=False)
class _Row:
    """One row's request on its way: the encoded body, when it started, attempts so far."""

    request: Outgoing
    body: bytes
    started: float
    attempts: int = 0


class ChatClient:
    """Sends chat requests to one endpoint. Create and use it inside one running event loop.

    `session` and `limiter` are borrowed: whoever made them closes them.
    """

    def __init__(
        self,
        settings: ClientSettings,
        session: aiohttp.ClientSession,
        limiter: Limiter,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._session = session
        self._limiter = limiter
        self._wire: WireFormat = settings.endpoint.wire
        self._url = self._wire.url(settings.endpoint)
        self._extra = self._wire.extra_fields(settings.request)
        self._policy = RetryPolicy.from_limits(settings.limits)
        self._clock = clock
        self._sleep = sleep
        self.tokens = TokenSource(settings.token, settings.token_url, session, clock=clock)
        self._headers = {name: value.reveal() for name, value in settings.headers.items()}
        self._query = dict(settings.endpoint.query)
        self.guard = FatalAnswerGuard(
            settings.limits.max_fatal_errors, url=self._url, redact=self.redact
        )
        # Answers that were 429 (rate limited), retried or not.
        self.rate_limited = 0

    def redact(self, text: str) -> str:
        """`text` without any token, or value of `endpoint.headers`, this client has held."""
        text = self.tokens.redact(text)
        for secret in self._settings.headers.values():
            text = secret.redact(text)
        return text

    @property
    def stop_reason(self) -> str | None:
        """Why this client stopped sending (see `FatalAnswerGuard`), or None."""
        return self.guard.stop_reason

    async def send(self, request: Outgoing) -> RowResult:
        """Send `request` under the limits and retry policy; the outcome as a row result."""
        if self.guard.stopping:
            return RowResult(
                request.request_id,
                "error",
                error=f"aborted: {self.stop_reason}",
                request_hash=request.request_hash,
            )
        body = (
            request.body if isinstance(request, EncodedRequest)
            else self._wire.encoded_body(request, self._settings.endpoint, self._extra)
        )  # fmt: skip
        row = _Row(request, body, self._clock())
        try:
            completion, status = await self._send(row)
        except Exception as err:  # every failure becomes an error row, never a lost row
            if isinstance(err, Stopped):
                row.attempts -= 1  # the attempt that found the task stopping sent nothing
            return RowResult(
                request_id=request.request_id,
                status="error",
                error=self.redact(describe(err)),
                http_status=err.status if isinstance(err, EndpointError) else None,
                attempts=row.attempts,
                latency_ms=self._elapsed_ms(row.started),
                request_hash=request.request_hash,
            )
        self.guard.answered_ok()
        asked = self._settings.request
        parsed, problem = check_output(asked.output_format, asked.tools, completion)
        return RowResult(
            request_id=request.request_id,
            status="ok" if problem is None else "error",
            completion=completion,
            error=problem,
            http_status=status,
            attempts=row.attempts,
            latency_ms=self._elapsed_ms(row.started),
            parsed=parsed,
            request_hash=request.request_hash,
        )

    async def _send(self, row: _Row) -> tuple[Completion, int]:
        """The answer to `row`, retried as the policy says; counts `row.attempts`.

        Raises:
            TokenBudgetExceeded: before any attempt (the request was never sent).
            EndpointError: the last attempt's error, when the retries gave up.
        """
        self._limiter.check(row.request.estimated_tokens())
        row.attempts = 1
        try:  # most rows are answered at once: the retry controller only for the others
            return await self._counted_attempt(row)
        except Exception as err:
            first = err
        retrying = self._policy.retrying(
            self._sleep,
            spent_s=self._clock() - row.started,
            give_up=lambda: self.guard.stopping,  # asked after each failed attempt
        )
        async for attempt in retrying:
            with attempt:
                row.attempts = attempt.retry_state.attempt_number
                if row.attempts == 1:
                    raise first  # judged, and waited for, like any failed attempt
                completion, status = await self._counted_attempt(row)
        return completion, status

    async def _counted_attempt(self, row: _Row) -> tuple[Completion, int]:
        """One attempt, unless the task is stopping; the guard judges every endpoint error."""
        self.guard.raise_if_stopping()
        try:
            return await self._attempt(row.request, row.body)
        except EndpointError as err:
            self.guard.judge(err)
            raise

    async def _attempt(self, request: Outgoing, body: bytes) -> tuple[Completion, int]:
        """Acquire, post (again once with a renewed token after a 401/403), parse; the
        limiter is settled exactly once for what was acquired."""
        estimate = request.estimated_tokens()
        await self._limiter.acquire(estimate)
        try:
            await self.tokens.renew_if_due()
            used = self.tokens.current
            status, headers, text = await self._post(body, used)
            if status in (401, 403) and await self.tokens.renew(used):
                status, headers, text = await self._post(body, self.tokens.current)  # once
            self._limiter.observe(status, headers)
            if status == 429:
                self.rate_limited += 1
            completion = parse_answer(self._wire, status, headers, text)
        except RateLimited:
            # Refused: the endpoint's window is full. The attempt keeps its place in the
            # schedule (its estimate spent, as its request permit is), else the tokens given
            # back send the next request at once into the same full window.
            self._limiter.settle(estimate, estimate)
            raise
        except EndpointError:
            self._limiter.settle(estimate, None)
            raise
        self._limiter.settle(estimate, completion.total_tokens or estimate)
        return completion, status

    async def _post(self, body: bytes, token: Secret | None) -> tuple[int, Mapping[str, str], str]:
        """One HTTP exchange: status, headers and text, whatever the status.

        Raises:
            EndpointUnreachable, RequestTimedOut, ConnectionFailed: no complete answer.
            MalformedResponse: the body was cut short.
        """
        endpoint, limits = self._settings.endpoint, self._settings.limits
        headers = dict(self._headers)
        if token is not None:
            headers.update(endpoint.auth_headers(token.reveal()))
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, params=self._query or None
            ) as response:
                try:
                    text = await response.text(errors="replace")
                except aiohttp.ClientPayloadError as err:
                    raise MalformedResponse(
                        f"HTTP {response.status}: truncated response body", status=response.status
                    ) from err
                return response.status, response.headers, text
        except aiohttp.ConnectionTimeoutError as err:
            raise EndpointUnreachable(
                f"no connection within limits.connect_timeout_s={limits.connect_timeout_s:g}"
            ) from err
        except aiohttp.ClientConnectorCertificateError as err:
            raise CertificateRefused(f"{type(err).__name__}: {err}") from err
        except aiohttp.ClientConnectorError as err:
            raise EndpointUnreachable(f"{type(err).__name__}: {err}") from err
        except (TimeoutError, asyncio.TimeoutError) as err:
            raise RequestTimedOut(
                f"no complete answer within limits.timeout_s={limits.timeout_s:g}"
            ) from err
        except aiohttp.ClientError as err:
            raise ConnectionFailed(f"{type(err).__name__}: {err}") from err

    def _elapsed_ms(self, started: float) -> float:
        return round((self._clock() - started) * 1000.0, 3)
