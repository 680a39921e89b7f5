"""The two entry points: `python -m pipeline run` and `spark-submit jobs/batch_chat.py`."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from pipeline.cli import EXIT_CONFIG_ERROR, EXIT_JOB_ABORTED, main
from pipeline.serving.process import LocalEndpoint, free_port
from pipeline.spark.session import local_slots
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV

ROOT = Path(__file__).resolve().parent.parent
# Columns that differ between two runs of the same requests.
VOLATILE = ["response_id", "latency_ms"]


@pytest.mark.parametrize(
    ("master", "slots"),
    [("local", 1), ("local[3]", 3), ("local[*]", os.cpu_count()), ("local[4, 2]", 4),
     ("spark://127.0.0.1:7077", None), ("yarn", None), ("local-cluster[2,1,1024]", None)],
)  # fmt: skip
def test_a_local_master_counts_its_slots(master: str, slots: int | None) -> None:
    # The session a run starts sizes its partitions by this (see `local_sizes`).
    assert local_slots(master) == slots


def test_a_session_spark_submit_started_on_a_local_master_is_sized_for_its_slots(
    tmp_path: Path,
) -> None:
    # Shuffles over twice the slots (not Spark's 200), Delta's log replay over the slots, the
    # preloading Python daemon, and what the user set (here with --conf) kept as set, the
    # compiled classes' cache too.
    script = tmp_path / "sizes.py"
    script.write_text(
        "from pipeline.spark.session import spark_session\n"
        "spark = spark_session()\n"
        "for key in ('spark.sql.shuffle.partitions',\n"
        "            'spark.databricks.delta.snapshotPartitions',\n"
        "            'spark.sql.codegen.cache.maxEntries', 'spark.python.daemon.module'):\n"
        "    print(key, spark.conf.get(key))\n"
    )
    submit = str(Path(sys.executable).with_name("spark-submit"))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    command = [submit, "--master", "local[3]",
               "--conf", "spark.databricks.delta.snapshotPartitions=5",
               "--conf", "spark.sql.codegen.cache.maxEntries=300", str(script)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "spark.sql.shuffle.partitions 6\n" in done.stdout
    assert "spark.databricks.delta.snapshotPartitions 5\n" in done.stdout
    assert "spark.sql.codegen.cache.maxEntries 300\n" in done.stdout
    assert "spark.python.daemon.module pipeline.spark.daemon\n" in done.stdout


def test_a_session_this_package_starts_keeps_the_classes_a_run_compiles(
    spark: SparkSession,
) -> None:
    # Spark's 100 would let a run's plans evict each other (see `CODEGEN_CACHE`).
    assert spark.conf.get("spark.sql.codegen.cache.maxEntries") == "1000"


def test_config_error_exits_before_spark_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = yaml.safe_load((ROOT / "conf" / "local.yaml").read_text())
    raw["limits"]["concurrency"] = "lots"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["run", "--config", str(bad)]) == EXIT_CONFIG_ERROR
    assert "config error: limits.concurrency: must be an integer" in capsys.readouterr().err


def test_set_override_with_unknown_key_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "conf" / "local.yaml")
    assert main(["run", "--config", config, "--set", "limits.concurency=4"]) == EXIT_CONFIG_ERROR
    assert "limits.concurency: unknown key; did you mean 'concurrency'?" in capsys.readouterr().err


def test_python_module_and_spark_submit_do_the_same_thing(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    rows = [(i, f"question {i} for the echo model") for i in range(25)]
    spark.createDataFrame(rows, "id long, prompt string").write.parquet(str(tmp_path / "in"))
    env = {
        **os.environ,
        TOKEN_ENV: TOKEN,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    submit = str(Path(sys.executable).with_name("spark-submit"))
    entry_points = {
        "module": [sys.executable, "-m", "pipeline", "run"],
        "submit": [submit, "--master", "local[2]", str(ROOT / "jobs" / "batch_chat.py")],
    }
    outputs = {}
    for name, command in entry_points.items():
        out = tmp_path / f"out_{name}"
        overrides = {
            "source.path": tmp_path / "in",
            "source.format": "parquet",
            "source.id_column": "id",
            "source.max_tokens_column": "null",
            "endpoint.host": echo.url,
            "endpoint.name": ENDPOINT_NAME,
            "endpoint.token_env": TOKEN_ENV,
            "sink.path": out,
            "sink.format": "parquet",
        }
        sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
        args = [*command, "--config", str(ROOT / "conf" / "local.yaml"), *sets]
        done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert re.search(r"^rows +25 \(25 ok, 0 error\)$", done.stdout, re.MULTILINE)
        assert TOKEN not in done.stdout + done.stderr
        outputs[name] = spark.read.parquet(str(out)).drop(*VOLATILE)
    assert outputs["module"].count() == 25
    assert_df_equality(outputs["module"], outputs["submit"], ignore_row_order=True)
    assert echo.stats()["requests_total"] == 50


def test_stopped_job_exits_3_with_one_clear_sentence(
    spark: SparkSession,
    private_echo: LocalEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spark.createDataFrame(
        [(i, f"q {i}") for i in range(20)], "id long, prompt string"
    ).write.parquet(str(tmp_path / "in"))
    monkeypatch.setenv(TOKEN_ENV, "dapi-wrong")
    overrides = [
        f"source.path={tmp_path / 'in'}",
        "source.format=parquet",
        "source.max_tokens_column=null",
        f"endpoint.host={private_echo.url}",
        f"endpoint.name={ENDPOINT_NAME}",
        f"endpoint.token_env={TOKEN_ENV}",
        f"sink.path={tmp_path / 'out'}",
    ]
    args = ["run", "--config", str(ROOT / "conf" / "local.yaml")]
    assert main([*args, *(a for o in overrides for a in ("--set", o))]) == EXIT_JOB_ABORTED
    err = capsys.readouterr().err
    assert "job stopped: 3 requests to" in err and "endpoint.token_env" in err
    assert "dapi-wrong" not in err


@pytest.mark.parametrize("remote", [None, "local[2]"])
def test_a_stopped_job_in_its_own_process_ends_on_its_one_sentence_with_no_stack(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, remote: str | None
) -> None:
    """Run as a user runs it: on a local master the tasks run in the driver's JVM, whose Spark
    would log the failed task's Python traceback three times, with Java stacks, before it (and
    an embedded Connect server each error it answers with)."""
    spark.createDataFrame(
        [(i, f"q {i}") for i in range(20)], "id long, prompt string"
    ).write.parquet(str(tmp_path / "in"))
    argv = overrides_for(tmp_path / "in", tmp_path / "out", echo.url, "endpoint.name=nope",
                         "sink.format=parquet", "source.partitions=2")  # fmt: skip
    if remote is not None:
        argv += ["--remote", remote]
    env = {**os.environ, TOKEN_ENV: TOKEN, "PYSPARK_PYTHON": sys.executable}
    command = [sys.executable, "-m", "pipeline", *argv]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_JOB_ABORTED, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("job stopped: 3 requests to ") and "nope" in lines[-1]
    assert "Traceback" not in done.stderr
    assert not [line for line in lines if line.lstrip().startswith("at ")]  # no Java frame


def overrides_for(source: Path, sink: Path, host: str, *extra: str) -> list[str]:
    values = [
        f"source.path={source}",
        "source.format=parquet",
        "source.max_tokens_column=null",
        f"endpoint.host={host}",
        f"endpoint.name={ENDPOINT_NAME}",
        f"endpoint.token_env={TOKEN_ENV}",
        f"sink.path={sink}",
        *extra,
    ]
    return ["run", "--config", str(ROOT / "conf" / "local.yaml"),
            *(arg for value in values for arg in ("--set", value))]  # fmt: skip


def wheel_entry_point() -> object:
    """`batch-chat` as the installed package declares it (what a python_wheel_task loads)."""
    (entry,) = entry_points(group="console_scripts", name="batch-chat")
    return entry.load()


def test_the_wheel_entry_point_raises_its_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Databricks python_wheel_task calls the entry point with sys.argv set and ignores what
    it returns: a failure must be a SystemExit, or the run is marked succeeded."""
    entry = wheel_entry_point()
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {path: in}\n")
    monkeypatch.setattr(sys, "argv", ["batch-chat", "run", "--config", str(bad)])
    with pytest.raises(SystemExit) as exited:
        entry()  # type: ignore[operator]
    assert exited.value.code == EXIT_CONFIG_ERROR


@pytest.mark.parametrize("host", ["closed-port", "http://no-such-host.invalid:8765"])
def test_an_unreachable_host_stops_the_job_with_one_sentence(
    spark: SparkSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    host: str,
) -> None:
    url = f"http://127.0.0.1:{free_port()}" if host == "closed-port" else host
    spark.createDataFrame(
        [(i, f"q {i}") for i in range(200)], "id long, prompt string"
    ).repartition(2).write.parquet(str(tmp_path / "in"))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    argv = overrides_for(tmp_path / "in", tmp_path / "out", url, "limits.max_attempts=6")
    monkeypatch.setattr(sys, "argv", ["batch-chat", *argv])
    with pytest.raises(SystemExit) as exited:
        wheel_entry_point()()  # type: ignore[operator]
    assert exited.value.code == EXIT_JOB_ABORTED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("job stopped: 3 requests to ") and url in last
    assert "could not connect" in last and "check endpoint.host" in last
    assert TOKEN not in last
    assert not list((tmp_path / "out").glob("_delta_log/*.json"))  # nothing was committed


def test_max_error_fraction_fails_the_entry_point_after_writing(
    spark: SparkSession,
    echo: LocalEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spark.createDataFrame(
        [(i, None if i < 3 else f"q {i}") for i in range(10)], "id long, prompt string"
    ).write.parquet(str(tmp_path / "in"))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    argv = overrides_for(tmp_path / "in", tmp_path / "out", echo.url,
                         "limits.max_error_fraction=0.1")  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["batch-chat", *argv])
    with pytest.raises(SystemExit) as exited:
        wheel_entry_point()()  # type: ignore[operator]
    assert exited.value.code == EXIT_JOB_ABORTED
    assert "3 of 10 rows ended in error" in capsys.readouterr().err
    assert spark.read.format("delta").load(str(tmp_path / "out")).count() == 10


def write_sources(spark: SparkSession, root: Path) -> dict[str, Path]:
    """A source of each wrong kind."""
    frame = spark.createDataFrame([(1, "q")], "id long, prompt string")
    frame.write.parquet(str(root / "parquet"))
    frame.write.format("delta").save(str(root / "delta"))
    (root / "prompts.csv").write_text("id,prompt\n1,q\n")
    frame.write.parquet(str(root / "stray"))
    (root / "stray" / "zz-notes.txt").write_text("notes about the data, not Parquet at all")
    return {"parquet": root / "parquet", "delta": root / "delta",
            "csv": root / "prompts.csv", "stray": root / "stray"}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "fmt", "key", "says"),
    [
        ("missing", "parquet", "source.path", "does not exist"),
        ("csv", "parquet", "source.format", "prompts.csv in"),
        ("stray", "parquet", "source.format", "zz-notes.txt in"),
        ("parquet", "delta", "source.format", "is not a Delta table"),
        ("delta", "parquet", "source.format", "is a Delta table"),
    ],
)
def test_a_source_that_is_not_what_the_config_says_exits_2_with_one_line(
    spark: SparkSession,
    echo: LocalEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    fmt: str,
    key: str,
    says: str,
) -> None:
    sources = write_sources(spark, tmp_path)
    source = sources.get(kind, tmp_path / "missing")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    argv = overrides_for(source, tmp_path / "out", echo.url, f"source.format={fmt}")
    assert main(argv) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"config error: {key}: ") and says in last, last
    assert "Traceback" not in err and "at org.apache" not in err and "Py4J" not in err
    assert echo.stats()["requests_total"] == 0


def test_a_sink_table_at_the_source_path_is_refused(
    spark: SparkSession,
    echo: LocalEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    location = tmp_path / "shared"
    spark.createDataFrame([(1, "q")], "id long, prompt string").write.format("delta").save(
        str(location)
    )
    spark.sql(f"CREATE TABLE batch_chat_same_place USING delta LOCATION '{location}'")
    try:
        argv = [*overrides_for(location, location, echo.url), "--set", "source.format=delta",
                "--set", "sink.path=null", "--set", "sink.table=batch_chat_same_place"]
        assert main(argv) == EXIT_CONFIG_ERROR
    finally:
        spark.sql("DROP TABLE batch_chat_same_place")
    assert "config error: sink.table: is the source" in capsys.readouterr().err


def test_an_empty_input_writes_an_empty_table_and_logs_cleanly(
    spark: SparkSession,
    echo: LocalEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spark.createDataFrame([], "id long, prompt string").write.parquet(str(tmp_path / "in"))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert main(overrides_for(tmp_path / "in", tmp_path / "out", echo.url)) == 0
    messages = [record.getMessage() for record in caplog.records]  # raises on a bad %d
    assert any(m.startswith("chunk 1/1 committed: 0 rows (0 ok, 0 requests sent)")
               for m in messages)  # fmt: skip
    assert spark.read.format("delta").load(str(tmp_path / "out")).count() == 0


def test_relative_paths_are_read_from_where_the_job_starts(
    spark: SparkSession,
    echo: LocalEndpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sink.path=out` (a Delta sink: its lease and history are read through Delta's SQL, which
    takes only absolute paths) works, and lands under the working directory."""
    rows = spark.createDataFrame([(i, f"q {i}") for i in range(5)], "id long, prompt string")
    rows.write.parquet(str(tmp_path / "in"))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.chdir(tmp_path)
    argv = overrides_for(Path("in"), Path("out"), echo.url)
    assert main(argv) == 0
    echo.reset()
    assert main(argv) == 0
    assert re.search(r"^already answered +5 \(not sent\)$", capsys.readouterr().out, re.M)
    assert echo.stats()["requests_total"] == 0
    assert spark.read.format("delta").load(str(tmp_path / "out")).count() == 5
    assert (tmp_path / "out_lease" / "_delta_log").is_dir()
