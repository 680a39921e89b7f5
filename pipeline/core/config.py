"""Job configuration: YAML → frozen, validated dataclasses, in one loader.

Every error names the offending key (`limits.concurrency`) and what would be accepted. Defaults
live next to their field. The token itself is never part of the configuration: only the name of
the environment variable that holds it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import posixpath
import re
import string
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit

import yaml

from pipeline.core.errors import ConfigError
from pipeline.core.structured import OutputFormat, check_schema
from pipeline.wire import WireFormat, wire_for
from pipeline.wire import names as wire_names

# A registered wire format (see `pipeline.wire`): invocations, chat_completions, responses, ...
ApiName = str
TableFormat = Literal["parquet", "delta"]
WriteMode = Literal["merge", "overwrite", "append", "error"]
# A path that starts with a scheme (s3://, abfss://, dbfs:/, file:) is a URI, not a local path.
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
# What a merge run does with a row whose request changed since its answer was written.
OnChange = Literal["resend", "keep"]

@dataclass(frozen=True)
class SourceConfig:
    path: str | None = None
    table: str | None = None
    format: TableFormat = "parquet"
    id_column: str | None = None
    prompt_column: str | None = None
    messages_column: str | None = None
    template: str | None = None
    system_prompt: str | None = None
    max_tokens_column: str | None = None
    temperature_column: str | None = None
    # Rows whose prompt text is longer than this are answered with an error, never sent.
    max_prompt_chars: int = 100_000
    # Repartition the input to this many Spark tasks (None: keep the source's partitioning).
    partitions: int | None = None

    def __post_init__(self) -> None:
        _exactly_one("source", self, ("path", "table"))
        _exactly_one("source", self, ("prompt_column", "messages_column", "template"))
        _at_least("source.max_prompt_chars", self.max_prompt_chars, 1)
        if self.partitions is not None:
            _at_least("source.partitions", self.partitions, 1)
        if self.template is not None:
            template_fields(self.template)  # raises ConfigError on a bad placeholder

    def input_columns(self) -> list[str]:
        """Columns the requests are built from (the id column included)."""
        named = [
            self.id_column,
            self.prompt_column,
            self.messages_column,
            self.max_tokens_column,
            self.temperature_column,
        ]
        columns = [c for c in named if c]
        if self.template is not None:
            columns += [c for c in template_fields(self.template) if c not in columns]
        return columns


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    api: ApiName = "invocations"
    # Workspace URL; defaults to the DATABRICKS_HOST environment variable (read by the loader).
    host: str | None = None
    # Any OpenAI-compatible server; defaults to {host}/serving-endpoints.
    base_url: str | None = None
    # Environment variable holding the bearer token; null sends no Authorization header.
    token_env: str | None = "DATABRICKS_TOKEN"
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
                _check_url(f"endpoint.{key}", value)

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

    def __post_init__(self) -> None:
        if self.max_tokens is not None:
            _at_least("request.max_tokens", self.max_tokens, 1)
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

    def __post_init__(self) -> None:
        _at_least("limits.concurrency", self.concurrency, 1)
        _at_least("limits.max_attempts", self.max_attempts, 1)
        _at_least("limits.max_fatal_errors", self.max_fatal_errors, 1)
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


# A lease is renewed every third of its time to live; shorter than this, a busy driver could
# miss a renewal.
MIN_LEASE_TTL_S = 30.0


@dataclass(frozen=True)
class SinkConfig:
    path: str | None = None
    table: str | None = None
    format: TableFormat = "delta"
    # merge: rows whose request_id already has a row in the sink are not sent again (resume,
    # incremental runs); overwrite | append | error: Spark's save modes.
    mode: WriteMode = "merge"
    # Rows answered and committed together; a crash loses at most the chunk in flight.
    chunk_rows: int = 1_000_000
    # merge: send rows again whose earlier row is an error, replacing that row. Only Delta
    # can replace a row, so the default (null) is true for Delta and false for Parquet.
    retry_errors: bool | None = None
    # merge: a row whose request changed since its answer (prompt, template, parameters,
    # response format, API, endpoint name) is sent again and its old row replaced (resend), or
    # its old answer is kept (keep). A Parquet sink cannot replace rows: resend stops the run
    # before sending when any row changed.
    on_change: OnChange = "resend"
    # One run at a time per sink: a run holds a lease next to the sink, renewed while it runs;
    # the lease of a run that died without releasing it expires after this long.
    lease_ttl_s: float = 600.0

    def __post_init__(self) -> None:
        _exactly_one("sink", self, ("path", "table"))
        _at_least("sink.chunk_rows", self.chunk_rows, 1)
        if self.lease_ttl_s < MIN_LEASE_TTL_S:
            raise ConfigError(
                "sink.lease_ttl_s", f"must be >= {MIN_LEASE_TTL_S:g}, got {self.lease_ttl_s:g}"
            )
        if self.mode == "merge" and self.retry_errors and self.format == "parquet":
            raise ConfigError(
                "sink.retry_errors",
                "Parquet files cannot replace an earlier error row; use sink.format=delta, "
                "or set sink.retry_errors=false to keep error rows as they are",
            )

    @property
    def retries_errors(self) -> bool:
        """Whether a merge run sends the rows whose earlier row is an error."""
        return self.format == "delta" if self.retry_errors is None else self.retry_errors


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
        _check_sink_is_not_source(self.source, self.sink)
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


def _check_sink_is_not_source(source: SourceConfig, sink: SinkConfig) -> None:
    # Writing over the input (or inside it, or around it) would destroy it or read the output
    # back as input; refused whatever the mode or format. Tables are compared again by Spark
    # (`io.check_sink_is_not_source`), which knows the current catalog and table locations.
    if source.table is not None and sink.table is not None:
        if _table_key(source.table) == _table_key(sink.table):
            raise ConfigError("sink.table", f"is the source table {source.table!r}")
    if source.path is not None and sink.path is not None:
        inner, outer = sorted((normal_path(source.path), normal_path(sink.path)), key=len)
        if outer == inner or outer.startswith(inner.rstrip("/") + "/"):
            what = "is" if outer == inner else "overlaps"
            raise ConfigError(
                "sink.path", f"{what} the source path ({sink.path!r}, source {source.path!r})"
            )


def normal_path(path: str) -> str:
    """`path` in one spelling: a local path absolute (`file:` dropped), a URI without a trailing
    slash."""
    if _URI_SCHEME.match(path) and not path.startswith("file:"):
        scheme, _, rest = path.partition(":")
        return f"{scheme.lower()}:{posixpath.normpath(rest)}"
    local = path.removeprefix("file://").removeprefix("file:")
    return os.path.abspath(local)


def _table_key(name: str) -> str:
    return name.replace("`", "").lower()


def _check_url(key: str, value: str) -> None:
    if not value.startswith(("http://", "https://")):
        raise ConfigError(key, f"must start with http:// or https://, got {value!r}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError as err:
        raise ConfigError(key, f"is not a valid URL ({err}): {value!r}") from None
    if not parts.hostname:
        raise ConfigError(key, f"has no host name: {value!r}")


def template_fields(template: str) -> list[str]:
    """Column names a template's `{column}` placeholders name, in order of first use."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError("source.template", f"is not a valid template: {err}") from err
    names: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or any(ch in name for ch in ".[]") or spec or conversion:
            raise ConfigError(
                "source.template",
                f"placeholder {{{name}}} must be a plain column name like {{topic}}",
            )
        if name not in names:
            names.append(name)
    return names


def load_config(
    path: str | Path, overrides: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> JobConfig:
    """Read a YAML job config, apply `section.key=value` overrides, validate.

    Raises:
        ConfigError: naming the key that is unknown, missing or of the wrong type.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError("--config", f"cannot read {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of sections")
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw, env=os.environ if env is None else env)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `section.key=value` in `raw`; the value is read as a YAML scalar (`null`, `3`, `x`)."""
    dotted, sep, text = item.partition("=")
    parts = dotted.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError("--set", f"expected section.key=value, got {item!r}")
    target = raw
    for part in parts[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[:-1]), "is not a section")
        target = child
    target[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def config_from_dict(raw: Mapping[str, Any], env: Mapping[str, str]) -> JobConfig:
    """Validate a plain mapping into a JobConfig (see `load_config`)."""
    endpoint = raw.get("endpoint")
    if isinstance(endpoint, dict) and endpoint.get("host") is None and not endpoint.get("base_url"):
        host = env.get("DATABRICKS_HOST") or _sdk_host(env)
        if host:
            raw = {**raw, "endpoint": {**endpoint, "host": host}}
    config = typing.cast(JobConfig, _build(JobConfig, raw, ""))
    return dataclasses.replace(
        config,
        source=dataclasses.replace(config.source, path=absolute(config.source.path)),
        sink=dataclasses.replace(config.sink, path=absolute(config.sink.path)),
    )


def absolute(path: str | None) -> str | None:
    """A relative path made absolute against the working directory; others as they are.

    Spark reads a relative path against the working directory (on a local file system), but
    Delta's SQL (`delta.`path``, used for the lease, deletes and history) only knows absolute
    ones: one spelling serves both. On a cluster, give a full URI (s3://, abfss://, dbfs:/).
    """
    if path is None or _URI_SCHEME.match(path) or path.startswith("/"):
        return path
    return os.path.abspath(path)


def _sdk_host(env: Mapping[str, str]) -> str | None:
    # Inside a Databricks job, or with a ~/.databrickscfg profile, the SDK knows the workspace.
    from pipeline.core.secrets import sdk_host, sdk_may_have_credentials

    return sdk_host(env.get("DATABRICKS_CONFIG_PROFILE")) if sdk_may_have_credentials(env) else None


def _build(cls: type[Any], raw: object, prefix: str) -> Any:
    where = prefix or "config"
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                _join(prefix, str(key)), f"unknown key{hint} (known: {', '.join(known)})"
            )
    values: dict[str, Any] = {}
    for name, spec in known.items():
        key = _join(prefix, name)
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], key)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "is required")
    return cls(**values)


def _coerce(hint: Any, value: object, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), {} if value is None else value, key)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(key, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return value
    if origin is not None and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
        return dict(value)
    return _scalar(hint, value, key)


def _scalar(hint: Any, value: object, key: str) -> Any:
    # bool is an int in Python; a YAML `true` where a number is expected is still a mistake.
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # YAML .nan / .inf: no limit, time or price means that
            raise ConfigError(key, f"must be a finite number, got {value}")
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise ConfigError(key, f"must be {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, str(hint)
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _exactly_one(section: str, obj: object, keys: tuple[str, ...]) -> None:
    present = [k for k in keys if getattr(obj, k) is not None]
    if len(present) != 1:
        options = " | ".join(f"{section}.{k}" for k in keys)
        got = ", ".join(present) or "none"
        raise ConfigError(
            f"{section}.{(present or keys)[-1]}", f"set exactly one of {options} (set: {got})"
        )


def _at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")
