"""End to end: the answer columns of tools and reasoning, and sinks written before them.

A sink written before `tool_calls`, `reasoning` and `reasoning_tokens` existed keeps working:
its next run adds them (Delta on the append, a Parquet catalog table by `ALTER TABLE`, Parquet
files by merging schemas when read), and its older rows read them as null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.core.config import SinkConfig
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.columns import TOOL_CALLS_TYPE
from pipeline.spark.tables import read_sink
from tests.test_job import job, prompts, run, save

NEW_COLUMNS = ("tool_calls", "reasoning", "reasoning_tokens")
LOOKUP = {
    "name": "lookup",
    "description": "Look a topic up",
    "parameters": {
        "type": "object",
        "properties": {"topic": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["topic"],
    },
}


def test_tool_calls_and_reasoning_land_in_their_columns(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    echo.control(reasoning=True)
    config = job(
        echo,
        {"path": save(prompts(spark, 40), tmp_path / "in"), "id_column": "id",
         "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "delta"},
        endpoint={"api": "responses"},
        request={"tools": [LOOKUP, {"name": "noop"}]},
    )  # fmt: skip
    summary, out = run(spark, config)

    assert out.schema["tool_calls"].dataType == TOOL_CALLS_TYPE
    rows = out.collect()
    assert len(rows) == 40 and summary.ok == 40
    for row in rows:
        assert (row.status, row.finish_reason, row.completion) == ("ok", "tool_calls", "")
        (call,) = row.tool_calls
        assert call.name == "lookup" and call.id
        assert json.loads(call.arguments) == {"topic": row.prompt, "limit": 6}
        assert row.reasoning == f"The conversation holds {len(row.prompt.split())} prompt " \
                                "tokens; answering it."  # fmt: skip
        assert row.reasoning_tokens == 8
        assert row.completion_tokens == len(call.arguments.split()) + 8
    assert summary.finish_reasons == {"tool_calls": 40}
    assert (summary.tool_calls, summary.reasoning_tokens) == (40, 40 * 8)


def test_rows_without_tools_or_reasoning_leave_the_columns_null(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    config = job(
        echo,
        {"path": save(prompts(spark, 10), tmp_path / "in"), "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "parquet"},
    )
    summary, out = run(spark, config)
    assert out.filter(F.col("status") == "ok").count() == 10
    nulls = out.select(*(F.count(F.col(name)).alias(name) for name in NEW_COLUMNS)).first()
    assert nulls is not None and nulls.asDict() == dict.fromkeys(NEW_COLUMNS, 0)
    assert (summary.tool_calls, summary.reasoning_tokens) == (0, 0)


def _sink(kind: str, tmp_path: Path) -> dict[str, Any]:
    if kind != "parquet table":
        return {"path": str(tmp_path / "out"), "format": kind}
    return {"table": "batch_chat_test.old_answers", "format": "parquet"}


def _rewrite_without_new_columns(spark: SparkSession, sink: SinkConfig) -> None:
    """Make the sink as an older version wrote it: its rows without the new columns."""
    older = read_sink(spark, sink).drop(*NEW_COLUMNS).localCheckpoint()
    writer = older.write.format(sink.format).mode("overwrite")
    if sink.table is not None:
        writer.saveAsTable(sink.table)
    else:
        writer.option("overwriteSchema", "true").save(sink.path)
    assert not set(NEW_COLUMNS) & set(read_sink(spark, sink).columns)


@pytest.mark.parametrize("kind", ["delta", "parquet", "parquet table"])
def test_a_sink_written_before_the_new_columns_takes_them_on_the_next_run(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, kind: str
) -> None:
    spark.sql("CREATE DATABASE IF NOT EXISTS batch_chat_test")
    spark.sql("DROP TABLE IF EXISTS batch_chat_test.old_answers")
    source = {"id_column": "id", "prompt_column": "prompt"}
    first = job(echo, {"path": save(prompts(spark, 30), tmp_path / "in1"), **source},
                _sink(kind, tmp_path))  # fmt: skip
    run(spark, first)
    _rewrite_without_new_columns(spark, first.sink)

    echo.control(reasoning=True)
    second = job(echo, {"path": save(prompts(spark, 40), tmp_path / "in2"), **source},
                 _sink(kind, tmp_path))  # fmt: skip
    summary, after = run(spark, second)

    assert summary.rows == 10 and summary.skipped == 30  # the 30 answered are not sent again
    assert set(NEW_COLUMNS) <= set(after.columns)
    rows = {row.id: row for row in after.collect()}
    assert sorted(rows) == list(range(40))
    assert all(rows[i].reasoning is None and rows[i].status == "ok" for i in range(30))
    assert all(rows[i].reasoning_tokens == 8 and rows[i].reasoning for i in range(30, 40))
