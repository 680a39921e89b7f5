"""Tasks that cannot reach this process: found by one probe task, said once, and the run goes
on without the driver's server instead of each task waiting on timeouts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipeline.serving.process import LocalEndpoint
from pipeline.spark.reach import tasks_reach
from tests.test_job import job, prompts, run, save

# TEST-NET-1 (RFC 5737): an address no task can reach.
UNREACHABLE = "192.0.2.1"


def test_a_task_reaches_a_server_on_this_machine(
    spark: SparkSession, echo: LocalEndpoint
) -> None:
    assert tasks_reach(spark, f"{echo.url}/health")
    assert not tasks_reach(spark, f"http://{UNREACHABLE}:9/health", timeout_s=0.5)


def test_an_unreachable_driver_address_runs_on_static_shares(
    spark: SparkSession,
    echo: LocalEndpoint,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = save(prompts(spark, 40), tmp_path / "in")
    config = job(
        echo,
        {"path": source, "id_column": "id", "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "parquet"},
        limits={"driver_address": UNREACHABLE, "requests_per_minute": 60_000},
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.spark.job"):
        summary, _ = run(spark, config)
    assert (summary.rows, summary.ok) == (40, 40)
    assert echo.stats()["requests_total"] == 40
    warnings = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(warnings) == 1 and UNREACHABLE in warnings[0]
