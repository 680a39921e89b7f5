import os
import pickle
from pathlib import Path

import pytest

from pipeline.core.config import EndpointConfig
from pipeline.core.errors import ConfigError
from pipeline.core.loader import config_from_dict
from pipeline.core.secrets import Secret, resolve_token
from pipeline.serving.process import LocalEndpoint
from tests.conftest import ENDPOINT_NAME, TOKEN

ENDPOINT = EndpointConfig(name="echo", host="http://127.0.0.1:1")


def test_secret_never_prints_itself() -> None:
    secret = Secret("dapi-very-secret")
    assert "dapi-very-secret" not in repr(secret)
    assert "dapi-very-secret" not in str(secret)
    assert "dapi-very-secret" not in f"{secret}"
    assert secret.reveal() == "dapi-very-secret"


def test_secret_survives_pickling_for_spark_closures() -> None:
    assert pickle.loads(pickle.dumps(Secret("abc"))).reveal() == "abc"


def test_redact_removes_every_occurrence() -> None:
    assert Secret("tok").redact("a tok b tok") == "a *** b ***"
    token = "dapi0123456789abcdef"
    assert Secret(token).redact(f"Bearer {token}, x{token}y") == "Bearer ***, x***y"


def test_a_short_secret_is_removed_where_it_stands_not_from_inside_words() -> None:
    message = "3 requests to http://h/t answered 401 (token t, 't', Bearer t; tt)"
    assert Secret("t").redact(message) == (
        "3 requests to http://h/*** answered 401 (token ***, '***', Bearer ***; tt)"
    )
    assert Secret("1").redact("HTTP 401: retry in 1 s") == "HTTP 401: retry in *** s"
    assert Secret("a-b").redact("a-b_x a-bc") == "***_x a-bc"


def test_token_comes_from_the_named_variable() -> None:
    assert resolve_token(ENDPOINT, {"DATABRICKS_TOKEN": "t1"}) == Secret("t1")


def test_missing_token_names_the_key_not_a_value() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_token(ENDPOINT, {})
    assert caught.value.key == "endpoint.token_env"
    assert "DATABRICKS_TOKEN" in str(caught.value)


def test_no_token_env_means_no_auth() -> None:
    endpoint = EndpointConfig(name="echo", host="http://127.0.0.1:1", token_env=None)
    assert resolve_token(endpoint, {"DATABRICKS_TOKEN": "t1"}) is None


def test_token_from_the_databricks_sdk_config_file(
    echo: LocalEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "databrickscfg"
    config_file.write_text(f"[DEFAULT]\nhost = {echo.url}\ntoken = {TOKEN}\n")
    for name in [n for n in os.environ if n.startswith("DATABRICKS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config_file))
    endpoint = EndpointConfig(name=ENDPOINT_NAME, host=echo.url)
    assert resolve_token(endpoint, os.environ) == Secret(TOKEN)
    # Without the file the SDK is not consulted, and the error names the key.
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as caught:
        resolve_token(endpoint, os.environ)
    assert caught.value.key == "endpoint.token_env"


def test_host_and_token_from_a_profile_in_home(
    echo: LocalEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named ~/.databrickscfg profile (temporary HOME) gives the workspace URL and the token."""
    (tmp_path / ".databrickscfg").write_text(
        f"[DEFAULT]\nhost = https://other.example.com\ntoken = wrong\n\n"
        f"[nightly]\nhost = {echo.url}\ntoken = {TOKEN}\n"
    )
    for name in [n for n in os.environ if n.startswith("DATABRICKS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DATABRICKS_CONFIG_PROFILE", "nightly")
    config = config_from_dict({"source": {"path": "p", "prompt_column": "q"},
                               "endpoint": {"name": ENDPOINT_NAME},
                               "sink": {"path": "out"}}, env=os.environ)  # fmt: skip
    assert config.endpoint.host == echo.url
    assert resolve_token(config.endpoint, os.environ) == Secret(TOKEN)
