from __future__ import annotations

import json

import jsonschema
import pytest

from pipeline.serving.chat_model import ModelOutput, ServedTool
from pipeline.serving.models import EchoModel, make_model
from pipeline.serving.settings import ServingSettings, SettingsError


def test_prompt_tokens_count_words_of_every_message_and_output_echoes_last_user() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question here"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "  second\n question\t"},
    ]

    completion = EchoModel().complete(messages, max_tokens=10)

    assert completion == ModelOutput(
        text="second question", finish_reason="stop", prompt_tokens=9, completion_tokens=2
    )


def test_truncates_to_max_tokens_words_and_reports_length() -> None:
    messages = [{"role": "user", "content": "one two three four five"}]

    completion = EchoModel().complete(messages, max_tokens=3)

    assert completion == ModelOutput(
        text="one two three", finish_reason="length", prompt_tokens=5, completion_tokens=3
    )


def test_exact_fit_is_not_truncation() -> None:
    completion = EchoModel().complete([{"role": "user", "content": "a b c"}], max_tokens=3)

    assert (completion.text, completion.finish_reason) == ("a b c", "stop")


def test_last_user_message_wins_even_before_an_assistant_turn() -> None:
    messages = [
        {"role": "user", "content": "the question"},
        {"role": "assistant", "content": "draft reply words"},
    ]

    assert EchoModel().complete(messages, max_tokens=10).text == "the question"


def test_no_user_message_gives_an_empty_answer() -> None:
    completion = EchoModel().complete([{"role": "system", "content": "x y"}], max_tokens=5)

    assert completion == ModelOutput(text="", finish_reason="stop", prompt_tokens=2,
                                    completion_tokens=0)


def test_make_model_builds_echo_and_names_the_key_for_unknown_models() -> None:
    assert isinstance(make_model(ServingSettings(model="echo")), EchoModel)
    with pytest.raises(SettingsError) as caught:
        make_model(ServingSettings(model="llama"))
    assert caught.value.key == "model"


def test_offered_a_tool_the_echo_model_calls_it_with_arguments_matching_its_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "limit": {"type": "integer"},
            "unit": {"enum": ["c", "f"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "exact": {"type": ["boolean", "null"]},
        },
        "required": ["query"],
    }
    output = EchoModel().call_tool([{"role": "user", "content": "red shoes"}],
                                   ServedTool("search", schema))  # fmt: skip
    ((name, arguments),) = output.tool_calls
    assert (name, output.text, output.finish_reason) == ("search", "", "tool_calls")
    values = json.loads(arguments)
    jsonschema.validate(values, schema)
    assert values == {"query": "red shoes", "limit": 2, "unit": "c", "tags": ["red shoes"],
                      "exact": True}  # fmt: skip
    assert (output.prompt_tokens, output.completion_tokens) == (2, len(arguments.split()))
