"""The endpoint token, kept out of logs, exception messages, saved configs and output tables.

The token is read from the environment (the variable named by `endpoint.token_env`), never from
the YAML file. `Secret` hides it from `repr`/`str`, so it survives being logged or pickled into a
Spark closure without showing up in text.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.config import EndpointConfig
from pipeline.errors import ConfigError

REDACTED = "***"


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
    """The bearer token for `endpoint`, from the environment variable it names.

    Raises:
        ConfigError: `endpoint.token_env` names a variable that is unset or empty.
    """
    if endpoint.token_env is None:
        return None
    value = env.get(endpoint.token_env, "").strip()
    if not value:
        raise ConfigError(
            "endpoint.token_env",
            f"environment variable {endpoint.token_env} is not set "
            "(set it, or set endpoint.token_env to null for an endpoint without auth)",
        )
    return Secret(value)
