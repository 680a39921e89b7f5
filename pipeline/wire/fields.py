"""Pieces every wire format shares: messages out, sampling fields out, usage, tool calls,
reasoning and ids in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.core.chat import ChatRequest, Message
from pipeline.core.errors import MalformedResponse
from pipeline.core.tools import ToolCall


def chat_messages(
    request: ChatRequest, parts: Callable[[Message], list[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """The conversation as `[{"role": ..., "content": ...}]`; a message with images has a list
    of content parts, as `parts` spells them (Chat Completions' by default)."""
    spell = parts or chat_parts
    return [{"role": m.role, "content": spell(m) if m.images else m.content}
            for m in request.messages]  # fmt: skip


def chat_parts(message: Message) -> list[dict[str, Any]]:
    """Text and images as Chat Completions (and Databricks `invocations`) take them."""
    images = [{"type": "image_url", "image_url": {"url": url}} for url in message.images]
    return [{"type": "text", "text": message.content}, *images]


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


def detail_count(payload: dict[str, Any], details_key: str, name: str) -> int | None:
    """`payload["usage"][details_key][name]` (e.g. `completion_tokens_details.reasoning_tokens`),
    or None when any step is missing."""
    usage = payload.get("usage")
    details = usage.get(details_key) if isinstance(usage, dict) else None
    return optional_int(details.get(name)) if isinstance(details, dict) else None


def tool_call(name: Any, arguments: Any, call_id: Any, where: str) -> ToolCall:
    """A call as an answer states it; arguments an object (some servers send one) become
    its JSON text, and none become `{}`.

    Raises:
        MalformedResponse: the call names no function.
    """
    if not isinstance(name, str) or not name:
        raise MalformedResponse(f"{where} names no function")
    if arguments is None:
        arguments = "{}"
    elif not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall(name=name, arguments=arguments, call_id=optional_str(call_id))


def summary_texts(summary: Any) -> list[str]:
    """The texts of a reasoning `summary` list (`[{"type": "summary_text", "text": ...}]`)."""
    if not isinstance(summary, list):
        return []
    return [str(part["text"]) for part in summary if isinstance(part, dict) and part.get("text")]


def joined(pieces: Iterable[str | None]) -> str | None:
    """Non-empty reasoning pieces, one paragraph each; None when there are none."""
    kept = [piece for piece in pieces if piece]
    return "\n\n".join(kept) if kept else None


def optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
