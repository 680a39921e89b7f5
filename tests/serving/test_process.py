"""LocalEndpoint lifecycle, the health-wait CLI and the server's --ready-file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.serving.process import LocalEndpoint, free_port, probe_health, wait_healthy

from .wire_client import get

# Generous: these bound waits on a subprocess, they do not pace the test.
DEADLINE_S = 30.0


def test_endpoint_serves_between_start_and_stop() -> None:
    endpoint = LocalEndpoint()
    with pytest.raises(RuntimeError, match="not started"):
        _ = endpoint.url

    with endpoint:
        url = endpoint.url
        assert endpoint.base_url == f"{url}/serving-endpoints"
        assert get(f"{url}/health").body == {"status": "ok"}

    assert not probe_health(url)
    endpoint.stop()  # a second stop is harmless


def test_server_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"

    with pytest.raises(RuntimeError, match="exited with status 2") as caught:
        LocalEndpoint("--model", "no-such-model", log_path=log).start()

    assert "invalid choice" in str(caught.value)
    assert "invalid choice" in log.read_text()  # an explicit log file is kept


def test_missing_token_variable_stops_the_server_naming_the_setting() -> None:
    with pytest.raises(RuntimeError, match="token_env") as caught:
        LocalEndpoint("--token-env", "PIPELINE_SERVING_UNSET_VAR", env={}).start()

    assert "PIPELINE_SERVING_UNSET_VAR" in str(caught.value)


def test_wait_healthy_gives_up_at_the_deadline() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()

    assert wait_healthy(url, timeout_s=0.2) is False
    assert time.monotonic() - started < 5


def test_wait_healthy_cli_exit_codes() -> None:
    command = [sys.executable, "-m", "pipeline.serving.process"]
    down = subprocess.run(
        [*command, f"http://127.0.0.1:{free_port()}", "--timeout", "0.2"],
        capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )
    assert down.returncode == 1
    assert "did not answer 200" in down.stderr

    with LocalEndpoint() as endpoint:
        up = subprocess.run([*command, endpoint.url, "--timeout", "5"],
                            capture_output=True, timeout=DEADLINE_S, check=False)
    assert up.returncode == 0


def test_ready_file_holds_the_url_while_serving(tmp_path: Path) -> None:
    ready, port = tmp_path / "ready", free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.serving", "--port", str(port), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(url, DEADLINE_S, give_up=lambda: server.poll() is not None)
        # The server writes the file before its loop can answer /health, so it exists now.
        assert ready.read_text() == f"{url}\n"
    finally:
        server.terminate()
        assert server.wait(timeout=DEADLINE_S) == 0
    assert not ready.exists()  # removed at exit: a stale file must not announce a dead server
