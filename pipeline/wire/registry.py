"""The registry of wire formats: `endpoint.api` names → `WireFormat` instances.

The three Databricks Model Serving formats are registered when `pipeline.wire` is imported;
`register` adds another (from your own module, before the job is built).
"""

from __future__ import annotations

from pipeline.wire.base import WireFormat

_FORMATS: dict[str, WireFormat] = {}


def register(wire: WireFormat, *, replace: bool = False) -> WireFormat:
    """Make `wire` the format of `endpoint.api: <wire.name>`; returns it.

    Raises:
        ValueError: another format already has that name (and `replace` is false).
    """
    known = _FORMATS.get(wire.name)
    if known is not None and known != wire and not replace:
        raise ValueError(f"a wire format named {wire.name!r} is already registered: {known!r}")
    _FORMATS[wire.name] = wire
    return wire


def unregister(name: str) -> None:
    """Forget the format named `name` (tests that register their own)."""
    _FORMATS.pop(name, None)


def wire_for(name: str) -> WireFormat:
    """The format registered as `name`.

    Raises:
        KeyError: no format has that name (config validation names the known ones first).
    """
    return _FORMATS[name]


def names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_FORMATS)
