"""Routes of the local serving endpoint: the three model routes plus health, stats and control.

A model request goes: auth -> endpoint name -> body validation -> fault plan -> model -> wire
shape. Only the model routes count in /stats. /health, /stats and /control take no credentials:
they are local test hooks with no Databricks counterpart, and the server binds to loopback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from pipeline.serving.auth import check_authorization, read_token
from pipeline.serving.errors import ApiError, EndpointNotFound
from pipeline.serving.faults import Fault, FaultPlan
from pipeline.serving.models import ChatModel, Completion, make_model
from pipeline.serving.settings import ServingSettings, SettingsError
from pipeline.serving.shapes import (
    WireFormat,
    chat_completion,
    error_body,
    error_code_for_status,
    new_id,
    response_object,
    retry_after_header,
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
    """Everything the handlers share. Mutable on purpose: /control swaps `settings`."""

    initial_settings: ServingSettings
    settings: ServingSettings
    token: str | None
    model: ChatModel
    stats: ServingStats
    faults: FaultPlan


STATE = web.AppKey("serving_state", ServingState)


def make_app(
    settings: ServingSettings, *, environ: Mapping[str, str] = os.environ
) -> web.Application:
    """Build the web application for `settings`; the token is read from `environ` now.

    Raises SettingsError when the model is unknown or the token variable is unset.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_unrouted_as_json])
    app[STATE] = ServingState(
        initial_settings=settings,
        settings=settings,
        token=read_token(settings.token_env, environ),
        model=make_model(settings),
        stats=ServingStats(),
        faults=FaultPlan(),
    )
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/control", _control)
    app.router.add_post("/control/reset", _reset)
    app.router.add_post("/serving-endpoints/{name}/invocations", _model_route("invocations"))
    app.router.add_post("/serving-endpoints/chat/completions", _model_route("chat_completions"))
    app.router.add_post("/serving-endpoints/responses", _model_route("responses"))
    return app


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
    return web.json_response(state.stats.snapshot(distinct_requests=state.faults.distinct_keys))


async def _control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        state.settings = state.settings.with_changes(parse_json_object(await request.read()))
    except ApiError as err:
        return _error_response(err.status, err.error_code, err.message)
    except SettingsError as err:
        return _error_response(400, "INVALID_PARAMETER_VALUE", str(err))
    return web.json_response(state.settings.to_dict())


async def _reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.settings = state.initial_settings
    state.stats.reset()
    state.faults.reset()
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


async def _answer(request: web.Request, wire_format: WireFormat) -> web.Response:
    """Serve one model request; every failure becomes a Databricks error response."""
    try:
        return await _complete(request, wire_format)
    except ApiError as err:
        return _error_response(err.status, err.error_code, err.message)
    except web.HTTPException as exc:  # e.g. 413 from aiohttp when the body exceeds the cap
        return _error_response(exc.status, error_code_for_status(exc.status), exc.reason)
    except Exception:
        _log.exception("unexpected error serving %s", wire_format)
        return _error_response(500, "INTERNAL_ERROR", "unexpected server error; see server log")


async def _complete(request: web.Request, wire_format: WireFormat) -> web.Response:
    state = request.app[STATE]
    # One request sees one settings version even if /control swaps them while it runs.
    settings = state.settings
    check_authorization(request.headers.get(hdrs.AUTHORIZATION), state.token)
    # Invocations name the endpoint in the path, so an unknown name is 404 whatever the body is.
    endpoint = request.match_info.get("name")
    if endpoint is not None:
        _require_served(endpoint, settings)
    body = parse_json_object(await request.read())
    if endpoint is None:
        endpoint = endpoint_from_body(body)
        _require_served(endpoint, settings)
    chat = _parse(body, wire_format, settings)
    fault = state.faults.decide(chat.fault_key, settings)
    if fault is not None:
        state.stats.fault_injected()
        return _fault_response(fault)
    max_tokens = chat.max_tokens if chat.max_tokens is not None else settings.max_tokens_limit
    completion = state.model.complete(list(chat.messages), max_tokens)
    delay = settings.latency_s + settings.latency_per_token_s * completion.completion_tokens
    if delay > 0:
        await asyncio.sleep(delay)
    state.stats.completed(completion.prompt_tokens, completion.completion_tokens)
    return web.json_response(_success_body(wire_format, completion, endpoint, settings))


def _require_served(name: str, settings: ServingSettings) -> None:
    if name not in settings.served_names:
        raise EndpointNotFound(f"serving endpoint {name!r} does not exist")


def _parse(body: dict[str, Any], wire_format: WireFormat, settings: ServingSettings) -> ChatRequest:
    if wire_format == "responses":
        return parse_responses_request(body, max_tokens_limit=settings.max_tokens_limit)
    return parse_chat_request(body, wire_format, max_tokens_limit=settings.max_tokens_limit)


def _fault_response(fault: Fault) -> web.Response:
    headers: dict[str, str] = {}
    if fault.retry_after_s is not None:
        headers[hdrs.RETRY_AFTER] = retry_after_header(fault.retry_after_s)
    return _error_response(fault.status, fault.error_code, fault.message, headers)


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
