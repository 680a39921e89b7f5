from pipeline.core.chat import ChatRequest, Message
from pipeline.core.config import EndpointConfig
from pipeline.wire import wire_for

chat_completions = wire_for("chat_completions")

ENDPOINT = EndpointConfig(name="databricks-claude", host="https://ws.example.com")


def test_endpoint_name_goes_in_model() -> None:
    request = ChatRequest("r1", (Message("system", "s"), Message("user", "u")), 256, None)
    assert (
        chat_completions.url(ENDPOINT)
        == "https://ws.example.com/serving-endpoints/chat/completions"
    )
    assert chat_completions.body(request, ENDPOINT, {}) == {
        "model": "databricks-claude",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "max_tokens": 256,
    }


def test_base_url_for_any_openai_compatible_server() -> None:
    endpoint = EndpointConfig(name="m", base_url="http://127.0.0.1:9/v1")
    assert chat_completions.url(endpoint) == "http://127.0.0.1:9/v1/chat/completions"


def test_parse_length_finish() -> None:
    payload = {
        "id": "chatcmpl-1",
        "choices": [{"message": {"content": "cut"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    completion = chat_completions.parse(payload)
    assert (completion.finish_reason, completion.total_tokens, completion.response_id) == (
        "length",
        4,
        "chatcmpl-1",
    )
