import json

import numpy as np
import pytest

from pipeline.core.chat import ChatRequest, Message, RowResult
from pipeline.core.config import EndpointConfig, RequestConfig, SourceConfig
from pipeline.core.prompts import RequestBuilder

REQUEST = RequestConfig(max_tokens=50, temperature=0.2)
ENDPOINT = EndpointConfig(name="echo", host="http://127.0.0.1:1")


def builder(**source: object) -> RequestBuilder:
    return RequestBuilder(SourceConfig(path="in", **source), REQUEST, ENDPOINT)  # type: ignore[arg-type]


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


def test_content_id_is_stable_and_depends_on_the_rows_values_only() -> None:
    b = builder(prompt_column="q")
    first, again, other = build(b, q="same"), build(b, q="same"), build(b, q="other")
    assert first.request_id == again.request_id != other.request_id
    # Another endpoint or other parameters: the same row (same id), another request (hash).
    other_model = EndpointConfig(name="other-model", host="http://127.0.0.1:1")
    salted = RequestBuilder(SourceConfig(path="in", prompt_column="q"), REQUEST, other_model)
    b2 = RequestBuilder(
        SourceConfig(path="in", prompt_column="q"), RequestConfig(max_tokens=9), ENDPOINT
    )
    for changed in (build(salted, q="same"), build(b2, q="same")):
        assert changed.request_id == first.request_id
        assert changed.request_hash != first.request_hash


def test_ids_are_spelt_the_same_whatever_the_batch_dtype() -> None:
    """An integer column with nulls reaches pandas as floats: 7.0 is still the id 7, and the
    same row keeps the same content id."""
    with_id = builder(prompt_column="q", id_column="id", max_tokens_column="mt")
    assert build(with_id, q="x", id=7.0, mt=5.0).request_id == "7"
    no_id = builder(prompt_column="q", max_tokens_column="mt")
    assert build(no_id, q="x", mt=5.0).request_id == build(no_id, q="x", mt=5).request_id


def test_invalid_rows_still_get_a_stable_id() -> None:
    b = builder(prompt_column="q")
    first, again = b.build({"q": None}), b.build({"q": None})
    assert isinstance(first, RowResult) and isinstance(again, RowResult)
    assert first.request_id == again.request_id and len(first.request_id) == 32


def _hash(
    source: dict | None = None,
    request: RequestConfig = REQUEST,
    endpoint: EndpointConfig = ENDPOINT,
    **row: object,
) -> str | None:
    fields = source or {"prompt_column": "q"}
    built = RequestBuilder(SourceConfig(path="in", **fields), request, endpoint).build(row)
    assert isinstance(built, ChatRequest), built
    return built.request_hash


def test_request_hash_changes_with_everything_sent_and_nothing_else() -> None:
    base = _hash(q="same")
    assert base is not None and len(base) == 32 and _hash(q="same") == base
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    changed = {
        "prompt": _hash(q="other"),
        "system prompt": _hash({"prompt_column": "q", "system_prompt": "Be brief."}, q="same"),
        "template": _hash({"template": "Say {q}"}, q="same"),
        "max_tokens": _hash(request=RequestConfig(max_tokens=51, temperature=0.2), q="same"),
        "temperature": _hash(request=RequestConfig(max_tokens=50, temperature=0.3), q="same"),
        "extra": _hash(request=RequestConfig(max_tokens=50, temperature=0.2,
                                             extra={"top_p": 0.5}), q="same"),
        "json_object": _hash(request=RequestConfig(max_tokens=50, temperature=0.2,
                                                   response_format="json_object"), q="same"),
        "json_schema": _hash(request=RequestConfig(
            max_tokens=50, temperature=0.2, response_format="json_schema", json_schema=schema
        ), q="same"),
        "api": _hash(endpoint=EndpointConfig(name="echo", host="http://127.0.0.1:1",
                                             api="chat_completions"), q="same"),
        "endpoint name": _hash(endpoint=EndpointConfig(name="other", host="http://127.0.0.1:1"),
                               q="same"),
    }  # fmt: skip
    assert all(value != base for value in changed.values()), changed
    assert len(set(changed.values())) == len(changed)
    # Neither the host nor the token is part of what was asked.
    elsewhere = EndpointConfig(name="echo", host="https://adb-1.azuredatabricks.net",
                               token_env="OTHER")  # fmt: skip
    assert _hash(endpoint=elsewhere, q="same") == base


def test_the_request_hash_is_the_same_with_or_without_an_id_column() -> None:
    request = build(builder(prompt_column="q"), q="x")
    with_id = build(builder(prompt_column="q", id_column="id"), q="x", id=7)
    assert (with_id.request_id, with_id.request_hash) == ("7", request.request_hash)
    assert request.request_id != request.request_hash  # the row's values, not the request's


def test_text_arrives_as_utf8_bytes_and_invalid_bytes_are_one_bad_row() -> None:
    b = builder(prompt_column="q", id_column="id")
    assert build(b, q="café".encode(), id=b"a-1").messages == (Message("user", "café"),)
    assert build(b, q=b"x", id=b"a-1").request_id == "a-1"
    bad = b.build({"q": b"bad \xc3( bytes", "id": b"a-2"})
    assert isinstance(bad, RowResult) and bad.request_id == "a-2"
    assert bad.error == "invalid_input: column 'q' is not valid UTF-8 text (byte 4 of 12)"
    nested = [{"role": b"user", "content": b"\xff"}]
    assert "column 'm' is not valid UTF-8" in error(builder(messages_column="m"), m=nested)


def test_an_invalid_rows_hash_follows_its_values() -> None:
    b = builder(prompt_column="q", max_tokens_column="mt")
    first, again, fixed = b.build({"q": "x", "mt": 0}), b.build({"q": "x", "mt": 0}), b.build(
        {"q": "x", "mt": 1}
    )
    assert isinstance(first, RowResult) and isinstance(again, RowResult)
    assert first.request_hash == again.request_hash and first.request_hash is not None
    assert isinstance(fixed, ChatRequest) and fixed.request_hash != first.request_hash


def test_the_config_hash_follows_what_builds_requests_not_where_rows_are_read() -> None:
    b = builder(prompt_column="q", id_column="id")
    elsewhere = RequestBuilder(
        SourceConfig(table="c.s.t", format="delta", prompt_column="q", id_column="id",
                     partitions=4), REQUEST, ENDPOINT,
    )  # fmt: skip
    assert elsewhere.config_hash == b.config_hash
    assert builder(prompt_column="q", id_column="id", system_prompt="Be brief.").config_hash != (
        b.config_hash
    )
    more_tokens = RequestConfig(max_tokens=51, temperature=0.2)
    other = RequestBuilder(SourceConfig(path="in", prompt_column="q", id_column="id"),
                           more_tokens, ENDPOINT)  # fmt: skip
    assert other.config_hash != b.config_hash


def test_requests_are_built_as_the_rows_stamped_with_this_version_were() -> None:
    """A sink row stamped with a `config_hash` is trusted to hold the `request_hash` this
    version gives its values (see `pipeline.spark.recognised`). If this fails, requests are
    built differently now: bump `BUILDER_VERSION` (core/prompts.py), then the values below."""
    b = builder(prompt_column="q", id_column="id", max_tokens_column="mt")
    built = build(b, q="What is Spark?", id=7, mt=None)
    assert (b.config_hash, built.request_hash) == (
        "e1ac62b19156d1fc5e556cf13c7eb7d9", "1f6415aa7433d71da384d24f71d85acc"
    )
