"""The driver killed with SIGKILL half-way through a chunk: the rerun loses no row, and pays again
only for what was in flight at the kill plus about a second's answers (the tasks' in-flight
answers, `pipeline.http.journal`), however large the chunk."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from pipeline.serving.process import LocalEndpoint
from tests.conftest import ECHO_ARGS, ENDPOINT_NAME, TOKEN, TOKEN_ENV
from tests.polling import group_gone, wait_until

ROOT = Path(__file__).resolve().parent.parent
ROWS, CHUNK_ROWS = 1000, 500  # 2 chunks: the kill lands in the second
TASKS, CONCURRENCY, LATENCY_S = 2, 4, 0.1
# Paid twice at most: the requests in flight at the kill, plus what the tasks answered since
# their last write (every second: 80 answers at 4 requests per 0.1 s on each of 2 tasks), and
# half a second's slack for the tasks still running while the killed driver's JVM goes down.
IN_FLIGHT = TASKS * CONCURRENCY
PER_SECOND = IN_FLIGHT / LATENCY_S
REPAID_BOUND = IN_FLIGHT + 1.5 * PER_SECOND
DEADLINE_S = 240.0


def job_command(source: Path, sink: Path, endpoint: LocalEndpoint) -> list[str]:
    overrides = [
        f"source.path={source}",
        "source.format=parquet",
        "source.max_tokens_column=null",
        f"source.partitions={TASKS}",
        f"endpoint.host={endpoint.url}",
        f"endpoint.name={ENDPOINT_NAME}",
        f"endpoint.token_env={TOKEN_ENV}",
        f"sink.path={sink}",
        "sink.mode=merge",
        f"sink.chunk_rows={CHUNK_ROWS}",
        f"limits.concurrency={CONCURRENCY}",
    ]
    args = [sys.executable, "-m", "pipeline", "run", "--config", str(ROOT / "conf" / "local.yaml")]
    return [*args, *(a for o in overrides for a in ("--set", o))]


def test_sigkill_mid_chunk_then_rerun_loses_nothing_and_pays_again_only_what_was_in_flight(
    spark: SparkSession, tmp_path: Path
) -> None:
    source, sink, log = tmp_path / "in", tmp_path / "out", tmp_path / "first_run.log"
    rows = [(i, f"question number {i}") for i in range(ROWS)]
    spark.createDataFrame(rows, "id long, prompt string").write.parquet(str(source))
    env = {**os.environ, TOKEN_ENV: TOKEN}
    # 0.1 s per answer: a chunk takes about 6 s, so the kill lands well inside the second.
    latency = ("--latency-s", str(LATENCY_S))
    with LocalEndpoint(*ECHO_ARGS, *latency, env={TOKEN_ENV: TOKEN}) as endpoint:
        command = job_command(source, sink, endpoint)
        with log.open("w") as out:
            first = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                # Well into the second chunk: 300 of its 500 answers paid.
                wait_until(
                    lambda: endpoint.stats()["requests_total"] >= CHUNK_ROWS + 300
                    or first.poll() is not None,
                    "300 answers into the second chunk",
                    DEADLINE_S,
                )
                assert first.poll() is None, "the job ended before it could be killed"
                os.kill(first.pid, signal.SIGKILL)  # the driver only; its JVM follows it
                first.wait()
                wait_until(lambda: group_gone(first.pid), "the job's processes to exit", DEADLINE_S)
            finally:
                if not group_gone(first.pid):
                    os.killpg(first.pid, signal.SIGKILL)
        committed = spark.read.format("delta").load(str(sink)).count()
        sent_before = endpoint.stats()["requests_total"]
        assert 0 < committed < ROWS
        assert sent_before - committed > REPAID_BOUND  # without the journal, all paid again

        second = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=DEADLINE_S
        )
        assert second.returncode == 0, second.stderr[-3000:]
        assert re.search(rf"^already answered +{committed} \(not sent\)$", second.stdout, re.M)
        sent_total = endpoint.stats()["requests_total"]

    out = spark.read.format("delta").load(str(sink))
    assert out.count() == ROWS
    assert out.select("id").distinct().count() == ROWS  # every input row exactly once
    assert out.filter("status = 'ok'").count() == ROWS
    repaid = sent_total - ROWS
    assert 0 <= repaid <= REPAID_BOUND
    # The rerun's summary counts what the rerun paid, as the endpoint did.
    found = re.search(r"^requests sent +(\d+)$", second.stdout, re.M)
    assert found is not None and int(found.group(1)) == sent_total - sent_before
    assert not list((tmp_path / "out_inflight").glob("run=*"))  # removed once committed
    assert TOKEN not in log.read_text() + second.stdout + second.stderr
