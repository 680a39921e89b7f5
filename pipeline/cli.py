"""Command line: `python -m pipeline run --config conf/local.yaml [--set section.key=value ...]`.

The configuration is loaded and validated before Spark starts, so a typo costs a second, not a
cluster start-up. `jobs/batch_chat.py` (spark-submit, Databricks tasks) calls the same `main`.

Exit status: 0 done; 2 the config or the input is wrong (nothing was sent); 3 the job stopped on
purpose (answers every row would get, another run holding the sink, too many error rows); 1 any
other failure. The `batch-chat` entry point raises `SystemExit` with it, because a Databricks
`python_wheel_task` ignores a returned value and would mark a failed run as succeeded.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from collections.abc import Sequence

from pipeline.control.progress import ProgressStyle
from pipeline.core.errors import ConfigError, JobAborted
from pipeline.core.loader import load_config

EXIT_CONFIG_ERROR = 2
EXIT_JOB_ABORTED = 3
LOG_LEVELS = ("debug", "info", "warning", "error")


def entry_point() -> None:
    """The `batch-chat` console script and wheel entry point: `main` on `sys.argv`.

    Raises:
        SystemExit: with the exit status, whenever it is not 0.
    """
    status = main()
    if status:
        raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the chosen command; the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its chatter at exit is not ours
    try:
        if args.command == "run":
            return _run(
                args.config,
                args.overrides,
                dry=args.dry_run,
                progress=args.progress,
                remote=args.remote,
            )
        return _sample(args.out, args.rows, remote=args.remote)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except JobAborted as err:
        print(f"job stopped: {err}", file=sys.stderr)
        return EXIT_JOB_ABORTED


def _run(
    config_path: str,
    overrides: Sequence[str],
    *,
    dry: bool = False,
    progress: str = "auto",
    remote: str | None = None,
) -> int:
    config = load_config(config_path, overrides)
    # pyspark is imported only once the config is known good.
    from pipeline.spark.dryrun import dry_run
    from pipeline.spark.job import check_error_share, run_job
    from pipeline.spark.session import spark_session

    spark = spark_session(remote=remote)
    if dry:
        print(dry_run(config, spark).render(), flush=True)
        return 0

    summary = run_job(config, spark, progress=typing.cast(ProgressStyle, progress))
    print(summary.render(), flush=True)
    check_error_share(summary, config.limits.max_error_fraction)
    return 0


def _sample(out: str, rows: int, *, remote: str | None = None) -> int:
    from pipeline.spark.sample import write_sample
    from pipeline.spark.session import spark_session

    for path in write_sample(out, rows, spark_session(remote=remote)):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    logging_options = argparse.ArgumentParser(add_help=False)
    logging_options.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="debug also shows Spark's traces behind a one-line error",
    )
    logging_options.add_argument(
        "--remote",
        default=None,
        metavar="URL",
        help="run through Spark Connect: sc://host:port, or local[N] for an embedded server "
        "(default: the SPARK_REMOTE variable, else a classic session)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the batch chat job", parents=[logging_options])
    run.add_argument("--config", required=True, help="YAML job config, e.g. conf/local.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set limits.concurrency=64",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="count the requests and tokens a run would send now, without sending any",
    )
    run.add_argument(
        "--progress",
        choices=typing.get_args(ProgressStyle),
        default="auto",
        help="a live bar, or a log line every 30 s (auto: the bar when stderr is a terminal)",
    )
    sample = commands.add_parser(
        "sample", help="write the sample prompt tables (Parquet, Delta)", parents=[logging_options]
    )
    sample.add_argument("--out", default="data/sample", help="folder for the tables")
    sample.add_argument("--rows", type=int, default=300, help="how many prompts")
    return parser
