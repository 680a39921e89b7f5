"""A token that expires mid-run is renewed: the Databricks SDK renews it on the driver, and the
tasks fetch the new one from the driver when the endpoint refuses the old one.

The SDK's credentials here come from a real local HTTP server speaking the Databricks metadata
service protocol (the way the Databricks CLI hands tokens to tools): it serves an already
expired token until the endpoint has refused it, then the valid one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipeline.serving.process import LocalEndpoint
from pipeline.spark.job import run_job
from pipeline.spark.tables import read_sink
from tests.conftest import TOKEN, TOKEN_ENV
from tests.test_job import job, prompts, save

STALE = "dapi-stale-token-0000"


class MetadataService:
    """Hands out STALE (expired) until `endpoint` has answered a 403, then TOKEN for an hour."""

    def __init__(self, endpoint: LocalEndpoint) -> None:
        self.calls = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.calls += 1
                refused = endpoint.stats()["by_status"].get("403", 0) > 0
                token, expires = (TOKEN, time.time() + 3600) if refused else (STALE, 1.0)
                body = json.dumps(
                    {"access_token": token, "token_type": "Bearer", "expires_on": expires}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> MetadataService:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def metadata_service(
    private_echo: LocalEndpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[MetadataService]:
    for name in [n for n in os.environ if n.startswith("DATABRICKS_")] + [TOKEN_ENV]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg
    with MetadataService(private_echo) as service:
        monkeypatch.setenv("DATABRICKS_HOST", private_echo.url)
        monkeypatch.setenv("DATABRICKS_METADATA_SERVICE_URL", service.url)
        yield service


def test_expired_token_is_renewed_through_the_driver(
    spark: SparkSession,
    private_echo: LocalEndpoint,
    metadata_service: MetadataService,
    tmp_path: Path,
) -> None:
    config = job(
        private_echo,
        {"path": save(prompts(spark, 60), tmp_path / "in"), "id_column": "id",
         "prompt_column": "prompt"},
        {"path": str(tmp_path / "out"), "format": "parquet"},
    )  # fmt: skip
    summary = run_job(config, spark, env=dict(os.environ))  # no token in the environment

    stats = private_echo.stats()
    assert stats["by_status"].get("403", 0) >= 1  # the expired token went out, and was refused
    assert summary.ok == 60 and stats["by_status"]["200"] == 60  # then every row got through
    assert metadata_service.calls >= 2
    out = read_sink(spark, config.sink)
    assert out.filter("status = 'ok'").count() == 60
    for row in out.collect():  # neither token is written anywhere
        assert TOKEN not in str(row) and STALE not in str(row)
