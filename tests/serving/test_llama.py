"""The real model: SmolLM2-135M-Instruct through llama.cpp, behind the real server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.serving.llama import smollm2_path
from pipeline.serving.process import LocalEndpoint

from .wire_client import post

QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LocalEndpoint]:
    with LocalEndpoint("--model", "smollm2", startup_timeout_s=120) as endpoint:
        yield endpoint


def ask(endpoint: LocalEndpoint, max_tokens: int, content: str = QUESTION) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    reply = post(f"{endpoint.base_url}/smollm2/invocations", body)
    assert reply.status == 200, reply.body
    return dict(reply.body)


def test_weights_come_from_the_installed_package() -> None:
    path = smollm2_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_answers_with_real_tokens_and_a_stop(smollm2: LocalEndpoint) -> None:
    body = ask(smollm2, max_tokens=64)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "paris" in choice["message"]["content"].lower()
    usage = body["usage"]
    # The chat template wraps the 10 words in role markers: more tokens than words.
    assert usage["prompt_tokens"] > len(QUESTION.split())
    assert 0 < usage["completion_tokens"] < 64
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["model"] == "smollm2"


def test_tiny_budget_ends_with_length(smollm2: LocalEndpoint) -> None:
    body = ask(smollm2, max_tokens=2, content="Write a long poem about the sea.")
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_greedy_decoding_is_repeatable(smollm2: LocalEndpoint) -> None:
    first = ask(smollm2, max_tokens=16)["choices"][0]["message"]["content"]
    assert ask(smollm2, max_tokens=16)["choices"][0]["message"]["content"] == first


def test_prompt_beyond_the_context_is_a_400(smollm2: LocalEndpoint) -> None:
    body = {
        "messages": [{"role": "user", "content": "word " * 5000}],
        "max_tokens": 10,
    }
    reply = post(f"{smollm2.base_url}/smollm2/invocations", body)
    assert reply.status == 400
    assert reply.body["error_code"] == "INVALID_PARAMETER_VALUE"


def test_an_image_is_a_400_from_a_text_only_model(smollm2: LocalEndpoint) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                                      image]}], "max_tokens": 5}  # fmt: skip
    reply = post(f"{smollm2.base_url}/smollm2/invocations", body)
    assert reply.status == 400
    assert reply.body["message"] == (
        "the model of endpoint 'smollm2' takes text only: image content parts are not accepted"
    )
