"""The job against an endpoint that fails in every way at once: nothing lost, nearly all ok."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from pipeline.core.loader import config_from_dict
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.job import run_job
from pipeline.spark.tables import read_sink
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV

ROWS = 1000
# Every fault the endpoint can inject, at once; a request fails ~45 % of the time.
FAULTS = {
    "error_rate": 0.30,  # 500, 502, 503 and 429, a quarter each
    "error_statuses": [500, 502, 503, 429],
    "timeout_rate": 0.05,
    "timeout_hold_s": 30.0,
    "reset_rate": 0.05,
    "malformed_rate": 0.02,
    "truncated_rate": 0.02,
    "empty_choices_rate": 0.01,
    "seed": 7,
}
# Enough attempts that a row failing all of them is rarer than one in ten thousand.
ATTEMPTS = 12
KNOWN_ERRORS = (
    "server_error:",
    "rate_limited:",
    "timeout:",
    "connection_error:",
    "malformed_response:",
)


def test_no_row_lost_and_nearly_all_ok(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = [(i, f"fault matrix prompt {i}") for i in range(ROWS)]
    spark.createDataFrame(rows, "id long, prompt string").repartition(2).write.parquet(
        str(tmp_path / "in")
    )
    echo.control(**FAULTS)
    config = config_from_dict(
        {
            "source": {"path": str(tmp_path / "in"), "id_column": "id", "prompt_column": "prompt"},
            "endpoint": {"name": ENDPOINT_NAME, "host": echo.url, "token_env": TOKEN_ENV},
            "limits": {
                "concurrency": 16,
                "max_attempts": ATTEMPTS,
                "timeout_s": 0.5,
                "backoff_initial_s": 0.001,
                "backoff_max_s": 0.02,
            },
            "sink": {"path": str(tmp_path / "out"), "format": "delta"},
        },
        env={},
    )
    summary = run_job(config, spark, env={TOKEN_ENV: TOKEN})
    out = read_sink(spark, config.sink)

    assert out.count() == ROWS
    assert out.select("id").distinct().count() == ROWS  # each input row exactly once
    assert summary.ok >= ROWS * 0.999
    for row in out.filter("status = 'error'").collect():
        assert row.error.startswith(KNOWN_ERRORS), row.error
        assert row.attempts == ATTEMPTS
    ok = out.filter("status = 'ok'")
    assert ok.filter("completion = prompt AND http_status = 200").count() == ok.count()
    stats = echo.stats()
    faults = stats["faults_by_kind"]
    for kind in ("error", "timeout", "reset", "malformed", "truncated", "empty_choices"):
        assert faults[kind] > 0, kind
    # Retries happened and were counted: every request the endpoint saw is an attempt of a row.
    assert summary.attempts == stats["requests_total"]
    assert summary.attempts > ROWS * 1.3
