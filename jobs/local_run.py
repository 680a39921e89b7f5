"""`make run`: the sample table answered by the local endpoint, through spark-submit.

Starts `python -m pipeline.serving --model MODEL` (token required) on a free port, runs
`spark-submit jobs/batch_chat.py --config conf/local.yaml` against it, and stops the endpoint.
`--model smollm2` (default) is the real SmolLM2-135M-Instruct; `--model echo` answers instantly.
`--serve=FLAG` passes a flag to the endpoint (`--serve=--reasoning`); other arguments are passed
to the job (e.g. `--set limits.concurrency=64`).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pipeline.serving.process import LocalEndpoint
from pipeline.spark.session import DELTA_PACKAGE, LOG4J_OPTION

ROOT = Path(__file__).resolve().parent.parent
TOKEN_ENV = "DATABRICKS_TOKEN"
# Loading the GGUF weights takes a few seconds; the echo model starts at once.
STARTUP_TIMEOUT_S = 120.0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 | echo")
    parser.add_argument(
        "--serve", action="append", default=[], metavar="FLAG",
        help="a flag for the local endpoint, e.g. --serve=--reasoning (repeatable)",
    )  # fmt: skip
    args, job_args = parser.parse_known_args(argv)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.setdefault(TOKEN_ENV, "local-dev-token")
    server_args = ("--model", args.model, "--token-env", TOKEN_ENV, *args.serve)
    with LocalEndpoint(
        *server_args, env={TOKEN_ENV: env[TOKEN_ENV]}, startup_timeout_s=STARTUP_TIMEOUT_S
    ) as endpoint:
        print(f"local serving endpoint ({args.model}) at {endpoint.url}", flush=True)
        submit = Path(sys.executable).with_name("spark-submit")
        command = [
            str(submit),
            "--packages", DELTA_PACKAGE,
            "--driver-java-options", LOG4J_OPTION,
            str(ROOT / "jobs" / "batch_chat.py"),
            "--config", str(ROOT / "conf" / "local.yaml"),
            "--set", f"endpoint.host={endpoint.url}",
            "--set", f"endpoint.name={args.model}",
            "--set", f"sink.path=data/out/answers_{args.model}",
            # spark-submit pipes the driver's output: say whether it ends up on a terminal.
            "--progress", "bar" if sys.stderr.isatty() else "log",
            *job_args,
        ]  # fmt: skip
        result = subprocess.run(command, env=env, cwd=ROOT, check=False)
        stats = endpoint.stats()
        print(f"endpoint served {stats['requests_total']} requests: {stats['by_status']}")
        return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
