"""A plain stdlib HTTP client for wire tests: status, headers and decoded JSON, never raising."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

TIMEOUT_S = 10.0
# Loopback calls must never go through an HTTP(S)_PROXY inherited from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: Any  # decoded JSON


def post(
    url: str,
    body: object = None,
    *,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """POST `body` as JSON (or `raw` bytes as they are) and return the reply, errors included."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return _send(request)


def get(url: str) -> Reply:
    """GET `url` and return the reply, errors included."""
    return _send(urllib.request.Request(url, method="GET"))


def _send(request: urllib.request.Request) -> Reply:
    try:
        with _OPENER.open(request, timeout=TIMEOUT_S) as reply:
            return Reply(reply.status, reply.headers, json.load(reply))
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, err.headers, json.load(err))
