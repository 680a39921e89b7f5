"""Live progress, the run summary and the dry run, each checked against a real run's output."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.control.progress import Board, Tally
from pipeline.core.config import JobConfig
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.dryrun import dry_run
from pipeline.spark.job import run_job
from pipeline.spark.summary import RunSummary
from pipeline.spark.tables import read_sink
from tests.conftest import TOKEN, TOKEN_ENV
from tests.test_job import job, save

PRICING = {"input_per_million": 0.5, "output_per_million": 1.5, "currency": "USD"}


def source(spark: SparkSession, tmp_path: Path) -> str:
    """150 rows: 50 distinct prompts three times each, every 10th row cut short by max_tokens=2,
    and 5 rows without a prompt (error rows, never sent)."""
    rows = [(i, None if i % 30 == 7 else f"Tell me about item {i % 50} please",
             2 if i % 50 % 10 == 0 else None) for i in range(150)]  # fmt: skip
    frame = spark.createDataFrame(rows, "id long, prompt string, max_tokens int").repartition(3)
    return save(frame, tmp_path / "in")


def config_for(echo: LocalEndpoint, path: str, out: Path) -> JobConfig:
    return job(
        echo,
        {"path": path, "id_column": "id", "prompt_column": "prompt",
         "max_tokens_column": "max_tokens"},
        {"path": str(out), "format": "delta"},
        pricing=PRICING,
    )  # fmt: skip


def counts(out: DataFrame, column: str) -> dict[str, int]:
    grouped = out.filter(F.col(column).isNotNull()).groupBy(column).count().collect()
    return {str(row[column]): int(row["count"]) for row in grouped}


def test_progress_and_summary_match_the_output_table(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_for(echo, source(spark, tmp_path), tmp_path / "out")
    with caplog.at_level(logging.INFO, logger="pipeline.control.progress"):
        summary = run_job(config, spark, env={TOKEN_ENV: TOKEN})
    out = read_sink(spark, config.sink)
    paid = (
        out.filter("attempts > 0")
        .agg(F.sum("prompt_tokens").alias("p"), F.sum("completion_tokens").alias("c"))
        .first()
    )
    assert paid is not None
    ok = out.filter("status = 'ok'").count()

    # The summary counts what was written.
    assert (summary.rows, summary.ok, summary.errors) == (150, ok, 150 - ok) == (150, 145, 5)
    assert (summary.prompt_tokens, summary.completion_tokens) == (paid["p"], paid["c"])
    assert summary.attempts == echo.stats()["requests_total"] == 50  # dedupe: 50 distinct
    assert summary.finish_reasons == counts(out, "finish_reason")
    assert set(summary.finish_reasons) == {"stop", "length"}
    assert summary.attempts_histogram == counts(out, "attempts")
    latency = out.agg(F.min("latency_ms"), F.max("latency_ms")).first()
    assert latency is not None
    p50, p95, p99 = (summary.latency_ms[p] for p in ("p50", "p95", "p99"))
    assert latency[0] <= p50 <= p95 <= p99 <= latency[1]
    assert summary.estimated_cost == pytest.approx((paid["p"] * 0.5 + paid["c"] * 1.5) / 1e6)

    # The live progress, fed by the tasks, reached every row and agrees.
    live = summary.progress
    assert live is not None
    assert (live.rows, live.ok, live.errors, live.requests) == (150, 145, 5, 50)
    assert (live.prompt_tokens, live.completion_tokens) == (paid["p"], paid["c"])
    assert "progress: 150/150 rows (100%)" in caplog.text

    # The JSON next to the output says the same, with the config and without the token.
    (written,) = (tmp_path / "out_runs").glob(f"*_{summary.run_id}.json")
    text = written.read_text()
    assert TOKEN not in text
    saved = json.loads(text)
    assert (saved["rows"], saved["ok"], saved["attempts"]) == (150, 145, 50)
    assert saved["finish_reasons"] == summary.finish_reasons
    assert saved["config"]["endpoint"]["token_env"] == TOKEN_ENV
    assert "run summary" in summary.render() and "estimated cost" in summary.render()


def test_dry_run_counts_what_a_run_would_send_and_sends_nothing(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    config = config_for(echo, source(spark, tmp_path), tmp_path / "out")
    before = dry_run(config, spark)
    assert echo.stats()["requests_total"] == 0
    assert (before.input_rows, before.already_answered, before.rows_to_answer) == (150, 0, 150)
    assert (before.requests, before.invalid_rows) == (50, 5)
    # Output at most max_tokens: 5 distinct prompts at 2, 45 at request.max_tokens (32).
    assert before.output_tokens == 5 * 2 + 45 * 32
    assert before.estimated_cost is not None and before.estimated_cost > 0
    assert "nothing was sent" in before.render()

    summary = run_job(config, spark, env={TOKEN_ENV: TOKEN})
    assert summary.attempts == before.requests
    after = dry_run(config, spark)
    # Error rows are retried by a Delta merge run: only those 5 remain, and they send nothing.
    assert (after.already_answered, after.rows_to_answer, after.requests) == (145, 5, 0)


def test_a_retried_task_counts_its_rows_once_and_every_attempt_s_requests() -> None:
    board = Board(10)
    lost = Tally(rows=6, ok=6, requests=7, rate_limited=1, prompt_tokens=60, completion_tokens=30)
    board.report("run/0/1", 3, lost, attempt=4)
    # The retried attempt recovers the lost one's answers (rows, no requests) and pays for 4.
    board.report("run/0/1", 1, Tally(rows=10, ok=10, requests=4, prompt_tokens=40), attempt=9)
    board.report("run/0/1", 4, Tally(rows=7, ok=7, requests=8), attempt=4)  # late, lost attempt
    total = board.tally
    assert (total.rows, total.ok) == (10, 10)
    assert (total.requests, total.rate_limited) == (11, 1)
    assert (total.prompt_tokens, total.completion_tokens) == (100, 30)


def test_board_counts_each_report_once_and_draws_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = io.StringIO()  # not a terminal: `auto` would log
    bar = Board(4, style="bar", stream=stream).start()
    bar.report("task-a", 1, Tally(rows=1, ok=1, requests=1))
    bar.report("task-b", 2, Tally(rows=3, ok=2, errors=1, requests=3, rate_limited=2))
    bar.report("task-a", 1, Tally(rows=1, ok=1, requests=1))  # the same report again
    bar.report("task-b", 1, Tally(rows=1, ok=1, requests=1))  # an older one, late
    bar.stop()
    assert "4/4" in stream.getvalue() and "1 err, 2 429" in stream.getvalue()
    with caplog.at_level(logging.INFO, logger="pipeline.control.progress"):
        logged = Board(4, stream=stream).start()
        logged.report("task-a", 1, Tally(rows=2, ok=2, requests=2))
        logged.stop()
    assert "progress: 2/4 rows (50%)" in caplog.text


def test_the_summary_names_one_task_and_one_chunk_in_the_singular() -> None:
    one = RunSummary(rows=5, ok=5, errors=0, prompt_tokens=10, completion_tokens=5, attempts=5,
                     seconds=2.0, tasks=1, sink="out", chunks=1)  # fmt: skip
    lines = one.render().splitlines()
    assert any(line.endswith("2.5 rows/s, 1 task") for line in lines)
    assert any(line.endswith("2.0 s, 1 chunk") for line in lines)
    many = replace(one, tasks=2, chunks=3).render().splitlines()
    assert any(line.endswith("2.5 rows/s, 2 tasks") for line in many)
    assert any(line.endswith("2.0 s, 3 chunks") for line in many)
