"""OpenAI Responses as served: `POST /serving-endpoints/responses`, endpoint name in `model`.

The request's `input` (a string or a list of messages) and `instructions` become the model's
messages; the budget field is `max_output_tokens`. The answer is a `response` object whose
`output` holds one message (or the model's `function_call` items), after a reasoning item when
the `reasoning_item` or `reasoning` setting is on (with the model's reasoning as its summary);
an answer cut by the budget is `incomplete`.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.serving.chat_model import Message, ModelOutput, ServedImage
from pipeline.serving.errors import InvalidRequest
from pipeline.serving.formats.served_format import EMPTY_OUTPUT, ServedFormat
from pipeline.serving.settings import ServingSettings
from pipeline.serving.shapes import new_id, usage_body
from pipeline.serving.validation import (
    IncomingChat,
    chat_messages,
    fault_key,
    offered_tools,
    temperature,
    token_budget,
)

NAME = "responses"
PATH = "/serving-endpoints/responses"


def parse_responses_request(body: dict[str, Any], *, max_tokens_limit: int) -> IncomingChat:
    """Validate a Responses body; `instructions` becomes a leading system message.

    Raises InvalidRequest naming `input[i]...`, `instructions`, `max_output_tokens` or
    `temperature`.
    """
    if "input" not in body:
        raise InvalidRequest("input is required")
    raw_input = body["input"]
    turns: tuple[Message, ...]
    images: tuple[ServedImage, ...] = ()
    if isinstance(raw_input, str):
        turns = ({"role": "user", "content": raw_input},)
    else:
        turns, images = chat_messages(raw_input, "input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequest("instructions must be a string")
    system = ({"role": "system", "content": instructions},) if instructions is not None else ()
    # The fault key keeps a string input a string: "x" and [{"role": "user", ...}] differ.
    canonical_input = raw_input if isinstance(raw_input, str) else list(turns)
    return IncomingChat(
        messages=system + turns,
        max_tokens=token_budget(body, "max_output_tokens", max_tokens_limit),
        temperature=temperature(body),
        fault_key=fault_key(NAME, {"input": canonical_input, "instructions": instructions}),
        tools=offered_tools(body, nested=False),
        images=images,
    )


def response_object(
    output: ModelOutput,
    *,
    model: str,
    response_id: str,
    message_id: str,
    reasoning_id: str | None,
    created_at: int,
) -> dict[str, Any]:
    """A `response` body; a reasoning item precedes the message (or the function calls) when
    `reasoning_id` is set.

    Pure: ids and the timestamp come in as arguments. An output cut by the token budget is
    `incomplete` with reason `max_output_tokens`.
    """
    truncated = output.finish_reason == "length"
    status = "incomplete" if truncated else "completed"
    items: list[dict[str, Any]] = []
    if reasoning_id is not None:
        summary = [] if output.reasoning is None else [
            {"type": "summary_text", "text": output.reasoning}
        ]  # fmt: skip
        items.append({"type": "reasoning", "id": reasoning_id, "summary": summary})
    if output.text or not output.tool_calls:
        items.append({
            "type": "message",
            "id": message_id,
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": output.text, "annotations": []}],
        })  # fmt: skip
    items += [
        {"type": "function_call", "id": f"fc_{response_id}_{index}",
         "call_id": f"call_{response_id}_{index}", "name": name, "arguments": arguments,
         "status": "completed"}
        for index, (name, arguments) in enumerate(output.tool_calls)
    ]  # fmt: skip
    usage = usage_body(output, "input_tokens", "output_tokens", "output_tokens_details")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "model": model,
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "output": items,
        "usage": usage,
    }


def responses_success_body(
    output: ModelOutput, endpoint: str, settings: ServingSettings
) -> dict[str, Any]:
    """`response_object` with fresh ids, created now; a reasoning item if `settings` ask."""
    reasoning = settings.reasoning_item or output.reasoning is not None
    return _fresh_response(output, endpoint, with_reasoning=reasoning)


def responses_empty_body(endpoint: str) -> dict[str, Any]:
    """A valid `response` whose `output` is `[]`."""
    body = _fresh_response(EMPTY_OUTPUT, endpoint, with_reasoning=False)
    body["output"] = []
    return body


def _fresh_response(output: ModelOutput, endpoint: str, *, with_reasoning: bool) -> dict[str, Any]:
    return response_object(
        output,
        model=endpoint,
        response_id=new_id("resp_"),
        message_id=new_id("msg_"),
        reasoning_id=new_id("rs_") if with_reasoning else None,
        created_at=int(time.time()),
    )


def _parse(body: dict[str, Any], max_tokens_limit: int) -> IncomingChat:
    return parse_responses_request(body, max_tokens_limit=max_tokens_limit)


FORMAT = ServedFormat(
    name=NAME,
    paths=(PATH,),
    parse=_parse,
    success_body=responses_success_body,
    empty_body=responses_empty_body,
)
