"""Request-body checks every served format shares, and the `IncomingChat` they produce.

A format's parser (see `formats/`) reads its own fields with these checks and returns an
`IncomingChat` or raises `InvalidRequest` whose message names the offending field (and index),
never its content. Optional fields sent as JSON null count as absent, as in the OpenAI and
Databricks APIs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pipeline.serving.chat_model import Message
from pipeline.serving.errors import InvalidRequest

ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class IncomingChat:
    """A validated request, reduced to what the model and the fault plan need."""

    messages: tuple[Message, ...]
    max_tokens: int | None  # None: the server's max_tokens_limit applies
    temperature: float | None
    # Identifies "the same request" across retries: format name + canonical JSON of the prompt.
    fault_key: str


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object.

    Raises InvalidRequest when it is not JSON or not an object.
    """
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise InvalidRequest("request body must be a JSON object; it is not valid JSON") from err
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def endpoint_from_body(body: dict[str, Any]) -> str:
    """The endpoint name an OpenAI-style body addresses in `model`.

    Raises InvalidRequest when `model` is missing or not a non-empty string.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required and must be the serving endpoint name (a string)")
    return model


def chat_messages(value: object, field: str) -> tuple[Message, ...]:
    """A non-empty list of {role, content} objects, reduced to role and content.

    Raises InvalidRequest naming `field` or `field[i]...`.
    """
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{field} must be a non-empty list of {{role, content}} objects")
    return tuple(_message(item, f"{field}[{index}]") for index, item in enumerate(value))


def token_budget(body: dict[str, Any], field: str, limit: int) -> int | None:
    """The output budget in `body[field]`, None when absent.

    Raises InvalidRequest naming `field` unless it is an integer in [1, limit].
    """
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise InvalidRequest(f"{field} must be an integer between 1 and {limit}")
    return value


def temperature(body: dict[str, Any]) -> float | None:
    """The sampling temperature, None when absent.

    Raises InvalidRequest naming `temperature` unless it is a number in [0, MAX_TEMPERATURE].
    """
    value = body.get("temperature")
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_TEMPERATURE
    ):
        raise InvalidRequest(f"temperature must be a number between 0 and {MAX_TEMPERATURE:g}")
    return float(value)


def fault_key(format_name: str, prompt: object) -> str:
    """`format_name:` + the prompt as canonical JSON (sorted keys, no spaces)."""
    return f"{format_name}:{json.dumps(prompt, sort_keys=True, separators=(',', ':'))}"


def _message(item: object, where: str) -> Message:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object with role and content")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise InvalidRequest(f"{where}.content must be a string")
    # Extra keys (name, type, ...) are accepted and dropped: the model sees role and content only.
    return {"role": str(role), "content": content}
