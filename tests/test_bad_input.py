"""A table of bad rows: each becomes the right error row, and none of them reaches the endpoint."""

from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.serving.process import LocalEndpoint
from tests.test_job import job, run, save

GOOD = json.dumps([{"role": "user", "content": "a fine question"}])
# id → (messages column value, what the error must say)
BAD_MESSAGES: dict[int, tuple[str | None, str]] = {
    1: (None, "messages column 'messages' is null"),
    2: ("not json", "messages column 'messages' is not valid JSON"),
    3: ('{"role": "user", "content": "hi"}', "must be a list of {role, content}, got dict"),
    4: ("[]", "messages column 'messages' is an empty list"),
    5: ('[{"role": "wizard", "content": "hi"}]', "has unknown role 'wizard'"),
    6: ('[{"role": "user"}]', "messages column 'messages'[0] must be a {role, content} object"),
    7: ('[{"role": "user", "content": "   "}]', "messages column 'messages'[0].content is empty"),
    8: ('[{"role": "user", "content": 42}]', "[0].content must be text, got int"),
    9: (json.dumps([{"role": "user", "content": "x" * 500}]), "prompt has 500 characters"),
}


def test_bad_messages_rows_are_error_rows_and_never_sent(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = [(i, value) for i, (value, _) in BAD_MESSAGES.items()] + [(100, GOOD), (101, GOOD)]
    source = spark.createDataFrame(rows, "id long, messages string")
    config = job(
        echo,
        {"path": save(source, tmp_path / "in"), "id_column": "id", "messages_column": "messages",
         "max_prompt_chars": 400},
        {"path": str(tmp_path / "out"), "format": "delta"},
        request={"dedupe": False},
    )  # fmt: skip
    summary, out = run(spark, config)
    assert (summary.rows, summary.ok, summary.errors) == (11, 2, 9)
    found = {r.id: r for r in out.collect()}
    for row_id, (_, expected) in BAD_MESSAGES.items():
        row = found[row_id]
        assert row.status == "error" and row.error.startswith("invalid_input: "), row
        assert expected in row.error, (row_id, row.error)
        assert (row.attempts, row.http_status, row.completion) == (0, None, None)
        assert row.request_id == str(row_id)
    assert echo.stats()["requests_total"] == 2  # only the two good rows were sent


def test_template_placeholder_null_in_a_row(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = [(1, "tides", "children"), (2, None, "adults"), (3, "rain", None)]
    source = spark.createDataFrame(rows, "id long, topic string, audience string")
    config = job(
        echo,
        {"path": save(source, tmp_path / "in"), "id_column": "id",
         "template": "Explain {topic} to {audience}."},
        {"path": str(tmp_path / "out"), "format": "delta"},
    )  # fmt: skip
    _, out = run(spark, config)
    errors = {r.id: r.error for r in out.collect()}
    assert errors == {
        1: None,
        2: "invalid_input: template placeholder {topic} is null in this row",
        3: "invalid_input: template placeholder {audience} is null in this row",
    }
    assert echo.stats()["requests_total"] == 1


def test_invalid_utf8_is_one_error_row_and_other_columns_pass_byte_for_byte(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = spark.createDataFrame([(i, f"question {i}", "note") for i in range(6)],
                                 "id long, prompt string, note string")  # fmt: skip
    bad_bytes = F.unhex(F.lit("C328")).cast("string")
    source = rows.withColumn(
        "prompt", F.when(F.col("id") == 2, bad_bytes).otherwise(F.col("prompt"))
    ).withColumn("note", F.when(F.col("id") == 4, bad_bytes).otherwise(F.col("note")))
    config = job(
        echo,
        {"path": save(source, tmp_path / "in"), "id_column": "id", "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "delta"},
    )
    summary, out = run(spark, config)
    assert (summary.rows, summary.ok, summary.errors) == (6, 5, 1)
    bad = out.filter("id = 2").first()
    assert bad.error == "invalid_input: column 'prompt' is not valid UTF-8 text (byte 0 of 2)"
    assert out.filter("id = 4").select(F.hex("note")).first()[0] == "C328"  # untouched
    assert out.filter("id = 2").select(F.hex("prompt")).first()[0] == "C328"
    assert echo.stats()["requests_total"] == 5


def test_column_names_with_dots_and_spaces(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = [(i, f"question {i}", i % 2 + 1) for i in range(4)]
    source = spark.createDataFrame(rows, "`my id` long, `the.prompt` string, `max tokens` int")
    config = job(
        echo,
        {"path": save(source, tmp_path / "in"), "id_column": "my id",
         "prompt_column": "the.prompt", "max_tokens_column": "max tokens"},
        {"path": str(tmp_path / "out"), "format": "delta", "chunk_rows": 2},
    )  # fmt: skip
    summary, out = run(spark, config)
    assert (summary.rows, summary.ok) == (4, 4)
    assert out.columns[:3] == ["my id", "the.prompt", "max tokens"]
    assert {(r["request_id"], r["completion"]) for r in out.collect()} == {
        (str(i), " ".join(f"question {i}".split()[: i % 2 + 1])) for i in range(4)
    }
    echo.reset()
    again, _ = run(spark, config)
    assert (again.rows, echo.stats()["requests_total"]) == (0, 0)
