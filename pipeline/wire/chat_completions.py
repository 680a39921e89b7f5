"""OpenAI Chat Completions: `POST {base_url}/chat/completions` with the endpoint name as `model`.

The answer has the same `chat.completion` shape as Databricks `invocations`, so parsing is shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.chat import ChatRequest
from pipeline.core.config import EndpointConfig
from pipeline.wire.fields import chat_messages, sampling_fields
from pipeline.wire.invocations import format_fields, parse

__all__ = ["body", "format_fields", "parse", "url"]


def url(endpoint: EndpointConfig) -> str:
    return f"{endpoint.serving_base_url}/chat/completions"


def body(
    request: ChatRequest, endpoint: EndpointConfig, extra: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        **extra,
        "model": endpoint.name,
        "messages": chat_messages(request),
        **sampling_fields(request, "max_tokens"),
    }
