"""A Spark standalone cluster on 127.0.0.1: one master and two workers (1 core, 1 GiB each).

pyspark's wheel has no `sbin/start-*.sh`: the master and the workers are started with
`spark-class`, as those scripts would, and stopped by process group. Executors run this
interpreter (`PYSPARK_PYTHON`), which has the package installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from pipeline.serving.process import free_port
from tests.jvm_processes import start, stop

START_TIMEOUT_S = 120.0
POLL_S = 0.2
WORKERS = 2


class StandaloneCluster:
    """A master at `url` with `WORKERS` registered workers while the context is open."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._port, self._ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self._port}"
        self._processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> StandaloneCluster:
        master = ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                  "--port", str(self._port), "--webui-port", str(self._ui_port)]  # fmt: skip
        self._start("master", master)
        for n in range(WORKERS):
            worker = ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                      "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()),
                      "--work-dir", str(self._workdir / f"work{n}"), self.url]  # fmt: skip
            self._start(f"worker{n}", worker)
        self._wait_for_workers()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stop(list(reversed(self._processes)))

    def _start(self, name: str, args: list[str]) -> None:
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOG_DIR": str(self._workdir)}
        command = [str(Path(sys.executable).with_name("spark-class")), *args]
        self._processes.append(start(command, self._workdir / f"{name}.log", env))

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a cluster process exited; logs in {self._workdir}")
            if self.alive_workers() >= WORKERS:
                return
            time.sleep(POLL_S)  # polling the master's status route with a deadline
        raise RuntimeError(f"{WORKERS} workers not registered in {START_TIMEOUT_S:g} s")

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self._ui_port}/json/", timeout=2) as r:
                return int(json.load(r).get("aliveworkers", 0))
        except (urllib.error.URLError, OSError, ValueError):
            return 0
