"""The Spark adapter: the `mapInPandas` function and the output schema. Deliberately thin.

Each Spark task runs one `Engine` (one event loop, one HTTP session) across all its Arrow
batches, reading a little ahead so the request window never drains at a batch boundary.
Every input row comes out exactly once, with its result columns appended.

Text crosses into Python as bytes (`as_bytes`, and back with `as_text`): Arrow would fail the
whole task on one value that is not valid UTF-8, where the request builder makes it one
`invalid_input:` row; the other columns pass through byte for byte.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DataType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from pipeline.core.chat import ChatRequest, RowResult
from pipeline.core.config import EndpointConfig, RequestConfig, SourceConfig
from pipeline.core.errors import ConfigError, JobAborted
from pipeline.core.prompts import RequestBuilder
from pipeline.core.structured import OutputFormat
from pipeline.http.client import ClientSettings
from pipeline.http.engine import Engine

RESULT_FIELDS: tuple[tuple[str, DataType], ...] = (
    ("request_id", StringType()),
    ("request_hash", StringType()),
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
# The columns that identify a row's request (see `pipeline.core.identity`).
IDENTITY_COLUMNS = ("request_id", "request_hash")

# Read ahead while fewer than this many windows' worth of rows are waiting for answers.
READ_AHEAD_WINDOWS = 2

BatchMapper = Callable[[Iterable[pd.DataFrame]], Iterable[pd.DataFrame]]


@dataclass(frozen=True)
class TaskPlan:
    """What every task needs; pickled into the Spark closure (the token stays a `Secret`)."""

    source: SourceConfig
    request: RequestConfig
    client: ClientSettings


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
        builder = RequestBuilder(plan.source, plan.request, plan.client.endpoint)
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
    """The input columns followed by `request_id` and `request_hash`."""
    keys = [StructField(name, StringType(), nullable=True) for name in IDENTITY_COLUMNS]
    return StructType([*input_schema.fields, *keys])


def with_identity(frame: DataFrame, key_mapper: BatchMapper) -> DataFrame:
    """`frame` as bytes (see `as_bytes`) with each row's `request_id` and `request_hash` from
    `key_mapper` (see `make_key_mapper`) appended."""
    as_sent = as_bytes(frame)
    return map_in_pandas(as_sent, key_mapper, key_schema(as_sent.schema))


def make_key_mapper(
    source: SourceConfig, request: RequestConfig, endpoint: EndpointConfig
) -> BatchMapper:
    """A `mapInPandas` function adding each row's `request_id` and `request_hash` (see
    `pipeline.core.identity`), sending nothing."""

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        builder = RequestBuilder(source, request, endpoint)
        for frame in frames:
            items = _build(builder, frame)
            out = frame.reset_index(drop=True)
            out["request_id"] = [item.request_id for item in items]
            out["request_hash"] = [item.request_hash for item in items]
            yield out

    return map_batches


ESTIMATE_SCHEMA = "key string, prompt_tokens long, output_tokens long"


def make_estimate_mapper(
    source: SourceConfig, request: RequestConfig, endpoint: EndpointConfig
) -> BatchMapper:
    """A `mapInPandas` function giving, for each row that becomes a request, its fingerprint and
    estimated prompt and output tokens (see `ChatRequest.estimated_tokens`); sends nothing."""

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        builder = RequestBuilder(source, request, endpoint)
        for frame in frames:
            built = [i for i in _build(builder, frame) if isinstance(i, ChatRequest)]
            yield pd.DataFrame({
                "key": pd.Series([r.request_hash for r in built], dtype=object),
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
        "request_hash": [r.request_hash for r in results],
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


def column(name: str) -> Column:
    """The column called `name`, whatever characters it holds (dots, spaces, backticks)."""
    return F.col("`" + name.replace("`", "``") + "`")


def bytes_type(dtype: DataType) -> DataType:
    """`dtype` with every string in it, nested ones too, as binary (the same bytes)."""
    if isinstance(dtype, StringType):
        return BinaryType()
    if isinstance(dtype, ArrayType):
        return ArrayType(bytes_type(dtype.elementType), dtype.containsNull)
    if isinstance(dtype, MapType):
        return MapType(
            bytes_type(dtype.keyType), bytes_type(dtype.valueType), dtype.valueContainsNull
        )
    if isinstance(dtype, StructType):
        return StructType(
            [StructField(f.name, bytes_type(f.dataType), f.nullable) for f in dtype.fields]
        )
    return dtype


def as_bytes(frame: DataFrame) -> DataFrame:
    """`frame` with its text as UTF-8 bytes (see the module docstring); `as_text` undoes it."""
    return _cast_to(frame, {f.name: bytes_type(f.dataType) for f in frame.schema.fields})


def as_text(frame: DataFrame, schema: StructType) -> DataFrame:
    """`frame` with the columns of `schema` back in their types there (bytes back to text)."""
    return _cast_to(frame, {f.name: f.dataType for f in schema.fields})


def _cast_to(frame: DataFrame, types: Mapping[str, DataType]) -> DataFrame:
    current = {f.name: f.dataType for f in frame.schema.fields}
    return frame.select(*(
        column(name).cast(types[name]).alias(name)
        if name in types and types[name] != current[name] else column(name)
        for name in frame.columns
    ))  # fmt: skip


def map_in_pandas(frame: DataFrame, mapper: BatchMapper, schema: StructType | str) -> DataFrame:
    """`frame.mapInPandas(mapper, schema)` for columns of any name.

    pyspark hands `mapInPandas` its input columns by their bare names, which a dot or a
    backtick in a name breaks (`the.prompt` reads as field `prompt` of column `the`): such
    columns cross under plain names, and `mapper` sees them under their own again.
    """
    names = frame.columns
    if not any("." in name or "`" in name for name in names):
        return frame.mapInPandas(mapper, schema)
    plain_names = [f"_batch_chat_{i}" for i in range(len(names))]
    crossing = frame.select(*(column(n).alias(p) for n, p in zip(names, plain_names, strict=True)))

    def renamed(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in frames:
            batch.columns = names
            yield batch

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        return mapper(renamed(frames))

    return crossing.mapInPandas(map_batches, schema)
