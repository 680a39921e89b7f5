"""The batch chat job: read the source, answer every row inside `mapInPandas`, write the sink.

The rows still to answer are planned first (see `pipeline.chunks`), then answered and committed
chunk after chunk. The run summary comes from a Spark `Observation` on each chunk's output,
computed by the executors while the chunk is written, so it counts exactly what was written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipeline.budget import JobBudget
from pipeline.chunks import WorkPlan, plan_work, spread
from pipeline.client import ClientSettings
from pipeline.config import JobConfig, LimitsConfig, SourceConfig
from pipeline.coordinator import BudgetServer
from pipeline.errors import ConfigError, JobAborted
from pipeline.io import (
    SaveMode,
    check_sink_writable,
    delete_error_rows,
    driver_host,
    read_source,
    session_conf,
    spark_session,
    write_sink,
)
from pipeline.mapper import (
    ESTIMATE_SCHEMA,
    REQUEST_KEY,
    TaskPlan,
    make_batch_mapper,
    make_estimate_mapper,
    make_key_mapper,
    output_schema,
    parsed_type,
)
from pipeline.progress import Board, ProgressStyle, Tally
from pipeline.secrets import Credentials, resolve_credentials
from pipeline.summary import ChunkTotals, RunSummary, chunk_metrics, write_summary

log = logging.getLogger(__name__)

_ABORTED = re.compile(r"JobAborted: (.+)")


# Adaptive rate control starts at this many requests per second per in-flight slot (a guess of
# 500 ms per answer) and doubles every second until the endpoint answers 429.
ADAPTIVE_START_PER_SLOT = 2.0

# Rows per Arrow batch handed to the mapper, at most: the request window needs no more, and a
# task's memory stays the same whatever the size of the input.
ARROW_BATCH_ROWS = 500
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"

# The first chunk's save mode, by `sink.mode`; later chunks append.
FIRST_SAVE_MODE: dict[str, SaveMode] = {
    "merge": "append",
    "append": "append",
    "overwrite": "overwrite",
    "error": "errorifexists",
}


def run_job(
    config: JobConfig,
    spark: SparkSession | None = None,
    env: Mapping[str, str] | None = None,
    *,
    progress: ProgressStyle = "auto",
) -> RunSummary:
    """Run the whole job once: plan, then answer and commit chunk after chunk.

    Raises:
        ConfigError: the token is missing, or a configured column is not in the source.
        JobAborted: a task stopped on answers that every row would get (chunks committed
            before it stay committed).
    """
    credentials = resolve_credentials(config.endpoint, os.environ if env is None else env)
    run_id = uuid.uuid4().hex[:12]
    log.info("run %s config: %s", run_id, json.dumps(config.to_dict(), default=str))
    spark = spark or spark_session()
    frame = read_source(spark, config.source)
    check_columns(frame.schema, config.source)
    check_sink_writable(spark, config.sink)
    started = time.monotonic()
    salt = request_id_salt(config)
    with _planned(spark, config, frame, salt) as work:
        tasks = task_count(spark, config.source.partitions, max(work.chunk_sizes, default=1))
        board = Board(work.pending_rows, style=progress)
        totals, seen = _answer_chunks(spark, config, work, credentials, tasks, salt, run_id, board)
    counts = totals.counts
    summary = RunSummary.of(
        totals,
        config.pricing.cost(counts["prompt_tokens"], counts["completion_tokens"]),
        seconds=round(time.monotonic() - started, 3),
        tasks=tasks,
        sink=config.sink.table or config.sink.path or "",
        skipped=work.input_rows - work.pending_rows,
        chunks=work.chunks,
        run_id=run_id,
        config=config.to_dict(),
        progress=seen,
    )
    where = write_summary(spark, config.sink, summary)
    log.info("run summary written to %s", where)
    return summary


@dataclass(frozen=True)
class DryRun:
    """What a run would send now, estimated without calling the endpoint."""

    input_rows: int
    already_answered: int
    rows_to_answer: int
    requests: int  # distinct requests among those rows (identical ones are sent once)
    invalid_rows: int  # rows that cannot become a request: error rows, nothing sent
    prompt_tokens: int  # estimated from the prompts' length
    output_tokens: int  # at most: the sum of max_tokens
    estimated_cost: float | None  # at most, with `pricing`
    currency: str

    def render(self) -> str:
        cost = "" if self.estimated_cost is None else (
            f", estimated cost at most {self.estimated_cost:.4f} {self.currency}"
        )  # fmt: skip
        return (
            f"dry run: {self.input_rows} input rows, {self.already_answered} already answered, "
            f"{self.rows_to_answer} to answer: {self.requests} requests would be sent "
            f"({self.invalid_rows} rows cannot become a request); estimated tokens in "
            f"~{self.prompt_tokens}, out at most {self.output_tokens}{cost}; nothing was sent"
        )


def dry_run(config: JobConfig, spark: SparkSession | None = None) -> DryRun:
    """Read the input, apply resume and dedupe as `run_job` would, and count what it would
    send; the endpoint is not called (and no token is needed)."""
    spark = spark or spark_session()
    frame = read_source(spark, config.source)
    check_columns(frame.schema, config.source)
    salt = request_id_salt(config)
    with _planned(spark, config, frame, salt) as work:
        estimate_mapper = make_estimate_mapper(config.source, config.request, salt)
        built = work.pending.drop("request_id", REQUEST_KEY).mapInPandas(
            estimate_mapper, ESTIMATE_SCHEMA
        )
        sent = built.dropDuplicates(["key"]) if config.request.dedupe else built
        totals = sent.agg(
            F.count(F.lit(1)).alias("requests"),
            F.sum("prompt_tokens").alias("prompt_tokens"),
            F.sum("output_tokens").alias("output_tokens"),
        ).first()
        valid = built.count()
    assert totals is not None
    prompt_tokens, output_tokens = (
        int(totals["prompt_tokens"] or 0),
        int(totals["output_tokens"] or 0),
    )
    return DryRun(
        input_rows=work.input_rows,
        already_answered=work.input_rows - work.pending_rows,
        rows_to_answer=work.pending_rows,
        requests=int(totals["requests"]),
        invalid_rows=work.pending_rows - valid,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        estimated_cost=config.pricing.cost(prompt_tokens, output_tokens),
        currency=config.pricing.currency,
    )


@contextmanager
def _planned(
    spark: SparkSession, config: JobConfig, frame: DataFrame, salt: str
) -> Iterator[WorkPlan]:
    """The rows a run must answer (see `plan_work`), released on leaving; small Arrow batches
    for every Python pass over them (keying, answering, estimating)."""
    key_mapper = make_key_mapper(config.source, config.request, salt)
    with session_conf(spark, {ARROW_BATCH_CONF: str(arrow_batch_rows(spark))}):
        work = plan_work(spark, frame, key_mapper, config.sink)
        try:
            yield work
        finally:
            work.release()


def _answer_chunks(
    spark: SparkSession,
    config: JobConfig,
    work: WorkPlan,
    credentials: Credentials,
    tasks: int,
    salt: str,
    run_id: str,
    board: Board,
) -> tuple[ChunkTotals, Tally]:
    """Answer and commit every chunk of `work`, in order; the chunks' counts, and what the live
    progress saw."""
    limits = config.limits
    client = ClientSettings(
        endpoint=config.endpoint,
        limits=limits,
        extra=config.request.extra,
        token=credentials.current(),
        requests_per_minute=_share(limits.requests_per_minute, tasks),
        tokens_per_minute=_share(limits.tokens_per_minute, tasks),
        output=config.request.output_format,
    )
    saved_config = config.to_dict()  # holds the token's variable name, never the token
    totals = ChunkTotals()
    with _driver_server(spark, limits, tasks, board, credentials) as server, _showing(board):
        client = replace(client, progress_url=server.progress_url)
        if credentials.renewable:
            client = replace(client, token_url=server.token_url)
        if server.budget is not None:
            client = replace(client, budget_url=server.url)
        plan = TaskPlan(config.source, config.request, client, salt)
        for index in range(work.chunks):
            metadata = json.dumps(
                {"batch_chat_run": run_id, "chunk": f"{index + 1}/{work.chunks}",
                 "config": saved_config},
                default=str,
            )  # fmt: skip
            chunk = _commit_chunk(spark, config, work, plan, tasks, index, metadata)
            totals.add(chunk)
            log.info(
                "chunk %d/%d committed: %d rows (%d ok, %d requests sent)%s",
                index + 1, work.chunks, chunk.get("rows"), chunk.get("ok"), chunk.get("attempts"),
                _rate_note(server.budget),
            )  # fmt: skip
    return totals, board.tally


@contextmanager
def _driver_server(
    spark: SparkSession, limits: LimitsConfig, tasks: int, board: Board, credentials: Credentials
) -> Iterator[BudgetServer]:
    """The driver's server for the tasks: progress, and the job's shared budget when there is
    one to keep."""
    budgets = (limits.requests_per_minute, limits.tokens_per_minute)
    budget = None
    if limits.adaptive or budgets != (None, None):
        budget = JobBudget(
            limits.requests_per_minute,
            limits.tokens_per_minute,
            adaptive=limits.adaptive,
            start_rate_per_s=tasks * limits.concurrency * ADAPTIVE_START_PER_SLOT,
        )
    with BudgetServer(
        budget, board=board, credentials=credentials, advertise=driver_host(spark)
    ) as server:
        yield server


@contextmanager
def _showing(board: Board) -> Iterator[Board]:
    board.start()
    try:
        yield board
    finally:
        board.stop()


def _rate_note(budget: JobBudget | None) -> str:
    if budget is None:
        return ""
    rate = budget.rate_per_s
    shown = "unlimited" if rate is None else f"{rate * 60:.0f}/min"
    return f"; request rate {shown}, {budget.rate_limited} answered 429"


def _commit_chunk(
    spark: SparkSession,
    config: JobConfig,
    work: WorkPlan,
    plan: TaskPlan,
    tasks: int,
    index: int,
    metadata: str,
) -> dict[str, Any]:
    """Answer chunk `index` and commit it; what was observed on its rows."""
    chunk = work.chunk(index)
    if work.replace_errors:
        # Its own commit, before the chunk's: a crash in between leaves those rows without
        # any row, so the next run answers them again; nothing is lost or doubled.
        delete_error_rows(spark, config.sink, chunk, metadata)
    source_schema = StructType(
        [f for f in work.keyed.schema.fields if f.name not in ("request_id", REQUEST_KEY)]
    )
    parsed = parsed_type(config.request.output_format)
    answered = spread(chunk, tasks, config.request.dedupe).mapInPandas(
        make_batch_mapper(plan), output_schema(source_schema, parsed)
    )
    observation = Observation(f"batch_chat_chunk_{index}")
    mode = FIRST_SAVE_MODE[config.sink.mode] if index == 0 else "append"
    try:
        write_sink(answered.observe(observation, *chunk_metrics()), config.sink, mode, metadata)
    except Exception as err:
        _raise_if_aborted(err)
        raise
    return dict(observation.get)


def check_error_share(summary: RunSummary, max_error_fraction: float | None) -> None:
    """Fail a run (its output stays written) when too many of its rows ended in error.

    Raises:
        JobAborted: the share of error rows is above `limits.max_error_fraction`.
    """
    if max_error_fraction is None or summary.rows == 0:
        return
    share = summary.errors / summary.rows
    if share > max_error_fraction:
        raise JobAborted(
            f"{summary.errors} of {summary.rows} rows ended in error ({share:.1%}), above "
            f"limits.max_error_fraction={max_error_fraction:g}; the output was written"
        )


def _raise_if_aborted(error: Exception) -> None:
    # A task that stopped on purpose reaches the driver as a Python traceback inside a Spark
    # error; give the user the one sentence that matters, not the stack.
    found = _ABORTED.search(str(error))
    if found:
        raise JobAborted(found.group(1).strip()) from None


def check_columns(schema: StructType, source: SourceConfig) -> None:
    """Fail before any request when a configured column is not in the input.

    Raises:
        ConfigError: naming the config key and the missing column.
    """
    present = set(schema.fieldNames())
    keys = [
        "id_column",
        "prompt_column",
        "messages_column",
        "max_tokens_column",
        "temperature_column",
    ]
    for key in keys:
        column = getattr(source, key)
        if column is not None and column not in present:
            raise ConfigError(
                f"source.{key}", f"column {column!r} is not in the input ({_cols(present)})"
            )
    for column in source.input_columns():
        if column not in present:
            raise ConfigError(
                "source.template",
                f"placeholder {{{column}}} is not an input column ({_cols(present)})",
            )
    output_schema(schema)  # raises on a column that clashes with a result column


def task_count(spark: SparkSession, partitions: int | None, largest_chunk: int) -> int:
    """Spark tasks per chunk: `source.partitions`, else the cluster's task slots; never more
    than the largest chunk has rows (an empty task would hold a share of the budgets)."""
    if partitions is None:
        try:
            partitions = spark.sparkContext.defaultParallelism
        except Exception:  # Spark Connect has no SparkContext
            partitions = int(spark.conf.get("spark.default.parallelism", "8") or 8)
    return max(1, min(partitions, largest_chunk))


def request_id_salt(config: JobConfig) -> str:
    """What besides the messages makes two requests different: the endpoint and extra fields."""
    return json.dumps(
        [config.endpoint.name, dict(config.request.extra)], sort_keys=True, default=str
    )


def arrow_batch_rows(spark: SparkSession) -> int:
    """The session's Arrow batch size, lowered to ARROW_BATCH_ROWS."""
    try:
        configured = int(spark.conf.get(ARROW_BATCH_CONF, "10000") or 10000)
    except ValueError:
        configured = ARROW_BATCH_ROWS
    return min(configured, ARROW_BATCH_ROWS) if configured > 0 else ARROW_BATCH_ROWS


def _share(per_minute: float | None, tasks: int) -> float | None:
    return None if per_minute is None else per_minute / tasks


def _cols(names: set[str]) -> str:
    return "columns: " + ", ".join(sorted(names))
