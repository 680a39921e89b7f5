"""Start and stop the JVMs a test run needs besides its own Spark session (a Connect server, a
standalone master and workers): each in a process group of its own, its output in a log file,
stopped with its children by signalling the group."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_TIMEOUT_S = 30.0


def start(
    command: Sequence[str], log_path: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """`command` in a new process group, stdout and stderr to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=dict(env),
            start_new_session=True,
        )  # fmt: skip


def stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each still-running group, then wait; SIGKILL a group that outlives the wait."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
