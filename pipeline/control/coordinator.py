"""The job's budgets served to its tasks: a small HTTP server on the driver, and its client.

The driver runs `BudgetServer` (aiohttp on its own thread) for the length of the job. It also
collects the tasks' progress and hands out the current token when it renews (OAuth). Every task's
`SharedLimits` leases permits from it in batches of at most `budget.LEASE_SECONDS` of the job's
rate, reporting what it saw (successes, 429s, the endpoint's `x-ratelimit-*` headers, token
corrections). A task that cannot reach the driver falls back to its static share of the budgets,
with a warning, rather than failing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from pipeline.control.budget import JobBudget, Lease, LeaseAsk
from pipeline.control.progress import Board, Tally
from pipeline.core.secrets import Credentials
from pipeline.http.loopthread import LoopThread
from pipeline.http.ratelimit import RateLimits, Sleep
from pipeline.wire import WireFormat

log = logging.getLogger(__name__)

LEASE_TIMEOUT_S = 10.0
# How long the driver's budget server may take to start or to shut down.
SERVER_TIMEOUT_S = 30.0
# After a failed lease, ask again after this long.
LEASE_RETRY_S = 0.5
# How many failed leases in a row make a task give up on the driver.
MAX_LEASE_FAILURES = 3


class BudgetServer:
    """Serves `budget` at `url`, and collects the tasks' progress on `board` at `progress_url`,
    while the context is open."""

    def __init__(
        self,
        budget: JobBudget | None,
        *,
        board: Board | None = None,
        credentials: Credentials | None = None,
        bind: str = "0.0.0.0",
        advertise: str,
    ) -> None:
        self.budget = budget
        self.board = board
        self.credentials = credentials
        self._bind = bind
        self._advertise = advertise
        self._key = secrets.token_urlsafe(16)  # tasks of this job only
        self._loop = LoopThread("budget")
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.progress_url = ""
        self.token_url = ""

    def __enter__(self) -> BudgetServer:
        self._loop.start()
        port = self._loop.run(self._start(), SERVER_TIMEOUT_S)
        base = f"http://{self._advertise}:{port}/{self._key}"
        self.url, self.progress_url = f"{base}/lease", f"{base}/progress"
        self.token_url = f"{base}/token"
        return self

    def __exit__(self, *_: object) -> None:
        try:
            if self._runner is not None:
                self._loop.run(self._runner.cleanup(), SERVER_TIMEOUT_S)
        finally:
            self._loop.stop(SERVER_TIMEOUT_S)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post(f"/{self._key}/lease", self._lease)
        app.router.add_post(f"/{self._key}/progress", self._progress)
        app.router.add_get(f"/{self._key}/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _lease(self, request: web.Request) -> web.Response:
        if self.budget is None:
            raise web.HTTPNotFound()
        fields = {f.name for f in dataclasses.fields(LeaseAsk)}
        body = await request.json()
        ask = LeaseAsk(**{k: v for k, v in body.items() if k in fields})
        return web.json_response(dataclasses.asdict(self.budget.lease(ask)))

    async def _token(self, request: web.Request) -> web.Response:
        # Only the tasks of this job know the key in the URL. The SDK may call the workspace
        # to renew an OAuth token: off the loop.
        if self.credentials is None or not self.credentials.renewable:
            raise web.HTTPNotFound()
        token = await asyncio.to_thread(self.credentials.current)
        if token is None:
            raise web.HTTPServiceUnavailable()
        return web.json_response({"token": token.reveal()})

    async def _progress(self, request: web.Request) -> web.Response:
        if self.board is not None:
            body = await request.json()
            self.board.report(str(body["reporter"]), int(body["seq"]), Tally.from_dict(body))
        return web.json_response({})


class SharedLimits:
    """`RateLimits` for one task, drawing on the job's budget through the driver.

    Use inside the task's event loop; `fallback` is the task's static share, used when the
    driver cannot be reached.
    """

    def __init__(
        self,
        url: str,
        fallback: RateLimits,
        *,
        batch: int,
        uses_tokens: bool,
        limit_headers: Mapping[str, str] = WireFormat.limit_headers,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._url = url
        # Response header → the endpoint limit it announces (the wire format's own names).
        self._limit_headers = limit_headers
        # Its own session: the chat session's headers carry the endpoint's token.
        self._session: aiohttp.ClientSession | None = None
        self._fallback = fallback
        self._batch = max(1, batch)
        self._uses_tokens = uses_tokens
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._requests = 0
        self._tokens = 0.0
        self._seen = {"ok": 0, "rate_limited": 0, "token_correction": 0.0}
        self._announced: dict[str, float] = {}
        self._failures = 0
        self._detached = False

    def check(self, estimated_tokens: int) -> None:
        """See `RateLimits.check`."""
        self._fallback.check(estimated_tokens)

    async def acquire(self, estimated_tokens: int) -> None:
        """Wait for one request permit and `estimated_tokens` of token budget."""
        self.check(estimated_tokens)
        if self._detached:
            await self._fallback.acquire(estimated_tokens)
            return
        needs_tokens = self._uses_tokens or "endpoint_tokens_per_minute" in self._announced
        async with self._lock:
            while self._requests < 1 or (needs_tokens and self._tokens < estimated_tokens):
                lease = await self._lease(estimated_tokens)
                if lease is None:  # the driver is gone: this task's static share from now on
                    await self._fallback.acquire(estimated_tokens)
                    return
                self._requests += lease.requests
                self._tokens += lease.tokens
                if not lease.requests:
                    await self._sleep(lease.wait_s)
            self._requests -= 1
            self._tokens -= estimated_tokens if needs_tokens else 0

    def settle(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        """Report the real usage with the next lease."""
        self._fallback.settle(estimated_tokens, actual_tokens)
        self._seen["token_correction"] += (actual_tokens or 0) - estimated_tokens

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Count an answer, and read the endpoint's announced limits."""
        if status == 429:
            self._seen["rate_limited"] += 1
        elif 200 <= status < 300:
            self._seen["ok"] += 1
        for header, name in self._limit_headers.items():
            value = headers.get(header)
            if value is not None:
                try:
                    self._announced[name] = float(value)
                except ValueError:
                    pass

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _lease(self, estimated_tokens: int) -> Lease | None:
        # What was seen up to now goes with this ask; what is seen while it is in flight (the
        # 429s of a busy moment, above all) goes with the next one, never lost.
        reported = dict(self._seen)
        ask = {
            "requests": self._batch,
            "tokens": float(estimated_tokens * self._batch),
            "ok": reported["ok"],
            "rate_limited": reported["rate_limited"],
            "token_correction": reported["token_correction"],
            **self._announced,
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self._url, json=ask, timeout=aiohttp.ClientTimeout(total=LEASE_TIMEOUT_S)
            ) as reply:
                reply.raise_for_status()
                body = await reply.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            self._failures += 1
            if self._failures >= MAX_LEASE_FAILURES:
                log.warning("rate budget on the driver unreachable (%s); using this task's "
                            "static share", type(err).__name__)  # fmt: skip
                self._detached = True
                return None
            return Lease(0, 0.0, LEASE_RETRY_S)
        self._failures = 0
        for name, value in reported.items():
            self._seen[name] -= value
        return Lease(**body)
