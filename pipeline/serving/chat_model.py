"""What a served model is: the `ChatModel` protocol and the values it takes and returns.

Apart from `models.py` (the registry of models) so a model implementation such as `llama.py`
imports these types without importing the registry that names it: the dependency runs one way,
models -> llama -> chat_model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

# A validated chat message: exactly {"role": "system"|"user"|"assistant", "content": str}.
Message = dict[str, str]
FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ServedTool:
    """A function offered in a request: its name and the JSON Schema of its arguments."""

    name: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class ServedImage:
    """An image in a request: its URL (a data: URL cut short) and its size when it came as
    data (None for an http(s) URL, which a real endpoint would fetch)."""

    url: str
    size: int | None


@dataclass(frozen=True)
class ModelOutput:
    """What a model produced for one request; token counts are in the model's own tokens
    (`completion_tokens` includes `reasoning_tokens`)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # (function name, arguments as JSON text) of each call, in order.
    tool_calls: tuple[tuple[str, str], ...] = ()
    reasoning: str | None = None
    reasoning_tokens: int = 0


class ChatModel(Protocol):
    """Anything that completes a conversation within a token budget.

    A model may also set `blocking = True` (CPU-bound, not thread-safe): the app then runs it on
    one dedicated thread instead of on the event loop.
    """

    def complete(self, messages: list[Message], max_tokens: int) -> ModelOutput:
        """Answer the conversation with at most `max_tokens` tokens."""
        ...


class ToolCaller(Protocol):
    """A model that can answer a request by calling one of the tools it was offered. A model
    without `call_tool` answers such a request in text, as one without function calling does."""

    def call_tool(self, messages: list[Message], tool: ServedTool) -> ModelOutput:
        """Call `tool` with arguments drawn from the conversation."""
        ...


def with_reasoning(output: ModelOutput) -> ModelOutput:
    """`output` as a reasoning model gives it: a short reasoning text first, whose words are
    reasoning tokens, counted in `completion_tokens` as OpenAI and Databricks count them."""
    reasoning = f"The conversation holds {output.prompt_tokens} prompt tokens; answering it."
    spent = len(reasoning.split())
    return replace(
        output,
        reasoning=reasoning,
        reasoning_tokens=spent,
        completion_tokens=output.completion_tokens + spent,
    )


class ImageViewer(Protocol):
    """A model that takes images with the text. A request with images to a model without
    `look` is refused (400), as a text-only endpoint refuses it."""

    def look(
        self, messages: list[Message], max_tokens: int, images: tuple[ServedImage, ...]
    ) -> ModelOutput:
        """Answer the conversation, shown `images`."""
        ...
