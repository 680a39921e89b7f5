"""Real servers for wire tests: one process per test module, reset before every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.serving.process import LocalEndpoint

# Endpoint names the plain server answers for.
ENDPOINT = "echo"
OTHER_ENDPOINT = "support-bot"
TOKEN_ENV = "PIPELINE_SERVING_TEST_TOKEN"
TOKEN = "dapi-test-0123456789abcdef"


@pytest.fixture(scope="module")
def _plain_process() -> Iterator[LocalEndpoint]:
    args = ("--model", "echo", "--endpoint-name", ENDPOINT, "--endpoint-name", OTHER_ENDPOINT)
    with LocalEndpoint(*args) as endpoint:
        yield endpoint


@pytest.fixture
def endpoint(_plain_process: LocalEndpoint) -> LocalEndpoint:
    """A running echo server without auth, with start-up settings and zeroed counters."""
    _plain_process.reset()
    return _plain_process


@pytest.fixture(scope="module")
def _secured_process() -> Iterator[LocalEndpoint]:
    with LocalEndpoint("--token-env", TOKEN_ENV, env={TOKEN_ENV: TOKEN}) as endpoint:
        yield endpoint


@pytest.fixture
def secured_endpoint(_secured_process: LocalEndpoint) -> LocalEndpoint:
    """A running echo server that requires TOKEN, reset like `endpoint`."""
    _secured_process.reset()
    return _secured_process
