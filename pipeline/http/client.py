"""The async chat client: one aiohttp session, the rate limits and the retry policy.

Knows nothing of Spark. `send` never raises for a request that failed: every outcome becomes a
`RowResult`, so no row is ever lost to an exception.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pipeline.control.coordinator import SharedLimits
from pipeline.core.chat import ChatRequest, Completion, RowResult
from pipeline.core.config import EndpointConfig, LimitsConfig
from pipeline.core.errors import (
    ConnectionFailed,
    EndpointError,
    EndpointUnreachable,
    MalformedResponse,
    RequestTimedOut,
    Stopped,
    describe,
    error_from_response,
)
from pipeline.core.secrets import Secret
from pipeline.core.structured import InvalidOutput, OutputFormat
from pipeline.http.ratelimit import Clock, RateLimits, Sleep
from pipeline.http.retry import RetryPolicy
from pipeline.wire import WireFormat

# A renewable token (see `secrets.Credentials`) is asked for again after this long, and at once
# when the endpoint answers 401/403.
TOKEN_RENEW_S = 60.0
TOKEN_RENEW_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientSettings:
    """Everything a task needs to build its client; picklable, so Spark ships it to executors."""

    endpoint: EndpointConfig
    limits: LimitsConfig
    extra: Mapping[str, Any] = field(default_factory=dict)
    token: Secret | None = None
    # This task's share of the job's per-minute budgets (used alone without `budget_url`).
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    # The job's shared budget on the driver (see `pipeline.control.coordinator`).
    budget_url: str | None = None
    # Where the driver collects the tasks' progress (see `pipeline.control.progress`).
    progress_url: str | None = None
    # Structured output: asked for on the wire, and every answer checked.
    output: OutputFormat | None = None
    # Where the driver hands out the current token, when it renews (OAuth via the SDK).
    token_url: str | None = None


class ChatClient:
    """Sends chat requests to one endpoint. Create and use it inside one running event loop."""

    def __init__(
        self,
        settings: ClientSettings,
        session: aiohttp.ClientSession,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._session = session
        self._wire: WireFormat = settings.endpoint.wire
        self._url = self._wire.url(settings.endpoint)
        self._extra = self._wire.extra_fields(settings.extra, settings.output)
        self._policy = RetryPolicy.from_limits(settings.limits)
        own_share = RateLimits(
            settings.requests_per_minute,
            settings.tokens_per_minute,
            job_tokens_per_minute=settings.limits.tokens_per_minute,
            clock=clock,
            sleep=sleep,
        )
        self._limits: RateLimits | SharedLimits = own_share
        if settings.budget_url is not None:
            self._limits = SharedLimits(
                settings.budget_url,
                own_share,
                batch=settings.limits.concurrency,
                uses_tokens=settings.limits.tokens_per_minute is not None,
                limit_headers=self._wire.limit_headers,
                sleep=sleep,
            )
        self._clock = clock
        self._sleep = sleep
        self._fatal_answers = 0
        self._answered_ok = False
        # Answers that were 429 (rate limited), retried or not.
        self.rate_limited = 0
        self._token = settings.token
        self._tokens_seen = [] if settings.token is None else [settings.token]
        self._renewed_at = clock()
        self._renew_lock = asyncio.Lock()
        # Set once answers that every row would get have come back `max_fatal_errors` times.
        self.stop_reason: str | None = None

    @classmethod
    def open_session(cls, settings: ClientSettings) -> aiohttp.ClientSession:
        """A session sized for the task's concurrency, with the configured timeouts."""
        limits = settings.limits
        connector = aiohttp.TCPConnector(
            limit=limits.concurrency,
            ssl=settings.endpoint.verify_tls,  # True: verify certificates
            ttl_dns_cache=300,
        )
        # The Authorization header goes with each request: a renewed token replaces it.
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(
            total=limits.timeout_s, sock_connect=limits.connect_timeout_s
        )
        return aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout)

    async def send(self, request: ChatRequest) -> RowResult:
        """Send `request` under the limits and retry policy; the outcome as a row result."""
        if self.stop_reason is not None:
            return RowResult(
                request.request_id,
                "error",
                error=f"aborted: {self.stop_reason}",
                request_hash=request.request_hash,
            )
        started = self._clock()
        attempts = 0
        body = json.dumps(
            self._wire.body(request, self._settings.endpoint, self._extra),
            ensure_ascii=False,
        ).encode("utf-8")
        try:
            self._limits.check(request.estimated_tokens())  # before any attempt: never sent
            attempts = 1
            first: Exception | None = None
            try:  # most rows are answered at once: the retry controller only for the others
                completion, status = await self._counted_attempt(request, body)
            except Exception as err:
                first = err
            if first is not None:
                spent = self._clock() - started
                stopping = self._stopping
                retrying = self._policy.retrying(self._sleep, spent_s=spent, give_up=stopping)
                async for attempt in retrying:
                    with attempt:
                        attempts = attempt.retry_state.attempt_number
                        if attempts == 1:
                            raise first  # judged, and waited for, like any failed attempt
                        completion, status = await self._counted_attempt(request, body)
        except Exception as err:  # every failure becomes an error row, never a lost row
            if isinstance(err, Stopped):
                attempts -= 1  # the attempt that found the task stopping sent nothing
            return RowResult(
                request_id=request.request_id,
                status="error",
                error=self._redact(describe(err)),
                http_status=err.status if isinstance(err, EndpointError) else None,
                attempts=attempts,
                latency_ms=self._elapsed_ms(started),
                request_hash=request.request_hash,
            )
        self._answered_ok = True
        parsed, problem = None, None
        if self._settings.output is not None:
            try:
                parsed = self._settings.output.check(completion.text)
            except InvalidOutput as err:  # paid for, kept, not retried: the model chose it
                problem = f"invalid_output: {err}"
        return RowResult(
            request_id=request.request_id,
            status="ok" if problem is None else "error",
            completion=completion,
            error=problem,
            http_status=status,
            attempts=attempts,
            latency_ms=self._elapsed_ms(started),
            parsed=parsed,
            request_hash=request.request_hash,
        )

    async def close(self) -> None:
        """Release what the rate limits hold (the lease session to the driver)."""
        await self._limits.close()

    async def _counted_attempt(
        self, request: ChatRequest, body: bytes
    ) -> tuple[Completion, int]:
        """One attempt; an answer that every row would get counts toward stopping the job,
        and once the job is stopping nothing more is sent."""
        if self.stop_reason is not None:
            raise Stopped(self.stop_reason)
        try:
            return await self._attempt(request, body)
        except EndpointError as err:
            if self._stops_job(err):
                self._count_fatal(err)
            raise

    def _stopping(self) -> bool:
        return self.stop_reason is not None

    def _stops_job(self, error: EndpointError) -> bool:
        # A 400 or an unreachable host before any success is most likely the configuration
        # (every row would get it); once a request has succeeded, it is about its own row (or
        # a passing fault) and stays an error row, retried as its class says.
        return error.stops_job or (error.stops_job_before_success and not self._answered_ok)

    def _count_fatal(self, error: EndpointError) -> None:
        self._fatal_answers += 1
        if (
            self.stop_reason is None
            and self._fatal_answers >= self._settings.limits.max_fatal_errors
        ):
            outcome = error.outcome.format(code=error.code)
            self.stop_reason = self._redact(
                f"{self._fatal_answers} requests to {self._url} {outcome} ({error}); {error.hint}"
            ).rstrip("; ")

    async def _attempt(self, request: ChatRequest, body: bytes) -> tuple[Completion, int]:
        estimate = request.estimated_tokens()
        await self._limits.acquire(estimate)
        try:
            renewable = self._settings.token_url is not None
            if renewable and self._clock() - self._renewed_at >= TOKEN_RENEW_S:
                await self._renew_token(self._token)
            used = self._token
            status, headers, text = await self._post(body)
            if status in (401, 403) and await self._renew_token(used):
                status, headers, text = await self._post(body)  # once, with the new token
        except EndpointError:
            self._limits.settle(estimate, None)
            raise
        self._limits.observe(status, headers)
        if status == 429:
            self.rate_limited += 1
        if not 200 <= status < 300:
            self._limits.settle(estimate, None)
            raise error_from_response(status, headers, text, self._wire.error_body)
        try:
            completion = self._wire.parse(json.loads(text))
        except ValueError as err:  # json.JSONDecodeError, or a non-UTF-8 body
            self._limits.settle(estimate, None)
            raise MalformedResponse(
                f"HTTP {status}: body is not valid JSON", status=status
            ) from err
        except MalformedResponse as err:
            err.status = status
            self._limits.settle(estimate, None)
            raise
        self._limits.settle(estimate, completion.total_tokens or estimate)
        return completion, status

    async def _renew_token(self, used: Secret | None) -> bool:
        """Ask the driver for the current token, unless another request already did since
        `used` was sent; whether the token is now another one."""
        if self._settings.token_url is None:
            return False
        async with self._renew_lock:
            if self._token is used:
                try:
                    timeout = aiohttp.ClientTimeout(total=TOKEN_RENEW_TIMEOUT_S)
                    async with self._session.get(
                        self._settings.token_url, timeout=timeout
                    ) as reply:
                        reply.raise_for_status()
                        fresh = Secret(str((await reply.json())["token"]))
                except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as err:
                    log.warning(
                        "could not renew the token from the driver (%s)", type(err).__name__
                    )
                    return False
                finally:
                    self._renewed_at = self._clock()
                if fresh != self._token:
                    self._token = fresh
                    self._tokens_seen.append(fresh)
        return self._token is not used

    async def _post(self, body: bytes) -> tuple[int, Mapping[str, str], str]:
        headers = None
        if self._token is not None:
            headers = self._wire.auth_headers(self._token.reveal())
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                try:
                    text = await response.text(errors="replace")
                except aiohttp.ClientPayloadError as err:
                    raise MalformedResponse(
                        f"HTTP {response.status}: truncated response body", status=response.status
                    ) from err
                return response.status, response.headers, text
        except aiohttp.ConnectionTimeoutError as err:
            raise EndpointUnreachable(
                "no connection within "
                f"limits.connect_timeout_s={self._settings.limits.connect_timeout_s:g}"
            ) from err
        except aiohttp.ClientConnectorError as err:
            raise EndpointUnreachable(f"{type(err).__name__}: {err}") from err
        except (TimeoutError, asyncio.TimeoutError) as err:
            raise RequestTimedOut(
                f"no complete answer within limits.timeout_s={self._settings.limits.timeout_s:g}"
            ) from err
        except aiohttp.ClientError as err:
            raise ConnectionFailed(f"{type(err).__name__}: {err}") from err

    def _redact(self, text: str) -> str:
        for token in self._tokens_seen:
            text = token.redact(text)
        return text

    def _elapsed_ms(self, started: float) -> float:
        return round((self._clock() - started) * 1000.0, 3)
