"""Databricks REST: `POST {host}/serving-endpoints/{name}/invocations`, `chat.completion` answer.

Request: `{"messages": [{"role": "user", "content": "..."}], "max_tokens": 100,
"temperature": 0.1}`. Answer: `{"choices": [{"message": {"content": ...}, "finish_reason": ...}],
"usage": {"prompt_tokens", "completion_tokens", "total_tokens"}, "model", "id", ...}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.chat import ChatRequest, Completion
from pipeline.core.errors import MalformedResponse
from pipeline.core.structured import OutputFormat
from pipeline.wire.base import Endpoint, WireFormat
from pipeline.wire.fields import chat_messages, optional_str, sampling_fields, usage_counts


class Invocations(WireFormat):
    name = "invocations"
    reserved_fields = frozenset(
        {"messages", "max_tokens", "temperature", "stream", "response_format"}
    )

    def url(self, endpoint: Endpoint) -> str:
        return f"{endpoint.serving_base_url}/{endpoint.name}/invocations"

    def body(
        self, request: ChatRequest, endpoint: Endpoint, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            **extra,
            "messages": chat_messages(request),
            **sampling_fields(request, "max_tokens"),
        }

    def parse(self, payload: Any) -> Completion:
        return parse(payload)

    def format_fields(self, output: OutputFormat) -> dict[str, Any]:
        return format_fields(output)


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
    prompt, completion, total = usage_counts(payload, "prompt_tokens", "completion_tokens")
    return Completion(
        text=content_text(message.get("content")),
        finish_reason=optional_str(choice.get("finish_reason")),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
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


def format_fields(output: OutputFormat) -> dict[str, Any]:
    """`response_format` as Chat Completions (and Databricks invocations) take it."""
    if output.schema is None:
        return {"response_format": {"type": "json_object"}}
    schema = {"name": output.name, "schema": dict(output.schema)}
    return {"response_format": {"type": "json_schema", "json_schema": schema}}
