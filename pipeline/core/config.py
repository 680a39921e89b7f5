"""Job configuration: the sections of a job's YAML file as frozen, validated dataclasses.

Every check names the offending key (`limits.concurrency`) and what would be accepted, and runs
on construction, so a section built in code is held to the same rules as one read from YAML.
Defaults live next to their field. The token itself is never part of the configuration: only the
name of the environment variable that holds it.

Plain data only: reading the file, the environment and the Databricks SDK is the loader's
(`pipeline.core.loader`), so `pipeline.core.secrets` and the executors can import these classes
without it. The `source` and `sink` sections live in `pipeline.core.io_config` and are
re-exported here, with the path helpers, as part of the one config vocabulary.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from pipeline.core.checks import at_least, check_url
from pipeline.core.errors import ConfigError
from pipeline.core.io_config import (
    MIN_LEASE_TTL_S,
    OnChange,
    SinkConfig,
    SourceConfig,
    TableFormat,
    WriteMode,
    absolute,
    check_sink_apart,
    normal_path,
    template_fields,
)
from pipeline.core.structured import OutputFormat, check_schema
from pipeline.core.tools import Tool, check_tools
from pipeline.wire import WireFormat, wire_for
from pipeline.wire import names as wire_names

__all__ = [
    "MIN_LEASE_TTL_S",
    "ApiName",
    "EndpointConfig",
    "JobConfig",
    "LimitsConfig",
    "OnChange",
    "PricingConfig",
    "RequestConfig",
    "SinkConfig",
    "SourceConfig",
    "TableFormat",
    "WriteMode",
    "absolute",
    "normal_path",
    "template_fields",
]

# A registered wire format (see `pipeline.wire`): invocations, chat_completions, responses, ...
ApiName = str
AuthScheme = Literal["bearer", "basic", "api_key_header", "none"]
# RFC 9110's token: the characters a header name may hold.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    api: ApiName = "invocations"
    # Workspace URL; defaults to the DATABRICKS_HOST environment variable (read by the loader).
    host: str | None = None
    # Any OpenAI-compatible server; defaults to {host}/serving-endpoints.
    base_url: str | None = None
    # Environment variable holding the token; null sends no credentials.
    token_env: str | None = "DATABRICKS_TOKEN"
    # How the token is sent: bearer (`Authorization: Bearer`), basic (HTTP Basic with user
    # `basic_user`, as `curl -u token:$DATABRICKS_TOKEN`), api_key_header (the token alone in
    # header `api_key_header`: Azure OpenAI's `api-key`, Anthropic's `x-api-key`), none.
    auth: AuthScheme = "bearer"
    basic_user: str = "token"
    api_key_header: str = "api-key"
    # More headers for every request: header name -> the environment variable holding its
    # value (never the value: each is kept and redacted like the token).
    headers: Mapping[str, str] = field(default_factory=dict)
    # Query parameters for every request's URL, e.g. Azure's `api-version: "2024-10-21"`.
    query: Mapping[str, str] = field(default_factory=dict)
    verify_tls: bool = True
    # The format `api` names, resolved here on the driver: Spark ships it to the executors with
    # the config, so a format registered in the driver's process works there too.
    wire: WireFormat = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("endpoint.name", "must not be empty")
        if self.api not in wire_names():
            raise ConfigError(
                "endpoint.api", f"must be one of {', '.join(wire_names())}, got {self.api!r}"
            )
        object.__setattr__(self, "wire", wire_for(self.api))
        if self.base_url is None and self.host is None:
            raise ConfigError(
                "endpoint.host", "missing: set endpoint.host, endpoint.base_url or DATABRICKS_HOST"
            )
        for key in ("host", "base_url"):
            value = getattr(self, key)
            if value is not None:
                check_url(f"endpoint.{key}", value)
                if urlsplit(value).query:
                    raise ConfigError(
                        f"endpoint.{key}",
                        f"has a query ({value!r}): the format adds its path after the URL; "
                        "put query parameters in endpoint.query",
                    )
        named = [(f"endpoint.headers.{name}", name) for name in self.headers]
        for key, name in [*named, ("endpoint.api_key_header", self.api_key_header)]:
            if not _HEADER_NAME.match(name):
                raise ConfigError(key, f"is not a valid HTTP header name: {name!r}")
        taken = {name.lower() for name in self.auth_header_names}
        for name in self.headers:
            if name.lower() in taken or name.lower() in ("content-type", "content-length", "host"):
                raise ConfigError(
                    f"endpoint.headers.{name}",
                    "is set by the pipeline (the token goes through endpoint.auth)",
                )

    @property
    def auth_header_names(self) -> tuple[str, ...]:
        """The headers `endpoint.auth` sends the token in."""
        if self.auth == "none" or self.token_env is None:
            return ()
        return (self.api_key_header,) if self.auth == "api_key_header" else ("Authorization",)

    def auth_headers(self, token: str) -> dict[str, str]:
        """The headers that carry `token` under `endpoint.auth` (bearer: the wire format's own,
        see `WireFormat.auth_headers`)."""
        if self.auth == "none":
            return {}
        if self.auth == "api_key_header":
            return {self.api_key_header: token}
        if self.auth == "basic":
            pair = base64.b64encode(f"{self.basic_user}:{token}".encode()).decode("ascii")
            return {"Authorization": f"Basic {pair}"}
        return self.wire.auth_headers(token)

    @property
    def serving_base_url(self) -> str:
        """`base_url`, or `{host}/serving-endpoints`, without a trailing slash."""
        if self.base_url is not None:
            return self.base_url.rstrip("/")
        assert self.host is not None  # guaranteed by __post_init__
        return self.host.rstrip("/") + "/serving-endpoints"


@dataclass(frozen=True)
class RequestConfig:
    max_tokens: int | None = 256
    temperature: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Identical requests in one run are sent once; every row that asked gets the answer.
    dedupe: bool = True
    # Structured output (see `pipeline.core.structured`): json_object, or json_schema + json_schema.
    response_format: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: Mapping[str, Any] | None = None
    schema_name: str = "output"
    # Functions the model may call (see `pipeline.core.tools`): each call lands in the
    # `tool_calls` column, its arguments checked against the tool's `parameters`.
    tools: tuple[Tool, ...] = ()
    # auto | none | required | a tool's name (that tool, always); null: the endpoint's default.
    tool_choice: str | None = None

    def __post_init__(self) -> None:
        check_tools(self.tools, self.tool_choice)
        if self.max_tokens is not None:
            at_least("request.max_tokens", self.max_tokens, 1)
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(
                "request.temperature", f"must be within [0, 2], got {self.temperature}"
            )
        if self.response_format == "json_schema":
            if not self.json_schema:
                raise ConfigError(
                    "request.json_schema",
                    "is required with response_format json_schema: the JSON Schema every "
                    "answer must match",
                )
            problem = check_schema(self.json_schema)
            if problem is not None:
                raise ConfigError("request.json_schema", f"is not a valid JSON Schema: {problem}")
        elif self.json_schema is not None:
            raise ConfigError(
                "request.json_schema", "is only used with response_format json_schema"
            )

    @property
    def output_format(self) -> OutputFormat | None:
        """What every answer must be, or None for free text."""
        if self.response_format == "text":
            return None
        return OutputFormat(self.response_format, self.json_schema, self.schema_name)


@dataclass(frozen=True)
class LimitsConfig:
    # In-flight requests per Spark task.
    concurrency: int = 32
    # Whole-job budgets, split across the tasks that run at once. None: unlimited.
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    # Find the rate the endpoint admits from its 429s and rate-limit headers (never above
    # requests_per_minute); false: send as fast as concurrency allows, within the budgets.
    adaptive: bool = True
    max_attempts: int = 6
    # Stop the job after this many answers that every row would get (401/403, 404) in a task.
    max_fatal_errors: int = 3
    # Exit non-zero when more than this share of rows end in error (null: never).
    max_error_fraction: float | None = None
    # Total time one HTTP attempt may take, and the part of it spent connecting.
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    # Time one row may spend across all its attempts and waits.
    row_deadline_s: float = 900.0
    # Exponential backoff with full jitter between attempts, unless the server says Retry-After.
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    # A Retry-After longer than this ends the row as an error instead of waiting.
    retry_after_cap_s: float = 60.0
    # The address Spark tasks reach this process at, for the job's budget, progress and token
    # server. null: loopback on a local master, else this machine's address on the route to
    # the cluster (under Spark Connect, to the Connect server).
    driver_address: str | None = None

    def __post_init__(self) -> None:
        at_least("limits.concurrency", self.concurrency, 1)
        if self.driver_address is not None and not self.driver_address.strip():
            raise ConfigError("limits.driver_address", "must not be empty (null: found)")
        at_least("limits.max_attempts", self.max_attempts, 1)
        at_least("limits.max_fatal_errors", self.max_fatal_errors, 1)
        fraction = self.max_error_fraction
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ConfigError("limits.max_error_fraction", f"must be within [0, 1], got {fraction}")
        for key in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"limits.{key}", f"must be > 0 or null, got {value}")
        for key in (
            "timeout_s",
            "connect_timeout_s",
            "row_deadline_s",
            "backoff_initial_s",
            "backoff_max_s",
            "retry_after_cap_s",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(f"limits.{key}", f"must be > 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class PricingConfig:
    """Prices per million tokens, for the estimated cost in dry runs and run summaries."""

    input_per_million: float | None = None
    output_per_million: float | None = None
    currency: str = "USD"

    def __post_init__(self) -> None:
        for key in ("input_per_million", "output_per_million"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"pricing.{key}", f"must be >= 0, got {value}")

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        """What these tokens cost; None when no price is set."""
        if self.input_per_million is None and self.output_per_million is None:
            return None
        return round(
            (prompt_tokens * (self.input_per_million or 0.0)
             + completion_tokens * (self.output_per_million or 0.0)) / 1e6,
            6,
        )  # fmt: skip


@dataclass(frozen=True)
class JobConfig:
    source: SourceConfig
    endpoint: EndpointConfig
    sink: SinkConfig
    request: RequestConfig = field(default_factory=RequestConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    pricing: PricingConfig = field(default_factory=PricingConfig)

    def __post_init__(self) -> None:
        check_sink_apart(self.source, self.sink)
        clash = sorted(self.endpoint.wire.reserved_fields & set(self.request.extra))
        if clash:
            raise ConfigError(
                f"request.extra.{clash[0]}",
                f"is set by the pipeline for endpoint.api {self.endpoint.api}; "
                "use request.* or source.*",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, safe to log or save: it never holds a token."""
        data = dataclasses.asdict(self)
        del data["endpoint"]["wire"]
        return data

