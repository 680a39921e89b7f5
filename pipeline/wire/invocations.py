"""Databricks REST: `POST {host}/serving-endpoints/{name}/invocations`, `chat.completion` answer.

Request: `{"messages": [{"role": "user", "content": "..."}], "max_tokens": 100,
"temperature": 0.1}`. Answer: `{"choices": [{"message": {"content": ...}, "finish_reason": ...}],
"usage": {"prompt_tokens", "completion_tokens", "total_tokens"}, "model", "id", ...}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.chat import ChatRequest, Completion
from pipeline.config import EndpointConfig
from pipeline.errors import MalformedResponse


def url(endpoint: EndpointConfig) -> str:
    return f"{endpoint.serving_base_url}/{endpoint.name}/invocations"


def body(
    request: ChatRequest, endpoint: EndpointConfig, extra: Mapping[str, Any]
) -> dict[str, Any]:
    payload: dict[str, Any] = {**extra, "messages": chat_messages(request)}
    if request.max_tokens is not None:
        payload["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    return payload


def chat_messages(request: ChatRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in request.messages]


def parse(payload: Any) -> Completion:
    """A `chat.completion` body → Completion.

    Raises:
        MalformedResponse: the body has no choices or no message text.
    """
    if not isinstance(payload, dict):
        raise MalformedResponse("response body is not a JSON object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("response has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise MalformedResponse("response choice has no message")
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    prompt = optional_int(usage.get("prompt_tokens"))
    completion = optional_int(usage.get("completion_tokens"))
    return Completion(
        text=content_text(message.get("content")),
        finish_reason=optional_str(choice.get("finish_reason")),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=optional_int(usage.get("total_tokens")) or add(prompt, completion),
        model=optional_str(payload.get("model")),
        response_id=optional_str(payload.get("id")),
    )


def content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "output_text")
        )
    raise MalformedResponse(f"message content is {type(content).__name__}, not text")


def optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b
