"""The driver killed with SIGKILL half-way: the rerun loses no row and pays again for at most the
chunk that was in flight."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession

from pipeline.serving.process import LocalEndpoint
from tests.conftest import ECHO_ARGS, ENDPOINT_NAME, TOKEN, TOKEN_ENV

ROOT = Path(__file__).resolve().parent.parent
ROWS, CHUNK_ROWS = 400, 50  # 8 chunks
DEADLINE_S = 240.0


def job_command(source: Path, sink: Path, endpoint: LocalEndpoint) -> list[str]:
    overrides = [
        f"source.path={source}",
        "source.format=parquet",
        "source.max_tokens_column=null",
        "source.partitions=2",
        f"endpoint.host={endpoint.url}",
        f"endpoint.name={ENDPOINT_NAME}",
        f"endpoint.token_env={TOKEN_ENV}",
        f"sink.path={sink}",
        "sink.mode=merge",
        f"sink.chunk_rows={CHUNK_ROWS}",
        "limits.concurrency=4",
    ]
    args = [sys.executable, "-m", "pipeline", "run", "--config", str(ROOT / "conf" / "local.yaml")]
    return [*args, *(a for o in overrides for a in ("--set", o))]


def commits(sink: Path) -> int:
    return len(list((sink / "_delta_log").glob("*.json")))


def wait_until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sigkill_half_way_then_rerun_loses_nothing_and_pays_once(
    spark: SparkSession, tmp_path: Path
) -> None:
    source, sink, log = tmp_path / "in", tmp_path / "out", tmp_path / "first_run.log"
    rows = [(i, f"question number {i}") for i in range(ROWS)]
    spark.createDataFrame(rows, "id long, prompt string").write.parquet(str(source))
    env = {**os.environ, TOKEN_ENV: TOKEN}
    # 0.1 s per answer: each chunk takes about a second, so the kill lands mid-run.
    with LocalEndpoint(*ECHO_ARGS, "--latency-s", "0.1", env={TOKEN_ENV: TOKEN}) as endpoint:
        command = job_command(source, sink, endpoint)
        with log.open("w") as out:
            first = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                wait_until(lambda: commits(sink) >= 4 or first.poll() is not None, "4 commits")
                assert first.poll() is None, "the job ended before it could be killed"
                os.kill(first.pid, signal.SIGKILL)  # the driver only; its JVM follows it
                first.wait()
                wait_until(lambda: group_gone(first.pid), "the killed job's processes to exit")
            finally:
                if not group_gone(first.pid):
                    os.killpg(first.pid, signal.SIGKILL)
        committed = spark.read.format("delta").load(str(sink)).count()
        sent_before = endpoint.stats()["requests_total"]
        largest_chunk = int(re.findall(r"chunks of \d+-(\d+) rows", log.read_text())[0])
        assert 0 < committed < ROWS

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
    # What the first run sent but never committed: no more than the chunk in flight.
    resent = sent_before - committed
    assert sent_total == ROWS + resent
    assert 0 <= resent <= largest_chunk
    assert TOKEN not in log.read_text() + second.stdout + second.stderr
