"""The served-format registry: its invariants, and what each format answers, without a server."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.serving.chat_model import ModelOutput
from pipeline.serving.formats import FORMAT_NAMES, SERVED_FORMATS, ServedFormat
from pipeline.serving.formats.served_format import ENDPOINT_SEGMENT
from pipeline.serving.settings import ServingSettings

OUTPUT = ModelOutput(text="a b", finish_reason="stop", prompt_tokens=3, completion_tokens=2)
USER = {"role": "user", "content": "hi"}
# A body every format accepts: each reads its own fields and ignores the others.
ANY_FORMAT_BODY = {"model": "echo", "messages": [USER], "input": [USER]}


def by_name(name: str) -> ServedFormat:
    (served,) = (served for served in SERVED_FORMATS if served.name == name)
    return served


def test_the_registry_serves_the_databricks_formats_in_stats_order() -> None:
    assert FORMAT_NAMES == ("invocations", "chat_completions", "responses")


def test_no_path_belongs_to_two_formats() -> None:
    paths = Counter(path for served in SERVED_FORMATS for path in served.paths)

    assert [path for path, n in paths.items() if n > 1] == []


def test_azure_deployments_path_is_a_chat_completions_route_naming_the_endpoint() -> None:
    azure = "/openai/deployments/{name}/chat/completions"

    assert by_name("chat_completions").paths == ("/serving-endpoints/chat/completions", azure)
    assert f"{{{ENDPOINT_SEGMENT}}}" in azure


@pytest.mark.parametrize("served", SERVED_FORMATS, ids=FORMAT_NAMES)
def test_fault_keys_start_with_the_format_name(served: ServedFormat) -> None:
    chat = served.parse(ANY_FORMAT_BODY, 10)

    assert chat.messages == (USER,)
    assert chat.fault_key.startswith(f"{served.name}:")


@pytest.mark.parametrize(
    ("name", "empty_key", "kind"),
    [
        ("invocations", "choices", "chat.completion"),
        ("chat_completions", "choices", "chat.completion"),
        ("responses", "output", "response"),
    ],
)
def test_each_format_answers_its_own_object_and_empties_its_own_list(
    name: str, empty_key: str, kind: str
) -> None:
    served = by_name(name)

    answer = served.success_body(OUTPUT, "echo", ServingSettings())
    empty = served.empty_body("echo")

    assert (answer["object"], answer["model"], len(answer[empty_key])) == (kind, "echo", 1)
    assert (empty["object"], empty["model"], empty[empty_key]) == (kind, "echo", [])


def test_reasoning_item_setting_reaches_only_the_responses_body() -> None:
    settings = ServingSettings(reasoning_item=True)

    response = by_name("responses").success_body(OUTPUT, "echo", settings)
    chat = by_name("chat_completions").success_body(OUTPUT, "echo", settings)

    assert [item["type"] for item in response["output"]] == ["reasoning", "message"]
    assert len(chat["choices"]) == 1
