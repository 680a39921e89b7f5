"""The chat models the local endpoint can serve, by name: the instant `EchoModel` and SmolLM2.

A model turns validated messages into a `ModelOutput` (see `chat_model.py`); it knows nothing of
HTTP, wire formats or faults. `EchoModel` is deterministic and instant so tests can predict every
token count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.serving.chat_model import ChatModel, Message, ModelOutput, ServedImage, ServedTool
from pipeline.serving.settings import ServingSettings, SettingsError


class EchoModel:
    """Echoes the last user message; a token is a whitespace-separated word.

    prompt_tokens counts the words of every message (system included); the answer is the last
    user message's words cut to `max_tokens`, and finish_reason says whether it was cut. Offered
    tools, it calls the first one (see `call_tool`); shown images, it says how many and how
    large (see `look`).
    """

    def complete(self, messages: list[Message], max_tokens: int) -> ModelOutput:
        """Echo the last user message, truncated to `max_tokens` words."""
        return _echo(messages, _last_user(messages), max_tokens)

    def look(
        self, messages: list[Message], max_tokens: int, images: tuple[ServedImage, ...]
    ) -> ModelOutput:
        """The echo of `complete`, then what it was shown: `(2 images: 1024 bytes, url)`."""
        sizes = ", ".join("url" if i.size is None else f"{i.size} bytes" for i in images)
        seen = f"({len(images)} image{'s' if len(images) > 1 else ''}: {sizes})"
        return _echo(messages, f"{_last_user(messages)} {seen}", max_tokens)

    def call_tool(self, messages: list[Message], tool: ServedTool) -> ModelOutput:
        """Call `tool` with arguments that match its schema (see `example_arguments`), drawn
        from the last user message; the call's words are its completion tokens."""
        arguments = json.dumps(example_arguments(tool.parameters, _last_user(messages)))
        return ModelOutput(
            text="",
            finish_reason="tool_calls",
            prompt_tokens=_words(messages),
            completion_tokens=len(arguments.split()),
            tool_calls=((tool.name, arguments),),
        )


def _echo(messages: list[Message], answer: str, max_tokens: int) -> ModelOutput:
    """`answer`'s words cut to `max_tokens`, for a prompt of `messages`."""
    words = answer.split()
    kept = words[:max_tokens]
    return ModelOutput(
        text=" ".join(kept),
        finish_reason="length" if len(words) > max_tokens else "stop",
        prompt_tokens=_words(messages),
        completion_tokens=len(kept),
    )


def _words(messages: list[Message]) -> int:
    """The prompt tokens of `messages`: the words of every message, system included."""
    return sum(len(message["content"].split()) for message in messages)


def _last_user(messages: list[Message]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def example_arguments(schema: Mapping[str, Any], text: str) -> Any:
    """A value matching the JSON Schema `schema`, from `text`: its first `enum` or `const`, else
    by type: a string is `text`, a number its word count, a boolean true, an array one item,
    an object every property (required or not)."""
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        return {name: example_arguments(sub, text) for name, sub in properties.items()
                if isinstance(sub, Mapping)}  # fmt: skip
    if kind == "array":
        items = schema.get("items")
        return [example_arguments(items, text)] if isinstance(items, Mapping) else []
    words = len(text.split())
    return {"string": text, "integer": words, "number": float(words), "boolean": True,
            "null": None}.get(str(kind), text)  # fmt: skip


# Model name -> factory. A factory takes the settings so a heavier model can read its own knobs.
def _smollm2(settings: ServingSettings) -> ChatModel:
    # Imported on demand: llama-cpp-python is an optional extra. llama.py never imports this
    # module, so the dependency stays one-way.
    from pipeline.serving.llama import load_smollm2

    return load_smollm2(settings)


MODELS: dict[str, Callable[[ServingSettings], ChatModel]] = {
    "echo": lambda _settings: EchoModel(),
    "smollm2": _smollm2,
}


def make_model(settings: ServingSettings) -> ChatModel:
    """Build the model named by `settings.model`.

    Raises SettingsError (key "model") when no model has that name.
    """
    factory = MODELS.get(settings.model)
    if factory is None:
        known = ", ".join(MODELS)
        raise SettingsError("model", f"unknown model {settings.model!r}; known: {known}")
    return factory(settings)
