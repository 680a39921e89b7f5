"""`make run`: the sample table answered by the local endpoint, through spark-submit.

Starts `python -m pipeline.serving` (echo model, token required) on a free port, runs
`spark-submit jobs/batch_chat.py --config conf/local.yaml` against it, and stops the endpoint.
Extra arguments are passed to the job (e.g. `--set limits.concurrency=64`).
"""

import os
import subprocess
import sys
from pathlib import Path

from pipeline.io import DELTA_PACKAGE
from pipeline.serving.process import LocalEndpoint

ROOT = Path(__file__).resolve().parent.parent
TOKEN_ENV = "DATABRICKS_TOKEN"


def main(job_args: list[str]) -> int:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.setdefault(TOKEN_ENV, "local-dev-token")
    server_args = ("--model", "echo", "--endpoint-name", "echo", "--token-env", TOKEN_ENV)
    with LocalEndpoint(*server_args, env={TOKEN_ENV: env[TOKEN_ENV]}) as endpoint:
        print(f"local serving endpoint at {endpoint.url}", flush=True)
        submit = Path(sys.executable).with_name("spark-submit")
        command = [
            str(submit),
            "--packages", DELTA_PACKAGE,
            "--driver-java-options",
            f"-Dlog4j.configurationFile=file:{ROOT / 'conf' / 'log4j2.properties'}",
            str(ROOT / "jobs" / "batch_chat.py"),
            "--config", str(ROOT / "conf" / "local.yaml"),
            "--set", f"endpoint.host={endpoint.url}",
            *job_args,
        ]  # fmt: skip
        result = subprocess.run(command, env=env, cwd=ROOT, check=False)
        stats = endpoint.stats()
        print(f"endpoint served {stats['requests_total']} requests: {stats['by_status']}")
        return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
