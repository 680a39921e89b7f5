"""Function tools: config checks, each wire format's shape both ways, and calls checked, then
end to end against the local endpoint, whose echo model calls the first tool it is offered."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from pipeline.core.chat import ChatRequest, Completion
from pipeline.core.config import EndpointConfig, JobConfig, RequestConfig, SinkConfig, SourceConfig
from pipeline.core.errors import ConfigError
from pipeline.core.prompts import RequestBuilder
from pipeline.core.structured import InvalidOutput
from pipeline.core.tools import Tool, ToolCall, check_calls
from pipeline.http.answers import check_output
from pipeline.serving.process import LocalEndpoint
from pipeline.wire import wire_for
from tests.test_client import send, settings

WEATHER = Tool(
    name="get_weather",
    description="The weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
CLOCK = Tool(name="get_time", parameters={"type": "object", "properties": {}})
ENDPOINT = EndpointConfig(name="chat", host="https://ws.example.com")


def asked(**changes: Any) -> RequestConfig:
    return RequestConfig(**{"tools": (WEATHER, CLOCK), **changes})


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "says"),
    [
        ({"tools": (Tool(name="get weather"),)}, "request.tools[0].name", "letters, digits"),
        ({"tools": (CLOCK, CLOCK)}, "request.tools[1].name", "earlier tool"),
        ({"tools": (Tool("f", parameters={"type": "objekt"}),)}, "request.tools[0].parameters",
         "not a valid JSON Schema"),
        ({"tools": (Tool("f", parameters={"type": "string"}),)}, "request.tools[0].parameters",
         "type: object"),
        ({"tools": (), "tool_choice": "auto"}, "request.tool_choice", "request.tools is empty"),
        ({"tool_choice": "get_wether"}, "request.tool_choice", "get_time, get_weather"),
    ],
)  # fmt: skip
def test_tools_the_endpoint_would_refuse_stop_the_config(
    changes: dict[str, Any], key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        asked(**changes)
    assert refused.value.key == key
    assert says in str(refused.value)


def test_tools_cannot_come_through_request_extra() -> None:
    with pytest.raises(ConfigError, match=r"request\.extra\.tools: is set by the pipeline"):
        JobConfig(
            source=SourceConfig(path="/in", prompt_column="p"),
            endpoint=ENDPOINT,
            sink=SinkConfig(path="/out"),
            request=RequestConfig(extra={"tools": []}),
        )


# --- the wire, out ---------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["invocations", "chat_completions"])
def test_chat_formats_nest_each_function_and_force_one_by_name(api: str) -> None:
    fields = wire_for(api).extra_fields(asked(tool_choice="get_time"))
    assert fields["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description":
         "The weather in a city", "parameters": dict(WEATHER.parameters or {})}},
        {"type": "function", "function": {"name": "get_time", "parameters":
         {"type": "object", "properties": {}}}},
    ]  # fmt: skip
    assert fields["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}


def test_responses_takes_flat_functions_and_a_flat_forced_tool() -> None:
    fields = wire_for("responses").extra_fields(asked(tool_choice="get_weather"))
    assert fields["tools"][0] == {
        "type": "function", "name": "get_weather", "description": "The weather in a city",
        "parameters": dict(WEATHER.parameters or {}),
    }  # fmt: skip
    assert fields["tool_choice"] == {"type": "function", "name": "get_weather"}


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_a_mode_is_sent_as_it_is(choice: str) -> None:
    for api in ("invocations", "responses"):
        assert wire_for(api).extra_fields(asked(tool_choice=choice))["tool_choice"] == choice


def test_no_tools_adds_no_field() -> None:
    assert wire_for("chat_completions").extra_fields(RequestConfig(extra={"top_p": 1})) == {
        "top_p": 1
    }


# --- the wire, in ----------------------------------------------------------------------------


def test_chat_tool_calls_are_read_and_a_stop_with_calls_is_a_tool_call() -> None:
    payload = {
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": None,
                     "tool_calls": [
                         {"id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": '{"city": "Porto"}'}},
                         {"id": "call_2", "type": "function",
                          "function": {"name": "get_time", "arguments": {"tz": "UTC"}}},
                     ]}}],
    }  # fmt: skip
    completion = wire_for("invocations").parse(payload)
    assert completion.text == ""
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall("get_weather", '{"city": "Porto"}', "call_1"),
        ToolCall("get_time", '{"tz": "UTC"}', "call_2"),  # an object argument kept as JSON
    )


def test_responses_function_call_items_are_tool_calls() -> None:
    payload = {
        "status": "completed",
        "output": [{"type": "function_call", "id": "fc_1", "call_id": "call_9",
                    "name": "get_weather", "arguments": '{"city": "Lisbon"}'}],
    }  # fmt: skip
    completion = wire_for("responses").parse(payload)
    assert (completion.text, completion.finish_reason) == ("", "tool_calls")
    assert completion.tool_calls == (ToolCall("get_weather", '{"city": "Lisbon"}', "call_9"),)


# --- calls checked ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (ToolCall("get_news", "{}"), r"tool call 0 \(get_news\) names no tool offered"),
        (ToolCall("get_weather", '{"city": '), "arguments are not JSON"),
        (ToolCall("get_weather", '["Porto"]'), "must be a JSON object, got list"),
        (ToolCall("get_weather", '{"days": 2}'), r"arguments at \$: 'city' is a required"),
        (ToolCall("get_weather", '{"city": "Porto", "days": 0}'), r"at \$\.days: 0 is less"),
    ],
)
def test_a_call_that_does_not_match_its_tool_is_refused(call: ToolCall, says: str) -> None:
    with pytest.raises(InvalidOutput, match=says):
        check_calls([WEATHER, CLOCK], [call])


def test_calls_that_match_pass_and_empty_arguments_count_as_none() -> None:
    check_calls([WEATHER, CLOCK], [ToolCall("get_weather", '{"city": "Porto"}'),
                                   ToolCall("get_time", "")])  # fmt: skip


def test_an_answer_with_calls_is_not_checked_as_structured_output() -> None:
    call = Completion("", "tool_calls", 1, 1, 2, None, None,
                      tool_calls=(ToolCall("get_time", "{}"),))  # fmt: skip
    output = RequestConfig(response_format="json_object").output_format
    assert check_output(output, [CLOCK], call) == (None, None)
    parsed, problem = check_output(output, [], call)
    assert parsed is None and problem is not None and problem.startswith("invalid_output: ")


# --- against the local endpoint --------------------------------------------------------------


@pytest.mark.parametrize("api", ["invocations", "chat_completions", "responses"])
def test_the_echo_model_calls_the_first_tool_in_every_format(
    echo: LocalEndpoint, api: str
) -> None:
    result = send(settings(echo, api, request=asked()))
    assert result.status == "ok", result.error
    assert result.completion is not None
    assert result.completion.finish_reason == "tool_calls"
    (call,) = result.completion.tool_calls
    assert call.name == "get_weather" and call.call_id
    # Drawn from the last user message: every property, typed by the schema.
    assert json.loads(call.arguments) == {"city": "one two three four", "days": 4}


@pytest.mark.parametrize("api", ["invocations", "responses"])
def test_a_forced_tool_is_the_one_called_and_none_gets_text(echo: LocalEndpoint, api: str) -> None:
    forced = send(settings(echo, api, request=asked(tool_choice="get_time")))
    assert forced.completion is not None
    assert [c.name for c in forced.completion.tool_calls] == ["get_time"]
    unused = send(settings(echo, api, request=asked(tool_choice="none")))
    assert unused.completion is not None
    assert (unused.completion.text, unused.completion.tool_calls) == ("one two three", ())


def test_arguments_that_miss_the_schema_are_an_invalid_output_row_kept(
    echo: LocalEndpoint,
) -> None:
    strict = replace(WEATHER, parameters={
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 3}},
    })  # fmt: skip
    result = send(settings(echo, "chat_completions", request=asked(tools=(strict,))))
    assert result.status == "error"
    assert result.error is not None
    assert result.error.startswith("invalid_output: tool call 0 (get_weather): arguments at $.city")
    assert result.completion is not None and result.completion.tool_calls  # paid for, kept
    assert result.attempts == 1  # the model chose it: not sent again


def test_a_request_with_tools_is_another_request() -> None:
    source = SourceConfig(path="/in", prompt_column="p")

    def fingerprint(request: RequestConfig) -> str | None:
        built = RequestBuilder(source, request, ENDPOINT).build({"p": "hello"})
        assert isinstance(built, ChatRequest)
        return built.request_hash

    plain, with_tools = fingerprint(RequestConfig()), fingerprint(asked())
    assert plain != with_tools != fingerprint(asked(tool_choice="get_time"))
