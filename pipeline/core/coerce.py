"""Plain data (parsed YAML or JSON) → a frozen dataclass, checked against its type hints.

The job's config and the local endpoint's settings both arrive as nested mappings of plain
values and become frozen dataclasses; one mechanism reads both, so a key is unknown, missing or
of the wrong type by the same rules everywhere. What differs between them is the reader: a
`Dialect` says how a refusal is worded (YAML's words for the job's config file, JSON's for the
endpoint's `/control`) and which error class carries it, always as `error(dotted_key, problem)`.

The rules: a field declared `field(init=False)` is computed by its class, never a key; a nested
dataclass is built the same way (null: all its defaults); bool is never a number (a `true` where
a count belongs is a mistake, though Python calls it an int); an int widens to float; a float
must be finite (no limit, time or price is NaN or infinite); a list becomes a tuple for a tuple
or Sequence field, so frozen stays frozen. Ranges and cross-field rules are not types: each
dataclass checks those itself in `__post_init__`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, Union

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
# Says why a key, though known, may not be set here (None: it may); see `field_values`.
Refusal = Callable[[dataclasses.Field[Any]], str | None]


class Dialect:
    """How refusals are worded and raised: `error(key, problem)`.

    The defaults are the job config's (YAML words, `ConfigError`); a subclass overrides the
    wording of another reader (`pipeline.serving.settings` words them for JSON).
    """

    error: ClassVar[type[Exception]] = ConfigError
    # The key named when the whole document is not a mapping.
    root: ClassVar[str] = "config"
    # A scalar type as the end of "must be ...".
    names: ClassVar[Mapping[Any, str]] = types.MappingProxyType(
        {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    )

    def expected(self, hint: Any) -> str:
        """What `hint` accepts, in words: `an integer`, `a string or an integer`."""
        options = _union_options(hint) if _is_union(hint) else (hint,)
        return " or ".join(self.names.get(option, str(option)) for option in options)

    def unknown_key(self, name: str, known: Sequence[str]) -> str:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key{hint} (known: {', '.join(known)})"

    def required(self) -> str:
        return "is required"

    def not_mapping(self, value: object) -> str:
        return f"must be a mapping, got {type(value).__name__}"

    def not_list(self, value: object) -> str:
        return f"must be a list, got {type(value).__name__}"

    def not_choice(self, allowed: tuple[Any, ...], value: object) -> str:
        return f"must be one of {', '.join(map(str, allowed))}; got {value!r}"

    def not_finite(self, value: float) -> str:
        return f"must be a finite number, got {value}"

    def wrong_type(self, hint: Any, value: object) -> str:
        return f"must be {self.expected(hint)}, got {type(value).__name__} {value!r}"


def build(cls: type[T], raw: object, dialect: Dialect, key: str = "") -> T:
    """A `cls` from the mapping `raw`; keys it does not set take their field's default.

    `key` is where `raw` sits in the document (`limits`), the prefix of every key named.

    Raises:
        dialect.error: naming the dotted key that is unknown, missing or refused, and why;
            or whatever `cls.__post_init__` raises.
    """
    data = _mapping(raw, key, dialect)
    fields = _fields(cls)
    # Every key before any value: a misspelt key is the likely cause of a "missing" one.
    for name in map(str, data):
        _field(fields, name, key, dialect)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, spec in fields.items():  # in declaration order, whatever the order of `raw`
        where = _join(key, name)
        if name in data:
            values[name] = _coerce(hints[name], data[name], where, dialect)
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise dialect.error(where, dialect.required())
    return cls(**values)


def field_values(
    cls: type[T], raw: object, dialect: Dialect, *, refuse: Refusal | None = None
) -> dict[str, Any]:
    """The fields of `cls` that `raw` sets, checked and converted (for `dataclasses.replace`).

    Nothing is required. `refuse` may turn a known field away (a setting fixed at start).

    Raises:
        dialect.error: naming the first key, in the order given, that is unknown, refused or
            has a wrong value.
    """
    data = _mapping(raw, "", dialect)
    fields = _fields(cls)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in data.items():
        spec = _field(fields, str(name), "", dialect)
        problem = None if refuse is None else refuse(spec)
        if problem is not None:
            raise dialect.error(spec.name, problem)
        values[spec.name] = _coerce(hints[spec.name], value, spec.name, dialect)
    return values


def _mapping(raw: object, key: str, dialect: Dialect) -> Mapping[Any, Any]:
    if not isinstance(raw, Mapping):
        raise dialect.error(key or dialect.root, dialect.not_mapping(raw))
    return raw


def _fields(cls: type[DataclassInstance]) -> dict[str, dataclasses.Field[Any]]:
    # A field(init=False) is computed by the class (`EndpointConfig.wire`), never a key.
    return {spec.name: spec for spec in dataclasses.fields(cls) if spec.init}


def _field(
    fields: Mapping[str, dataclasses.Field[Any]], name: str, key: str, dialect: Dialect
) -> dataclasses.Field[Any]:
    if name not in fields:
        raise dialect.error(_join(key, name), dialect.unknown_key(name, list(fields)))
    return fields[name]


def _coerce(hint: Any, value: object, key: str, dialect: Dialect) -> Any:
    if hint is Any:
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, {} if value is None else value, dialect, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        return _union(hint, value, key, dialect)
    if origin is Literal:
        # `type(...) is` too: True == 1, but a JSON true is not the choice 1.
        if any(type(value) is type(choice) and value == choice for choice in args):
            return value
        raise dialect.error(key, dialect.not_choice(args, value))
    if isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise dialect.error(key, dialect.not_mapping(value))
        item = args[1] if args else Any
        return {k: _coerce(item, v, _join(key, str(k)), dialect) for k, v in value.items()}
    if origin in (tuple, list, collections.abc.Sequence):
        return _sequence(origin, args, value, key, dialect)
    return _scalar(hint, value, key, dialect)


def _union(hint: Any, value: object, key: str, dialect: Dialect) -> Any:
    options = _union_options(hint)
    if value is None and type(None) in typing.get_args(hint):
        return None
    if len(options) == 1:
        return _coerce(options[0], value, key, dialect)
    for option in options:  # the first option the value fits, in declaration order
        try:
            return _coerce(option, value, key, dialect)
        except dialect.error:
            continue
    raise dialect.error(key, dialect.wrong_type(hint, value))


def _sequence(
    origin: Any, args: tuple[Any, ...], value: object, key: str, dialect: Dialect
) -> Any:
    if origin is tuple and args[1:] != (Ellipsis,):
        raise TypeError(f"{key}: only tuple[X, ...] fields can be read, not tuple{list(args)}")
    # A string is a Sequence too, but never a list of values.
    if not isinstance(value, list | tuple):
        raise dialect.error(key, dialect.not_list(value))
    item = args[0] if args else Any
    items = [_coerce(item, v, f"{key}[{i}]", dialect) for i, v in enumerate(value)]
    return items if origin is list else tuple(items)


def _scalar(hint: Any, value: object, key: str, dialect: Dialect) -> Any:
    # bool is an int in Python; a `true` where a number is expected is still a mistake.
    if isinstance(value, bool):
        if hint is bool:
            return value
    elif isinstance(value, int | float) and hint is float:
        if not math.isfinite(value):
            raise dialect.error(key, dialect.not_finite(value))
        return float(value)
    elif hint in (int, str) and isinstance(value, hint):
        return value
    raise dialect.error(key, dialect.wrong_type(hint, value))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _union_options(hint: Any) -> tuple[Any, ...]:
    return tuple(option for option in typing.get_args(hint) if option is not type(None))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
