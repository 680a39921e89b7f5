"""Databricks `POST /serving-endpoints/{name}/invocations`, as served for chat endpoints.

The endpoint name is in the path (an unknown one is 404 before the body is read). The body and
the answer are Chat Completions' (see `chat_completions.py`); only the name differs, so a
prompt sent here and to `/chat/completions` are two distinct requests to the fault plan.
"""

from __future__ import annotations

from typing import Any

from pipeline.serving.formats.chat_completions import (
    chat_empty_body,
    chat_success_body,
    parse_chat_request,
)
from pipeline.serving.formats.served_format import ServedFormat
from pipeline.serving.validation import IncomingChat

NAME = "invocations"
PATH = "/serving-endpoints/{name}/invocations"


def _parse(body: dict[str, Any], max_tokens_limit: int) -> IncomingChat:
    return parse_chat_request(body, NAME, max_tokens_limit=max_tokens_limit)


FORMAT = ServedFormat(
    name=NAME,
    paths=(PATH,),
    parse=_parse,
    success_body=chat_success_body,
    empty_body=chat_empty_body,
)
