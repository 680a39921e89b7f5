from __future__ import annotations

from typing import Any

import pytest

from pipeline.serving.errors import InvalidRequest
from pipeline.serving.formats.chat_completions import parse_chat_request
from pipeline.serving.formats.responses import parse_responses_request
from pipeline.serving.validation import IncomingChat, endpoint_from_body, parse_json_object

LIMIT = 100
USER = {"role": "user", "content": "hi there"}


def chat(body: dict[str, Any]) -> IncomingChat:
    return parse_chat_request(body, "invocations", max_tokens_limit=LIMIT)


def responses(body: dict[str, Any]) -> IncomingChat:
    return parse_responses_request(body, max_tokens_limit=LIMIT)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe\xfa", b""])
def test_body_must_be_a_json_object(raw: bytes) -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_json_object(raw)


def test_chat_request_keeps_role_and_content_only() -> None:
    request = chat({"messages": [{**USER, "name": "x"}], "max_tokens": 5, "temperature": 1})

    assert request.messages == (USER,)
    assert (request.max_tokens, request.temperature) == (5, 1.0)


def test_null_optionals_count_as_absent() -> None:
    request = chat({"messages": [USER], "max_tokens": None, "temperature": None})

    assert (request.max_tokens, request.temperature) == (None, None)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [USER, "hi"]}, "messages[1]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [USER, {"role": "user", "content": 3}]}, "messages[1].content"),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens"),
        ({"messages": [USER], "max_tokens": LIMIT + 1}, "max_tokens"),
        ({"messages": [USER], "max_tokens": "5"}, "max_tokens"),
        ({"messages": [USER], "max_tokens": True}, "max_tokens"),
        ({"messages": [USER], "max_tokens": 2.5}, "max_tokens"),
        ({"messages": [USER], "temperature": -0.1}, "temperature"),
        ({"messages": [USER], "temperature": 2.01}, "temperature"),
        ({"messages": [USER], "temperature": "0.5"}, "temperature"),
        ({"messages": [USER], "temperature": True}, "temperature"),
        ({"messages": [USER], "temperature": float("nan")}, "temperature"),
    ],
)
def test_chat_errors_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat(body)

    assert caught.value.message.startswith(f"{field} ")
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_token_budget_and_temperature_bounds_are_inclusive() -> None:
    request = chat({"messages": [USER], "max_tokens": LIMIT, "temperature": 2})

    assert (request.max_tokens, request.temperature) == (LIMIT, 2.0)


def test_responses_string_input_is_one_user_message_after_instructions() -> None:
    request = responses({"input": "hello", "instructions": "be brief", "max_output_tokens": 7})

    assert request.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    )
    assert request.max_tokens == 7


def test_responses_list_input_is_validated_like_messages() -> None:
    request = responses({"input": [USER]})

    assert request.messages == (USER,)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "input"),
        ({"input": 5}, "input"),
        ({"input": [{"role": "user"}]}, "input[0].content"),
        ({"input": "x", "instructions": 3}, "instructions"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": 3}, "temperature"),
    ],
)
def test_responses_errors_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        responses(body)

    assert caught.value.message.startswith(f"{field} ")


def test_fault_key_ignores_sampling_fields_and_key_order() -> None:
    first = chat({"messages": [{"role": "user", "content": "q"}], "max_tokens": 3})
    second = chat({"messages": [{"content": "q", "role": "user"}], "temperature": 0.5})

    assert first.fault_key == second.fault_key


def test_fault_key_separates_prompts_and_routes() -> None:
    body = {"messages": [USER]}
    invocations = chat(body)
    openai = parse_chat_request(body, "chat_completions", max_tokens_limit=LIMIT)
    other_prompt = chat({"messages": [{"role": "user", "content": "bye"}]})

    assert len({invocations.fault_key, openai.fault_key, other_prompt.fault_key}) == 3


def test_responses_fault_key_includes_instructions() -> None:
    plain = responses({"input": "x"})
    instructed = responses({"input": "x", "instructions": "y"})

    assert plain.fault_key != instructed.fault_key
    assert plain.fault_key.startswith("responses:")


@pytest.mark.parametrize("body", [{}, {"model": 3}, {"model": ""}])
def test_openai_routes_need_a_model_name(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest, match=r"^model "):
        endpoint_from_body(body)


def test_model_name_is_the_endpoint() -> None:
    assert endpoint_from_body({"model": "echo"}) == "echo"


def test_tools_are_read_in_each_shape_and_narrowed_by_tool_choice() -> None:
    nested = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
              {"type": "function", "function": {"name": "b"}}]  # fmt: skip
    chat = parse_chat_request({"messages": [USER], "tools": nested}, "x", max_tokens_limit=LIMIT)
    assert [tool.name for tool in chat.tools] == ["a", "b"]
    forced = {"messages": [USER], "tools": nested,
              "tool_choice": {"type": "function", "function": {"name": "b"}}}  # fmt: skip
    assert [t.name for t in parse_chat_request(forced, "x", max_tokens_limit=LIMIT).tools] == ["b"]
    flat = {"input": "hi", "tools": [{"type": "function", "name": "a"}], "tool_choice": "none"}
    assert parse_responses_request(flat, max_tokens_limit=LIMIT).tools == ()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tools": {"name": "a"}}, "tools must be a list"),
        ({"tools": [{"type": "function", "function": {}}]}, r"tools\[0\] must be a function"),
        ({"tools": [{"type": "function", "function": {"name": "a", "parameters": []}}]},
         r"tools\[0\]\.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "a"}}],
          "tool_choice": {"type": "function", "function": {"name": "z"}}}, "tool_choice"),
    ],
)  # fmt: skip
def test_bad_tools_are_400s_naming_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_chat_request({"messages": [USER], **changes}, "x", max_tokens_limit=LIMIT)
