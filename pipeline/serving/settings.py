"""Every knob of the local serving endpoint, with its default, as one frozen dataclass.

Settings arrive three ways: CLI flags at start, a JSON object posted to `/control`, and
`dataclasses.replace` in code. JSON goes through `from_dict`/`with_changes`, which check each
value's type against the field annotation with the job config's mechanism
(`pipeline.core.coerce`), worded for JSON; every way ends in `__post_init__`, which checks
ranges. Either check raises `SettingsError` naming the key, so a bad value never half-applies.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pipeline.core.coerce import Dialect, field_values

# Marks fields that only mean something when the process starts (the socket is bound, the model
# loaded, the token read): `/control` refuses them instead of pretending to apply them.
_STARTUP_ONLY = {"startup_only": True}
# Fault rates may add up to slightly more than 1 through float rounding (0.1 * 10).
_RATE_SUM_TOLERANCE = 1e-9

# What a request beyond `max_concurrency` gets: a wait for a slot, or 503 at once.
Overload = Literal["queue", "reject"]
# Faults drawn at random, in the order a single draw is matched against their rates.
RateFaultKind = Literal["error", "timeout", "reset", "malformed", "truncated", "empty_choices"]


class SettingsError(ValueError):
    """A setting is unknown or its value is refused; `key` names the setting."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class ServingSettings:
    """Behaviour of the local endpoint. Defaults make a healthy `echo` endpoint on 127.0.0.1."""

    # --- fixed at start ---
    model: str = field(default="echo", metadata=_STARTUP_ONLY)
    host: str = field(default="127.0.0.1", metadata=_STARTUP_ONLY)
    port: int = field(default=8080, metadata=_STARTUP_ONLY)
    # Name of the env var holding the required token; None accepts any or no credentials.
    # The token itself is never a setting, so it cannot leak through `/control` output.
    token_env: str | None = field(default=None, metadata=_STARTUP_ONLY)
    access_log: bool = field(default=False, metadata=_STARTUP_ONLY)
    # Serve HTTPS with this certificate (PEM, the chain) and its private key (PEM); both or
    # neither. A real endpoint is HTTPS: its handshakes cost what plain HTTP's do not.
    tls_cert: str | None = field(default=None, metadata=_STARTUP_ONLY)
    tls_key: str | None = field(default=None, metadata=_STARTUP_ONLY)
    # Seconds an idle keep-alive connection stays open before the server closes it (None:
    # aiohttp's, about an hour); a load balancer in front of a real endpoint may close sooner.
    keepalive_s: float | None = field(default=None, metadata=_STARTUP_ONLY)
    # --- changeable at runtime through /control ---
    # Served endpoint names; empty means "just the model name" (see `served_names`).
    endpoint_names: tuple[str, ...] = ()
    max_tokens_limit: int = 4096
    reasoning_item: bool = False
    # Answer as a reasoning model: a short reasoning text before every answer (a `reasoning`
    # content part in the chat formats, a reasoning item's summary in Responses), its words
    # counted as reasoning tokens.
    reasoning: bool = False
    # Headers every model request must carry (any value), as a gateway may ask of its callers.
    required_headers: tuple[str, ...] = ()
    # Fault plan: the first `fail_first` attempts of each distinct request answer `fail_status`.
    fail_first: int = 0
    fail_status: int = 503
    retry_after_s: float | None = None
    # Latency model: every completion takes `latency_s` plus `latency_per_token_s` per output
    # token before it is answered (the server stays concurrent meanwhile).
    latency_s: float = 0.0
    latency_per_token_s: float = 0.0
    # Plus a uniform random extra in [0, latency_jitter_s], drawn from an RNG seeded by `seed`.
    latency_jitter_s: float = 0.0
    # Seeds every random choice (jitter, fault draws), so a sequential run replays exactly.
    seed: int = 0
    # Rate limits per endpoint name over a sliding window of `window_s` seconds (a minute unless
    # a test shortens it); None is unlimited. Tokens are prompt + completion tokens.
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    window_s: float = 60.0
    # Announce the limits in x-ratelimit-* headers (Databricks endpoints do not).
    limit_headers: bool = True
    # Requests served at once; beyond it `overload` decides. None is unbounded.
    max_concurrency: int | None = None
    overload: Overload = "queue"
    # Random faults: fractions of requests, each 0..1, together at most 1 (see faults.py).
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    timeout_rate: float = 0.0
    timeout_hold_s: float = 300.0
    reset_rate: float = 0.0
    malformed_rate: float = 0.0
    truncated_rate: float = 0.0
    empty_choices_rate: float = 0.0

    def __post_init__(self) -> None:
        _require(bool(self.model), "model", "must be a non-empty string")
        _require(0 <= self.port <= 65535, "port", "must be in 0..65535 (0 picks a free port)")
        _require(self.token_env != "", "token_env", "must be an env var name or null")
        _require(
            (self.tls_cert is None) == (self.tls_key is None),
            "tls_cert" if self.tls_cert is None else "tls_key",
            "tls_cert and tls_key go together: give both files or neither",
        )
        for name in self.endpoint_names:
            _require(
                bool(name) and "/" not in name,
                "endpoint_names",
                "each name must be a non-empty string without '/'",
            )
        _require(
            self.keepalive_s is None or self.keepalive_s > 0,
            "keepalive_s",
            "must be null or a number of seconds > 0",
        )
        _require(self.max_tokens_limit >= 1, "max_tokens_limit", "must be >= 1")
        _require(self.fail_first >= 0, "fail_first", "must be >= 0")
        _require(400 <= self.fail_status <= 599, "fail_status", "must be an HTTP error in 400..599")
        _require(self.latency_s >= 0, "latency_s", "must be a number of seconds >= 0")
        _require(
            self.latency_per_token_s >= 0, "latency_per_token_s", "must be a number of seconds >= 0"
        )
        _require(
            self.retry_after_s is None or self.retry_after_s >= 0,
            "retry_after_s",
            "must be null or a number of seconds >= 0",
        )
        _require(self.latency_jitter_s >= 0, "latency_jitter_s", "must be a number of seconds >= 0")
        self._check_load()
        self._check_faults()

    def _check_load(self) -> None:
        for key in ("requests_per_minute", "tokens_per_minute", "max_concurrency"):
            value = getattr(self, key)
            _require(
                value is None or value >= 1, key, "must be null (unlimited) or an integer >= 1"
            )
        _require(self.window_s > 0, "window_s", "must be a number of seconds > 0")
        # `dataclasses.replace` skips the JSON type check, so the choice is checked here too.
        _require(
            self.overload in typing.get_args(Overload), "overload", "must be 'queue' or 'reject'"
        )

    def _check_faults(self) -> None:
        _require(bool(self.error_statuses), "error_statuses", "must list at least one status")
        for status in self.error_statuses:
            _require(
                400 <= status <= 599,
                "error_statuses",
                "each status must be an HTTP error in 400..599",
            )
        _require(self.timeout_hold_s >= 0, "timeout_hold_s", "must be a number of seconds >= 0")
        total = 0.0
        for kind, rate in self.fault_rates:
            key = f"{kind}_rate"
            _require(0 <= rate <= 1, key, "must be a fraction in 0..1")
            total += rate
            _require(
                total <= 1 + _RATE_SUM_TOLERANCE,
                key,
                f"fault rates add up to {total:g} by here; together they must be at most 1",
            )

    @property
    def fault_rates(self) -> tuple[tuple[RateFaultKind, float], ...]:
        """Each random fault kind with its rate, in the order one draw is matched against them."""
        return (
            ("error", self.error_rate),
            ("timeout", self.timeout_rate),
            ("reset", self.reset_rate),
            ("malformed", self.malformed_rate),
            ("truncated", self.truncated_rate),
            ("empty_choices", self.empty_choices_rate),
        )

    @property
    def served_names(self) -> tuple[str, ...]:
        """Endpoint names this server answers for."""
        return self.endpoint_names or (self.model,)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServingSettings:
        """Build settings from a JSON object; absent keys keep their defaults.

        Raises SettingsError naming the first unknown key or refused value.
        """
        return dataclasses.replace(cls(), **_coerce_all(data, allow_startup_only=True))

    def with_changes(self, changes: Mapping[str, Any]) -> ServingSettings:
        """Apply a `/control` JSON object: runtime fields only.

        Raises SettingsError naming an unknown key, a startup-only key, or a refused value.
        """
        return dataclasses.replace(self, **_coerce_all(changes, allow_startup_only=False))

    def to_dict(self) -> dict[str, Any]:
        """All settings as a JSON-ready dict (tuples become lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise SettingsError(key, problem)


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _coerce_all(data: Mapping[str, Any], *, allow_startup_only: bool) -> dict[str, Any]:
    refuse = None if allow_startup_only else _refuse_startup_only
    return field_values(ServingSettings, data, _JSON, refuse=refuse)


def _refuse_startup_only(spec: dataclasses.Field[Any]) -> str | None:
    return "can only be set when the server starts" if spec.metadata.get("startup_only") else None


class _JsonDialect(Dialect):
    """Refusals in JSON's words (`got string`, `got null`), raised as SettingsError."""

    error: ClassVar[type[Exception]] = SettingsError
    root: ClassVar[str] = "settings"
    names: ClassVar[Mapping[Any, str]] = types.MappingProxyType(
        {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    )

    def unknown_key(self, name: str, known: Sequence[str]) -> str:
        return f"unknown setting; known: {', '.join(sorted(known))}"

    def not_mapping(self, value: object) -> str:
        return f"expected an object, got {_json_type(value)}"

    def not_list(self, value: object) -> str:
        return f"expected a list, got {_json_type(value)}"

    def not_choice(self, allowed: tuple[Any, ...], value: object) -> str:
        got = repr(value) if isinstance(value, str) else _json_type(value)
        return f"expected one of {', '.join(map(repr, allowed))}, got {got}"

    def not_finite(self, value: float) -> str:
        return self.wrong_type(float, value)

    def wrong_type(self, hint: Any, value: object) -> str:
        return f"expected {self.expected(hint)}, got {_json_type(value)}"


_JSON = _JsonDialect()


def _json_type(value: object) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
