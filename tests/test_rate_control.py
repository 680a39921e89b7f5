"""A two-task job under a small job-wide limit: the endpoint's own counters agree it held."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from pipeline.serving.process import LocalEndpoint
from tests.conftest import ECHO_ARGS, TOKEN, TOKEN_ENV
from tests.test_job import job, prompts, run, save

LIMIT_PER_S = 10


def test_two_tasks_share_one_limit_and_never_exceed_it(
    spark: SparkSession, tmp_path: Path
) -> None:
    rows = 60
    # The endpoint refuses more than 12 requests in any one-second window: the job's limit,
    # plus room for a lease's requests leaving the task together.
    flags = ("--requests-per-minute", str(LIMIT_PER_S + 2), "--window-s", "1")
    with LocalEndpoint(*ECHO_ARGS, *flags, env={TOKEN_ENV: TOKEN}) as endpoint:
        config = job(
            endpoint,
            {"path": save(prompts(spark, rows), tmp_path / "in"), "prompt_column": "prompt",
             "partitions": 2},
            {"path": str(tmp_path / "out"), "format": "delta"},
            limits={"requests_per_minute": LIMIT_PER_S * 60, "concurrency": 8},
        )  # fmt: skip
        summary, _ = run(spark, config)
        stats = endpoint.stats()
    assert summary.tasks == 2 and summary.ok == rows
    assert stats["rate_limited"] == 0 and stats["requests_total"] == rows
    span = stats["last_request_at"] - stats["first_request_at"]
    # Starting from an empty bucket, n requests at r/s take at least (n - 1) / r seconds.
    assert span >= (rows - 1) / LIMIT_PER_S * 0.95
