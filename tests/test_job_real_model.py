"""The whole job against the real model (SmolLM2 via llama.cpp) on a handful of rows."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import Row, SparkSession

from pipeline.core.loader import config_from_dict
from pipeline.serving.llama import smollm2_path
from pipeline.serving.process import LocalEndpoint, free_port
from pipeline.spark.job import run_job
from pipeline.spark.summary import RunSummary
from pipeline.spark.tables import read_sink
from tests.conftest import TOKEN, TOKEN_ENV
from tests.polling import wait_until

ROWS = [
    (1, "What is the capital of France?", None),
    (2, "Name a primary colour.", None),
    (3, "Write a long story about a dragon.", 3),
    (4, "What is 2 plus 2?", None),
]


def answered(
    spark: SparkSession, tmp_path: Path, endpoint: dict[str, Any], *, max_tokens: int,
    env: dict[str, str], **source: Any,
) -> tuple[RunSummary, dict[int, Row]]:
    """ROWS, as Parquet, answered by a job against `endpoint`: its summary and rows by id."""
    frame = spark.createDataFrame(ROWS, "id long, question string, budget int")
    frame.write.parquet(str(tmp_path / "in"))
    config = config_from_dict(
        {
            "source": {"path": str(tmp_path / "in"), "id_column": "id",
                       "prompt_column": "question", "max_tokens_column": "budget", **source},
            "endpoint": endpoint,
            "request": {"max_tokens": max_tokens, "temperature": 0.0},
            "limits": {"concurrency": 2, "timeout_s": 120},
            "sink": {"path": str(tmp_path / "out"), "format": "delta"},
        },
        env={},
    )  # fmt: skip
    summary = run_job(config, spark, env=env)
    return summary, {r.id: r for r in read_sink(spark, config.sink).collect()}


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LocalEndpoint]:
    args = ("--model", "smollm2", "--token-env", TOKEN_ENV)
    with LocalEndpoint(*args, env={TOKEN_ENV: TOKEN}, startup_timeout_s=120) as endpoint:
        yield endpoint


def test_real_completions_and_length_on_a_tiny_budget(
    spark: SparkSession, smollm2: LocalEndpoint, tmp_path: Path
) -> None:
    summary, rows = answered(
        spark, tmp_path, {"name": "smollm2", "host": smollm2.url, "token_env": TOKEN_ENV},
        max_tokens=32, env={TOKEN_ENV: TOKEN}, system_prompt="Answer briefly.",
    )  # fmt: skip
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


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's own OpenAI-compatible server on the same weights: a provider that
    is not this project's endpoint. Its base URL, once `/v1/models` answers."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()),
               "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", "2048", "--seed", "0"]  # fmt: skip
    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    with log.open("wb") as out, subprocess.Popen(command, stdout=out, stderr=out) as server:
        base = f"http://127.0.0.1:{port}/v1"

        def ready() -> bool:
            assert server.poll() is None, f"llama_cpp.server exited: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=1) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False

        try:
            wait_until(ready, "llama_cpp.server to answer /v1/models", deadline_s=120)
            yield base
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_a_plain_openai_compatible_server_answers_a_job(
    spark: SparkSession, llama_server: str, tmp_path: Path
) -> None:
    endpoint = {"name": "smollm2", "api": "chat_completions", "base_url": llama_server,
                "auth": "none"}  # fmt: skip
    summary, rows = answered(spark, tmp_path, endpoint, max_tokens=24, env={})  # no token
    assert summary.ok == 4
    for row in rows.values():
        assert row.status == "ok", row.error
        assert row.completion.strip() and row.model
        assert row.prompt_tokens > len(row.question.split())
        assert row.total_tokens == row.prompt_tokens + row.completion_tokens
    assert (rows[3].finish_reason, rows[3].completion_tokens) == ("length", 3)
