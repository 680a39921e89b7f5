"""A Spark Connect server in a JVM of its own, for tests that run the job as a Connect client.

pyspark's wheel has no `sbin/start-connect-server.sh`; the server is its `SparkConnectServer`
class started with spark-submit, as the script would, on a `local[2]` master with the Delta
settings a local run uses. A client process that has a classic SparkContext cannot also hold a
Connect session, so the tests drive the job through `python -m pipeline run --remote`, a client
process of its own, exactly as a user would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import pyspark

from pipeline.serving.process import free_port
from pipeline.spark.session import BASE_CONF, DELTA_CONF, DELTA_PACKAGE
from tests.jvm_processes import start, stop

START_TIMEOUT_S = 300.0  # the first start fetches Delta's jars from Maven Central
POLL_S = 0.2
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
TEST_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "50",
    "spark.driver.memory": "1g",
}


class ConnectServer:
    """`SparkConnectServer` on 127.0.0.1 at `url` while the context is open."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"sc://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ConnectServer:
        jars = Path(pyspark.__file__).parent / "jars"
        (jar,) = jars.glob("spark-connect_*.jar")
        conf = {**BASE_CONF, **DELTA_CONF, **TEST_CONF,
                "spark.connect.grpc.binding.port": str(self.port)}  # fmt: skip
        command = [
            str(Path(sys.executable).with_name("spark-submit")),
            "--class", SERVER_CLASS,
            "--master", "local[2]",
            "--packages", DELTA_PACKAGE,
            *(arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")),
            str(jar),
        ]  # fmt: skip
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
        env.pop("SPARK_REMOTE", None)
        self._process = start(command, self._log_path, env)
        self._wait_until_listening()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            stop([self._process])

    def _wait_until_listening(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the Connect server exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=POLL_S):
                    return
            except OSError:
                time.sleep(POLL_S)  # polling a port with a deadline, not waiting blind
        raise RuntimeError(f"no Connect server on {self.url} in {START_TIMEOUT_S:g} s")

    def log_tail(self, chars: int = 3000) -> str:
        return self._log_path.read_text(errors="replace")[-chars:]
