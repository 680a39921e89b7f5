"""A plain stdlib HTTP client for wire tests: status, headers and decoded JSON, never raising."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

from pipeline.serving.process import LocalEndpoint

TIMEOUT_S = 10.0
# How long a test waits for the server's counters to reach a state.
STATS_DEADLINE_S = 10.0
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


async def wait_for_stats(
    endpoint: LocalEndpoint, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll /stats (each poll is a round trip) until `ready` holds; fail at the deadline."""
    deadline = time.monotonic() + STATS_DEADLINE_S
    while not ready(stats := await asyncio.to_thread(endpoint.stats)):
        assert time.monotonic() < deadline, f"/stats never got there: {stats}"
    return stats
