from __future__ import annotations

import re

import pytest

from pipeline.serving.chat_model import ModelOutput
from pipeline.serving.formats.chat_completions import chat_completion
from pipeline.serving.formats.responses import response_object
from pipeline.serving.shapes import error_body, error_code_for_status, new_id, retry_after_header

STOPPED = ModelOutput(text="a b", finish_reason="stop", prompt_tokens=5, completion_tokens=2)
CUT = ModelOutput(text="a b", finish_reason="length", prompt_tokens=4, completion_tokens=2)


def test_chat_completion_body() -> None:
    body = chat_completion(STOPPED, model="echo", completion_id="chatcmpl-1", created=1700)

    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700,
        "model": "echo",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a b"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def test_chat_completion_carries_length_finish_reason() -> None:
    body = chat_completion(CUT, model="echo", completion_id="chatcmpl-1", created=1)

    assert body["choices"][0]["finish_reason"] == "length"


def test_completed_response_without_reasoning() -> None:
    body = response_object(
        STOPPED, model="echo", response_id="resp_1", message_id="msg_1", reasoning_id=None,
        created_at=1700,
    )

    assert body == {
        "id": "resp_1",
        "object": "response",
        "created_at": 1700,
        "model": "echo",
        "status": "completed",
        "incomplete_details": None,
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "a b", "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
    }


def test_truncated_response_is_incomplete_and_reasoning_comes_first() -> None:
    body = response_object(
        CUT, model="echo", response_id="resp_1", message_id="msg_1", reasoning_id="rs_1",
        created_at=1,
    )

    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0] == {"type": "reasoning", "id": "rs_1", "summary": []}
    assert (body["output"][1]["type"], body["output"][1]["status"]) == ("message", "incomplete")
    assert len(body["output"]) == 2


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "REQUEST_LIMIT_EXCEEDED"),
        (500, "INTERNAL_ERROR"),
        (502, "TEMPORARILY_UNAVAILABLE"),
        (503, "TEMPORARILY_UNAVAILABLE"),
        (504, "TEMPORARILY_UNAVAILABLE"),
        (400, "BAD_REQUEST"),
        (409, "BAD_REQUEST"),
    ],
)
def test_error_code_for_status(status: int, code: str) -> None:
    assert error_code_for_status(status) == code


def test_error_body() -> None:
    assert error_body("PERMISSION_DENIED", "no") == {
        "error_code": "PERMISSION_DENIED",
        "message": "no",
    }


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.01, "0.01"), (2.0, "2"), (1.5, "1.5"), (0.0, "0"), (1e-5, "0.00001"), (30, "30")],
)
def test_retry_after_header_is_plain_decimal(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


def test_new_ids_carry_prefix_and_are_unique() -> None:
    first, second = new_id("resp_"), new_id("resp_")

    assert re.fullmatch(r"resp_[0-9a-f]{24}", first)
    assert first != second
