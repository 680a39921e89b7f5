"""The job through Spark Connect: `python -m pipeline run --remote sc://...`, a client process
with no JVM of its own, against a Connect server on a `local[2]` master (see `connect_server`).

Each test counts at the endpoint what was sent, and reads the sink with the classic session of
the test run (the files are local to both).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession

from pipeline.cli import EXIT_CONFIG_ERROR, main
from pipeline.serving.process import LocalEndpoint, free_port
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV
from tests.connect_server import ConnectServer

ROOT = Path(__file__).resolve().parent.parent
CLIENT_TIMEOUT_S = 300


def run_remote(
    server: ConnectServer | str,
    echo: LocalEndpoint,
    source: Path,
    sink: Path,
    *args: str,
    **overrides: Any,
) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline run --remote <server>` on conf/local.yaml with `overrides`; `server`
    a URL, or `local[N]` for a server pyspark starts in the client."""
    settings: dict[str, Any] = {
        "source.path": source,
        "source.format": "parquet",
        "source.id_column": "id",
        "source.prompt_column": "prompt",
        "source.max_tokens_column": "null",
        "source.system_prompt": "null",
        "endpoint.host": echo.url,
        "endpoint.name": ENDPOINT_NAME,
        "endpoint.token_env": TOKEN_ENV,
        "sink.path": sink,
        "sink.chunk_rows": 1000,
        "limits.backoff_initial_s": 0.001,
        "limits.backoff_max_s": 0.01,
        **{key.replace("__", "."): value for key, value in overrides.items()},
    }
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    command = [
        sys.executable, "-m", "pipeline", "run", "--remote",
        server if isinstance(server, str) else server.url,
        "--config", str(ROOT / "conf" / "local.yaml"), "--progress", "log", *sets, *args,
    ]  # fmt: skip
    env = {**os.environ, TOKEN_ENV: TOKEN}
    env.pop("SPARK_REMOTE", None)
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S
    )
    assert TOKEN not in done.stdout + done.stderr
    return done


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def write_prompts(spark: SparkSession, path: Path, ids: range, mode: str = "error") -> None:
    rows = [(i, f"Tell me about item {i % 1000} please") for i in ids]
    spark.createDataFrame(rows, "id long, prompt string").write.mode(mode).parquet(str(path))


def summary_line(stdout: str, name: str) -> str:
    found = re.search(rf"^{name} +(.*)$", stdout, re.MULTILINE)
    assert found, stdout
    return found.group(1)


def sink_rows(spark: SparkSession, sink: Path, fmt: str) -> DataFrame:
    return spark.read.format(fmt).load(str(sink))


def test_an_embedded_connect_server_runs_the_job_and_warns_of_nothing(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    # pyspark sets the settings it started its server with again on the session, and the
    # static ones (Delta's extension, the preloading daemon, ...) cannot change there.
    source, sink = tmp_path / "in", tmp_path / "out"
    write_prompts(spark, source, range(5))
    done = run_remote("local[1]", echo, source, sink)
    assert summary_line(ok(done), "rows") == "5 (5 ok, 0 error)"
    assert echo.stats()["requests_total"] == 5
    assert "CANNOT_MODIFY_CONFIG" not in done.stderr
    # Its executors share this machine's files: the in-flight folder is looked for here, not
    # by a Spark read that fails on a new sink (a stack trace of 125 lines in the server's log).
    assert "Assume no metadata directory" not in done.stderr
    assert sink_rows(spark, sink, "delta").count() == 5
    assert not (tmp_path / "out_inflight").exists()


@pytest.mark.parametrize("fmt", ["delta", "parquet"])
def test_a_merge_rerun_under_connect_sends_nothing(
    spark: SparkSession,
    connect_server: ConnectServer,
    echo: LocalEndpoint,
    tmp_path: Path,
    fmt: str,
) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    write_prompts(spark, source, range(30))

    first = run_remote(connect_server, echo, source, sink, sink__format=fmt)
    stdout = ok(first)
    assert summary_line(stdout, "rows") == "30 (30 ok, 0 error)"
    assert echo.stats()["requests_total"] == 30
    assert "progress: 30/30 rows (100%)" in first.stderr

    # Below its default size, a rerun would key every row; here its rows are recognised.
    stdout = ok(run_remote(connect_server, echo, source, sink, sink__format=fmt,
                           sink__recognise_from_rows=0))  # fmt: skip
    assert echo.stats()["requests_total"] == 30  # the second run sent nothing
    assert summary_line(stdout, "already answered") == "30 (not sent)"
    assert summary_line(stdout, "recognised") == "30 by their values (no request built)"
    out = sink_rows(spark, sink, fmt)
    assert out.count() == 30
    assert out.select("id").distinct().count() == 30
    # The summaries went where the sink lives, through Spark: two runs, two JSON documents.
    summaries = spark.read.text(f"{sink}_runs/*").collect()
    assert len([row for row in summaries if '"run_id"' in row["value"]]) == 2


def test_incremental_rows_and_error_rows_under_connect(
    spark: SparkSession, connect_server: ConnectServer, echo: LocalEndpoint, tmp_path: Path
) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    write_prompts(spark, source, range(20))
    echo.control(error_rate=0.5, error_statuses=[503], seed=7)
    first = ok(run_remote(connect_server, echo, source, sink, limits__max_attempts=1))
    counted = re.fullmatch(r"20 \(\d+ ok, (\d+) error\)", summary_line(first, "rows"))
    assert counted is not None
    errors = int(counted[1])
    assert 0 < errors < 20

    echo.reset()  # a healthy endpoint, and ten new input rows
    write_prompts(spark, source, range(20, 30), mode="append")
    second = ok(run_remote(connect_server, echo, source, sink))
    assert echo.stats()["requests_total"] == errors + 10  # the error rows and the new ones
    assert summary_line(second, "rows") == f"{errors + 10} ({errors + 10} ok, 0 error)"
    out = sink_rows(spark, sink, "delta")
    counts = {row["id"]: row["count"] for row in out.groupBy("id").count().collect()}
    assert counts == {i: 1 for i in range(30)}  # every error row replaced, none doubled
    assert out.filter("status = 'ok'").count() == 30


def test_identical_requests_are_sent_once_under_connect(
    spark: SparkSession, connect_server: ConnectServer, echo: LocalEndpoint, tmp_path: Path
) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    rows = [(i, f"question {i % 4}") for i in range(24)]
    spark.createDataFrame(rows, "id long, prompt string").write.parquet(str(source))
    stdout = ok(run_remote(connect_server, echo, source, sink))
    assert summary_line(stdout, "rows") == "24 (24 ok, 0 error)"
    assert echo.stats()["requests_total"] == 4


def test_mode_error_and_dry_run_under_connect(
    spark: SparkSession, connect_server: ConnectServer, echo: LocalEndpoint, tmp_path: Path
) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    write_prompts(spark, source, range(12))

    dry = ok(run_remote(connect_server, echo, source, sink, "--dry-run"))
    assert "dry run: 12 input rows, 0 already answered, 12 to answer" in dry
    assert echo.stats()["requests_total"] == 0

    ok(run_remote(connect_server, echo, source, sink, sink__format="parquet"))
    refused = run_remote(
        connect_server, echo, source, sink, sink__format="parquet", sink__mode="error"
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"config error: sink.mode: is 'error' and {sink} already exists" in refused.stderr
    assert echo.stats()["requests_total"] == 12  # the refused run sent nothing


def test_a_remote_url_nobody_answers_is_a_config_error_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sc://127.0.0.1:{free_port()}"
    config = str(ROOT / "conf" / "local.yaml")
    assert main(["run", "--remote", url, "--config", config]) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"config error: --remote: no Spark Connect server answers at {url[5:]}" in err


def test_with_no_driver_under_connect_the_tasks_at_once_share_the_budget(
    spark: SparkSession, connect_server: ConnectServer, echo: LocalEndpoint, tmp_path: Path
) -> None:
    """Tasks that cannot reach the client (as on Databricks Connect): eight tasks on the
    server's two slots each keep half of the budget, counted through the Connect session."""
    source, sink = tmp_path / "in", tmp_path / "out"
    write_prompts(spark, source, range(160))
    done = run_remote(
        connect_server, echo, source, sink, source__partitions=8,
        limits__driver_address="192.0.2.1", limits__requests_per_minute=1200,
    )  # fmt: skip
    assert summary_line(ok(done), "rows") == "160 (160 ok, 0 error)"
    assert "at most 2 tasks run at once: each keeps 1/2 of the rate budgets" in done.stderr
    stats = echo.stats()
    span = stats["last_request_at"] - stats["first_request_at"]
    assert stats["requests_total"] == 160
    assert 0.6 * 20 < 160 / span <= 20 * 1.05  # an eighth each would be 5/s
