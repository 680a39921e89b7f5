"""Any provider: how the token goes (`endpoint.auth`), extra headers from the environment
(`endpoint.headers`) and query parameters (`endpoint.query`), against the real local endpoint,
which requires the token, and Azure's `api-version` on Azure's route; then a whole job in
Azure's shape."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from pipeline.core.config import EndpointConfig
from pipeline.core.errors import ConfigError
from pipeline.core.secrets import REDACTED, Secret, resolve_credentials
from pipeline.http.engine import open_session
from pipeline.http.settings import ClientSettings
from pipeline.serving.process import LocalEndpoint
from pipeline.spark.job import run_job
from pipeline.spark.tables import read_sink
from tests.conftest import ENDPOINT_NAME, TOKEN, TOKEN_ENV
from tests.test_client import FAST_RETRIES, client_for, send
from tests.test_job import job, prompts, save

TENANT_ENV = "BATCH_CHAT_TEST_TENANT"
TENANT = "tenant-7f3a9c"
AZURE_VERSION = "2024-10-21"


def client(
    echo: LocalEndpoint, env: dict[str, str] | None = None, **endpoint: Any
) -> ClientSettings:
    """Settings as the job builds them: the token and headers resolved from `env`."""
    config = EndpointConfig(**{"name": ENDPOINT_NAME, "host": echo.url, "token_env": TOKEN_ENV,
                               **endpoint})  # fmt: skip
    credentials = resolve_credentials(config, {TOKEN_ENV: TOKEN, **(env or {})})
    return ClientSettings(endpoint=config, limits=FAST_RETRIES, token=credentials.current(),
                          headers=credentials.headers)  # fmt: skip


def azure(echo: LocalEndpoint, **changes: Any) -> dict[str, Any]:
    """An Azure OpenAI deployment as its docs configure a client: the deployment in the base
    URL, the key in `api-key`, the API version in the query."""
    return {
        "api": "chat_completions", "host": None,
        "base_url": f"{echo.url}/openai/deployments/{ENDPOINT_NAME}",
        "auth": "api_key_header", "query": {"api-version": AZURE_VERSION}, **changes,
    }  # fmt: skip


def test_azure_openai_shape_is_answered(echo: LocalEndpoint) -> None:
    # The endpoint refuses a request without `api-key`: a bearer token would not do.
    echo.control(required_headers=["api-key"])
    result = send(client(echo, **azure(echo)))
    assert result.status == "ok", result.error
    assert result.completion is not None and result.completion.text == "one two three"
    assert echo.stats()["by_route"]["chat_completions"] == 1
    bearer = send(client(echo, **azure(echo, auth="bearer")))
    assert (bearer.status, bearer.http_status) == ("error", 400)
    assert bearer.error is not None and "the header api-key is required" in bearer.error


def test_without_its_query_the_azure_route_refuses_each_row(echo: LocalEndpoint) -> None:
    result = send(client(echo, **azure(echo, query={})))
    assert (result.status, result.http_status, result.attempts) == ("error", 400, 1)
    assert result.error is not None and "query parameter api-version is required" in result.error


def test_a_base_url_with_a_query_is_refused_for_endpoint_query(echo: LocalEndpoint) -> None:
    base = f"{echo.url}/openai/deployments/{ENDPOINT_NAME}?api-version={AZURE_VERSION}"
    with pytest.raises(ConfigError) as refused:
        client(echo, **azure(echo, base_url=base))
    assert refused.value.key == "endpoint.base_url" and "endpoint.query" in str(refused.value)


def test_basic_auth_sends_the_token_as_the_password_of_its_user(echo: LocalEndpoint) -> None:
    assert send(client(echo, auth="basic")).status == "ok"
    wrong_user = send(client(echo, auth="basic", basic_user="admin"))
    assert (wrong_user.status, wrong_user.http_status) == ("error", 403)


def test_auth_none_sends_no_credentials_and_needs_no_token(echo: LocalEndpoint) -> None:
    settings = client(echo, auth="none")
    assert settings.token is None
    result = send(settings)
    assert (result.status, result.http_status) == ("error", 401)  # this endpoint wants one
    config = EndpointConfig(name="x", host="http://127.0.0.1:1", auth="none")
    assert resolve_credentials(config, {}).current() is None  # DATABRICKS_TOKEN not read


def test_extra_headers_come_from_the_environment(echo: LocalEndpoint) -> None:
    echo.control(required_headers=["X-Tenant"])
    settings = client(echo, {TENANT_ENV: TENANT}, headers={"X-Tenant": TENANT_ENV})
    assert send(settings).status == "ok"
    missing = send(client(echo))
    assert missing.error is not None and "the header X-Tenant is required" in missing.error
    with pytest.raises(ConfigError) as unset:
        client(echo, headers={"X-Tenant": TENANT_ENV})
    assert unset.value.key == "endpoint.headers.X-Tenant"
    assert TENANT_ENV in str(unset.value)


def test_header_values_are_secrets_like_the_token(echo: LocalEndpoint) -> None:
    settings = client(echo, {TENANT_ENV: TENANT}, headers={"X-Tenant": TENANT_ENV})
    assert settings.headers == {"X-Tenant": Secret(TENANT)}
    assert TENANT not in repr(settings)
    assert TENANT not in repr(settings.endpoint) and TENANT_ENV in repr(settings.endpoint)

    async def redacted() -> str:
        async with open_session(settings) as session:
            return client_for(settings, session).redact(f"echoed {TENANT} and {TOKEN}")

    assert asyncio.run(redacted()) == f"echoed {REDACTED} and {REDACTED}"


@pytest.mark.parametrize(
    ("endpoint", "key", "says"),
    [
        ({"headers": {"X Tenant": "V"}}, "endpoint.headers.X Tenant", "not a valid HTTP header"),
        ({"headers": {"authorization": "V"}}, "endpoint.headers.authorization",
         "set by the pipeline"),
        ({"auth": "api_key_header", "headers": {"API-Key": "V"}}, "endpoint.headers.API-Key",
         "set by the pipeline"),
        ({"api_key_header": "x key"}, "endpoint.api_key_header", "not a valid HTTP header"),
    ],
)  # fmt: skip
def test_header_mistakes_name_their_key(endpoint: dict[str, Any], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        EndpointConfig(name="x", host="http://127.0.0.1:1", **endpoint)
    assert refused.value.key == key and says in str(refused.value)


def test_auth_schemes_build_their_headers() -> None:
    base = EndpointConfig(name="x", host="http://127.0.0.1:1")
    assert base.auth_headers("t") == {"Authorization": "Bearer t"}
    assert replace(base, auth="basic").auth_headers("t") == {"Authorization": "Basic dG9rZW46dA=="}
    keyed = replace(base, auth="api_key_header", api_key_header="x-api-key")
    assert keyed.auth_headers("t") == {"x-api-key": "t"}
    assert replace(base, auth="none").auth_headers("t") == {}



def test_a_job_in_azures_shape_keeps_the_header_values_out_of_everything_it_writes(
    spark: SparkSession, echo: LocalEndpoint, tmp_path: Path
) -> None:
    echo.control(required_headers=["api-key", "X-Tenant"])
    endpoint = {**azure(echo), "name": ENDPOINT_NAME, "token_env": TOKEN_ENV,
                "headers": {"X-Tenant": TENANT_ENV}}  # fmt: skip
    del endpoint["host"]
    config = job(echo, {"path": save(prompts(spark, 20), tmp_path / "in"), "id_column": "id",
                        "prompt_column": "prompt"},
                 {"path": str(tmp_path / "out"), "format": "delta"})  # fmt: skip
    config = replace(config, endpoint=EndpointConfig(**endpoint))
    summary = run_job(config, spark, env={TOKEN_ENV: TOKEN, TENANT_ENV: TENANT})
    assert summary.ok == 20
    assert echo.stats()["by_route"]["chat_completions"] == 20
    written = [str(row) for row in read_sink(spark, config.sink).collect()]
    kept = [p.read_text() for p in (tmp_path / "out_runs").glob("*.json")]
    assert len(written) == 20 and len(kept) == 1
    for text in [*written, *kept, config.to_dict().__repr__()]:
        assert TENANT not in text and TOKEN not in text
    assert TENANT_ENV in kept[0]  # the config as run names the variable
