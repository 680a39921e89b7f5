"""Run the local serving endpoint as a subprocess and talk to its control routes.

`LocalEndpoint` is what tests, `make run` and benchmarks use: it starts
`python -m pipeline.serving` on a free port, waits for /health, and wraps /control and /stats
with stdlib `urllib` so callers need no event loop. `python -m pipeline.serving.process URL`
waits for an already started server from shell scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

DEFAULT_STARTUP_TIMEOUT_S = 30.0
HEALTH_POLL_INTERVAL_S = 0.05
# One /health probe may not hang longer than this, so the startup deadline stays honest.
HEALTH_PROBE_TIMEOUT_S = 1.0
CONTROL_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 4000

# Loopback calls must never go through an HTTP(S)_PROXY inherited from the environment; over
# HTTPS they go to a server whose certificate a test made up, so it is not verified.
_LOOPBACK_TLS = ssl.create_default_context()
_LOOPBACK_TLS.check_hostname = False
_LOOPBACK_TLS.verify_mode = ssl.CERT_NONE
_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=_LOOPBACK_TLS)
)


def probe_health(url: str, timeout_s: float = HEALTH_PROBE_TIMEOUT_S) -> bool:
    """True when `GET {url}/health` answers 200 within `timeout_s`; never raises."""
    try:
        with _OPENER.open(f"{url}/health", timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except (OSError, ValueError):  # URLError, HTTPError, refused, timeout are all OSError
        return False


def wait_healthy(
    url: str, timeout_s: float, *, give_up: Callable[[], bool] = lambda: False
) -> bool:
    """Poll `{url}/health` every ~50 ms until it answers 200 (True) or `timeout_s` passes.

    Returns False at the deadline, or as soon as `give_up()` is true (e.g. the process died).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if probe_health(url, min(HEALTH_PROBE_TIMEOUT_S, max(remaining, 0.01))):
            return True
        if give_up() or time.monotonic() >= deadline:
            return False
        time.sleep(min(HEALTH_POLL_INTERVAL_S, max(deadline - time.monotonic(), 0)))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalEndpoint:
    """`python -m pipeline.serving` in a subprocess, as a context manager.

    `args` are extra server flags (`--model`, `--endpoint-name`, `--fail-first`, ...); host
    (an IPv4 address) and port are chosen here. `env` is added to this process's environment
    (e.g. the token variable for `--token-env`). Server output goes to `log_path`, or to a
    temporary file deleted on stop. `tls` (certificate chain and key, PEM files) serves HTTPS.
    """

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
        host: str = "127.0.0.1",
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    ) -> None:
        self.args = (
            args if tls is None else (*args, "--tls-cert", str(tls[0]), "--tls-key", str(tls[1]))
        )
        self.scheme = "http" if tls is None else "https"
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.host = host
        self._log_path = Path(log_path) if log_path is not None else None
        self._temporary_log = log_path is None
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """Server root, e.g. `http://127.0.0.1:54321`. Raises RuntimeError before start."""
        if self._url is None:
            raise RuntimeError("LocalEndpoint is not started")
        return self._url

    @property
    def base_url(self) -> str:
        """Root of the Databricks REST routes: `{url}/serving-endpoints`."""
        return f"{self.url}/serving-endpoints"

    def start(self) -> LocalEndpoint:
        """Start the server and wait until /health answers.

        Raises RuntimeError, with the tail of the server log, when the process exits or the
        startup deadline passes first.
        """
        if self._process is not None:
            raise RuntimeError("LocalEndpoint is already started")
        port = free_port(self.host)
        url = f"{self.scheme}://{self.host}:{port}"
        process = self._process = self._spawn(port)
        try:
            healthy = wait_healthy(
                url, self.startup_timeout_s, give_up=lambda: process.poll() is not None
            )
        except BaseException:  # e.g. Ctrl-C while waiting: never leave an orphan server
            self.stop()
            raise
        if not healthy:
            exited = process.poll()
            reason = (
                f"exited with status {exited}"
                if exited is not None
                else f"was not healthy within {self.startup_timeout_s:g} s"
            )
            tail = self._log_tail()
            self.stop()
            raise RuntimeError(f"local serving endpoint at {url} {reason}; log tail:\n{tail}")
        self._url = url
        return self

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        if self._log_path is None:
            handle, name = tempfile.mkstemp(prefix="pipeline-serving-", suffix=".log")
            os.close(handle)
            self._log_path = Path(name)
        self._log = self._log_path.open("ab")
        command = [
            sys.executable,
            "-m",
            "pipeline.serving",
            "--host",
            self.host,
            "--port",
            str(port),
            *self.args,
        ]
        return subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )

    def stop(self) -> None:
        """Terminate the server (kill it if it ignores SIGTERM); safe to call twice."""
        process, self._process, self._url = self._process, None, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._temporary_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> LocalEndpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def control(self, **settings: object) -> dict[str, Any]:
        """Change runtime settings; returns all current settings.

        Raises RuntimeError with the server's message when a setting is refused.
        """
        return self._call("POST", "/control", settings)

    def reset(self) -> dict[str, Any]:
        """Restore start-up settings and zero counters and fault memory; returns the settings."""
        return self._call("POST", "/control/reset", {})

    def stats(self) -> dict[str, Any]:
        """The /stats counters."""
        return self._call("GET", "/stats", None)

    def _call(self, method: str, path: str, body: object) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with _OPENER.open(request, timeout=CONTROL_TIMEOUT_S) as reply:
                result: dict[str, Any] = json.load(reply)
                return result
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise RuntimeError(f"{method} {path} answered {err.code}: {detail}") from err

    def _log_tail(self) -> str:
        if self._log is not None:
            self._log.flush()
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        return self._log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:] or "(empty log)"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pipeline.serving.process URL [--timeout S]`: exit 0 once healthy, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.serving.process",
        description="Wait until a local serving endpoint is healthy.",
    )
    parser.add_argument("url", help="server root, e.g. http://127.0.0.1:8765")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_STARTUP_TIMEOUT_S,
        help="seconds to wait (default %(default)s)",
    )
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    if wait_healthy(url, args.timeout):
        return 0
    print(f"{url}/health did not answer 200 within {args.timeout:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
