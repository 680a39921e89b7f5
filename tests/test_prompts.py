import json

import numpy as np
import pytest

from pipeline.chat import ChatRequest, Message, RowResult
from pipeline.config import RequestConfig, SourceConfig
from pipeline.prompts import RequestBuilder

REQUEST = RequestConfig(max_tokens=50, temperature=0.2)


def builder(**source: object) -> RequestBuilder:
    return RequestBuilder(SourceConfig(path="in", **source), REQUEST, salt="echo")  # type: ignore[arg-type]


def build(b: RequestBuilder, **row: object) -> ChatRequest:
    result = b.build(row)
    assert isinstance(result, ChatRequest), result
    return result


def error(b: RequestBuilder, **row: object) -> str:
    result = b.build(row)
    assert isinstance(result, RowResult), result
    assert result.status == "error" and result.attempts == 0
    assert result.error is not None and result.error.startswith("invalid_input: ")
    return result.error


def test_prompt_column_with_system_prompt() -> None:
    request = build(builder(prompt_column="q", system_prompt="Be brief."), q="Why?")
    assert request.messages == (Message("system", "Be brief."), Message("user", "Why?"))
    assert (request.max_tokens, request.temperature) == (50, 0.2)


def test_messages_column_as_structs_from_arrow() -> None:
    value = np.array([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    request = build(builder(messages_column="m"), m=value)
    assert request.messages == (Message("user", "Hi"), Message("assistant", "Yo"))


def test_messages_column_as_json_text() -> None:
    request = build(builder(messages_column="m"), m=json.dumps([{"role": "user", "content": "Hi"}]))
    assert request.messages == (Message("user", "Hi"),)


def test_row_system_message_beats_config_system_prompt() -> None:
    value = [{"role": "system", "content": "Row rules."}, {"role": "user", "content": "Hi"}]
    request = build(builder(messages_column="m", system_prompt="Config rules."), m=value)
    assert [m.content for m in request.messages] == ["Row rules.", "Hi"]


def test_template_over_columns() -> None:
    b = builder(template="Explain {topic} to {who}.")
    assert b.columns == ["topic", "who"]
    request = build(b, topic="DNA", who="a child")
    assert request.messages == (Message("user", "Explain DNA to a child."),)


def test_template_without_placeholders_answers_every_row() -> None:
    b = builder(template="Say hello.")
    assert len(b.build_all({}, 3)) == 3


def test_per_row_overrides_and_their_fallback() -> None:
    b = builder(prompt_column="q", max_tokens_column="mt", temperature_column="t")
    request = build(b, q="x", mt=7.0, t=0)
    assert (request.max_tokens, request.temperature) == (7, 0.0)
    request = build(b, q="x", mt=float("nan"), t=None)
    assert (request.max_tokens, request.temperature) == (50, 0.2)


@pytest.mark.parametrize(
    ("source", "row", "needle"),
    [
        ({"prompt_column": "q"}, {"q": None}, "is null"),
        ({"prompt_column": "q"}, {"q": "   "}, "is empty"),
        ({"prompt_column": "q"}, {"q": 12}, "must be text"),
        ({"messages_column": "m"}, {"m": "not json"}, "not valid JSON"),
        ({"messages_column": "m"}, {"m": []}, "empty list"),
        ({"messages_column": "m"}, {"m": {"role": "user"}}, "must be a list"),
        ({"messages_column": "m"}, {"m": [{"role": "user"}]}, "{role, content}"),
        ({"messages_column": "m"}, {"m": [{"role": "wizard", "content": "x"}]}, "unknown role"),
        ({"template": "Hi {name}"}, {"name": None}, "{name} is null"),
        ({"prompt_column": "q", "max_prompt_chars": 5}, {"q": "too long"}, "max_prompt_chars"),
        ({"prompt_column": "q", "max_tokens_column": "mt"}, {"q": "x", "mt": 0}, ">= 1"),
        ({"prompt_column": "q", "max_tokens_column": "mt"}, {"q": "x", "mt": 2.5}, "whole number"),
        ({"prompt_column": "q", "temperature_column": "t"}, {"q": "x", "t": 9}, "[0, 2]"),
    ],
)
def test_bad_rows_become_error_rows(source: dict, row: dict, needle: str) -> None:
    assert needle in error(builder(**source), **row)


def test_request_id_from_id_column() -> None:
    assert build(builder(prompt_column="q", id_column="id"), q="x", id=42).request_id == "42"


def test_content_id_is_stable_and_depends_on_parameters() -> None:
    b = builder(prompt_column="q")
    first, again, other = build(b, q="same"), build(b, q="same"), build(b, q="other")
    assert first.request_id == again.request_id != other.request_id
    salted = RequestBuilder(SourceConfig(path="in", prompt_column="q"), REQUEST, salt="other-model")
    assert build(salted, q="same").request_id != first.request_id
    b2 = RequestBuilder(
        SourceConfig(path="in", prompt_column="q"), RequestConfig(max_tokens=9), "echo"
    )
    assert build(b2, q="same").request_id != first.request_id


def test_invalid_rows_still_get_a_stable_id() -> None:
    b = builder(prompt_column="q")
    first, again = b.build({"q": None}), b.build({"q": None})
    assert isinstance(first, RowResult) and isinstance(again, RowResult)
    assert first.request_id == again.request_id and len(first.request_id) == 32
