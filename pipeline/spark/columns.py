"""The output table's columns, in one table: name, Spark type, and where each value comes from.

The mapper fills the columns from a row's `RowResult` by reading this table, the output schema
(and so the sink's schema check) is built from it, and the run summary aggregates the columns it
names here. A new output column is one row below (and its field on `RowResult`/`Completion`):
an existing sink takes it as an added column (see `pipeline.spark.sink_schema`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
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

from pipeline.core.chat import Completion, RowResult
from pipeline.core.errors import ConfigError
from pipeline.core.structured import OutputFormat
from pipeline.spark.crossing import column


@dataclass(frozen=True)
class OutputColumn:
    """One result column: its name, its Spark type, and its value for a row's result."""

    name: str
    spark_type: DataType
    value: Callable[[RowResult], Any]
    # The pandas dtype the values take in the batch handed back to Spark (None: objects).
    pandas_dtype: str | None = None


def _answered(read: Callable[[Completion], Any]) -> Callable[[RowResult], Any]:
    """A value read from the row's completion; null when nothing was answered."""
    return lambda result: None if result.completion is None else read(result.completion)


# One struct per call, in the answer's order (see `pipeline.core.tools.ToolCall`); the
# arguments as the model wrote them, JSON text.
TOOL_CALLS_TYPE = ArrayType(
    StructType([
        StructField("name", StringType(), nullable=True),
        StructField("arguments", StringType(), nullable=True),
        StructField("id", StringType(), nullable=True),
    ]),
    containsNull=True,
)  # fmt: skip


def _tool_calls(completion: Completion) -> list[dict[str, str | None]] | None:
    """The calls as `TOOL_CALLS_TYPE` values; null when the answer called none."""
    if not completion.tool_calls:
        return None
    return [{"name": c.name, "arguments": c.arguments, "id": c.call_id}
            for c in completion.tool_calls]  # fmt: skip


OUTPUT_COLUMNS: tuple[OutputColumn, ...] = (
    OutputColumn("request_id", StringType(), lambda r: r.request_id),
    OutputColumn("request_hash", StringType(), lambda r: r.request_hash),
    OutputColumn("completion", StringType(), _answered(lambda c: c.text)),
    OutputColumn("tool_calls", TOOL_CALLS_TYPE, _answered(_tool_calls)),
    OutputColumn("reasoning", StringType(), _answered(lambda c: c.reasoning)),
    OutputColumn("finish_reason", StringType(), _answered(lambda c: c.finish_reason)),
    OutputColumn("prompt_tokens", IntegerType(), _answered(lambda c: c.prompt_tokens), "Int32"),
    OutputColumn(
        "completion_tokens", IntegerType(), _answered(lambda c: c.completion_tokens), "Int32"
    ),
    OutputColumn("total_tokens", IntegerType(), _answered(lambda c: c.total_tokens), "Int32"),
    OutputColumn(
        "reasoning_tokens", IntegerType(), _answered(lambda c: c.reasoning_tokens), "Int32"
    ),
    OutputColumn("model", StringType(), _answered(lambda c: c.model)),
    OutputColumn("response_id", StringType(), _answered(lambda c: c.response_id)),
    OutputColumn("status", StringType(), lambda r: r.status),
    OutputColumn("error", StringType(), lambda r: r.error),
    OutputColumn("http_status", IntegerType(), lambda r: r.http_status, "Int32"),
    OutputColumn("attempts", IntegerType(), lambda r: r.attempts, "Int32"),
    OutputColumn("latency_ms", DoubleType(), lambda r: r.latency_ms, "Float64"),
)
RESULT_COLUMNS = tuple(c.name for c in OUTPUT_COLUMNS)
_BY_NAME: Mapping[str, OutputColumn] = {c.name: c for c in OUTPUT_COLUMNS}

# With a JSON Schema: the answer as JSON, typed from the schema (see `parsed_type`).
PARSED = "parsed"
# The columns that identify a row's request (see `pipeline.core.identity`).
IDENTITY_COLUMNS = ("request_id", "request_hash")
# Written after them: the fingerprint of the config that made them (see
# `RequestBuilder.config_hash`), the same for every row of a run; stamped on the rows as they
# are written.
CONFIG_HASH = "config_hash"
# Planning column, never written: the row's request as the keying pass built it (see
# `pipeline.spark.mapper.encode_item`), so the answering pass does not build it again.
REQUEST = "_request"

_JSON_SCALARS: dict[str, DataType] = {
    "string": StringType(),
    "integer": LongType(),
    "number": DoubleType(),
    "boolean": BooleanType(),
}


def named(name: str) -> str:
    """`name`, checked to be an output column (for code that reads the written rows).

    Raises:
        KeyError: no output column has that name.
    """
    return _BY_NAME[name].name


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


def output_schema(
    input_schema: StructType, parsed: DataType | None = None, *, stamped: bool = False
) -> StructType:
    """The input columns followed by the result columns (with `config_hash` when `stamped`:
    the schema of the rows written, see `stamp`).

    Raises:
        ConfigError: an input column already bears a result column's name.
    """
    added = [*RESULT_COLUMNS, CONFIG_HASH, *([PARSED] if parsed is not None else [])]
    clash = [name for name in (*added, REQUEST) if name in input_schema.fieldNames()]
    if clash:
        raise ConfigError(
            "source",
            f"input column {clash[0]!r} has the name of an output column; rename it "
            f"(output columns: {', '.join(added)})",
        )
    extra = [StructField(c.name, c.spark_type, nullable=True) for c in OUTPUT_COLUMNS]
    if stamped:
        extra.insert(len(IDENTITY_COLUMNS), StructField(CONFIG_HASH, StringType(), nullable=True))
    if parsed is not None:
        extra.append(StructField(PARSED, parsed, nullable=True))
    return StructType([*input_schema.fields, *extra])


def stamp(rows: DataFrame, config_hash: str) -> DataFrame:
    """`rows` (see `output_schema`) with `config_hash` after `request_hash`."""
    names = [name for name in rows.columns if name != CONFIG_HASH]
    at = names.index(IDENTITY_COLUMNS[-1]) + 1
    stamped = F.lit(config_hash).cast(StringType()).alias(CONFIG_HASH)
    return rows.select(*map(column, names[:at]), stamped, *map(column, names[at:]))
