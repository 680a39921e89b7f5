"""The Spark adapter: the `mapInPandas` function and the output schema. Deliberately thin.

Each Spark task runs one `Engine` (one event loop, one HTTP session) across all its Arrow
batches, reading a little ahead so the request window never drains at a batch boundary.
Every input row comes out exactly once, with its result columns appended.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from pipeline.chat import ChatRequest, RowResult
from pipeline.client import ClientSettings
from pipeline.config import RequestConfig, SourceConfig
from pipeline.engine import Engine
from pipeline.errors import ConfigError, JobAborted
from pipeline.prompts import RequestBuilder
from pipeline.structured import OutputFormat

RESULT_FIELDS: tuple[tuple[str, DataType], ...] = (
    ("request_id", StringType()),
    ("completion", StringType()),
    ("finish_reason", StringType()),
    ("prompt_tokens", IntegerType()),
    ("completion_tokens", IntegerType()),
    ("total_tokens", IntegerType()),
    ("model", StringType()),
    ("response_id", StringType()),
    ("status", StringType()),
    ("error", StringType()),
    ("http_status", IntegerType()),
    ("attempts", IntegerType()),
    ("latency_ms", DoubleType()),
)
RESULT_COLUMNS = tuple(name for name, _ in RESULT_FIELDS)
# With a JSON Schema: the answer as JSON (see `parsed_type`).
PARSED = "parsed"
_JSON_SCALARS: dict[str, DataType] = {
    "string": StringType(),
    "integer": LongType(),
    "number": DoubleType(),
    "boolean": BooleanType(),
}
# Planning column: the content key of a row's request (see `ChatRequest.key`); never written.
REQUEST_KEY = "_request_key"

# Read ahead while fewer than this many windows' worth of rows are waiting for answers.
READ_AHEAD_WINDOWS = 2

BatchMapper = Callable[[Iterable[pd.DataFrame]], Iterable[pd.DataFrame]]


@dataclass(frozen=True)
class TaskPlan:
    """What every task needs; pickled into the Spark closure (the token stays a `Secret`)."""

    source: SourceConfig
    request: RequestConfig
    client: ClientSettings
    request_id_salt: str


def to_spark_type(schema: Mapping[str, Any]) -> DataType | None:
    """The Spark type of values matching `schema`, or None when it has no plain equivalent."""
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: nullable, as every Spark field here is
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind in _JSON_SCALARS:
        return _JSON_SCALARS[kind]
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        item = to_spark_type(schema["items"])
        return None if item is None else ArrayType(item, containsNull=True)
    if kind == "object" and isinstance(schema.get("properties"), Mapping) and schema["properties"]:
        fields = []
        for name, sub in schema["properties"].items():
            sub_type = to_spark_type(sub) if isinstance(sub, Mapping) else None
            if sub_type is None:
                return None
            fields.append(StructField(str(name), sub_type, nullable=True))
        return StructType(fields)
    return None


def parsed_type(output: OutputFormat | None) -> DataType | None:
    """The `parsed` column's type: with a JSON Schema, its Spark equivalent (a struct for an
    object with properties), else the JSON text; None (no column) without a schema."""
    if output is None or output.schema is None:
        return None
    mapped = to_spark_type(output.schema)
    return StringType() if mapped is None else mapped


def output_schema(input_schema: StructType, parsed: DataType | None = None) -> StructType:
    """The input columns followed by the result columns.

    Raises:
        ConfigError: an input column already bears a result column's name.
    """
    added = [*RESULT_COLUMNS, *([PARSED] if parsed is not None else [])]
    clash = [name for name in added if name in input_schema.fieldNames()]
    if clash:
        raise ConfigError(
            "source",
            f"input column {clash[0]!r} has the name of an output column; rename it "
            f"(output columns: {', '.join(added)})",
        )
    extra = [StructField(name, dtype, nullable=True) for name, dtype in RESULT_FIELDS]
    if parsed is not None:
        extra.append(StructField(PARSED, parsed, nullable=True))
    return StructType([*input_schema.fields, *extra])


def make_batch_mapper(plan: TaskPlan) -> BatchMapper:
    """The function to give `DataFrame.mapInPandas`."""

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        builder = RequestBuilder(plan.source, plan.request, plan.request_id_salt)
        parsed = parsed_type(plan.request.output_format)
        window = plan.client.limits.concurrency * READ_AHEAD_WINDOWS
        pending: deque[tuple[pd.DataFrame, Future[list[RowResult]]]] = deque()
        waiting_rows = 0
        with Engine(plan.client, dedupe=plan.request.dedupe) as engine:
            for frame in frames:
                _stop_if_aborted(engine)
                items = _build(builder, frame)
                pending.append((frame, engine.submit(items)))
                waiting_rows += len(frame)
                while pending and (
                    pending[0][1].done() or (waiting_rows >= window and len(pending) > 1)
                ):
                    head, future = pending.popleft()
                    waiting_rows -= len(head)
                    yield with_results(head, future.result(), parsed)
            while pending:
                head, future = pending.popleft()
                yield with_results(head, future.result(), parsed)
            _stop_if_aborted(engine)

    return map_batches


def key_schema(input_schema: StructType) -> StructType:
    """The input columns followed by `request_id` and the request's content key."""
    keys = [StructField(name, StringType(), nullable=True) for name in ("request_id", REQUEST_KEY)]
    return StructType([*input_schema.fields, *keys])


def make_key_mapper(source: SourceConfig, request: RequestConfig, salt: str) -> BatchMapper:
    """A `mapInPandas` function adding each row's `request_id` and content key, sending nothing.

    The key is null for a row that cannot become a request (it is answered without sending).
    """

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        builder = RequestBuilder(source, request, salt)
        for frame in frames:
            items = _build(builder, frame)
            out = frame.reset_index(drop=True)
            out["request_id"] = [item.request_id for item in items]
            out[REQUEST_KEY] = [i.key if isinstance(i, ChatRequest) else None for i in items]
            yield out

    return map_batches


ESTIMATE_SCHEMA = "key string, prompt_tokens long, output_tokens long"


def make_estimate_mapper(source: SourceConfig, request: RequestConfig, salt: str) -> BatchMapper:
    """A `mapInPandas` function giving, for each row that becomes a request, its content key and
    estimated prompt and output tokens (see `ChatRequest.estimated_tokens`); sends nothing."""

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        builder = RequestBuilder(source, request, salt)
        for frame in frames:
            built = [i for i in _build(builder, frame) if isinstance(i, ChatRequest)]
            yield pd.DataFrame({
                "key": pd.Series([r.key or r.request_id for r in built], dtype=object),
                "prompt_tokens": pd.Series([r.estimated_prompt_tokens() for r in built],
                                           dtype="int64"),
                "output_tokens": pd.Series([r.estimated_output_tokens() for r in built],
                                           dtype="int64"),
            })  # fmt: skip

    return map_batches


def _stop_if_aborted(engine: Engine) -> None:
    # Failing the task fails the job: the rows answered so far are not worth writing when
    # every remaining row would get the same refusal.
    if engine.stop_reason is not None:
        raise JobAborted(engine.stop_reason)


def _build(builder: RequestBuilder, frame: pd.DataFrame) -> list[ChatRequest | RowResult]:
    columns = {name: frame[name].tolist() for name in builder.columns}
    return builder.build_all(columns, len(frame))


def with_results(
    frame: pd.DataFrame, results: list[RowResult], parsed: DataType | None = None
) -> pd.DataFrame:
    """`frame` with the result columns appended, row for row (and `parsed`, of that type)."""
    if len(results) != len(frame):  # a lost row must never pass silently
        raise RuntimeError(f"{len(results)} results for {len(frame)} rows")
    done = [r.completion for r in results]
    columns: dict[str, Any] = {
        "request_id": [r.request_id for r in results],
        "completion": [c.text if c else None for c in done],
        "finish_reason": [c.finish_reason if c else None for c in done],
        "prompt_tokens": _ints([c.prompt_tokens if c else None for c in done]),
        "completion_tokens": _ints([c.completion_tokens if c else None for c in done]),
        "total_tokens": _ints([c.total_tokens if c else None for c in done]),
        "model": [c.model if c else None for c in done],
        "response_id": [c.response_id if c else None for c in done],
        "status": [r.status for r in results],
        "error": [r.error for r in results],
        "http_status": _ints([r.http_status for r in results]),
        "attempts": _ints([r.attempts for r in results]),
        "latency_ms": pd.array([r.latency_ms for r in results], dtype="Float64"),
    }
    out = frame.reset_index(drop=True)
    for name in RESULT_COLUMNS:
        out[name] = columns[name]
    if parsed is not None:
        as_text = isinstance(parsed, StringType)
        out[PARSED] = [
            json.dumps(r.parsed, ensure_ascii=False) if as_text and r.parsed is not None
            else r.parsed
            for r in results
        ]  # fmt: skip
    return out


def _ints(values: list[int | None]) -> pd.api.extensions.ExtensionArray:
    return pd.array(values, dtype="Int32")
