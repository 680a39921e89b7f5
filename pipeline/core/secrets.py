"""The endpoint token, kept out of logs, exception messages, saved configs and output tables.

The token is read from the environment (the variable named by `endpoint.token_env`), never from
the YAML file; so are the values of `endpoint.headers`, kept the same way. `Secret` hides each
from `repr`/`str`, so it survives being logged or pickled into a Spark closure without showing
up in text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core.config import EndpointConfig
from pipeline.core.errors import ConfigError

REDACTED = "***"
# A secret shorter than this (a test token, a header's short value) is redacted where it stands
# alone, not inside a longer run of letters and digits: `t` removed from every word would leave
# no message readable. A real token is longer, and removed wherever it occurs.
SHORT_SECRET = 8
# How long the Databricks SDK may retry reaching the workspace while looking for credentials.
SDK_TIMEOUT_S = 20

log = logging.getLogger(__name__)


class Secret:
    """A string that never prints itself."""

    __slots__ = ("_pattern", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._pattern = (
            re.compile(rf"(?<![^\W_]){re.escape(value)}(?![^\W_])")
            if 0 < len(value) < SHORT_SECRET
            else None
        )

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it (the Authorization header)."""
        return self._value

    def redact(self, text: str) -> str:
        """`text` with every occurrence of the secret replaced by *** (a short one: where it is
        not part of a longer run of letters and digits, see `SHORT_SECRET`)."""
        if self._pattern is not None:
            return self._pattern.sub(REDACTED, text)
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


class Credentials:
    """Where the bearer token comes from: a fixed token (the environment), or the Databricks
    SDK, which renews OAuth tokens as they expire (`current` asks it each time)."""

    def __init__(
        self,
        token: Secret | None,
        sdk_config: Any = None,
        headers: Mapping[str, Secret] | None = None,
    ) -> None:
        self._token = token
        self._config = sdk_config
        # `endpoint.headers` with their values: secrets too (see `resolve_headers`).
        self.headers: dict[str, Secret] = dict(headers or {})

    @property
    def renewable(self) -> bool:
        return self._config is not None

    def current(self) -> Secret | None:
        """The token to send now."""
        if self._config is not None:
            fresh = _bearer(self._config)
            if fresh is not None:
                self._token = Secret(fresh)
        return self._token


def resolve_credentials(endpoint: EndpointConfig, env: Mapping[str, str]) -> Credentials:
    """The credentials for `endpoint`: the environment variable it names, else the Databricks
    SDK's unified authentication (OAuth machine-to-machine, `~/.databrickscfg` profiles, a
    Databricks runtime's credentials, a metadata service).

    Raises:
        ConfigError: no token in `endpoint.token_env` and none from the Databricks SDK; or
            a variable `endpoint.headers` names is not set.
    """
    headers = resolve_headers(endpoint, env)
    if endpoint.token_env is None or endpoint.auth == "none":
        return Credentials(None, headers=headers)
    value = env.get(endpoint.token_env, "").strip()
    if value:
        return Credentials(Secret(value), headers=headers)
    config = (
        _sdk_config(env.get("DATABRICKS_CONFIG_PROFILE")) if sdk_may_have_credentials(env) else None
    )
    token = None if config is None else _bearer(config)
    if config is None or token is None:
        raise ConfigError(
            "endpoint.token_env",
            f"environment variable {endpoint.token_env} is not set and the Databricks SDK "
            "found no credentials (set it, or set endpoint.token_env to null for an endpoint "
            "without auth)",
        )
    if endpoint.host and config.host and config.host.rstrip("/") != endpoint.host.rstrip("/"):
        log.warning("the Databricks SDK's credentials are for %s, the endpoint is %s",
                    config.host, endpoint.host)  # fmt: skip
    return Credentials(Secret(token), config, headers)


def resolve_headers(endpoint: EndpointConfig, env: Mapping[str, str]) -> dict[str, Secret]:
    """The values of `endpoint.headers`, each read from the environment variable it names.

    Raises:
        ConfigError: naming `endpoint.headers.<name>` when its variable is unset or empty.
    """
    values = {}
    for name, variable in endpoint.headers.items():
        value = env.get(variable, "").strip()
        if not value:
            raise ConfigError(
                f"endpoint.headers.{name}", f"environment variable {variable} is not set"
            )
        values[name] = Secret(value)
    return values


def resolve_token(endpoint: EndpointConfig, env: Mapping[str, str]) -> Secret | None:
    """The bearer token to send now (see `resolve_credentials`)."""
    return resolve_credentials(endpoint, env).current()


def sdk_may_have_credentials(env: Mapping[str, str]) -> bool:
    """Whether asking the Databricks SDK is worth it: a Databricks runtime, a config file, or
    OAuth variables (it contacts the workspace while it looks, so it is not asked blindly)."""
    if "DATABRICKS_RUNTIME_VERSION" in env or any(
        name.startswith(("DATABRICKS_CLIENT_", "ARM_CLIENT_", "DATABRICKS_METADATA_SERVICE"))
        for name in env
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


def _bearer(config: Any) -> str | None:
    """The bearer token the SDK's configuration gives now, or None."""
    try:
        authorization = config.authenticate().get("Authorization", "")
    except Exception as err:  # the SDK's many "no credentials" errors; never its message
        log.info("no token from the Databricks SDK configuration (%s)", type(err).__name__)
        return None
    scheme, _, token = str(authorization).partition(" ")
    return token.strip() or None if scheme == "Bearer" else None
