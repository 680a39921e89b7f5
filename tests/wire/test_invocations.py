import pytest

from pipeline.core.chat import ChatRequest, Message
from pipeline.core.config import EndpointConfig
from pipeline.core.errors import MalformedResponse
from pipeline.wire import wire_for

invocations = wire_for("invocations")

ENDPOINT = EndpointConfig(name="databricks-claude", host="https://ws.example.com/")
REQUEST = ChatRequest("r1", (Message("user", "What is a mixture of experts model?"),), 100, 0.1)


def test_url_and_body_match_the_databricks_rest_shape() -> None:
    assert invocations.url(ENDPOINT) == (
        "https://ws.example.com/serving-endpoints/databricks-claude/invocations"
    )
    assert invocations.body(REQUEST, ENDPOINT, {"top_p": 0.5}) == {
        "messages": [{"role": "user", "content": "What is a mixture of experts model?"}],
        "max_tokens": 100,
        "temperature": 0.1,
        "top_p": 0.5,
    }


def test_unset_parameters_are_left_out() -> None:
    request = ChatRequest("r1", (Message("user", "x"),), None, None)
    assert invocations.body(request, ENDPOINT, {}) == {
        "messages": [{"role": "user", "content": "x"}]
    }


def test_parse_documented_response() -> None:
    payload = {
        "model": "databricks-claude-sonnet-4-5",
        "choices": [
            {
                "message": {"role": "assistant", "content": "A MoE..."},
                "index": 0,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 74, "total_tokens": 81},
        "object": "chat.completion",
        "id": None,
        "created": 1698824353,
    }
    completion = invocations.parse(payload)
    assert (completion.text, completion.finish_reason) == ("A MoE...", "stop")
    assert (completion.prompt_tokens, completion.completion_tokens, completion.total_tokens) == (
        7,
        74,
        81,
    )
    assert completion.model == "databricks-claude-sonnet-4-5"
    assert completion.response_id is None


def test_content_parts_are_joined() -> None:
    payload = {
        "choices": [
            {"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
        ]
    }
    assert invocations.parse(payload).text == "ab"


@pytest.mark.parametrize("payload", [[], {}, {"choices": []}, {"choices": [{"index": 0}]}])
def test_body_without_choices_is_malformed(payload: object) -> None:
    with pytest.raises(MalformedResponse):
        invocations.parse(payload)
