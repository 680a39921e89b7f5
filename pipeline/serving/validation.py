"""Request-body checks for the three model routes.

Each parser takes the decoded JSON object and returns a `ChatRequest` or raises `BadRequest`
whose message names the offending field (and index), never its content. Optional fields sent
as JSON null count as absent, as in the OpenAI and Databricks APIs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pipeline.serving.errors import BadRequest
from pipeline.serving.models import Message
from pipeline.serving.shapes import WireFormat

ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class ChatRequest:
    """A validated request, reduced to what the model and the fault plan need."""

    messages: tuple[Message, ...]
    max_tokens: int | None  # None: the server's max_tokens_limit applies
    temperature: float | None
    # Identifies "the same request" across retries: wire format + canonical JSON of the prompt.
    fault_key: str


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object.

    Raises BadRequest when it is not JSON or not an object.
    """
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise BadRequest("request body must be a JSON object; it is not valid JSON") from err
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def endpoint_from_body(body: dict[str, Any]) -> str:
    """The endpoint name an OpenAI-style body addresses in `model`.

    Raises BadRequest when `model` is missing or not a non-empty string.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required and must be the serving endpoint name (a string)")
    return model


def parse_chat_request(
    body: dict[str, Any], wire_format: WireFormat, *, max_tokens_limit: int
) -> ChatRequest:
    """Validate a Chat Completions body (Databricks invocations or the OpenAI route).

    Raises BadRequest naming `messages[i]...`, `max_tokens` or `temperature`.
    """
    if "messages" not in body:
        raise BadRequest("messages is required")
    messages = _messages(body["messages"], "messages")
    return ChatRequest(
        messages=messages,
        max_tokens=_token_budget(body, "max_tokens", max_tokens_limit),
        temperature=_temperature(body),
        fault_key=_fault_key(wire_format, list(messages)),
    )


def parse_responses_request(body: dict[str, Any], *, max_tokens_limit: int) -> ChatRequest:
    """Validate an OpenAI Responses body; `instructions` becomes a leading system message.

    Raises BadRequest naming `input[i]...`, `instructions`, `max_output_tokens` or `temperature`.
    """
    if "input" not in body:
        raise BadRequest("input is required")
    raw_input = body["input"]
    turns = (
        ({"role": "user", "content": raw_input},)
        if isinstance(raw_input, str)
        else _messages(raw_input, "input")
    )
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest("instructions must be a string")
    system = ({"role": "system", "content": instructions},) if instructions is not None else ()
    canonical_input = raw_input if isinstance(raw_input, str) else list(turns)
    return ChatRequest(
        messages=system + turns,
        max_tokens=_token_budget(body, "max_output_tokens", max_tokens_limit),
        temperature=_temperature(body),
        fault_key=_fault_key("responses", {"input": canonical_input, "instructions": instructions}),
    )


def _messages(value: object, field: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{field} must be a non-empty list of {{role, content}} objects")
    return tuple(_message(item, f"{field}[{index}]") for index, item in enumerate(value))


def _message(item: object, where: str) -> Message:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object with role and content")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string")
    # Extra keys (name, type, ...) are accepted and dropped: the model sees role and content only.
    return {"role": str(role), "content": content}


def _token_budget(body: dict[str, Any], field: str, limit: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise BadRequest(f"{field} must be an integer between 1 and {limit}")
    return value


def _temperature(body: dict[str, Any]) -> float | None:
    value = body.get("temperature")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_TEMPERATURE
    ):
        raise BadRequest(f"temperature must be a number between 0 and {MAX_TEMPERATURE:g}")
    return float(value)


def _fault_key(wire_format: WireFormat, prompt: object) -> str:
    return f"{wire_format}:{json.dumps(prompt, sort_keys=True, separators=(',', ':'))}"
