"""OpenAI Chat Completions as served, on two routes with one body and one answer.

- `POST /serving-endpoints/chat/completions`: Databricks' OpenAI-compatible route; the endpoint
  name is the body's `model`.
- `POST /openai/deployments/{name}/chat/completions`: Azure OpenAI's route; the deployment in the
  path is the endpoint name (a `model` in the body is ignored, as Azure does), clients send
  the token as `api-key` (see `auth.py`), and `?api-version=` is required, as Azure's is.

Both count as `chat_completions` in /stats and share fault keys. The body parser and the
`chat.completion` answer are also Databricks `invocations`' (see `invocations.py`).
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.serving.chat_model import ModelOutput
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

NAME = "chat_completions"
OPENAI_PATH = "/serving-endpoints/chat/completions"
AZURE_PATH = "/openai/deployments/{name}/chat/completions"


def parse_chat_request(
    body: dict[str, Any], format_name: str, *, max_tokens_limit: int
) -> IncomingChat:
    """Validate a Chat Completions body; `format_name` prefixes the fault key.

    Raises InvalidRequest naming `messages[i]...`, `max_tokens` or `temperature`.
    """
    if "messages" not in body:
        raise InvalidRequest("messages is required")
    messages, images = chat_messages(body["messages"], "messages")
    return IncomingChat(
        messages=messages,
        max_tokens=token_budget(body, "max_tokens", max_tokens_limit),
        temperature=temperature(body),
        fault_key=fault_key(format_name, list(messages)),
        tools=offered_tools(body, nested=True),
        images=images,
    )


def chat_completion(
    output: ModelOutput, *, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """A `chat.completion` body. Pure: the id and timestamp come in as arguments.

    Tool calls go in `message.tool_calls` (content null when there is no text, as OpenAI
    answers); reasoning makes the content a list, a `reasoning` part before the text, as
    Databricks serves a model with thinking on, and is counted in
    `usage.completion_tokens_details`.
    """
    message: dict[str, Any] = {"role": "assistant", "content": output.text}
    if output.tool_calls:
        message["content"] = output.text or None
        message["tool_calls"] = [
            {"id": f"{completion_id}-call{index}", "type": "function",
             "function": {"name": name, "arguments": arguments}}
            for index, (name, arguments) in enumerate(output.tool_calls)
        ]  # fmt: skip
    if output.reasoning is not None:
        summary = [{"type": "summary_text", "text": output.reasoning}]
        message["content"] = [
            {"type": "reasoning", "summary": summary},
            *([{"type": "text", "text": output.text}] if output.text else []),
        ]
    usage = usage_body(output, "prompt_tokens", "completion_tokens", "completion_tokens_details")
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": output.finish_reason}],
        "usage": usage,
    }


def chat_success_body(
    output: ModelOutput, endpoint: str, _settings: ServingSettings
) -> dict[str, Any]:
    """`chat_completion` with a fresh `chatcmpl-` id, created now (no setting changes it)."""
    return _fresh_chat_completion(output, endpoint)


def chat_empty_body(endpoint: str) -> dict[str, Any]:
    """A valid `chat.completion` whose `choices` is `[]`."""
    body = _fresh_chat_completion(EMPTY_OUTPUT, endpoint)
    body["choices"] = []
    return body


def _parse(body: dict[str, Any], max_tokens_limit: int) -> IncomingChat:
    return parse_chat_request(body, NAME, max_tokens_limit=max_tokens_limit)


def _fresh_chat_completion(output: ModelOutput, endpoint: str) -> dict[str, Any]:
    return chat_completion(
        output, model=endpoint, completion_id=new_id("chatcmpl-"), created=int(time.time())
    )


FORMAT = ServedFormat(
    name=NAME,
    paths=(OPENAI_PATH, AZURE_PATH),
    # Azure refuses a request without the API version it is written against.
    required_query={AZURE_PATH: ("api-version",)},
    parse=_parse,
    success_body=chat_success_body,
    empty_body=chat_empty_body,
)
