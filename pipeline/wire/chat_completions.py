"""OpenAI Chat Completions: `POST {base_url}/chat/completions` with the endpoint name as `model`.

The answer has the same `chat.completion` shape as Databricks `invocations`, so parsing is shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.chat import ChatRequest, Completion
from pipeline.core.structured import OutputFormat
from pipeline.wire.base import Endpoint, WireFormat
from pipeline.wire.fields import chat_messages, sampling_fields
from pipeline.wire.invocations import Invocations, format_fields, parse


class ChatCompletions(WireFormat):
    name = "chat_completions"
    reserved_fields = Invocations.reserved_fields | {"model"}

    def url(self, endpoint: Endpoint) -> str:
        return f"{endpoint.serving_base_url}/chat/completions"

    def body(
        self, request: ChatRequest, endpoint: Endpoint, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            **extra,
            "model": endpoint.name,
            "messages": chat_messages(request),
            **sampling_fields(request, "max_tokens"),
        }

    def parse(self, payload: Any) -> Completion:
        return parse(payload)

    def format_fields(self, output: OutputFormat) -> dict[str, Any]:
        return format_fields(output)
