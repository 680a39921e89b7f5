"""A wire format registered from outside the package runs a job end to end.

The format below is OpenAI Chat Completions under Azure OpenAI's path, with its `api-key`
header instead of a bearer token: one subclass and one `register` call, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipeline.core.errors import ConfigError, JobAborted
from pipeline.core.loader import config_from_dict
from pipeline.serving.process import LocalEndpoint
from pipeline.wire import Endpoint, names, register, unregister, wire_for
from pipeline.wire.chat_completions import ChatCompletions
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV
from tests.test_job import FAST, prompts, run, save


class AzureChat(ChatCompletions):
    name = "azure_chat"

    def url(self, endpoint: Endpoint) -> str:
        base = f"{endpoint.serving_base_url}/openai/deployments/{endpoint.name}"
        return f"{base}/chat/completions?api-version=2024-10-21"

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"api-key": token}


@pytest.fixture
def azure_chat() -> Iterator[AzureChat]:
    wire = register(AzureChat())
    yield wire
    unregister(wire.name)


def test_a_registered_format_runs_a_job_end_to_end(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path, azure_chat: AzureChat
) -> None:
    source = save(prompts(spark, 40), tmp_path / "in")
    config = config_from_dict(
        {
            "source": {"path": source, "id_column": "id", "prompt_column": "prompt"},
            "endpoint": {
                "name": ENDPOINT_NAME,
                "api": "azure_chat",
                "base_url": echo.url,
                "token_env": TOKEN_ENV,
            },
            "request": {"max_tokens": 16},
            "limits": FAST,
            "sink": {"path": str(tmp_path / "out"), "format": "parquet"},
        },
        env={},
    )
    # The endpoint serves Chat Completions at Azure's path too, and takes Azure's `api-key`:
    # a wrong URL would answer 404 and a token it did not read 401, each an error row.
    before = echo.stats()["by_route"]["chat_completions"]
    summary, out = run(spark, config)
    assert summary.rows == 40
    assert out.filter("status = 'ok'").count() == 40
    assert echo.stats()["by_route"]["chat_completions"] - before == 40


class StaleKeyChat(AzureChat):
    """Azure's format with a key the endpoint does not take: what the format's auth header
    says is what goes on the wire."""

    name = "stale_key_chat"

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"api-key": token + "-stale"}


def test_the_format_decides_the_auth_header(
    spark: SparkSession, private_echo: LocalEndpoint, tmp_path: Path
) -> None:
    wire = register(StaleKeyChat())
    try:
        config = config_from_dict(
            {
                "source": {"path": save(prompts(spark, 20), tmp_path / "in"),
                           "id_column": "id", "prompt_column": "prompt"},
                "endpoint": {"name": ENDPOINT_NAME, "api": wire.name,
                             "base_url": private_echo.url, "token_env": TOKEN_ENV},
                "limits": {**FAST, "max_fatal_errors": 2},
                "sink": {"path": str(tmp_path / "out"), "format": "parquet"},
            },
            env={},
        )  # fmt: skip
        with pytest.raises(JobAborted, match="HTTP 403 PERMISSION_DENIED"):
            run(spark, config)
    finally:
        unregister(wire.name)
    assert private_echo.stats()["by_status"].get("403", 0) >= 1


def test_a_registered_format_answers_to_its_name(azure_chat: AzureChat) -> None:
    assert "azure_chat" in names()
    assert wire_for("azure_chat") is azure_chat
    assert azure_chat.auth_headers(TOKEN) == {"api-key": TOKEN}


def test_a_name_is_registered_once(azure_chat: AzureChat) -> None:
    class Other(AzureChat):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register(Other())


def test_an_unknown_api_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"endpoint\.api: must be one of invocations, "):
        config_from_dict(
            {
                "source": {"path": "in", "prompt_column": "p"},
                "endpoint": {"name": "e", "api": "azure_chat", "host": "https://h"},
                "sink": {"path": "out"},
            },
            env={},
        )


@pytest.mark.parametrize(
    ("api", "field"),
    [("invocations", "messages"), ("chat_completions", "model"), ("responses", "input")],
)
def test_each_format_reserves_the_fields_it_sets(api: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"request\.extra\.{field}: is set by the pipeline"):
        config_from_dict(
            {
                "source": {"path": "in", "prompt_column": "p"},
                "endpoint": {"name": "e", "api": api, "host": "https://h"},
                "request": {"extra": {field: 1}},
                "sink": {"path": "out"},
            },
            env={},
        )
