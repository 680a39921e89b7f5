"""Shared fixtures: one local Spark session and one local serving endpoint per test run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from pyspark.sql import SparkSession

from pipeline.serving.process import LocalEndpoint
from pipeline.spark.session import spark_session
from tests.cluster import StandaloneCluster
from tests.connect_server import ConnectServer

# The token the shared endpoint requires; tests check it never leaks into output or logs.
TOKEN_ENV = "PIPELINE_TEST_TOKEN"
TOKEN = "dapi-pipeline-test-5ecret"
ENDPOINT_NAME = "echo"

# Small-machine settings: two cores, no UI, few shuffle partitions, small Arrow batches so a
# few hundred rows already span several batches.
TEST_SPARK_CONF = {
    "spark.master": "local[2]",
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "50",
    "spark.driver.memory": "2g",
}


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    warehouse = tmp_path_factory.mktemp("warehouse")
    conf = {**TEST_SPARK_CONF, "spark.sql.warehouse.dir": str(warehouse)}
    session = spark_session("pipeline-tests", conf)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


ECHO_ARGS = ("--model", "echo", "--endpoint-name", ENDPOINT_NAME, "--token-env", TOKEN_ENV)


@pytest.fixture(scope="session")
def _echo_process() -> Iterator[LocalEndpoint]:
    with LocalEndpoint(*ECHO_ARGS, env={TOKEN_ENV: TOKEN}) as endpoint:
        yield endpoint


@pytest.fixture
def echo(_echo_process: LocalEndpoint) -> LocalEndpoint:
    """The shared echo endpoint (token required), with start-up settings and zeroed counters."""
    _echo_process.reset()
    return _echo_process


@pytest.fixture
def private_echo() -> Iterator[LocalEndpoint]:
    """An echo endpoint of the test's own, for jobs that stop early.

    When a job is stopped, Spark cancels its other tasks asynchronously and their requests can
    still arrive for a moment after the driver returns; they land here, not on the shared
    endpoint whose counters the next test reads.
    """
    with LocalEndpoint(*ECHO_ARGS, env={TOKEN_ENV: TOKEN}) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    """A Spark Connect server (its own JVM, `local[2]`, Delta), started once per test run."""
    with ConnectServer(tmp_path_factory.mktemp("connect") / "server.log") as server:
        yield server


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """A standalone Spark master and two 1-core workers on 127.0.0.1, started once per run."""
    with StandaloneCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@asynccontextmanager
async def one_route(
    path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[int]:
    """A real HTTP server on a free loopback port answering POST `path` with `handler`, for
    the block (on the running event loop): its port."""
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def write_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 from a made-up CA, and its key: PEM files in `folder`."""
    issued = trustme.CA().issue_cert("127.0.0.1")
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key
