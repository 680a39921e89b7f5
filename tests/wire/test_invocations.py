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


def test_reasoning_parts_and_fields_are_the_rows_reasoning() -> None:
    # Databricks' Claude with thinking: a reasoning part before the text.
    payload = {
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": [
            {"type": "reasoning", "summary": [
                {"type": "summary_text", "text": "Weigh the options.", "signature": "x"},
                {"type": "summary_text", "text": "Pick one."},
            ]},
            {"type": "text", "text": "Option B."},
        ]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45,
                  "completion_tokens_details": {"reasoning_tokens": 31}},
    }  # fmt: skip
    completion = invocations.parse(payload)
    assert completion.text == "Option B."
    assert completion.reasoning == "Weigh the options.\n\nPick one."
    assert (completion.completion_tokens, completion.reasoning_tokens) == (40, 31)
    # vLLM and llama.cpp's server: a `reasoning_content` string beside the content.
    vllm = {"choices": [{"message": {"content": "B", "reasoning_content": "Because."}}]}
    assert invocations.parse(vllm).reasoning == "Because."
    assert invocations.parse(vllm).reasoning_tokens is None
    plain = {"choices": [{"message": {"content": "B"}}]}
    assert invocations.parse(plain).reasoning is None
