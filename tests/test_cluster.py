"""The job on a real (standalone) cluster: `spark-submit --master spark://...`, executors in
JVMs of their own on two workers, reaching the driver's budget server over the network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from pipeline.serving.process import LocalEndpoint
from tests.cluster import StandaloneCluster
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV

ROOT = Path(__file__).resolve().parent.parent
SUBMIT_TIMEOUT_S = 600
# The job-wide budget: 20 requests/s across both executors.
REQUESTS_PER_MINUTE = 1200
# The endpoint's count over its first-to-last request span; the budget's burst allowance and
# the span's ends make a short run look a little faster than the rate.
RATE_TOLERANCE = 1.10


def test_spark_submit_on_a_cluster_answers_every_row_once_within_the_job_budget(
    spark: SparkSession, cluster: StandaloneCluster, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = [(i, f"question {i} for the echo model") for i in range(400)]
    spark.createDataFrame(rows, "id long, prompt string").repartition(4).write.parquet(
        str(tmp_path / "in")
    )
    overrides = {
        "source.path": tmp_path / "in",
        "source.format": "parquet",
        "source.id_column": "id",
        "source.max_tokens_column": "null",
        "source.system_prompt": "null",
        "endpoint.host": echo.url,
        "endpoint.name": ENDPOINT_NAME,
        "endpoint.token_env": TOKEN_ENV,
        "sink.path": tmp_path / "out",
        "sink.format": "parquet",
        "sink.chunk_rows": 1000,
        "limits.requests_per_minute": REQUESTS_PER_MINUTE,
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    command = [
        str(Path(sys.executable).with_name("spark-submit")),
        "--master", cluster.url,
        "--executor-memory", "512m",
        "--total-executor-cores", "2",
        "--conf", "spark.ui.enabled=false",
        str(ROOT / "jobs" / "batch_chat.py"),
        "--config", str(ROOT / "conf" / "local.yaml"),
        *sets,
    ]  # fmt: skip
    env = {**os.environ, TOKEN_ENV: TOKEN, "PYSPARK_PYTHON": sys.executable}
    env.pop("SPARK_REMOTE", None)
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^rows +400 \(400 ok, 0 error\)$", done.stdout, re.MULTILINE)
    assert TOKEN not in done.stdout + done.stderr
    assert "cannot reach" not in done.stderr  # the executors leased from the driver

    stats = echo.stats()
    assert stats["requests_total"] == 400
    span = stats["last_request_at"] - stats["first_request_at"]
    assert 400 / span <= REQUESTS_PER_MINUTE / 60 * RATE_TOLERANCE
    out = spark.read.parquet(str(tmp_path / "out"))
    assert out.count() == 400
    assert out.select("id").distinct().count() == 400
