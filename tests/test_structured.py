"""Structured output: the format on the wire, every answer checked, the `parsed` column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql.types import LongType, StringType, StructField, StructType

from pipeline.core.chat import ChatRequest, Message
from pipeline.core.config import EndpointConfig, RequestConfig
from pipeline.core.errors import ConfigError
from pipeline.core.structured import InvalidOutput, OutputFormat
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.columns import parsed_type
from pipeline.spark.job import run_job
from pipeline.spark.tables import read_sink
from pipeline.wire import wire_for
from tests.conftest import TOKEN, TOKEN_ENV
from tests.test_job import job, save

LABEL = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["pos", "neg"]},
                   "score": {"type": "integer"}},
    "required": ["label", "score"],
}  # fmt: skip


def test_answers_are_parsed_and_checked_against_the_schema() -> None:
    output = OutputFormat("json_schema", LABEL)
    assert output.check('{"label": "pos", "score": 3}') == {"label": "pos", "score": 3}
    with pytest.raises(InvalidOutput, match=r"^at \$\.score: 'high' is not of type 'integer'"):
        output.check('{"label": "neg", "score": "high"}')
    with pytest.raises(InvalidOutput, match="not JSON"):
        output.check("plain words")
    with pytest.raises(InvalidOutput, match="JSON object was asked for, got list"):
        OutputFormat("json_object").check("[1, 2]")


def test_parsed_column_type_follows_the_schema() -> None:
    assert parsed_type(OutputFormat("json_schema", LABEL)) == StructType(
        [StructField("label", StringType()), StructField("score", LongType())]
    )
    either = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert parsed_type(OutputFormat("json_schema", either)) == StringType()  # JSON text
    assert parsed_type(OutputFormat("json_object")) is None  # no schema: no column


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"response_format": "json_schema"}, "request.json_schema"),
        ({"response_format": "json_schema", "json_schema": {"type": "nope"}},
         "request.json_schema"),
        ({"json_schema": LABEL}, "request.json_schema"),
    ],
)  # fmt: skip
def test_config_mistakes_name_their_key(fields: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RequestConfig(**fields)
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        ("invocations", {"response_format": {"type": "json_schema",
                                             "json_schema": {"name": "output", "schema": LABEL}}}),
        ("chat_completions", {"response_format": {
            "type": "json_schema", "json_schema": {"name": "output", "schema": LABEL}}}),
        ("responses", {"text": {"format": {"type": "json_schema", "name": "output",
                                           "schema": LABEL}}}),
    ],
)  # fmt: skip
def test_each_wire_format_asks_for_the_schema(api: str, expected: dict[str, Any]) -> None:
    wire = wire_for(api)
    fields = wire.format_fields(OutputFormat("json_schema", LABEL))
    assert fields == expected
    request = ChatRequest("r1", (Message("user", "hi"),), 8, None)
    body = wire.body(request, EndpointConfig(name="m", host="http://h"), fields)
    assert {k: body[k] for k in expected} == expected


def test_job_writes_parsed_struct_and_flags_invalid_answers(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    # The echo model answers with the prompt: each prompt is the answer the row will get.
    answers = [
        '{"label": "pos", "score": 3}',
        '{"label": "neg", "score": 1}',
        '{"label": "neg", "score": "high"}',
        "plain words",
        '{"label": "meh", "score": 2}',
    ]
    frame = spark.createDataFrame(list(enumerate(answers)), "id long, prompt string")
    config = job(
        echo,
        {"path": save(frame, tmp_path / "in"), "id_column": "id", "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "delta"},
        request={"response_format": "json_schema", "json_schema": LABEL},
    )
    summary = run_job(config, spark, env={TOKEN_ENV: TOKEN})
    out = {row.id: row for row in read_sink(spark, config.sink).collect()}

    assert read_sink(spark, config.sink).schema["parsed"].dataType == parsed_type(
        config.request.output_format
    )
    assert (out[0].status, out[0].parsed.label, out[0].parsed.score) == ("ok", "pos", 3)
    assert (out[1].status, out[1].parsed.label, out[1].parsed.score) == ("ok", "neg", 1)
    for bad, where in ((2, "at $.score"), (3, "not JSON"), (4, "at $.label")):
        row = out[bad]
        assert row.status == "error" and row.parsed is None
        assert row.error.startswith(f"invalid_output: {where}"), row.error
        assert row.completion == answers[bad]  # kept, to see what the model said
        assert row.attempts == 1  # paid once, not retried: the model chose that answer
    assert (summary.ok, summary.errors) == (2, 3)


def test_schema_without_a_spark_equivalent_gives_json_text(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    either = {"anyOf": [{"type": "object"}, {"type": "array"}]}
    frame = spark.createDataFrame([(0, '{"a": [1, 2]}'), (1, "[3]")], "id long, prompt string")
    config = job(
        echo,
        {"path": save(frame, tmp_path / "in"), "id_column": "id", "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "parquet"},
        request={"response_format": "json_schema", "json_schema": either},
    )
    run_job(config, spark, env={TOKEN_ENV: TOKEN})
    rows = {row.id: row for row in read_sink(spark, config.sink).collect()}
    assert json.loads(rows[0].parsed) == {"a": [1, 2]} and json.loads(rows[1].parsed) == [3]
