"""End to end: real local Spark, real Parquet/Delta files, the real local endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.core.config import JobConfig
from pipeline.core.errors import ConfigError, JobAborted
from pipeline.core.loader import config_from_dict
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.columns import RESULT_COLUMNS
from pipeline.spark.job import check_error_share, run_job
from pipeline.spark.summary import RunSummary
from pipeline.spark.tables import read_sink
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV

PROMPTS_SCHEMA = "id long, prompt string, topic string, max_tokens int"
FAST = {"concurrency": 8, "backoff_initial_s": 0.001, "backoff_max_s": 0.01, "max_attempts": 3}


def prompts(spark: SparkSession, n: int, partitions: int = 3) -> DataFrame:
    rows = [(i, f"Tell me about item {i} please", f"topic{i % 5}", None) for i in range(n)]
    return spark.createDataFrame(rows, PROMPTS_SCHEMA).repartition(partitions)


def save(frame: DataFrame, path: Path, fmt: str = "parquet") -> str:
    frame.write.format(fmt).save(str(path))
    return str(path)


def job(
    echo: LocalEndpoint, source: dict[str, Any], sink: dict[str, Any], **sections: Any
) -> JobConfig:
    raw: dict[str, Any] = {
        "source": source,
        "endpoint": {"name": ENDPOINT_NAME, "host": echo.url, "token_env": TOKEN_ENV},
        "request": {"max_tokens": 32},
        "limits": FAST,
        "sink": sink,
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return config_from_dict(raw, env={})


def run(spark: SparkSession, config: JobConfig) -> tuple[RunSummary, DataFrame]:
    summary = run_job(config, spark, env={TOKEN_ENV: TOKEN})
    return summary, read_sink(spark, config.sink)


@pytest.mark.parametrize("api", ["invocations", "chat_completions", "responses"])
def test_each_wire_format_parquet_to_delta(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, api: str
) -> None:
    source = prompts(spark, 120)
    config = job(
        echo,
        {"path": save(source, tmp_path / "in"), "id_column": "id", "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "delta"},
        endpoint={"api": api},
    )
    summary, out = run(spark, config)

    # Each row records the config its request was built under, after the request's own hash.
    identity, answer = RESULT_COLUMNS[:2], RESULT_COLUMNS[2:]
    assert out.columns == [*source.columns, *identity, "config_hash", *answer]
    assert out.select("config_hash").distinct().count() == 1
    assert_df_equality(out.select(*source.columns), source, ignore_row_order=True)
    rows = out.collect()
    assert len(rows) == 120
    for row in rows:
        assert row.status == "ok", row.error
        assert row.request_id == str(row.id)
        assert row.completion == row.prompt  # echo: the whole prompt fits in 32 tokens
        assert row.finish_reason == "stop"
        assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (6, 6, 12)
        assert (row.model, row.http_status, row.attempts) == (ENDPOINT_NAME, 200, 1)
        assert row.response_id and row.latency_ms > 0 and row.error is None
    assert echo.stats()["by_route"][api] == 120
    assert (summary.rows, summary.ok, summary.errors) == (120, 120, 0)
    assert (summary.prompt_tokens, summary.completion_tokens) == (720, 720)


def test_messages_column_delta_to_parquet(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    conversation = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "count one two"},
    ]
    rows = [
        (1, conversation, json.dumps(conversation)),
        (2, [{"role": "user", "content": "solo"}], "[]"),
    ]
    schema = "id long, conv array<struct<role:string,content:string>>, conv_json string"
    path = save(spark.createDataFrame(rows, schema), tmp_path / "in", "delta")
    for column, expected in (
        ("conv", ["count one two", "solo"]),
        ("conv_json", ["count one two", None]),
    ):
        config = job(
            echo,
            {
                "path": path,
                "format": "delta",
                "id_column": "id",
                "messages_column": column,
                "system_prompt": "Be brief.",
            },
            {"path": str(tmp_path / f"out_{column}"), "format": "parquet"},
        )
        _, out = run(spark, config)
        by_id = {r.id: r for r in out.collect()}
        assert [by_id[1].completion, by_id[2].completion] == expected
        # system prompt (2 words) + "Hi there" + "Hello" + "count one two"
        assert by_id[1].prompt_tokens == 2 + 2 + 1 + 3
    # The JSON row 2 was an empty list: an error row that names the column, never sent.
    assert by_id[2].status == "error"
    assert by_id[2].error == "invalid_input: messages column 'conv_json' is an empty list"


def test_template_and_per_row_overrides(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = [(1, "DNA", "a child", 2), (2, "tides", "a sailor", None)]
    frame = spark.createDataFrame(rows, "id long, topic string, who string, budget int")
    config = job(
        echo,
        {
            "path": save(frame, tmp_path / "in"),
            "template": "Explain {topic} to {who} now",
            "max_tokens_column": "budget",
        },
        {"path": str(tmp_path / "out"), "format": "parquet"},
    )
    _, out = run(spark, config)
    by_id = {r.id: r for r in out.collect()}
    assert (by_id[1].completion, by_id[1].finish_reason) == ("Explain DNA", "length")
    assert (by_id[2].completion, by_id[2].finish_reason) == (
        "Explain tides to a sailor now",
        "stop",
    )
    assert len({by_id[1].request_id, by_id[2].request_id}) == 2  # content-derived, no id column


def test_retried_rows_count_their_attempts(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    echo.control(fail_first=2, fail_status=503)
    config = job(
        echo,
        {"path": save(prompts(spark, 40), tmp_path / "in"), "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "delta"},
    )
    summary, out = run(spark, config)
    assert out.filter("status = 'ok' AND attempts = 3").count() == 40
    assert echo.stats()["requests_total"] == 120
    assert summary.attempts == 120


def test_exhausted_and_invalid_rows_are_error_rows(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    echo.control(fail_first=5, fail_status=500)
    source = prompts(spark, 30).withColumn(
        "prompt", F.when(F.col("id") % 10 == 0, F.lit(None)).otherwise(F.col("prompt"))
    )
    config = job(
        echo,
        {"path": save(source, tmp_path / "in"), "id_column": "id", "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "delta"},
    )
    summary, out = run(spark, config)
    assert out.count() == 30 and summary.errors == 30
    invalid = out.filter("id % 10 = 0").collect()
    assert {r.error for r in invalid} == {"invalid_input: prompt column 'prompt' is null"}
    assert {(r.attempts, r.http_status) for r in invalid} == {(0, None)}
    failed = out.filter("id % 10 != 0").collect()
    assert {(r.status, r.attempts, r.http_status) for r in failed} == {("error", 3, 500)}
    assert all(r.error.startswith("server_error: HTTP 500") for r in failed)
    assert echo.stats()["requests_total"] == 27 * 3  # invalid rows never reached the endpoint


def test_missing_column_fails_before_any_request(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    config = job(
        echo,
        {"path": save(prompts(spark, 3), tmp_path / "in"), "prompt_column": "question"},
        {"path": str(tmp_path / "out")},
    )
    with pytest.raises(ConfigError) as caught:
        run(spark, config)
    assert caught.value.key == "source.prompt_column"
    assert "'question'" in str(caught.value)
    assert echo.stats()["requests_total"] == 0


def test_token_never_reaches_the_output(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    config = job(
        echo,
        {"path": save(prompts(spark, 5), tmp_path / "in"), "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "parquet"},
    )
    _, out = run(spark, config)
    text = json.dumps([r.asDict() for r in out.collect()], default=str)
    assert TOKEN not in text
    assert TOKEN not in json.dumps(config.to_dict())


def test_catalog_table_in_and_out(spark: SparkSession, echo: LocalEndpoint) -> None:
    spark.sql("CREATE DATABASE IF NOT EXISTS batch_chat_test")
    prompts(spark, 12).write.format("delta").mode("overwrite").saveAsTable(
        "batch_chat_test.prompts"
    )
    config = job(
        echo,
        {"table": "batch_chat_test.prompts", "id_column": "id", "prompt_column": "prompt"},
        {"table": "batch_chat_test.answers", "format": "delta", "mode": "overwrite"},
    )
    summary, out = run(spark, config)
    assert summary.sink == "batch_chat_test.answers"
    assert out.filter("status = 'ok'").count() == 12
    assert spark.table("batch_chat_test.answers").count() == 12


def test_existing_sink_in_error_mode_sends_nothing(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    source = save(prompts(spark, 6), tmp_path / "in")
    sink = {"path": str(tmp_path / "out"), "format": "delta", "mode": "error"}
    run(spark, job(echo, {"path": source, "prompt_column": "prompt"}, sink))
    echo.reset()
    with pytest.raises(ConfigError, match="already exists; use overwrite or append") as caught:
        run(spark, job(echo, {"path": source, "prompt_column": "prompt"}, sink))
    assert caught.value.key == "sink.mode"
    assert echo.stats()["requests_total"] == 0


def test_append_mode_adds_rows(spark: SparkSession, echo: LocalEndpoint, tmp_path: Path) -> None:
    source = save(prompts(spark, 6), tmp_path / "in")
    sink = {"path": str(tmp_path / "out"), "format": "parquet", "mode": "append"}
    for _ in range(2):
        summary, out = run(spark, job(echo, {"path": source, "prompt_column": "prompt"}, sink))
        assert summary.rows == 6  # the summary counts this run, not the table
    assert out.count() == 12


def test_bad_token_stops_the_job_after_a_few_requests(
    spark: SparkSession, private_echo: LocalEndpoint, tmp_path: Path
) -> None:
    config = job(
        private_echo,
        {
            "path": save(prompts(spark, 200, partitions=2), tmp_path / "in"),
            "prompt_column": "prompt",
        },
        {"path": str(tmp_path / "out"), "format": "delta"},
        limits={"max_fatal_errors": 3, "concurrency": 2},
    )
    with pytest.raises(JobAborted) as caught:
        run_job(config, spark, env={TOKEN_ENV: "dapi-not-the-token"})
    message = str(caught.value)
    assert "authentication_error (HTTP 403 PERMISSION_DENIED" in message
    assert "dapi-not-the-token" not in message and TOKEN not in message
    # At most the threshold plus the requests already in flight, per task (2 tasks).
    assert private_echo.stats()["requests_total"] <= 2 * (3 + 2)
    assert not list((tmp_path / "out").glob("_delta_log/*.json"))  # no commit was made


def test_error_share_above_the_limit_fails_after_writing(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    source = prompts(spark, 20).withColumn(
        "prompt", F.when(F.col("id") < 5, F.lit(None)).otherwise(F.col("prompt"))
    )
    config = job(
        echo,
        {"path": save(source, tmp_path / "in"), "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "parquet"},
    )
    summary, out = run(spark, config)
    assert out.count() == 20  # what finished is kept
    check_error_share(summary, 0.25)  # 5 of 20 is not above 25 %
    with pytest.raises(JobAborted, match=r"5 of 20 rows ended in error \(25.0%\), above"):
        check_error_share(summary, 0.2)
