"""Pieces every wire format shares: messages out, sampling fields out, usage and ids in."""

from __future__ import annotations

from typing import Any

from pipeline.core.chat import ChatRequest


def chat_messages(request: ChatRequest) -> list[dict[str, str]]:
    """The conversation as `[{"role": ..., "content": ...}]`."""
    return [{"role": m.role, "content": m.content} for m in request.messages]


def sampling_fields(request: ChatRequest, max_tokens_key: str) -> dict[str, Any]:
    """`max_tokens` (under the format's own name) and `temperature`, when they are set."""
    fields: dict[str, Any] = {}
    if request.max_tokens is not None:
        fields[max_tokens_key] = request.max_tokens
    if request.temperature is not None:
        fields["temperature"] = request.temperature
    return fields


def usage_counts(
    payload: dict[str, Any], prompt_key: str, completion_key: str
) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, total) tokens from `payload["usage"]`; a missing total is summed."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None, None, None
    prompt = optional_int(usage.get(prompt_key))
    completion = optional_int(usage.get(completion_key))
    total = optional_int(usage.get("total_tokens"))
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return prompt, completion, total


def optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
