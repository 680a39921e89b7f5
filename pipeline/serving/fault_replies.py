"""What each injected fault looks like on the wire; `faults.py` decides which one a request gets.

- error / fail_first: the status with a Databricks error body (and Retry-After when configured).
- timeout: the request is held `hold_s` (default 300 s, past any client timeout) and then
  answered 504, as Model Serving's gateway does. A client that gives up first ends the hold: the
  server runs with handler cancellation, so the wait is cancelled and nothing is logged. A
  server shutting down ends every hold at once (504), so it stops within its grace period.
- reset: the TCP connection is aborted with no HTTP response at all.
- malformed: 200, `Content-Type: application/json`, and a body that is not JSON.
- truncated: 200 whose Content-Length promises the whole body, then the connection closes after
  half of it.
- empty_choices: 200 with the format's empty body (see `formats/`): a valid chat.completion
  whose `choices` is `[]`, or on the Responses route a response whose `output` is `[]`.

Statuses recorded in /stats for replies that never reach the client whole: 444 for a reset
(nginx's "closed without response"); a truncated reply counts as the 200 it started as.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping

from aiohttp import hdrs, web

from pipeline.serving.faults import BrokenReply, Fault
from pipeline.serving.formats import ServedFormat
from pipeline.serving.shapes import error_body, error_code_for_status, retry_after_header

CONNECTION_CLOSED_WITHOUT_RESPONSE = 444
GATEWAY_TIMEOUT = 504
# A JSON document cut off after its first array bracket: what a crashed proxy might pass on.
MALFORMED_BODY = b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": ['


async def fault_reply(
    request: web.Request,
    fault: Fault | BrokenReply,
    *,
    served: ServedFormat,
    endpoint: str,
    headers: Mapping[str, str],
    shutting_down: asyncio.Event,
) -> web.StreamResponse:
    """Answer `request` with `fault`; `headers` (rate-limit info) go on any reply that has them.

    A timeout hold ends early when `shutting_down` is set.
    """
    if isinstance(fault, Fault):
        return _error(fault.status, fault.error_code, fault.message, fault.retry_after_s, headers)
    if fault.kind == "timeout":
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(shutting_down.wait(), fault.hold_s)
        return _error(
            GATEWAY_TIMEOUT,
            error_code_for_status(GATEWAY_TIMEOUT),
            "upstream request timeout",
            None,
            headers,
        )
    if fault.kind == "reset":
        if request.transport is not None:
            request.transport.abort()
        # Never sent: the connection is gone. aiohttp drops it quietly; /stats records the 444.
        return web.Response(status=CONNECTION_CLOSED_WITHOUT_RESPONSE)
    if fault.kind == "malformed":
        return web.Response(body=MALFORMED_BODY, content_type="application/json", headers=headers)
    body = json.dumps(served.empty_body(endpoint)).encode()
    if fault.kind == "truncated":
        return await _truncated(request, body, headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


def _error(
    status: int,
    error_code: str,
    message: str,
    retry_after_s: float | None,
    headers: Mapping[str, str],
) -> web.Response:
    all_headers = dict(headers)
    if retry_after_s is not None:
        all_headers[hdrs.RETRY_AFTER] = retry_after_header(retry_after_s)
    return web.json_response(error_body(error_code, message), status=status, headers=all_headers)


async def _truncated(
    request: web.Request, body: bytes, headers: Mapping[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/json"
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    # close(), not abort(): the half already written is flushed before the FIN.
    if request.transport is not None:
        request.transport.close()
    return response
