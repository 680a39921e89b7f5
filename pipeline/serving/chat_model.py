"""What a served model is: the `ChatModel` protocol and the values it takes and returns.

Apart from `models.py` (the registry of models) so a model implementation such as `llama.py`
imports these types without importing the registry that names it: the dependency runs one way,
models -> llama -> chat_model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

# A validated chat message: exactly {"role": "system"|"user"|"assistant", "content": str}.
Message = dict[str, str]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ModelOutput:
    """What a model produced for one request; token counts are in the model's own tokens."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class ChatModel(Protocol):
    """Anything that completes a conversation within a token budget.

    A model may also set `blocking = True` (CPU-bound, not thread-safe): the app then runs it on
    one dedicated thread instead of on the event loop.
    """

    def complete(self, messages: list[Message], max_tokens: int) -> ModelOutput:
        """Answer the conversation with at most `max_tokens` tokens."""
        ...
