"""The endpoint token, kept out of logs, exception messages, saved configs and output tables.

The token is read from the environment (the variable named by `endpoint.token_env`), never from
the YAML file. `Secret` hides it from `repr`/`str`, so it survives being logged or pickled into a
Spark closure without showing up in text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import EndpointConfig
from pipeline.errors import ConfigError

REDACTED = "***"
# How long the Databricks SDK may retry reaching the workspace while looking for credentials.
SDK_TIMEOUT_S = 20

log = logging.getLogger(__name__)


class Secret:
    """A string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it (the Authorization header)."""
        return self._value

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the secret replaced by ***."""
        return text.replace(self._value, REDACTED) if self._value else text

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


def resolve_token(endpoint: EndpointConfig, env: Mapping[str, str]) -> Secret | None:
    """The bearer token for `endpoint`: the environment variable it names, else the Databricks
    SDK's own configuration (`~/.databrickscfg` profiles, a Databricks runtime's credentials).

    Raises:
        ConfigError: no token in `endpoint.token_env` and none from the Databricks SDK.
    """
    if endpoint.token_env is None:
        return None
    value = env.get(endpoint.token_env, "").strip()
    if not value and sdk_may_have_credentials(env):
        value = sdk_token(endpoint.host, env.get("DATABRICKS_CONFIG_PROFILE")) or ""
    if not value:
        raise ConfigError(
            "endpoint.token_env",
            f"environment variable {endpoint.token_env} is not set and the Databricks SDK "
            "found no credentials (set it, or set endpoint.token_env to null for an endpoint "
            "without auth)",
        )
    return Secret(value)


def sdk_may_have_credentials(env: Mapping[str, str]) -> bool:
    """Whether asking the Databricks SDK is worth it: a Databricks runtime, a config file, or
    OAuth variables (it contacts the workspace while it looks, so it is not asked blindly)."""
    if "DATABRICKS_RUNTIME_VERSION" in env or any(
        name.startswith(("DATABRICKS_CLIENT_", "ARM_CLIENT_")) for name in env
    ):
        return True
    config_file = env.get("DATABRICKS_CONFIG_FILE") or "~/.databrickscfg"
    return Path(config_file).expanduser().is_file()


def sdk_host(profile: str | None = None) -> str | None:
    """The workspace URL the Databricks SDK's configuration names (a Databricks runtime's own,
    a profile's, DATABRICKS_HOST), or None."""
    config = _sdk_config(profile)
    return None if config is None or not config.host else str(config.host)


def _sdk_config(profile: str | None) -> Any:
    try:
        from databricks.sdk.core import Config
    except ImportError:
        return None
    try:
        return Config(profile=profile, retry_timeout_seconds=SDK_TIMEOUT_S)
    except Exception as err:  # the SDK's many "no credentials" errors; never its message
        log.info("no Databricks SDK configuration (%s)", type(err).__name__)
        return None


def sdk_token(host: str | None, profile: str | None = None) -> str | None:
    """A bearer token from the Databricks SDK's unified authentication, if it finds one.

    The SDK resolves its own configuration (environment, `profile` or DEFAULT in the config
    file, a Databricks runtime); a warning says so when that is for another host than
    `host`. None when `databricks-sdk` is not installed or finds no credentials. An OAuth
    token obtained here is used as is, so it must outlive the job (about an hour).
    """
    config = _sdk_config(profile)
    if config is None:
        return None
    try:
        authorization = config.authenticate().get("Authorization", "")
    except Exception as err:  # the SDK's many "no credentials" errors; never its message
        log.info("no token from the Databricks SDK configuration (%s)", type(err).__name__)
        return None
    if host and config.host and config.host.rstrip("/") != host.rstrip("/"):
        log.warning("the Databricks SDK's credentials are for %s, the endpoint is %s",
                    config.host, host)  # fmt: skip
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme == "Bearer" else None
