"""What a served format is: everything the server knows about one wire format, in one value.

A format owns its route paths, how its body becomes an `IncomingChat` (fields, token-budget name,
fault key), its success body and its empty body (the `empty_choices` fault). The request pipeline
(`model_route.py`), the fault replies and /stats only hold a `ServedFormat`; none of them branches
on a format's name. The client side's counterpart is `pipeline.wire.WireFormat`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.serving.chat_model import ModelOutput
from pipeline.serving.settings import ServingSettings
from pipeline.serving.validation import IncomingChat

# The route segment that names the endpoint: a path with `{name}` in it takes the endpoint name
# from the path (an unknown name is 404 whatever the body is); a path without it takes the name
# from the body's `model`.
ENDPOINT_SEGMENT = "name"

# The output an empty body is built from: a valid answer with nothing in it.
EMPTY_OUTPUT = ModelOutput(text="", finish_reason="stop", prompt_tokens=0, completion_tokens=0)

# (decoded JSON object, max_tokens_limit) -> the validated request; raises InvalidRequest.
Parser = Callable[[dict[str, Any], int], IncomingChat]
# (model output, endpoint name, settings) -> the 200 body, with fresh ids and timestamps.
SuccessBody = Callable[[ModelOutput, str, ServingSettings], dict[str, Any]]
# endpoint name -> a valid 200 body with no answer in it (`choices` or `output` empty).
EmptyBody = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class ServedFormat:
    """One wire format as the server answers it.

    `name` is the format's key in /stats `by_route` and the prefix of its fault keys (so the same
    prompt on two formats is two distinct requests). `paths` are aiohttp route patterns, each
    POST-only; see ENDPOINT_SEGMENT for where the endpoint name comes from.
    """

    name: str
    paths: tuple[str, ...]
    parse: Parser
    success_body: SuccessBody
    empty_body: EmptyBody
    # Path -> the query parameters a request on it must carry (400 without them).
    required_query: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
