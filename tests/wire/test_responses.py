import pytest

from pipeline.core.chat import ChatRequest, Message
from pipeline.core.config import EndpointConfig
from pipeline.core.errors import MalformedResponse
from pipeline.wire import wire_for

responses = wire_for("responses")

ENDPOINT = EndpointConfig(name="databricks-gpt-5", host="https://ws.example.com")


def message(text: str) -> dict:
    return {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }


def test_body_uses_input_and_max_output_tokens() -> None:
    request = ChatRequest("r1", (Message("system", "s"), Message("user", "u")), 256, 0.0)
    assert responses.url(ENDPOINT) == "https://ws.example.com/serving-endpoints/responses"
    assert responses.body(request, ENDPOINT, {}) == {
        "model": "databricks-gpt-5",
        "input": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "max_output_tokens": 256,
        "temperature": 0.0,
    }


def test_text_from_message_items_after_reasoning() -> None:
    payload = {
        "id": "resp_1",
        "model": "databricks-gpt-5",
        "status": "completed",
        "output": [{"type": "reasoning", "summary": []}, message("Hello"), message(" world")],
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
    }
    completion = responses.parse(payload)
    assert completion.text == "Hello world"
    assert (completion.finish_reason, completion.prompt_tokens, completion.completion_tokens) == (
        "stop",
        5,
        2,
    )
    assert completion.total_tokens == 7


def test_incomplete_maps_to_length() -> None:
    payload = {
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [message("Hel")],
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    completion = responses.parse(payload)
    assert (completion.finish_reason, completion.total_tokens) == ("length", 6)


@pytest.mark.parametrize("payload", [None, {"output": None}, {"output": [{"type": "reasoning"}]}])
def test_no_message_item_is_malformed(payload: object) -> None:
    with pytest.raises(MalformedResponse):
        responses.parse(payload)


def test_reasoning_items_give_their_summaries_and_text() -> None:
    payload = {
        "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "S"}],
             "content": [{"type": "reasoning_text", "text": "T"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "answer"}]},
        ],
        "usage": {"input_tokens": 3, "output_tokens": 9, "output_tokens_details":
                  {"reasoning_tokens": 7}},
    }  # fmt: skip
    completion = responses.parse(payload)
    assert (completion.text, completion.reasoning) == ("answer", "S\n\nT")
    assert completion.reasoning_tokens == 7
    payload["output"][0] = {"type": "reasoning", "id": "rs_1", "summary": []}
    assert responses.parse(payload).reasoning is None
