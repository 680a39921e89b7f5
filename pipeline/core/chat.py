"""The values that flow through the pipeline: a chat request, a completion, a row's result.

Pure data; nothing here knows of Spark, HTTP or a wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from pipeline.core.tools import ToolCall

# Rough characters per token for English text; only used to reserve a token budget before the
# real `usage` arrives, and corrected afterwards.
CHARS_PER_TOKEN_ESTIMATE = 4
# Output tokens to reserve when neither the row nor the config sets max_tokens.
DEFAULT_OUTPUT_TOKEN_ESTIMATE = 256

Role = Literal["system", "user", "assistant"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    # Image URLs (http(s) or `data:`) shown with the text (see `pipeline.core.images`).
    images: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    request_id: str
    messages: tuple[Message, ...]
    max_tokens: int | None
    temperature: float | None
    # The request's fingerprint (see `pipeline.core.identity`): the wire body as sent, the API and
    # the endpoint name. Identical requests in one task are sent once; the output records it,
    # so a later run knows whether a row's answer still answers the request asked now.
    request_hash: str | None = None

    def estimated_tokens(self) -> int:
        """Prompt tokens guessed from its length, plus the output tokens it may use."""
        return self.estimated_prompt_tokens() + self.estimated_output_tokens()

    def estimated_prompt_tokens(self) -> int:
        return sum(len(m.content) for m in self.messages) // CHARS_PER_TOKEN_ESTIMATE + 1

    def estimated_output_tokens(self) -> int:
        """At most `max_tokens`; a guess when it is not set."""
        return self.max_tokens if self.max_tokens is not None else DEFAULT_OUTPUT_TOKEN_ESTIMATE


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """A request as the keying pass hands it to the answering pass: its wire body, encoded once
    when the row was keyed, and what the limits need to know of it (see `ChatRequest`)."""

    request_id: str
    body: bytes
    prompt_tokens: int  # estimated, as `ChatRequest.estimated_prompt_tokens`
    output_tokens: int  # as `ChatRequest.estimated_output_tokens`
    images: int = 0
    request_hash: str | None = None

    def estimated_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


# What a task sends: a request built here, or one the keying pass built and encoded.
Outgoing = ChatRequest | EncodedRequest


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    model: str | None
    response_id: str | None
    # The functions the model called (see `pipeline.core.tools`), in the answer's order.
    tool_calls: tuple[ToolCall, ...] = ()
    # The reasoning text or summaries a reasoning model returned beside its answer.
    reasoning: str | None = None
    # Of `completion_tokens`, those spent reasoning (when the endpoint says).
    reasoning_tokens: int | None = None

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> Completion:
        """The completion `dataclasses.asdict` made `plain` (fields added since read as unset)."""
        calls = tuple(ToolCall(**call) for call in plain.pop("tool_calls", None) or ())
        return cls(**plain, tool_calls=calls)


@dataclass(frozen=True, slots=True)
class RowResult:
    """What the output table says about one input row."""

    request_id: str
    status: Literal["ok", "error"]
    completion: Completion | None = None
    error: str | None = None
    http_status: int | None = None
    attempts: int = 0
    latency_ms: float | None = None
    # The answer as JSON, when structured output was asked for and the answer matched.
    parsed: Any = None
    # The fingerprint of the request this row answers (of its input, when it could not become
    # a request); see `ChatRequest.request_hash`.
    request_hash: str | None = None
    # Paid for by an earlier task attempt or run, and recovered from its in-flight answers
    # (see `pipeline.http.journal`): not sent, nor paid, again.
    reused: bool = False

    def copied_to(self, request_id: str) -> RowResult:
        """This result for another row that asked the same request: nothing was sent for it."""
        return replace(self, request_id=request_id, attempts=0, latency_ms=None)
