"""OpenAI Responses: `POST {base_url}/responses` with `input` and `max_output_tokens`.

The text is the `output_text` parts of every `message` item in `output[]`, wherever they stand
(reasoning models put a `reasoning` item first, whose summaries are the row's reasoning); each
`function_call` item is a tool call. `incomplete_details.reason` or `status` give the
finish reason; `usage` counts `input_tokens` and `output_tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.core.chat import ChatRequest, Completion, Message
from pipeline.core.errors import MalformedResponse
from pipeline.core.structured import OutputFormat
from pipeline.core.tools import CHOICES, Tool
from pipeline.wire.base import Endpoint, WireFormat
from pipeline.wire.fields import (
    chat_messages,
    detail_count,
    joined,
    optional_str,
    sampling_fields,
    summary_texts,
    tool_call,
    usage_counts,
)

# Responses `incomplete_details.reason` → the Chat Completions finish reason it corresponds to.
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


class Responses(WireFormat):
    name = "responses"
    reserved_fields = frozenset(
        {"model", "input", "max_output_tokens", "temperature", "stream", "text", "tools",
         "tool_choice"}
    )

    def url(self, endpoint: Endpoint) -> str:
        return f"{endpoint.serving_base_url}/responses"

    def body(
        self, request: ChatRequest, endpoint: Endpoint, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            **extra,
            "model": endpoint.name,
            "input": chat_messages(request, input_parts),
            **sampling_fields(request, "max_output_tokens"),
        }

    def parse(self, payload: Any) -> Completion:
        return parse(payload)

    def format_fields(self, output: OutputFormat) -> dict[str, Any]:
        return format_fields(output)

    def tool_fields(self, tools: Sequence[Tool], tool_choice: str | None) -> dict[str, Any]:
        """Tools as Responses takes them: flat (`{"type": "function", "name", ...}`), a forced
        tool as `{"type": "function", "name": ...}`."""
        fields: dict[str, Any] = {
            "tools": [{"type": "function", **tool.definition()} for tool in tools]
        }
        if tool_choice is not None:
            fields["tool_choice"] = (
                tool_choice if tool_choice in CHOICES else {"type": "function", "name": tool_choice}
            )
        return fields


def parse(payload: Any) -> Completion:
    """A Responses API body → Completion: the `output_text` of its `message` items, its
    `function_call` items, and the summaries (and text) of its `reasoning` items.

    Raises:
        MalformedResponse: no `output` list, or neither a `message` nor a `function_call` item
            in it.
    """
    if not isinstance(payload, dict):
        raise MalformedResponse("response body is not a JSON object")
    output = payload.get("output")
    if not isinstance(output, list):
        raise MalformedResponse("response has no output list")
    items = [item for item in output if isinstance(item, dict)]
    messages = [item for item in items if item.get("type") == "message"]
    calls = tuple(
        tool_call(item.get("name"), item.get("arguments"), item.get("call_id"), "function_call")
        for item in items
        if item.get("type") == "function_call"
    )
    if not messages and not calls:
        raise MalformedResponse("response output has no message item")
    prompt, completion, total = usage_counts(payload, "input_tokens", "output_tokens")
    finish = finish_reason(payload)
    return Completion(
        text=_texts(messages, "output_text"),
        finish_reason="tool_calls" if calls and finish == "stop" else finish,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        model=optional_str(payload.get("model")),
        response_id=optional_str(payload.get("id")),
        tool_calls=calls,
        reasoning=joined(
            text
            for item in items
            if item.get("type") == "reasoning"
            for text in [*summary_texts(item.get("summary")), _texts([item], "reasoning_text")]
        ),
        reasoning_tokens=detail_count(payload, "output_tokens_details", "reasoning_tokens"),
    )


def input_parts(message: Message) -> list[dict[str, Any]]:
    """Text and images as Responses takes them (`input_text`, `input_image`)."""
    images = [{"type": "input_image", "image_url": url} for url in message.images]
    return [{"type": "input_text", "text": message.content}, *images]


def _texts(items: list[dict[str, Any]], part_type: str) -> str:
    """The text of every `part_type` part in the `content` of `items`, joined."""
    return "".join(
        str(part.get("text", ""))
        for item in items
        for part in (item.get("content") or [])
        if isinstance(part, dict) and part.get("type") == part_type
    )


def finish_reason(payload: Mapping[str, Any]) -> str | None:
    details = payload.get("incomplete_details")
    if isinstance(details, dict) and details.get("reason"):
        reason = str(details["reason"])
        return _INCOMPLETE_REASONS.get(reason, reason)
    status = payload.get("status")
    if status == "completed":
        return "stop"
    return optional_str(status)


def format_fields(output: OutputFormat) -> dict[str, Any]:
    """Structured output as the Responses API takes it: under `text.format`, flattened."""
    if output.schema is None:
        return {"text": {"format": {"type": "json_object"}}}
    schema = {"type": "json_schema", "name": output.name, "schema": dict(output.schema)}
    return {"text": {"format": schema}}
