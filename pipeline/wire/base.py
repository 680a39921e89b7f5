"""What a wire format is: everything format-specific about talking to one kind of endpoint.

A format owns its URL, its auth header, the body fields it sets itself (which `request.extra`
may not override), how it asks for structured output, how it reads a 2xx answer and an error
body, and which response headers announce the endpoint's limits. Nothing else in the package
knows any of these; a new format is one subclass plus `pipeline.wire.register` (see the README's
"Where to change what"). Pure: no HTTP, no Spark.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

from pipeline.core.chat import ChatRequest, Completion
from pipeline.core.structured import OutputFormat
from pipeline.core.tools import CHOICES, Tool


class Endpoint(Protocol):
    """What a format needs to know of `endpoint` (an `EndpointConfig`)."""

    @property
    def name(self) -> str: ...

    @property
    def serving_base_url(self) -> str: ...


class JobRequest(Protocol):
    """What a format needs to know of `request` (a `RequestConfig`): what every request of the
    job carries besides its messages and sampling fields."""

    @property
    def extra(self) -> Mapping[str, Any]: ...

    @property
    def output_format(self) -> OutputFormat | None: ...

    @property
    def tools(self) -> Sequence[Tool]: ...

    @property
    def tool_choice(self) -> str | None: ...


# `json.dumps` with any argument builds an encoder per call: one serves every body.
_ENCODER = json.JSONEncoder(ensure_ascii=False)


class WireFormat:
    """One wire format. Subclasses set `name` and implement `url`, `body` and `parse`; the
    rest has the defaults most chat APIs share (Bearer token, Databricks/OpenAI error bodies,
    `x-ratelimit-limit-*` headers). Instances are stateless and picklable: Spark ships them to
    the executors inside the task's settings, so a format registered on the driver works there.
    """

    name: ClassVar[str]
    # Body fields the format sets itself; `request.extra` may not override them.
    reserved_fields: ClassVar[frozenset[str]] = frozenset()
    # Response header → the endpoint limit it announces (per minute).
    limit_headers: ClassVar[Mapping[str, str]] = {
        "x-ratelimit-limit-requests": "endpoint_requests_per_minute",
        "x-ratelimit-limit-tokens": "endpoint_tokens_per_minute",
    }

    def url(self, endpoint: Endpoint) -> str:
        raise NotImplementedError

    def body(
        self, request: ChatRequest, endpoint: Endpoint, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        raise NotImplementedError

    def encoded_body(
        self, request: ChatRequest, endpoint: Endpoint, extra: Mapping[str, Any]
    ) -> bytes:
        """`body`, as the bytes sent."""
        return _ENCODER.encode(self.body(request, endpoint, extra)).encode("utf-8")

    def parse(self, payload: Any) -> Completion:
        """A 2xx JSON answer → Completion.

        Raises:
            MalformedResponse: the answer lacks what a completion needs.
        """
        raise NotImplementedError

    def format_fields(self, output: OutputFormat) -> dict[str, Any]:
        """The body fields that ask for structured output `output`."""
        raise NotImplementedError

    def tool_fields(self, tools: Sequence[Tool], tool_choice: str | None) -> dict[str, Any]:
        """The body fields that offer `tools`: Chat Completions' shape, which Databricks
        `invocations` shares (`{"type": "function", "function": {...}}`, a forced tool as
        `{"type": "function", "function": {"name": ...}}`)."""
        fields: dict[str, Any] = {
            "tools": [{"type": "function", "function": tool.definition()} for tool in tools]
        }
        if tool_choice is not None:
            fields["tool_choice"] = (
                tool_choice if tool_choice in CHOICES
                else {"type": "function", "function": {"name": tool_choice}}
            )  # fmt: skip
        return fields

    def auth_headers(self, token: str) -> dict[str, str]:
        """The headers that carry `token` under `endpoint.auth: bearer` (sent with each request:
        a renewed token replaces it); the other schemes are the endpoint's (see
        `EndpointConfig.auth_headers`)."""
        return {"Authorization": f"Bearer {token}"}

    def error_body(self, text: str) -> tuple[str | None, str | None]:
        """(error code, message) from a non-2xx body: Databricks `{"error_code", "message"}`,
        OpenAI `{"error": {"code"|"type", "message"}}`, anything else as short text."""
        try:
            payload = json.loads(text)
        except ValueError:
            return None, text.strip() or None
        if not isinstance(payload, dict):
            return None, text.strip() or None
        nested = payload.get("error")
        if isinstance(nested, dict):
            code = nested.get("code") or nested.get("type")
            return (str(code) if code else None), _str_or_none(nested.get("message"))
        code = payload.get("error_code")
        return (str(code) if code else None), _str_or_none(payload.get("message") or nested)

    def extra_fields(self, request: JobRequest) -> dict[str, Any]:
        """The fields every request of a job carries besides messages and sampling fields:
        `request.extra`, and the structured-output ask and the tools as this format takes
        them."""
        fields = dict(request.extra)
        if request.output_format is not None:
            fields.update(self.format_fields(request.output_format))
        if request.tools:
            fields.update(self.tool_fields(request.tools, request.tool_choice))
        return fields

    def __repr__(self) -> str:
        return f"<wire format {self.name}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
