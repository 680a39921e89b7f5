"""Value checks the config sections share, each raising `ConfigError` naming the key.

Types are checked while the config is read (`pipeline.core.coerce`); these are the rules a type
cannot say (at least one, exactly one of, a URL with a host), run by each section's
`__post_init__`, so a section built in code is held to them too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pipeline.core.errors import ConfigError


def at_least(key: str, value: int, minimum: int) -> None:
    """Raises ConfigError naming `key` when `value` is below `minimum`."""
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")


def exactly_one(section: str, obj: object, keys: tuple[str, ...]) -> None:
    """Raises ConfigError unless exactly one of `section.<keys>` is set (not None) on `obj`."""
    present = [k for k in keys if getattr(obj, k) is not None]
    if len(present) != 1:
        options = " | ".join(f"{section}.{k}" for k in keys)
        got = ", ".join(present) or "none"
        raise ConfigError(
            f"{section}.{(present or keys)[-1]}", f"set exactly one of {options} (set: {got})"
        )


def check_url(key: str, value: str) -> None:
    """Raises ConfigError naming `key` unless `value` is an http(s) URL with a host name."""
    if not value.startswith(("http://", "https://")):
        raise ConfigError(key, f"must start with http:// or https://, got {value!r}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError as err:
        raise ConfigError(key, f"is not a valid URL ({err}): {value!r}") from None
    if not parts.hostname:
        raise ConfigError(key, f"has no host name: {value!r}")
