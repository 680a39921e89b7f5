"""Resume, incremental runs, chunked commits and dedupe, against the real endpoint's counters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.core.errors import ConfigError, JobAborted
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.job import run_job
from pipeline.spark.prepare import planned, read_input
from tests.conftest import TOKEN, TOKEN_ENV
from tests.test_job import job, prompts, run, save

DELTA_SINK = {"format": "delta", "mode": "merge"}


def id_counts(spark: SparkSession, path: Path) -> dict[int, int]:
    rows = spark.read.format("delta").load(str(path)).groupBy("id").count().collect()
    return {r["id"]: r["count"] for r in rows}


def test_incremental_run_sends_only_the_new_rows(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    source = tmp_path / "in"
    save(prompts(spark, 30), source)
    config = job(
        echo,
        {"path": str(source), "id_column": "id", "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), **DELTA_SINK},
    )
    first, _ = run(spark, config)
    assert (first.rows, first.skipped, echo.stats()["requests_total"]) == (30, 0, 30)

    new_rows = prompts(spark, 40).filter("id >= 30")
    new_rows.write.mode("append").parquet(str(source))
    echo.reset()
    second, out = run(spark, config)
    assert echo.stats()["requests_total"] == 10  # only the new rows reached the endpoint
    assert (second.rows, second.ok, second.skipped) == (10, 10, 30)
    assert id_counts(spark, tmp_path / "out") == {i: 1 for i in range(40)}
    assert out.filter("status != 'ok'").count() == 0

    echo.reset()
    third, _ = run(spark, config)  # nothing new: no request, no commit
    assert (third.rows, third.skipped, echo.stats()["requests_total"]) == (0, 40, 0)


class CommitsWhenWaitedFor:
    """A sink lease another run held while this one planned: it commits when first waited
    for (as that run would have before giving the lease up)."""

    def __init__(self, commit: Any) -> None:
        self._commit = commit
        self.waits = 0

    def wait(self) -> None:
        self.waits += 1
        if self.waits == 1:
            self._commit()


def test_what_another_run_commits_while_this_one_plans_is_not_sent_again(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    source, part = tmp_path / "in", tmp_path / "part"
    save(prompts(spark, 40), source)
    save(prompts(spark, 35).filter("id >= 30"), part)
    columns = {"id_column": "id", "prompt_column": "prompt"}
    sink = {"path": str(tmp_path / "out"), **DELTA_SINK}
    config = job(echo, {"path": str(source), **columns}, sink)
    # Another run answers ids 30-34 of the 40 before this one gets the lease.
    other = job(echo, {"path": str(part), **columns}, sink)
    lease = CommitsWhenWaitedFor(lambda: run(spark, other))

    with planned(spark, config, read_input(spark, config), metadata=None, lease=lease) as work:
        assert work.pending_rows == 35  # not the five committed meanwhile
    assert lease.waits == 2  # planned again, under the lease


def test_rerun_retries_error_rows_and_replaces_them(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    source = save(prompts(spark, 20), tmp_path / "in")
    sink = tmp_path / "out"
    config = job(
        echo,
        {"path": source, "id_column": "id", "prompt_column": "prompt"},
        {"path": str(sink), **DELTA_SINK},
        limits={"max_attempts": 1},
    )
    echo.control(error_rate=0.5, error_statuses=[503], seed=7)
    first, _ = run(spark, config)
    assert 0 < first.errors < 20

    echo.reset()  # a healthy endpoint
    second, out = run(spark, config)
    assert echo.stats()["requests_total"] == first.errors  # only the error rows are sent again
    assert (second.rows, second.skipped) == (first.errors, first.ok)
    assert id_counts(spark, sink) == {i: 1 for i in range(20)}  # each error row was replaced
    assert out.filter("status = 'ok'").count() == 20
    operations = [r["operation"] for r in DeltaTable.forPath(spark, str(sink)).history().collect()]
    assert "MERGE" in operations  # the delete of the replaced error rows


def test_retry_errors_false_keeps_error_rows(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    source = save(prompts(spark, 10), tmp_path / "in")
    config = job(
        echo,
        {"path": source, "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "parquet", "retry_errors": False},
        limits={"max_attempts": 1},
    )
    echo.control(fail_first=1, fail_status=503)
    first, _ = run(spark, config)
    assert first.errors == 10
    echo.reset()
    second, out = run(spark, config)
    assert (second.rows, second.skipped, echo.stats()["requests_total"]) == (0, 10, 0)
    assert out.filter("status = 'error'").count() == 10


def test_each_chunk_is_one_commit_with_the_run_config_but_never_the_token(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    sink = tmp_path / "out"
    config = job(
        echo,
        {"path": save(prompts(spark, 95), tmp_path / "in"), "id_column": "id",
         "prompt_column": "prompt"},
        {"path": str(sink), **DELTA_SINK, "chunk_rows": 20},
    )  # fmt: skip
    summary, out = run(spark, config)
    assert summary.chunks == 5 and out.count() == 95
    history = DeltaTable.forPath(spark, str(sink)).history().collect()
    assert len(history) == 6  # one commit per chunk, after one making the table with no row
    metadata = [json.loads(r["userMetadata"]) for r in history]
    assert sorted(m["chunk"] for m in metadata) == [f"{i}/5" for i in range(6)]
    made = next(r for r in history if json.loads(r["userMetadata"])["chunk"] == "0/5")
    assert made["operationMetrics"].get("numOutputRows", "0") == "0"
    assert len({m["batch_chat_run"] for m in metadata}) == 1
    assert metadata[0]["config"]["endpoint"]["token_env"] == TOKEN_ENV
    assert all(TOKEN not in r["userMetadata"] for r in history)
    sizes = [int(r["operationMetrics"]["numOutputRows"]) for r in history]
    assert sum(sizes) == 95 and max(sizes) < 40  # about chunk_rows each


@pytest.mark.parametrize("dedupe", [True, False])
def test_identical_requests_are_sent_once(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, dedupe: bool
) -> None:
    rows = [(i, f"question {i % 4}") for i in range(24)]  # 4 distinct prompts, 6 rows each
    source = spark.createDataFrame(rows, "id long, prompt string").repartition(3)
    config = job(
        echo,
        {"path": save(source, tmp_path / "in"), "id_column": "id", "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), **DELTA_SINK, "chunk_rows": 10},
        request={"dedupe": dedupe},
    )
    summary, out = run(spark, config)
    sent = 4 if dedupe else 24
    assert echo.stats()["requests_total"] == sent and summary.attempts == sent
    assert out.count() == 24 and out.filter("status = 'ok'").count() == 24
    assert sorted(r.request_id for r in out.collect()) == sorted(str(i) for i in range(24))
    per_prompt = out.groupBy("prompt").agg(
        F.countDistinct("completion").alias("answers"), F.sum("attempts").alias("sent")
    )
    expected = {(1, 1 if dedupe else 6)}
    assert {(r.answers, r.sent) for r in per_prompt.collect()} == expected
    paid = out.filter("attempts > 0").agg(F.sum("prompt_tokens")).first()[0]
    assert summary.prompt_tokens == paid  # copies carry the usage but were not paid again


@pytest.mark.parametrize("dedupe", [True, False])
def test_no_chunk_is_empty_when_few_requests_fill_many_chunks(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, dedupe: bool
) -> None:
    # 24 rows, 2 distinct requests, 2 rows a chunk: 12 hash buckets, at most 2 with rows
    # (identical requests share one). Every chunk run is a Spark job and a commit.
    rows = [(i, f"question {i % 2}") for i in range(24)]
    sink = tmp_path / "out"
    config = job(
        echo,
        {"path": save(spark.createDataFrame(rows, "id long, prompt string"), tmp_path / "in"),
         "id_column": "id", "prompt_column": "prompt"},
        {"path": str(sink), **DELTA_SINK, "chunk_rows": 2},
        request={"dedupe": dedupe},
    )  # fmt: skip
    summary, out = run(spark, config)
    assert 1 <= summary.chunks <= 2
    assert out.count() == 24 and out.filter("status = 'ok'").count() == 24
    history = DeltaTable.forPath(spark, str(sink)).history().collect()
    written = [int(r["operationMetrics"]["numOutputRows"]) for r in history
               if json.loads(r["userMetadata"])["chunk"] != f"0/{summary.chunks}"]  # fmt: skip
    assert len(written) == summary.chunks and all(written) and sum(written) == 24
    assert echo.stats()["requests_total"] == (2 if dedupe else 24)


def test_existing_table_that_is_not_an_output_is_refused(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    sink = tmp_path / "out"
    spark.range(3).write.format("delta").save(str(sink))
    config = job(
        echo,
        {"path": save(prompts(spark, 3), tmp_path / "in"), "prompt_column": "prompt"},
        {"path": str(sink), **DELTA_SINK},
    )
    with pytest.raises(ConfigError) as caught:
        run(spark, config)
    assert caught.value.key == "sink" and "request_id" in str(caught.value)
    assert echo.stats()["requests_total"] == 0


def test_max_tokens_above_the_endpoint_limit_stops_the_job(
    spark: SparkSession, private_echo: LocalEndpoint, tmp_path: Path
) -> None:
    private_echo.control(max_tokens_limit=16)  # the job asks for 32
    limits: dict[str, Any] = {"max_fatal_errors": 3, "concurrency": 2}
    config = job(
        private_echo,
        {"path": save(prompts(spark, 100, partitions=2), tmp_path / "in"),
         "prompt_column": "prompt", "partitions": 2},
        {"path": str(tmp_path / "out"), **DELTA_SINK},
        limits=limits,
    )  # fmt: skip
    with pytest.raises(JobAborted, match=r"bad_request \(HTTP 400 INVALID_PARAMETER_VALUE") as e:
        run_job(config, spark, env={TOKEN_ENV: TOKEN})
    assert "max_tokens" in str(e.value) and private_echo.url in str(e.value)
    # The threshold plus the requests already in flight, per task (2 tasks).
    assert private_echo.stats()["requests_total"] <= 2 * (3 + 2)


@pytest.mark.parametrize("fmt", ["delta", "parquet"])
def test_overwrite_replaces_the_table_chunk_by_chunk(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, fmt: str
) -> None:
    config = job(
        echo,
        {"path": save(prompts(spark, 25), tmp_path / "in"), "id_column": "id",
         "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": fmt, "mode": "overwrite", "chunk_rows": 10},
    )  # fmt: skip
    for _ in range(2):
        summary, out = run(spark, config)
        assert (summary.rows, summary.skipped) == (25, 0) and summary.chunks == 3
        assert out.count() == 25 and out.select("id").distinct().count() == 25
    assert echo.stats()["requests_total"] == 50  # overwrite answers everything each time
