"""Request-body checks every served format shares, and the `IncomingChat` they produce.

A format's parser (see `formats/`) reads its own fields with these checks and returns an
`IncomingChat` or raises `InvalidRequest` whose message names the offending field (and index),
never its content. Optional fields sent as JSON null count as absent, as in the OpenAI and
Databricks APIs.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

from pipeline.serving.chat_model import Message, ServedImage, ServedTool
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
    # The images of the conversation's content parts, in order.
    images: tuple[ServedImage, ...] = ()
    # The tools the model may call, narrowed by `tool_choice` (none for "none", the one named
    # when a tool is forced).
    tools: tuple[ServedTool, ...] = ()


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


def chat_messages(
    value: object, field: str
) -> tuple[tuple[Message, ...], tuple[ServedImage, ...]]:
    """A non-empty list of {role, content} objects, reduced to role and text content, and the
    images of their content parts, in order (read once).

    Raises InvalidRequest naming `field` or `field[i]...`.
    """
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{field} must be a non-empty list of {{role, content}} objects")
    read = [_message(item, f"{field}[{index}]") for index, item in enumerate(value)]
    return tuple(message for message, _ in read), tuple(i for _, images in read for i in images)


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


def offered_tools(body: dict[str, Any], *, nested: bool) -> tuple[ServedTool, ...]:
    """The function tools in `body["tools"]`, narrowed by `body["tool_choice"]`. Chat
    Completions nests a function under `function` (`nested`); Responses does not.

    Raises InvalidRequest naming `tools[i]` or `tool_choice`.
    """
    raw = body.get("tools")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest("tools must be a list of function tools")
    tools = []
    for index, item in enumerate(raw):
        spec = item.get("function") if nested and isinstance(item, dict) else item
        if not isinstance(item, dict) or item.get("type") != "function" \
                or not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequest(f"tools[{index}] must be a function tool with a name")
        parameters = spec.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"tools[{index}].parameters must be a JSON Schema object")
        tools.append(ServedTool(spec["name"], parameters))
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "required"):
        return tuple(tools)
    if choice == "none":
        return ()
    named = choice.get("function") if nested and isinstance(choice, dict) else choice
    name = named.get("name") if isinstance(named, dict) else None
    forced = tuple(tool for tool in tools if tool.name == name)
    if not forced:
        raise InvalidRequest("tool_choice must be auto, none, required or name a tool in tools")
    return forced


def fault_key(format_name: str, prompt: object) -> str:
    """`format_name:` + the prompt as canonical JSON (sorted keys, no spaces)."""
    return f"{format_name}:{json.dumps(prompt, sort_keys=True, separators=(',', ':'))}"


def _message(item: object, where: str) -> tuple[Message, list[ServedImage]]:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object with role and content")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}")
    images: list[ServedImage] = []
    if isinstance(content, list):
        parts = _parts(content, f"{where}.content")
        content = "".join(text for text, _ in parts)
        images = [image for _, image in parts if image is not None]
    if not isinstance(content, str):
        raise InvalidRequest(f"{where}.content must be a string or a list of content parts")
    # Extra keys (name, type, ...) are accepted and dropped: the model sees role and content only.
    return {"role": str(role), "content": content}, images


def _parts(parts: list[Any], where: str) -> list[tuple[str, ServedImage | None]]:
    """(text, image) of each content part: Chat Completions' `text` and `image_url`, Responses'
    `input_text` and `input_image`.

    Raises InvalidRequest naming `where[i]` for a part of another type or shape.
    """
    read: list[tuple[str, ServedImage | None]] = []
    for index, part in enumerate(parts):
        at = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            read.append((part["text"], None))
            continue
        url = part.get("image_url") if isinstance(part, dict) else None
        if kind == "image_url" and isinstance(url, dict):
            url = url.get("url")
        if kind not in ("image_url", "input_image") or not isinstance(url, str):
            raise InvalidRequest(f"{at} must be a text part or an image part with a URL")
        read.append(("", _image(url, at)))
    return read


def _image(url: str, where: str) -> ServedImage:
    if url.startswith(("http://", "https://")):
        return ServedImage(url=url, size=None)
    head, comma, data = url.partition(",")
    if not (head.startswith("data:image/") and head.endswith(";base64") and comma):
        raise InvalidRequest(f"{where} must be an http(s) URL or a base64 data:image URL")
    try:
        size = len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as err:
        raise InvalidRequest(f"{where} holds a data URL that is not valid base64") from err
    return ServedImage(url=url[:40], size=size)
