"""One run at a time per sink: the lease next to the sink, on a real Delta table; two real runs
started together."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipeline.core.config import SinkConfig
from pipeline.core.errors import JobAborted, SinkBusy
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.lease import SinkLease
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV

ROOT = Path(__file__).resolve().parent.parent
TTL_S = 60.0


def sink_at(path: Path) -> SinkConfig:
    return SinkConfig(path=str(path), lease_ttl_s=TTL_S)


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def test_a_held_lease_refuses_a_second_run_naming_the_first(
    spark: SparkSession, tmp_path: Path
) -> None:
    sink = sink_at(tmp_path / "out")
    with SinkLease(spark, sink, "run-one") as first:
        assert first.holder().run_id == "run-one"
        # The first run on a sink created the table already holding its lease: one commit.
        history = spark.sql(f"DESCRIBE HISTORY delta.`{tmp_path / 'out_lease'}`").collect()
        assert len(history) == 1
        with pytest.raises(SinkBusy) as caught, SinkLease(spark, sink, "run-two"):
            pass
        assert "is being written by run run-one" in str(caught.value)
        assert "this run sent nothing" in str(caught.value)
    with SinkLease(spark, sink, "run-two") as second:  # given back at the end of the first
        assert second.holder().run_id == "run-two"


def test_a_lease_left_by_a_dead_run_is_taken(spark: SparkSession, tmp_path: Path) -> None:
    sink = sink_at(tmp_path / "out")
    # Left by a process of this host that is gone (kill -9): taken at once.
    crashed = SinkLease(spark, sink, "crashed-here", pid=dead_pid()).__enter__()
    elsewhere = SinkLease(spark, sink, "crashed-elsewhere", host="another-host", pid=1)
    try:
        with SinkLease(spark, sink, "next") as taker:
            assert taker.holder().run_id == "next"
        # Left by a run on another host: taken once it expired.
        elsewhere.__enter__()
        with pytest.raises(SinkBusy), SinkLease(spark, sink, "too-early"):
            pass
        later = time.time() + TTL_S + 1
        with SinkLease(spark, sink, "after-expiry", clock=lambda: later) as taker:
            assert taker.holder().run_id == "after-expiry"
    finally:
        for left in (crashed, elsewhere):  # stop their renewal threads
            left.__exit__(None, None, None)


def test_a_run_whose_lease_was_taken_stops_before_committing_more(
    spark: SparkSession, tmp_path: Path
) -> None:
    sink = sink_at(tmp_path / "out")
    slow = SinkLease(spark, sink, "slow", host="another-host", pid=1).__enter__()
    later = time.time() + TTL_S + 1
    try:
        with SinkLease(spark, sink, "taker", clock=lambda: later):
            assert slow.renew() is False  # its renewal finds the lease gone
            with pytest.raises(JobAborted, match=r"lease on .* expired and another run took"):
                slow.check()
    finally:
        slow.__exit__(None, None, None)


def test_two_runs_started_together_one_runs_the_other_sends_nothing(tmp_path: Path) -> None:
    rows = 60
    source = tmp_path / "in"
    source.mkdir()
    (source / "prompts.jsonl").write_text(
        "".join(f'{{"id": {i}, "prompt": "question {i}"}}\n' for i in range(rows))
    )
    env = {**os.environ, TOKEN_ENV: TOKEN, "PYSPARK_PYTHON": sys.executable}
    with LocalEndpoint("--model", "echo", "--endpoint-name", ENDPOINT_NAME, "--token-env",
                       TOKEN_ENV, "--latency-s", "0.05", env={TOKEN_ENV: TOKEN}) as endpoint:
        spark_free = [sys.executable, "-c", _WRITE_PARQUET, str(source)]
        subprocess.run(spark_free, check=True, env=env)
        overrides = [
            f"source.path={source / 'parquet'}", "source.format=parquet",
            "source.max_tokens_column=null", f"endpoint.host={endpoint.url}",
            f"endpoint.name={ENDPOINT_NAME}", f"endpoint.token_env={TOKEN_ENV}",
            f"sink.path={tmp_path / 'out'}", "limits.concurrency=2",
        ]  # fmt: skip
        command = [sys.executable, "-m", "pipeline", "run", "--config",
                   str(ROOT / "conf" / "local.yaml"),
                   *(arg for o in overrides for arg in ("--set", o))]  # fmt: skip
        runs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
        outputs = [run.communicate(timeout=600) for run in runs]
        sent = endpoint.stats()["requests_total"]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 3], [_causes(err) for _, err in outputs]
    by_code = {run.returncode: output for run, output in zip(runs, outputs, strict=True)}
    winner_out, loser_err = by_code[0][0], by_code[3][1]
    winner_id = next(line.split()[-1] for line in winner_out.splitlines()
                     if line.startswith("run "))  # fmt: skip
    (stopped,) = [line for line in loser_err.splitlines() if line.startswith("job stopped: ")]
    assert f"is being written by run {winner_id}" in stopped and "sent nothing" in stopped
    assert sent == rows  # the loser sent nothing


# Writes the source with pyarrow, so the test needs no third Spark session.
_WRITE_PARQUET = """
import json, sys, pathlib
import pyarrow as pa, pyarrow.parquet as pq
root = pathlib.Path(sys.argv[1])
rows = [json.loads(line) for line in (root / "prompts.jsonl").read_text().splitlines()]
(root / "parquet").mkdir()
pq.write_table(pa.Table.from_pylist(rows), root / "parquet" / "part-0.parquet")
"""


def _causes(stderr: str) -> str:
    """A failed run's errors as a reader wants them: each exception's own line (a JVM stack
    ends with frames that say nothing), then the end of the output."""
    said = re.compile(r"(Error|Exception|Caused by)[:\s]")
    lines = [line for line in stderr.splitlines() if said.search(line) and "\tat " not in line]
    return "\n".join(lines[:20]) + "\n...\n" + stderr[-1000:]
