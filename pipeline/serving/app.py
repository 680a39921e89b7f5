"""Routes of the local serving endpoint: the three model routes plus health, stats and control.

A model request goes: auth -> endpoint name -> body validation -> rate limits (429) ->
concurrency bound (wait, or 503) -> fault plan -> model -> latency -> wire shape. Only the model
routes count in /stats. /health, /stats and /control take no credentials: they are local test
hooks with no Databricks counterpart, and the server binds to loopback.

Serve the app with aiohttp's `handler_cancellation=True` (as `__main__` does): a client that
disconnects then cancels its handler, which ends timeout holds and latency sleeps and gives the
concurrency slot back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from pipeline.serving.auth import check_authorization, read_token
from pipeline.serving.concurrency import ConcurrencyGate
from pipeline.serving.errors import ApiError, EndpointNotFound
from pipeline.serving.fault_replies import fault_reply
from pipeline.serving.faults import FaultPlan
from pipeline.serving.latency import LatencyModel
from pipeline.serving.limits import Admission, EndpointLimiter, Limits, Refused, reservation
from pipeline.serving.models import ChatModel, Completion, Message, make_model
from pipeline.serving.settings import ServingSettings, SettingsError
from pipeline.serving.shapes import (
    WireFormat,
    chat_completion,
    error_body,
    error_code_for_status,
    new_id,
    response_object,
)
from pipeline.serving.stats import ServingStats
from pipeline.serving.validation import (
    ChatRequest,
    endpoint_from_body,
    parse_chat_request,
    parse_json_object,
    parse_responses_request,
)

_log = logging.getLogger(__name__)

# Model Serving accepts request payloads up to 16 MB; aiohttp's default is 1 MiB.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Recorded in /stats when a handler is cancelled before answering (nginx's "client closed").
CLIENT_CLOSED_REQUEST = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    app.router.add_post("/serving-endpoints/{name}/invocations", _model_route("invocations"))
    app.router.add_post("/serving-endpoints/chat/completions", _model_route("chat_completions"))
    app.router.add_post("/serving-endpoints/responses", _model_route("responses"))
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


def _error_response(
    status: int, error_code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(error_body(error_code, message), status=status, headers=headers)


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
        return _error_response(exc.status, code, message, allow)


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
        return _error_response(err.status, err.error_code, err.message)
    except SettingsError as err:
        return _error_response(400, "INVALID_PARAMETER_VALUE", str(err))
    state.apply(settings, reseed="seed" in changes)
    return web.json_response(state.settings.to_dict())


async def _reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return web.json_response(state.settings.to_dict())


def _model_route(wire_format: WireFormat) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        stats = request.app[STATE].stats
        stats.request_started(wire_format)
        status = CLIENT_CLOSED_REQUEST
        try:
            response = await _answer(request, wire_format)
            status = response.status
            return response
        finally:
            stats.request_finished(status)

    return handle


@dataclass(frozen=True)
class _Call:
    """A validated model request and the settings version it is served under."""

    wire_format: WireFormat
    endpoint: str
    chat: ChatRequest
    settings: ServingSettings

    @property
    def max_tokens(self) -> int:
        """The request's output budget; the server limit when it sent none."""
        chat, settings = self.chat, self.settings
        return chat.max_tokens if chat.max_tokens is not None else settings.max_tokens_limit


async def _answer(request: web.Request, wire_format: WireFormat) -> web.StreamResponse:
    """Serve one model request; every failure becomes a Databricks error response.

    Once the endpoint name is known to be served, every reply carries the x-ratelimit headers.
    """
    state = request.app[STATE]
    # One request sees one settings version even if /control swaps them while it runs.
    settings = state.settings
    endpoint: str | None = None
    try:
        check_authorization(request.headers.get(hdrs.AUTHORIZATION), state.token)
        # Invocations name the endpoint in the path: an unknown name is 404 whatever the body is.
        name = request.match_info.get("name")
        if name is not None:
            endpoint = _require_served(name, settings)
        body = parse_json_object(await request.read())
        if endpoint is None:
            endpoint = _require_served(endpoint_from_body(body), settings)
        call = _Call(wire_format, endpoint, _parse(body, wire_format, settings), settings)
        return await _admit(request, call)
    except ApiError as err:
        headers = _limit_headers(request, endpoint, settings)
        return _error_response(err.status, err.error_code, err.message, headers)
    except web.HTTPException as exc:  # e.g. 413 from aiohttp when the body exceeds the cap
        headers = _limit_headers(request, endpoint, settings)
        return _error_response(exc.status, error_code_for_status(exc.status), exc.reason, headers)
    except Exception:
        _log.exception("unexpected error serving %s", wire_format)
        return _error_response(500, "INTERNAL_ERROR", "unexpected server error; see server log")


def _limit_headers(
    request: web.Request, endpoint: str | None, settings: ServingSettings
) -> dict[str, str]:
    if endpoint is None or not settings.limit_headers:
        return {}
    return request.app[STATE].limiter.headers(endpoint, Limits.of(settings))


async def _admit(request: web.Request, call: _Call) -> web.StreamResponse:
    """Rate limits, then the concurrency bound, then serve; the token reservation settles."""
    state = request.app[STATE]
    limits = Limits.of(call.settings)
    # Counting prompt words costs a pass over the prompt: only pay it when tokens are limited.
    reserve = 0 if limits.tokens is None else reservation(call.chat.messages, call.max_tokens)
    admission = state.limiter.admit(call.endpoint, reserve, limits)
    if isinstance(admission, Refused):
        state.stats.limited()
        headers = {
            **_limit_headers(request, call.endpoint, call.settings),
            hdrs.RETRY_AFTER: admission.retry_after,
        }
        return _error_response(429, "REQUEST_LIMIT_EXCEEDED", admission.message, headers)
    try:
        if not await state.gate.enter(queue=call.settings.overload == "queue"):
            state.stats.overloaded()
            admission.release()  # before the headers, so they count no tokens for it
            message = f"endpoint is at max_concurrency={state.gate.limit}; retry later"
            headers = _limit_headers(request, call.endpoint, call.settings)
            return _error_response(503, "TEMPORARILY_UNAVAILABLE", message, headers)
        state.stats.serving_started()
        try:
            return await _serve(request, call, admission)
        finally:
            state.stats.serving_finished()
            state.gate.leave()
    finally:
        admission.release()  # no completion (fault, overload, client gone): 0 tokens


async def _serve(request: web.Request, call: _Call, admission: Admission) -> web.StreamResponse:
    """Inside a concurrency slot: a fault, or the model's completion after its latency."""
    state = request.app[STATE]
    fault = state.faults.decide(call.chat.fault_key, call.settings)
    if fault is not None:
        state.stats.fault_injected(fault.kind)
        admission.release()  # before the headers, so they count no tokens for it
        headers = _limit_headers(request, call.endpoint, call.settings)
        return await fault_reply(
            request,
            fault,
            wire_format=call.wire_format,
            endpoint=call.endpoint,
            headers=headers,
            shutting_down=state.shutting_down,
        )
    completion = await _run_model(state, list(call.chat.messages), call.max_tokens)
    admission.settle(completion.prompt_tokens + completion.completion_tokens)
    delay = state.latency.delay_s(call.settings, completion.completion_tokens)
    if delay > 0:
        await asyncio.sleep(delay)
    state.stats.completed(completion.prompt_tokens, completion.completion_tokens)
    body = _success_body(call.wire_format, completion, call.endpoint, call.settings)
    return web.json_response(body, headers=_limit_headers(request, call.endpoint, call.settings))


async def _run_model(state: ServingState, messages: list[Message], max_tokens: int) -> Completion:
    if state.executor is None:
        return state.model.complete(messages, max_tokens)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(state.executor, state.model.complete, messages, max_tokens)


def _require_served(name: str, settings: ServingSettings) -> str:
    if name not in settings.served_names:
        raise EndpointNotFound(f"serving endpoint {name!r} does not exist")
    return name


def _parse(body: dict[str, Any], wire_format: WireFormat, settings: ServingSettings) -> ChatRequest:
    if wire_format == "responses":
        return parse_responses_request(body, max_tokens_limit=settings.max_tokens_limit)
    return parse_chat_request(body, wire_format, max_tokens_limit=settings.max_tokens_limit)


def _success_body(
    wire_format: WireFormat, completion: Completion, endpoint: str, settings: ServingSettings
) -> dict[str, Any]:
    now = int(time.time())
    if wire_format == "responses":
        return response_object(
            completion,
            model=endpoint,
            response_id=new_id("resp_"),
            message_id=new_id("msg_"),
            reasoning_id=new_id("rs_") if settings.reasoning_item else None,
            created_at=now,
        )
    return chat_completion(
        completion, model=endpoint, completion_id=new_id("chatcmpl-"), created=now
    )
