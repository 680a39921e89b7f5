"""The job on a real (standalone) cluster: `spark-submit --master spark://...`, executors in
JVMs of their own on two workers, reaching the driver's budget server over the network; and
what a lost executor or a lost driver costs there (see `pipeline.http.journal`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipeline.serving.process import LocalEndpoint
from tests.cluster import StandaloneCluster
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV
from tests.polling import group_gone, pids_running, wait_until

ROOT = Path(__file__).resolve().parent.parent
SUBMIT_TIMEOUT_S = 600
# The job-wide budget: 20 requests/s across both executors.
REQUESTS_PER_MINUTE = 1200
# The endpoint's count over its first-to-last request span; the budget's burst allowance and
# the span's ends make a short run look a little faster than the rate.
RATE_TOLERANCE = 1.10

# The kill tests: 2 tasks of 4 requests at a time, 0.1 s per answer, one chunk for every row.
KILL_ROWS, TASKS, CONCURRENCY, LATENCY_S = 1000, 2, 4, 0.1
TASK_PER_SECOND = CONCURRENCY / LATENCY_S  # 40 answers a second per task
# A lost task attempt pays again for its requests in flight and the answers it got since its
# last write (every second), plus half a second's slack for the moments its Python worker
# still runs after its JVM is gone.
EXECUTOR_REPAID_BOUND = CONCURRENCY + 1.5 * TASK_PER_SECOND
DRIVER_REPAID_BOUND = TASKS * EXECUTOR_REPAID_BOUND
EXECUTOR = "CoarseGrainedExecutorBackend"


def submit_command(cluster: StandaloneCluster, overrides: Mapping[str, object]) -> list[str]:
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    return [
        str(Path(sys.executable).with_name("spark-submit")),
        "--master", cluster.url,
        "--executor-memory", "512m",
        "--total-executor-cores", "2",
        "--conf", "spark.ui.enabled=false",
        str(ROOT / "jobs" / "batch_chat.py"),
        "--config", str(ROOT / "conf" / "local.yaml"),
        *sets,
    ]  # fmt: skip


def submit_env() -> dict[str, str]:
    env = {**os.environ, TOKEN_ENV: TOKEN, "PYSPARK_PYTHON": sys.executable}
    env.pop("SPARK_REMOTE", None)
    return env


def job_overrides(source: Path, sink: Path, endpoint: LocalEndpoint) -> dict[str, object]:
    return {
        "source.path": source,
        "source.format": "parquet",
        "source.id_column": "id",
        "source.max_tokens_column": "null",
        "source.system_prompt": "null",
        "endpoint.host": endpoint.url,
        "endpoint.name": ENDPOINT_NAME,
        "endpoint.token_env": TOKEN_ENV,
        "sink.path": sink,
        "sink.format": "parquet",
    }


def write_prompts(spark: SparkSession, path: Path, rows: int, partitions: int) -> None:
    prompts = [(i, f"question {i} for the echo model") for i in range(rows)]
    spark.createDataFrame(prompts, "id long, prompt string").repartition(partitions).write.parquet(
        str(path)
    )


def reported(pattern: str, text: str) -> int:
    found = re.search(pattern, text, re.MULTILINE)
    assert found is not None, f"{pattern!r} not in the job's output"
    return int(found.group(1))


def assert_every_row_once(spark: SparkSession, sink: Path, rows: int) -> None:
    out = spark.read.parquet(str(sink))
    assert out.count() == rows
    assert out.select("id").distinct().count() == rows
    assert out.filter("status = 'ok'").count() == rows


def test_spark_submit_on_a_cluster_answers_every_row_once_within_the_job_budget(
    spark: SparkSession, cluster: StandaloneCluster, echo: LocalEndpoint, tmp_path: Path
) -> None:
    write_prompts(spark, tmp_path / "in", 400, 4)
    overrides = {
        **job_overrides(tmp_path / "in", tmp_path / "out", echo),
        "sink.chunk_rows": 1000,
        "limits.requests_per_minute": REQUESTS_PER_MINUTE,
    }
    done = subprocess.run(
        submit_command(cluster, overrides), env=submit_env(), cwd=ROOT, capture_output=True,
        text=True, timeout=SUBMIT_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^rows +400 \(400 ok, 0 error\)$", done.stdout, re.MULTILINE)
    assert TOKEN not in done.stdout + done.stderr
    assert "cannot reach" not in done.stderr  # the executors leased from the driver

    stats = echo.stats()
    assert stats["requests_total"] == 400
    span = stats["last_request_at"] - stats["first_request_at"]
    assert 400 / span <= REQUESTS_PER_MINUTE / 60 * RATE_TOLERANCE
    assert_every_row_once(spark, tmp_path / "out", 400)


def kill_job(
    spark: SparkSession, cluster: StandaloneCluster, endpoint: LocalEndpoint, tmp_path: Path
) -> list[str]:
    """The kill tests' job: `KILL_ROWS` prompts from `tmp_path/in` to `tmp_path/out`, one
    chunk (no commit before the kill), answered `LATENCY_S` after they are asked."""
    endpoint.control(latency_s=LATENCY_S)
    write_prompts(spark, tmp_path / "in", KILL_ROWS, TASKS)
    overrides = {
        **job_overrides(tmp_path / "in", tmp_path / "out", endpoint),
        "source.partitions": TASKS,
        "sink.chunk_rows": 1_000_000,
        "limits.concurrency": CONCURRENCY,
    }
    return submit_command(cluster, overrides)


@contextmanager
def submitted(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`command` running in a process group of its own, its output in `log`; whatever is
    left of the group is killed on leaving."""
    with log.open("w") as out:
        job = subprocess.Popen(
            command, env=submit_env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield job
        finally:
            if not group_gone(job.pid):
                os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def wait_for_paid(endpoint: LocalEndpoint, job: subprocess.Popen[bytes], requests: int) -> int:
    """Wait until the endpoint counted `requests` while `job` runs; the count then."""
    wait_until(
        lambda: endpoint.stats()["requests_total"] >= requests or job.poll() is not None,
        f"{requests} requests",
        SUBMIT_TIMEOUT_S,
    )
    assert job.poll() is None, "the job ended before the kill"
    return int(endpoint.stats()["requests_total"])


@pytest.mark.slow
def test_an_executor_killed_mid_chunk_pays_again_only_for_what_was_in_flight(
    spark: SparkSession, cluster: StandaloneCluster, private_echo: LocalEndpoint, tmp_path: Path
) -> None:
    endpoint = private_echo
    command = kill_job(spark, cluster, endpoint, tmp_path)
    with submitted(command, tmp_path / "job.log") as job:
        paid_at_kill = wait_for_paid(endpoint, job, KILL_ROWS // 4)
        executors = pids_running(EXECUTOR)
        assert len(executors) == TASKS
        os.kill(executors[0], signal.SIGKILL)
        assert job.wait(SUBMIT_TIMEOUT_S) == 0, log_tail(tmp_path / "job.log")
    output = (tmp_path / "job.log").read_text()

    assert_every_row_once(spark, tmp_path / "out", KILL_ROWS)
    paid = endpoint.stats()["requests_total"]
    repaid = paid - KILL_ROWS
    # Without the in-flight answers the lost task's whole share was paid again (~paid_at_kill/2).
    assert paid_at_kill / TASKS > EXECUTOR_REPAID_BOUND
    assert 0 <= repaid <= EXECUTOR_REPAID_BOUND, f"{repaid} requests paid twice"
    # The summary and the progress count the lost attempt's requests too; only what it had in
    # flight, or answered after its last write, can be missing from them.
    summary = reported(r"^requests sent +(\d+)$", output)
    assert 0 <= paid - summary <= EXECUTOR_REPAID_BOUND, (paid, summary)
    progress = re.findall(r"progress: (\d+)/(\d+) rows", output)
    assert progress and progress[-1] == (str(KILL_ROWS), str(KILL_ROWS))
    assert not list((tmp_path / "out_inflight").glob("run=*"))


@pytest.mark.slow
def test_the_driver_killed_mid_chunk_then_rerun_pays_again_only_for_what_was_in_flight(
    spark: SparkSession, cluster: StandaloneCluster, private_echo: LocalEndpoint, tmp_path: Path
) -> None:
    endpoint = private_echo
    command = kill_job(spark, cluster, endpoint, tmp_path)
    with submitted(command, tmp_path / "first.log") as first:
        wait_for_paid(endpoint, first, KILL_ROWS // 2)
        os.killpg(first.pid, signal.SIGKILL)  # spark-submit's JVM and the Python driver
        first.wait()  # reaped: a zombie would keep its group alive
        wait_until(lambda: group_gone(first.pid), "the driver to exit", SUBMIT_TIMEOUT_S)
    # The master takes the executors down once their driver is gone; their last requests
    # still count as paid by the first run.
    wait_until(lambda: not pids_running(EXECUTOR), "the executors to exit", SUBMIT_TIMEOUT_S)
    paid_first = endpoint.stats()["requests_total"]
    assert not list((tmp_path / "out").glob("*.parquet"))  # nothing committed: one chunk

    second = subprocess.run(
        command, env=submit_env(), cwd=ROOT, capture_output=True, text=True,
        timeout=SUBMIT_TIMEOUT_S,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert_every_row_once(spark, tmp_path / "out", KILL_ROWS)
    paid = endpoint.stats()["requests_total"]
    assert paid_first > DRIVER_REPAID_BOUND  # without the in-flight answers, all paid again
    assert 0 <= paid - KILL_ROWS <= DRIVER_REPAID_BOUND, f"{paid - KILL_ROWS} paid twice"
    # The rerun's summary counts what the rerun paid, exactly: nothing of it was lost.
    assert reported(r"^requests sent +(\d+)$", second.stdout) == paid - paid_first
    assert not list((tmp_path / "out_inflight").glob("run=*"))


def log_tail(path: Path) -> str:
    return path.read_text()[-3000:]
