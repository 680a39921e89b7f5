"""OpenAI Chat Completions: `POST {base_url}/chat/completions` with the endpoint name as `model`.

The answer has the same `chat.completion` shape as Databricks `invocations`, so parsing is shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.chat import ChatRequest
from pipeline.config import EndpointConfig
from pipeline.wire.invocations import chat_messages, parse

__all__ = ["body", "parse", "url"]


def url(endpoint: EndpointConfig) -> str:
    return f"{endpoint.serving_base_url}/chat/completions"


def body(
    request: ChatRequest, endpoint: EndpointConfig, extra: Mapping[str, Any]
) -> dict[str, Any]:
    payload: dict[str, Any] = {**extra, "model": endpoint.name, "messages": chat_messages(request)}
    if request.max_tokens is not None:
        payload["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    return payload
