"""Assembly of the local serving endpoint: one POST route per path of every served format, plus
health, stats and control.

The model routes all run one request pipeline (`model_route.py`) and are added by iterating the
format registry (`formats/`); only they count in /stats. /health, /stats and /control take no
credentials: they are local test hooks with no Databricks counterpart, and the server binds to
loopback.

Serve the app with aiohttp's `handler_cancellation=True` (as `__main__` does): a client that
disconnects then cancels its handler, which ends timeout holds and latency sleeps and gives the
concurrency slot back.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from aiohttp import hdrs, web

from pipeline.serving.auth import read_token
from pipeline.serving.chat_model import ChatModel
from pipeline.serving.concurrency import ConcurrencyGate
from pipeline.serving.errors import ApiError
from pipeline.serving.faults import FaultPlan
from pipeline.serving.formats import SERVED_FORMATS
from pipeline.serving.latency import LatencyModel
from pipeline.serving.limits import EndpointLimiter
from pipeline.serving.model_route import Handler, error_response, model_route
from pipeline.serving.models import make_model
from pipeline.serving.settings import ServingSettings, SettingsError
from pipeline.serving.shapes import error_code_for_status
from pipeline.serving.state import STATE, ServingState
from pipeline.serving.stats import ServingStats
from pipeline.serving.validation import parse_json_object

# Model Serving accepts request payloads up to 16 MB; aiohttp's default is 1 MiB.
MAX_BODY_BYTES = 16 * 1024 * 1024


def make_app(
    settings: ServingSettings,
    *,
    environ: Mapping[str, str] = os.environ,
    model: ChatModel | None = None,
) -> web.Application:
    """Build the web application for `settings`; the token is read from `environ` now.

    `model` replaces the one `settings.model` names (tests inject models this way). A model with
    `blocking = True` runs in one dedicated worker thread, shut down with the app.
    Raises SettingsError when the model is unknown or the token variable is unset.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_unrouted_as_json])
    model = model if model is not None else make_model(settings)
    app[STATE] = state = ServingState(
        initial_settings=settings,
        settings=settings,
        token=read_token(settings.token_env, environ),
        model=model,
        executor=_model_executor(model),
        stats=ServingStats(),
        faults=FaultPlan(settings.seed),
        latency=LatencyModel(settings.seed),
        limiter=EndpointLimiter(),
        gate=ConcurrencyGate(settings.max_concurrency),
        shutting_down=asyncio.Event(),
    )
    app.on_shutdown.append(_end_holds)
    if state.executor is not None:
        app.on_cleanup.append(_shutdown_executor)
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/control", _control)
    app.router.add_post("/control/reset", _reset)
    for served in SERVED_FORMATS:
        handler = model_route(served)
        for path in served.paths:
            app.router.add_post(path, handler)
    return app


def _model_executor(model: ChatModel) -> ThreadPoolExecutor | None:
    # One thread: a blocking model (llama.cpp) is CPU-bound and not thread-safe, so calls queue
    # for it instead of running side by side. A non-blocking model runs inline: no thread hop.
    if not getattr(model, "blocking", False):
        return None
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="serving-model")


async def _end_holds(app: web.Application) -> None:
    # aiohttp waits for running handlers on shutdown; a 300 s hold would outlast the grace.
    app[STATE].shutting_down.set()


async def _shutdown_executor(app: web.Application) -> None:
    executor = app[STATE].executor
    if executor is not None:
        # In a helper thread: waiting for a running call must not block the loop.
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)


@web.middleware
async def _unrouted_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer unknown paths and methods with a Databricks body instead of aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "ENDPOINT_NOT_FOUND" if exc.status == 404 else error_code_for_status(exc.status)
        allow: dict[str, str] | None = (
            {hdrs.ALLOW: exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else None
        )
        message = f"no API for {request.method} {request.path}"
        return error_response(exc.status, code, message, allow)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    snapshot = state.stats.snapshot(
        distinct_requests=state.faults.distinct_keys, queued=state.gate.queued
    )
    return web.json_response(snapshot)


async def _control(request: web.Request) -> web.Response:
    """Apply a JSON object of settings; posting `seed` (even unchanged) restarts the RNGs."""
    state = request.app[STATE]
    try:
        changes = parse_json_object(await request.read())
        settings = state.settings.with_changes(changes)
    except ApiError as err:
        return error_response(err.status, err.error_code, err.message)
    except SettingsError as err:
        return error_response(400, "INVALID_PARAMETER_VALUE", str(err))
    state.apply(settings, reseed="seed" in changes)
    return web.json_response(state.settings.to_dict())


async def _reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return web.json_response(state.settings.to_dict())
