"""The whole job against the real model (SmolLM2 via llama.cpp) on a handful of rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipeline.core.loader import config_from_dict
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.job import run_job
from pipeline.spark.tables import read_sink
from tests.conftest import TOKEN, TOKEN_ENV

ROWS = [
    (1, "What is the capital of France?", None),
    (2, "Name a primary colour.", None),
    (3, "Write a long story about a dragon.", 3),
    (4, "What is 2 plus 2?", None),
]


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LocalEndpoint]:
    args = ("--model", "smollm2", "--token-env", TOKEN_ENV)
    with LocalEndpoint(*args, env={TOKEN_ENV: TOKEN}, startup_timeout_s=120) as endpoint:
        yield endpoint


def test_real_completions_and_length_on_a_tiny_budget(
    spark: SparkSession, smollm2: LocalEndpoint, tmp_path: Path
) -> None:
    frame = spark.createDataFrame(ROWS, "id long, question string, budget int")
    frame.write.parquet(str(tmp_path / "in"))
    config = config_from_dict(
        {
            "source": {
                "path": str(tmp_path / "in"),
                "id_column": "id",
                "prompt_column": "question",
                "max_tokens_column": "budget",
                "system_prompt": "Answer briefly.",
            },
            "endpoint": {"name": "smollm2", "host": smollm2.url, "token_env": TOKEN_ENV},
            "request": {"max_tokens": 32, "temperature": 0.0},
            "limits": {"concurrency": 2, "timeout_s": 120},
            "sink": {"path": str(tmp_path / "out"), "format": "delta"},
        },
        env={},
    )
    summary = run_job(config, spark, env={TOKEN_ENV: TOKEN})
    rows = {r.id: r for r in read_sink(spark, config.sink).collect()}
    assert summary.ok == 4
    for row in rows.values():
        assert row.status == "ok", row.error
        assert row.completion.strip()
        assert row.finish_reason in ("stop", "length")
        assert row.prompt_tokens > len(row.question.split())  # chat template + system prompt
        assert 0 < row.completion_tokens <= (row.budget or 32)
    # A real model answers; it does not echo the question back.
    assert all(r.completion.strip() != r.question for r in rows.values())
    assert len({r.completion for r in rows.values()}) == 4
    assert (rows[3].finish_reason, rows[3].completion_tokens) == ("length", 3)
