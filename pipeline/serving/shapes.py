"""The exact JSON bodies of each wire format, and the Databricks error body.

Pure functions: ids and timestamps come in as arguments so tests can compare whole bodies.
`new_id` is the one impure helper and lives here so the id formats sit next to their shapes.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from pipeline.serving.models import Completion

# The three model routes; also the `by_route` keys of /stats and the prefix of fault keys.
WireFormat = Literal["invocations", "chat_completions", "responses"]
WIRE_FORMATS: tuple[WireFormat, ...] = ("invocations", "chat_completions", "responses")

# Decimals kept in a Retry-After value: sub-millisecond precision is noise for a retry delay.
_RETRY_AFTER_DECIMALS = 6


def new_id(prefix: str) -> str:
    """A fresh random id such as `chatcmpl-<hex>`, `resp_<hex>`, `msg_<hex>` or `rs_<hex>`."""
    return f"{prefix}{secrets.token_hex(12)}"


def chat_completion(
    completion: Completion, *, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """A Chat Completions body, as answered by both Databricks invocations and the OpenAI route."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def response_object(
    completion: Completion,
    *,
    model: str,
    response_id: str,
    message_id: str,
    reasoning_id: str | None,
    created_at: int,
) -> dict[str, Any]:
    """An OpenAI Responses body; a reasoning item precedes the message when `reasoning_id` is set.

    A completion cut by the token budget is `incomplete` with reason `max_output_tokens`.
    """
    truncated = completion.finish_reason == "length"
    status = "incomplete" if truncated else "completed"
    output: list[dict[str, Any]] = []
    if reasoning_id is not None:
        output.append({"type": "reasoning", "id": reasoning_id, "summary": []})
    output.append(
        {
            "type": "message",
            "id": message_id,
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": completion.text, "annotations": []}],
        }
    )
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "model": model,
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "output": output,
        "usage": {
            "input_tokens": completion.prompt_tokens,
            "output_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def error_body(error_code: str, message: str) -> dict[str, str]:
    """The Databricks error body."""
    return {"error_code": error_code, "message": message}


def error_code_for_status(status: int) -> str:
    """The Databricks error code Model Serving sends with an HTTP error status."""
    if status == 429:
        return "REQUEST_LIMIT_EXCEEDED"
    if status == 500:
        return "INTERNAL_ERROR"
    if 500 <= status <= 599:
        return "TEMPORARILY_UNAVAILABLE"
    return "BAD_REQUEST"


def retry_after_header(seconds: float) -> str:
    """A Retry-After value in plain decimal seconds ("0.01", "2"), never exponent notation.

    Real servers send whole seconds; fractions let tests retry fast, and our client parses floats.
    """
    return f"{seconds:.{_RETRY_AFTER_DECIMALS}f}".rstrip("0").rstrip(".")
