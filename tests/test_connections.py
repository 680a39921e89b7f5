"""A worker's next task goes on over the connections the task before it opened: no new TCP and
TLS handshakes at each task's start (the local endpoint serves HTTPS here, as a real one does)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from pyspark.sql import SparkSession

from pipeline.http.engine import Engine, open_session
from pipeline.http.settings import ClientSettings
from pipeline.serving.process import LocalEndpoint
from tests.conftest import ECHO_ARGS, TOKEN, TOKEN_ENV, one_route, write_certificate
from tests.test_engine import client_settings, request
from tests.test_job import job, prompts, run, save

CONCURRENCY = 8


@pytest.fixture(scope="module")
def https_echo(tls_files: tuple[Path, Path]) -> Iterator[LocalEndpoint]:
    """An echo endpoint serving HTTPS with a certificate for 127.0.0.1 from a made-up CA."""
    with LocalEndpoint(*ECHO_ARGS, env={TOKEN_ENV: TOKEN}, tls=tls_files) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https(https_echo: LocalEndpoint) -> LocalEndpoint:
    https_echo.reset()
    return https_echo


def unverified(endpoint: LocalEndpoint, concurrency: int = CONCURRENCY) -> ClientSettings:
    """Client settings for `endpoint`, its made-up certificate not verified."""
    settings = client_settings(endpoint, concurrency=concurrency)
    return replace(settings, endpoint=replace(settings.endpoint, verify_tls=False))


def answer(engine: Engine, first: int, rows: int) -> list[str]:
    results = engine.submit([request(i) for i in range(first, first + rows)]).result(timeout=30)
    return [r.status for r in results]


def test_the_next_engine_in_a_process_opens_no_connection(https: LocalEndpoint) -> None:
    settings = unverified(https)
    assert https.url.startswith("https://")
    with Engine(settings) as engine:
        assert answer(engine, 0, 64) == ["ok"] * 64
    opened = https.stats()["connections"]
    assert 1 <= opened <= CONCURRENCY
    with Engine(settings) as engine:
        assert answer(engine, 64, 64) == ["ok"] * 64
    stats = https.stats()
    assert (stats["requests_total"], stats["connections"]) == (128, opened)
    # Another concurrency is another session (its connector holds at most that many).
    with Engine(unverified(https, concurrency=2)) as engine:
        assert answer(engine, 128, 16) == ["ok"] * 16
    assert opened < https.stats()["connections"] <= opened + 2


def test_connections_the_endpoint_closed_while_kept_are_not_used(
    tls_files: tuple[Path, Path],
) -> None:
    """A server (or the load balancer before it) closes idle keep-alive connections sooner
    than aiohttp's 15 s: the next engine opens new ones, and no row pays a failed attempt."""
    idle_s = 0.2
    with LocalEndpoint(
        *ECHO_ARGS, "--keepalive-s", str(idle_s), env={TOKEN_ENV: TOKEN}, tls=tls_files
    ) as server:
        settings = unverified(server)
        with Engine(settings) as engine:
            assert answer(engine, 0, 64) == ["ok"] * 64
        opened = server.stats()["connections"]
        # The time between two tasks: what is tested is the connections' idle time.
        time.sleep(5 * idle_s)
        with Engine(settings) as engine:
            results = engine.submit([request(i) for i in range(64, 128)]).result(timeout=30)
        stats = server.stats()
    assert [(r.status, r.attempts) for r in results] == [("ok", 1)] * 64
    assert stats["requests_total"] == 128
    assert stats["connections"] > opened  # new ones: the kept ones were closed


def test_two_engines_at_once_each_have_their_own(https: LocalEndpoint) -> None:
    settings = unverified(https)
    with Engine(settings) as first, Engine(settings) as second:
        futures = [e.submit([request(i) for i in range(40)]) for e in (first, second)]
        assert [[r.status for r in f.result(timeout=30)] for f in futures] == [["ok"] * 40] * 2
    # Each task's connector bounds it at its own concurrency, as when each had its own process.
    assert https.stats()["peak_in_flight"] <= 2 * CONCURRENCY


def test_a_certificate_that_is_not_trusted_is_refused_by_default(https: LocalEndpoint) -> None:
    settings = client_settings(https, concurrency=2)
    assert settings.endpoint.verify_tls
    with Engine(settings) as engine:
        results = engine.submit([request(i) for i in range(4)]).result(timeout=60)
        stop_reason = engine.stop_reason
    assert [r.status for r in results] == ["error"] * 4
    assert "CERTIFICATE_VERIFY_FAILED" in (results[0].error or "")
    # The task stops after limits.max_fatal_errors, saying what to change.
    assert stop_reason is not None and "could not connect" in stop_reason
    assert "endpoint.verify_tls: false" in stop_reason
    assert https.stats()["requests_total"] == 0


def test_a_runs_chunks_go_on_over_the_connections_their_workers_opened(
    spark: SparkSession, https: LocalEndpoint, tmp_path: Path
) -> None:
    """Eight Delta chunks, one task each on two slots: each task would open its own
    connections (eight chunks of 8); the Python workers Spark reuses keep theirs."""
    rows, chunks = 8 * 48, 8
    source = save(prompts(spark, rows), tmp_path / "in")
    config = job(
        https,
        {"path": source, "id_column": "id", "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "delta", "chunk_rows": rows // chunks},
        endpoint={"verify_tls": False},
        limits={"concurrency": CONCURRENCY},
    )
    summary, _ = run(spark, config)
    stats = https.stats()
    assert (summary.chunks, summary.ok, stats["requests_total"]) == (chunks, rows, rows)
    # A worker per slot, and a third while a finishing task hands its slot on.
    assert stats["connections"] <= 3 * CONCURRENCY, stats["connections"]


def test_a_session_sends_back_no_cookie_an_endpoint_set(https: LocalEndpoint) -> None:
    # A session outlives its task: a gateway's cookie (a login after one run's token) must not
    # go with the next run's requests.
    async def exchange() -> list[str | None]:
        sent: list[str | None] = []

        async def handle(request: web.Request) -> web.Response:
            sent.append(request.headers.get("Cookie"))
            answer = web.json_response({})
            answer.set_cookie("gateway_session", "signed-in")
            return answer

        async with one_route("/invocations", handle) as port:
            session = open_session(client_settings(https, concurrency=CONCURRENCY))
            try:  # by name: aiohttp's default jar takes no cookie from an IP address
                for _ in range(3):
                    url = f"http://localhost:{port}/invocations"
                    async with session.post(url, json={}) as got:
                        assert got.cookies["gateway_session"].value == "signed-in"
            finally:
                await session.close()
        return sent

    assert asyncio.run(exchange()) == [None, None, None]
