"""What a row asked: the fingerprint of its request, kept next to its answer.

`request_hash` is a SHA-256 of one canonical JSON spelling of the wire body exactly as it is
sent (messages, `max_tokens`, `temperature`, `request.extra`, the response format and its
schema), the API and the endpoint name. Not the token and not the host: the same endpoint
served from another workspace URL answers the same question. A later run compares it with the
request it would send now, so an answer is kept only while it answers what is asked.

A row that cannot become a request gets the fingerprint of its input values and of the config
that judged them, so fixing the row (or the config) is a change too.

Without an id column, a row's `request_id` is the fingerprint of its own input values (the
columns its request is built from): a change of the config (template, system prompt, max_tokens,
API, ...) keeps the id and changes the hash, so the row is answered again and its old row
replaced, as with an id column. An edited prompt is a new row: nothing links it to the old one.
Pure.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

HASH_HEX_CHARS = 32


def request_fingerprint(api: str, endpoint_name: str, body: Mapping[str, Any]) -> str:
    """The `request_hash` of `body` sent to `endpoint_name` through `api`."""
    return digest(canonical({"api": api, "endpoint": endpoint_name, "body": body}))


def input_fingerprint(values: Mapping[str, Any], config_signature: str) -> str:
    """The `request_hash` of a row that is no request: its values, under this config."""
    return digest(canonical({"invalid_input": plain(values), "config": config_signature}))


def row_fingerprint(values: Mapping[str, Any]) -> str:
    """The `request_id` of a row without an id column: its input values alone."""
    return digest(canonical({"row": plain(values)}))


def plain(value: Any) -> Any:
    """`value` in one spelling, whatever dtype Arrow gave its batch (see below)."""
    # One spelling per value whatever dtype Arrow gave the batch: a whole number read as a
    # float (an integer column with nulls) is the same number; NaN and NA are null.
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes):  # an image column's bytes: their digest spells them
        return {"bytes_sha256": hashlib.sha256(value).hexdigest()}
    if hasattr(value, "item") and not isinstance(value, str):  # a numpy scalar
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else value
    if type(value).__name__ == "NAType":
        return None
    return value


def canonical(value: Any) -> str:
    """`value` as JSON with sorted keys and no spaces: one spelling for one value."""
    return _CANONICAL.encode(value)


# What `json.dumps` would build at every call with these arguments (this runs once a row).
_CANONICAL = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_HEX_CHARS]
