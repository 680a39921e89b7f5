"""The driver's side of the control plane: one small HTTP server for the length of the job.

Spark gives tasks no channel back to the driver while they run, so the driver serves one
(aiohttp, on a thread of its own): the tasks lease the job's rate budget from it
(`control.budget`), post their progress to it (`control.progress.Board`), and fetch the current
token from it when the token renews (OAuth through the Databricks SDK). The routes
(`protocol.*_PATH`) sit under a random key made per job, so only this job's tasks, which get the
full URLs in their settings, can reach them. The messages are `control.protocol`'s; the task
side is `control.agents`.
"""

from __future__ import annotations

import asyncio
import secrets

from aiohttp import web

from pipeline.control.budget import JobBudget
from pipeline.control.progress import Board
from pipeline.control.protocol import (
    HEALTH_PATH,
    LEASE_PATH,
    PROGRESS_PATH,
    TOKEN_PATH,
    LeaseAsk,
    ProgressReport,
    TokenReply,
)
from pipeline.core.loopthread import LoopThread
from pipeline.core.secrets import Credentials

# How long the server may take to start or to shut down.
SERVER_TIMEOUT_S = 30.0


class DriverServer:
    """Serves `budget` at `url`, collects the tasks' progress on `board` at `progress_url` and
    hands out the current token of `credentials` at `token_url`, while the context is open.

    Without a budget the lease route answers 404; without a board progress is acknowledged and
    dropped; without renewable credentials the token route answers 404.
    """

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
        # The address the tasks are given for this server.
        self.advertise = advertise
        self._key = secrets.token_urlsafe(16)  # tasks of this job only
        self._loop = LoopThread("budget")
        self._runner: web.AppRunner | None = None
        # Set on entering the context (the port is known only then).
        self.url = ""
        self.progress_url = ""
        self.token_url = ""
        self.health_url = ""

    def __enter__(self) -> DriverServer:
        self._loop.start()
        port = self._loop.run(self._start(), SERVER_TIMEOUT_S)
        base = f"http://{self.advertise}:{port}/{self._key}"
        self.url = base + LEASE_PATH
        self.progress_url = base + PROGRESS_PATH
        self.token_url = base + TOKEN_PATH
        self.health_url = base + HEALTH_PATH
        return self

    def __exit__(self, *_: object) -> None:
        try:
            if self._runner is not None:
                self._loop.run(self._runner.cleanup(), SERVER_TIMEOUT_S)
        finally:
            self._loop.stop(SERVER_TIMEOUT_S)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_post(f"/{self._key}{LEASE_PATH}", self._lease)
        app.router.add_post(f"/{self._key}{PROGRESS_PATH}", self._progress)
        app.router.add_get(f"/{self._key}{TOKEN_PATH}", self._token)
        app.router.add_get(f"/{self._key}{HEALTH_PATH}", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._bind, 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _lease(self, request: web.Request) -> web.Response:
        if self.budget is None:
            raise web.HTTPNotFound()
        ask = LeaseAsk.from_json(await request.json())
        return web.json_response(self.budget.lease(ask).to_json())

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _token(self, request: web.Request) -> web.Response:
        # The SDK may call the workspace to renew an OAuth token: off the loop.
        if self.credentials is None or not self.credentials.renewable:
            raise web.HTTPNotFound()
        token = await asyncio.to_thread(self.credentials.current)
        if token is None:
            raise web.HTTPServiceUnavailable()
        return web.json_response(TokenReply(token).to_json())

    async def _progress(self, request: web.Request) -> web.Response:
        if self.board is not None:
            report = ProgressReport.from_json(await request.json())
            self.board.report(report.reporter, report.seq, report.totals, report.attempt)
        return web.json_response({})
