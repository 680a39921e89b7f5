"""The chat models the local endpoint can serve, by name: the instant `EchoModel` and SmolLM2.

A model turns validated messages into a `ModelOutput` (see `chat_model.py`); it knows nothing of
HTTP, wire formats or faults. `EchoModel` is deterministic and instant so tests can predict every
token count.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.serving.chat_model import ChatModel, Message, ModelOutput
from pipeline.serving.settings import ServingSettings, SettingsError


class EchoModel:
    """Echoes the last user message; a token is a whitespace-separated word.

    prompt_tokens counts the words of every message (system included); the answer is the last
    user message's words cut to `max_tokens`, and finish_reason says whether it was cut.
    """

    def complete(self, messages: list[Message], max_tokens: int) -> ModelOutput:
        """Echo the last user message, truncated to `max_tokens` words."""
        prompt_tokens = sum(len(message["content"].split()) for message in messages)
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        words = last_user.split()
        kept = words[:max_tokens]
        return ModelOutput(
            text=" ".join(kept),
            finish_reason="length" if len(words) > max_tokens else "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(kept),
        )


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
