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
from pipeline.core.tools import ToolCall
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

# Message fields that carry reasoning text as a string (vLLM, llama.cpp's server, DeepSeek use
# `reasoning_content`; some gateways `reasoning`).
REASONING_FIELDS = ("reasoning_content", "reasoning")


class Invocations(WireFormat):
    name = "invocations"
    reserved_fields = frozenset(
        {"messages", "max_tokens", "temperature", "stream", "response_format", "tools",
         "tool_choice"}
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
    """A `chat.completion` body → Completion: the text parts of the message, its tool calls,
    and its reasoning (`reasoning` content parts, as Databricks sends Claude's thinking, or a
    `reasoning_content` field, as vLLM and llama.cpp's server do).

    Raises:
        MalformedResponse: the body has no choices or no message, or a tool call names no
            function.
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
    content = message.get("content")
    calls = tool_calls(message.get("tool_calls"))
    finish = optional_str(choice.get("finish_reason"))
    reasoning = [
        *content_reasoning(content),
        *(message[key] for key in REASONING_FIELDS if isinstance(message.get(key), str)),
    ]
    return Completion(
        text=content_text(content),
        # Some servers say "stop" when the answer is a call: a call is never a plain answer.
        finish_reason="tool_calls" if calls and finish in (None, "stop") else finish,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        model=optional_str(payload.get("model")),
        response_id=optional_str(payload.get("id")),
        tool_calls=calls,
        reasoning=joined(reasoning),
        reasoning_tokens=detail_count(payload, "completion_tokens_details", "reasoning_tokens"),
    )


def tool_calls(value: Any) -> tuple[ToolCall, ...]:
    """A message's `tool_calls`: `[{"id", "type": "function", "function": {"name",
    "arguments"}}]`.

    Raises:
        MalformedResponse: it is not a list of such objects.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MalformedResponse("message tool_calls is not a list")
    calls = []
    for index, item in enumerate(value):
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict):
            raise MalformedResponse(f"tool call {index} has no function")
        where = f"tool call {index}"
        calls.append(tool_call(function.get("name"), function.get("arguments"), item.get("id"),
                               where))  # fmt: skip
    return tuple(calls)


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


def content_reasoning(content: Any) -> list[str]:
    """The summaries of the `reasoning` parts of a list of content parts (Databricks:
    `{"type": "reasoning", "summary": [{"type": "summary_text", "text": ...}]}`)."""
    if not isinstance(content, list):
        return []
    return [
        text
        for part in content
        if isinstance(part, dict) and part.get("type") == "reasoning"
        for text in summary_texts(part.get("summary"))
    ]


def format_fields(output: OutputFormat) -> dict[str, Any]:
    """`response_format` as Chat Completions (and Databricks invocations) take it."""
    if output.schema is None:
        return {"response_format": {"type": "json_object"}}
    schema = {"name": output.name, "schema": dict(output.schema)}
    return {"response_format": {"type": "json_schema", "json_schema": schema}}
