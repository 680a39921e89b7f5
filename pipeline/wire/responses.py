"""OpenAI Responses: `POST {base_url}/responses` with `input` and `max_output_tokens`.

The text is the `output_text` parts of every `message` item in `output[]`, wherever they stand
(reasoning models put a `reasoning` item first). `incomplete_details.reason` or `status` give the
finish reason; `usage` counts `input_tokens` and `output_tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.core.chat import ChatRequest, Completion
from pipeline.core.errors import MalformedResponse
from pipeline.core.structured import OutputFormat
from pipeline.wire.base import Endpoint, WireFormat
from pipeline.wire.fields import chat_messages, optional_str, sampling_fields, usage_counts

# Responses `incomplete_details.reason` → the Chat Completions finish reason it corresponds to.
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


class Responses(WireFormat):
    name = "responses"
    reserved_fields = frozenset(
        {"model", "input", "max_output_tokens", "temperature", "stream", "text"}
    )

    def url(self, endpoint: Endpoint) -> str:
        return f"{endpoint.serving_base_url}/responses"

    def body(
        self, request: ChatRequest, endpoint: Endpoint, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            **extra,
            "model": endpoint.name,
            "input": chat_messages(request),
            **sampling_fields(request, "max_output_tokens"),
        }

    def parse(self, payload: Any) -> Completion:
        return parse(payload)

    def format_fields(self, output: OutputFormat) -> dict[str, Any]:
        return format_fields(output)


def parse(payload: Any) -> Completion:
    """A Responses API body → Completion.

    Raises:
        MalformedResponse: no `output` list, or no `message` item in it.
    """
    if not isinstance(payload, dict):
        raise MalformedResponse("response body is not a JSON object")
    output = payload.get("output")
    if not isinstance(output, list):
        raise MalformedResponse("response has no output list")
    messages = [i for i in output if isinstance(i, dict) and i.get("type") == "message"]
    if not messages:
        raise MalformedResponse("response output has no message item")
    text = "".join(
        str(part.get("text", ""))
        for item in messages
        for part in (item.get("content") or [])
        if isinstance(part, dict) and part.get("type") == "output_text"
    )
    prompt, completion, total = usage_counts(payload, "input_tokens", "output_tokens")
    return Completion(
        text=text,
        finish_reason=finish_reason(payload),
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        model=optional_str(payload.get("model")),
        response_id=optional_str(payload.get("id")),
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
