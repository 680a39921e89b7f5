"""The request pipeline behind every model route, whatever its served format.

A model request goes: auth -> endpoint name -> body validation -> rate limits (429) ->
concurrency bound (wait, or 503) -> fault plan -> model -> latency -> the format's body. The
format (`formats/`) supplies the parts that differ: where the endpoint name is, how the body
parses and what the answers look like; this module never asks which format it serves. Every
failure becomes a Databricks error body.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import hdrs, web

from pipeline.serving.auth import API_KEY_HEADER, check_authorization
from pipeline.serving.chat_model import ModelOutput, with_reasoning
from pipeline.serving.errors import ApiError, EndpointNotFound, InvalidRequest
from pipeline.serving.fault_replies import fault_reply
from pipeline.serving.formats import ServedFormat
from pipeline.serving.formats.served_format import ENDPOINT_SEGMENT
from pipeline.serving.limits import Admission, Limits, Refused, reservation
from pipeline.serving.settings import ServingSettings
from pipeline.serving.shapes import error_body, error_code_for_status
from pipeline.serving.state import STATE, ServingState
from pipeline.serving.validation import IncomingChat, endpoint_from_body, parse_json_object

_log = logging.getLogger(__name__)

# Recorded in /stats when a handler is cancelled before answering (nginx's "client closed").
CLIENT_CLOSED_REQUEST = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    status: int, error_code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A Databricks error body with `status`: how every route of the app answers a failure."""
    return web.json_response(error_body(error_code, message), status=status, headers=headers)


def model_route(served: ServedFormat) -> Handler:
    """The handler of `served`'s routes: the pipeline, counted in /stats under its name."""

    async def handle(request: web.Request) -> web.StreamResponse:
        stats = request.app[STATE].stats
        stats.request_started(served.name, request.transport)
        status = CLIENT_CLOSED_REQUEST
        try:
            response = await _answer(request, served)
            status = response.status
            return response
        finally:
            stats.request_finished(status)

    return handle


@dataclass(frozen=True)
class _Call:
    """A validated model request and the settings version it is served under."""

    served: ServedFormat
    endpoint: str
    chat: IncomingChat
    settings: ServingSettings

    @property
    def max_tokens(self) -> int:
        """The request's output budget; the server limit when it sent none."""
        chat, settings = self.chat, self.settings
        return chat.max_tokens if chat.max_tokens is not None else settings.max_tokens_limit


async def _answer(request: web.Request, served: ServedFormat) -> web.StreamResponse:
    """Serve one model request; every failure becomes a Databricks error response.

    Once the endpoint name is known to be served, every reply carries the x-ratelimit headers.
    """
    state = request.app[STATE]
    # One request sees one settings version even if /control swaps them while it runs.
    settings = state.settings
    endpoint: str | None = None
    try:
        check_authorization(
            request.headers.get(hdrs.AUTHORIZATION),
            state.token,
            api_key=request.headers.get(API_KEY_HEADER),
        )
        _check_required(request, served, settings)
        # A name in the path is checked before the body is read: unknown is 404 whatever it is.
        name = request.match_info.get(ENDPOINT_SEGMENT)
        if name is not None:
            endpoint = _require_served(name, settings)
        body = parse_json_object(await request.read())
        if endpoint is None:
            endpoint = _require_served(endpoint_from_body(body), settings)
        chat = served.parse(body, settings.max_tokens_limit)
        if chat.images and getattr(state.model, "look", None) is None:  # see `ImageViewer`
            raise InvalidRequest(
                f"the model of endpoint {endpoint!r} takes text only: image content parts are "
                "not accepted"
            )
        return await _admit(request, _Call(served, endpoint, chat, settings))
    except ApiError as err:
        headers = _limit_headers(request, endpoint, settings)
        return error_response(err.status, err.error_code, err.message, headers)
    except web.HTTPException as exc:  # e.g. 413 from aiohttp when the body exceeds the cap
        headers = _limit_headers(request, endpoint, settings)
        return error_response(exc.status, error_code_for_status(exc.status), exc.reason, headers)
    except Exception:
        _log.exception("unexpected error serving %s", served.name)
        return error_response(500, "INTERNAL_ERROR", "unexpected server error; see server log")


def _check_required(request: web.Request, served: ServedFormat, settings: ServingSettings) -> None:
    """Refuse a request without a query parameter its route requires, or without a header
    the `required_headers` setting names (a gateway's tenant header, say).

    Raises InvalidRequest naming the first one missing.
    """
    route = request.match_info.route.resource
    path = route.canonical if route is not None else ""
    for name in served.required_query.get(path, ()):
        if not request.query.get(name):
            raise InvalidRequest(f"the query parameter {name} is required on this route")
    for name in settings.required_headers:
        if not request.headers.get(name):
            raise InvalidRequest(f"the header {name} is required")


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
        return error_response(429, "REQUEST_LIMIT_EXCEEDED", admission.message, headers)
    try:
        if not await state.gate.enter(queue=call.settings.overload == "queue"):
            state.stats.overloaded()
            admission.release()  # before the headers, so they count no tokens for it
            message = f"endpoint is at max_concurrency={state.gate.limit}; retry later"
            headers = _limit_headers(request, call.endpoint, call.settings)
            return error_response(503, "TEMPORARILY_UNAVAILABLE", message, headers)
        state.stats.serving_started()
        try:
            return await _serve(request, call, admission)
        finally:
            state.stats.serving_finished()
            state.gate.leave()
    finally:
        admission.release()  # no output (fault, overload, client gone): 0 tokens


async def _serve(request: web.Request, call: _Call, admission: Admission) -> web.StreamResponse:
    """Inside a concurrency slot: a fault, or the model's output after its latency."""
    state = request.app[STATE]
    fault = state.faults.decide(call.chat.fault_key, call.settings)
    if fault is not None:
        state.stats.fault_injected(fault.kind)
        admission.release()  # before the headers, so they count no tokens for it
        headers = _limit_headers(request, call.endpoint, call.settings)
        return await fault_reply(
            request,
            fault,
            served=call.served,
            endpoint=call.endpoint,
            headers=headers,
            shutting_down=state.shutting_down,
        )
    output = await _run_model(state, call)
    if call.settings.reasoning:
        output = with_reasoning(output)
    admission.settle(output.prompt_tokens + output.completion_tokens)
    delay = state.latency.delay_s(call.settings, output.completion_tokens)
    if delay > 0:
        await asyncio.sleep(delay)
    state.stats.completed(output.prompt_tokens, output.completion_tokens)
    body = call.served.success_body(output, call.endpoint, call.settings)
    return web.json_response(body, headers=_limit_headers(request, call.endpoint, call.settings))


async def _run_model(state: ServingState, call: _Call) -> ModelOutput:
    """The model's answer; a call of the first tool offered when the model calls tools, what
    it makes of the images when there are some."""
    messages = list(call.chat.messages)
    call_tool = getattr(state.model, "call_tool", None)  # see `ToolCaller`
    look = getattr(state.model, "look", None)  # see `ImageViewer`
    run: functools.partial[ModelOutput]
    if call.chat.tools and call_tool is not None:
        run = functools.partial(call_tool, messages, call.chat.tools[0])
    elif call.chat.images and look is not None:  # a model without it was refused earlier
        run = functools.partial(look, messages, call.max_tokens, call.chat.images)
    else:
        run = functools.partial(state.model.complete, messages, call.max_tokens)
    if state.executor is None:
        return run()
    return await asyncio.get_running_loop().run_in_executor(state.executor, run)


def _require_served(name: str, settings: ServingSettings) -> str:
    if name not in settings.served_names:
        raise EndpointNotFound(f"serving endpoint {name!r} does not exist")
    return name
