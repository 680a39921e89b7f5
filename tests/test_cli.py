"""The two entry points: `python -m pipeline run` and `spark-submit jobs/batch_chat.py`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chispa import assert_df_equality
from pyspark.sql import SparkSession

from pipeline.cli import EXIT_CONFIG_ERROR, EXIT_JOB_ABORTED, main
from pipeline.serving.process import LocalEndpoint
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV

ROOT = Path(__file__).resolve().parent.parent
# Columns that differ between two runs of the same requests.
VOLATILE = ["response_id", "latency_ms"]


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
