"""The three wire formats of Databricks Model Serving, one module each.

Each module builds the request body for a `ChatRequest` and parses a 2xx JSON answer into a
`Completion`. Pure: no HTTP, no Spark. `wire_for(api)` picks the module by the config's
`endpoint.api`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from pipeline.core.chat import ChatRequest, Completion
from pipeline.core.config import ApiName, EndpointConfig
from pipeline.core.structured import OutputFormat
from pipeline.wire import chat_completions, invocations, responses


class WireFormat(Protocol):
    def url(self, endpoint: EndpointConfig) -> str: ...

    def body(
        self, request: ChatRequest, endpoint: EndpointConfig, extra: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    def parse(self, payload: Any) -> Completion: ...

    def format_fields(self, output: OutputFormat) -> dict[str, Any]: ...


_FORMATS: dict[str, WireFormat] = {
    "invocations": invocations,
    "chat_completions": chat_completions,
    "responses": responses,
}


def wire_for(api: ApiName) -> WireFormat:
    """The wire format module for `endpoint.api`."""
    return _FORMATS[api]


def body_fields(
    api: ApiName, extra: Mapping[str, Any], output: OutputFormat | None
) -> dict[str, Any]:
    """The body fields every request of a job carries besides the messages and sampling
    fields: `request.extra`, and the response format as `api` takes it."""
    fields = dict(extra)
    if output is not None:
        fields.update(wire_for(api).format_fields(output))
    return fields
