"""The batch chat job: read the source, answer every row inside `mapInPandas`, write the sink.

The run summary comes from a Spark `Observation` on the output, computed by the executors while
the table is written, so it counts exactly what was written, without a second pass.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipeline.client import ClientSettings
from pipeline.config import JobConfig, SourceConfig
from pipeline.errors import ConfigError, JobAborted
from pipeline.io import check_sink_writable, read_source, spark_session, write_sink
from pipeline.mapper import TaskPlan, make_batch_mapper, output_schema
from pipeline.secrets import resolve_token

log = logging.getLogger(__name__)

_ABORTED = re.compile(r"JobAborted: (.+)")


@dataclass(frozen=True)
class RunSummary:
    rows: int
    ok: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    seconds: float
    tasks: int
    sink: str

    def render(self) -> str:
        """One line for a terminal or a job log."""
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return (
            f"batch-chat: {self.rows} rows ({self.ok} ok, {self.errors} error) | "
            f"tokens in {self.prompt_tokens} out {self.completion_tokens} | "
            f"{self.attempts} requests sent | {self.seconds:.1f} s ({rate:.1f} rows/s, "
            f"{self.tasks} tasks) | wrote {self.sink}"
        )


def run_job(
    config: JobConfig, spark: SparkSession | None = None, env: Mapping[str, str] | None = None
) -> RunSummary:
    """Run the whole job once.

    Raises:
        ConfigError: the token is missing, or a configured column is not in the source.
    """
    token = resolve_token(config.endpoint, os.environ if env is None else env)
    log.info("config: %s", json.dumps(config.to_dict(), default=str))
    spark = spark or spark_session()
    frame = read_source(spark, config.source)
    check_columns(frame.schema, config.source)
    check_sink_writable(spark, config.sink)
    if config.source.partitions is not None:
        frame = frame.repartition(config.source.partitions)
    tasks = concurrent_tasks(spark, frame)
    limits = config.limits
    client = ClientSettings(
        endpoint=config.endpoint,
        limits=limits,
        extra=config.request.extra,
        token=token,
        requests_per_minute=_share(limits.requests_per_minute, tasks),
        tokens_per_minute=_share(limits.tokens_per_minute, tasks),
    )
    plan = TaskPlan(config.source, config.request, client, request_id_salt(config))
    answered = frame.mapInPandas(make_batch_mapper(plan), output_schema(frame.schema))
    observation = Observation("batch_chat")
    observed = answered.observe(observation, *_summary_metrics())
    started = time.monotonic()
    try:
        write_sink(observed, config.sink)
    except Exception as err:
        _raise_if_aborted(err)
        raise
    seconds = time.monotonic() - started
    return _summary(observation.get, seconds, tasks, config.sink.table or config.sink.path or "")


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


def concurrent_tasks(spark: SparkSession, frame: DataFrame) -> int:
    """How many tasks will run at once: partitions, bounded by the cluster's task slots."""
    try:
        partitions = frame.rdd.getNumPartitions()
        slots = spark.sparkContext.defaultParallelism
    except Exception:  # Spark Connect has neither; assume the budget is not shared
        return 1
    return max(1, min(partitions, slots))


def request_id_salt(config: JobConfig) -> str:
    """What besides the messages makes two requests different: the endpoint and extra fields."""
    return json.dumps(
        [config.endpoint.name, dict(config.request.extra)], sort_keys=True, default=str
    )


def _share(per_minute: float | None, tasks: int) -> float | None:
    return None if per_minute is None else per_minute / tasks


def _summary_metrics() -> list[Any]:
    return [
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(F.col("status") == "ok", 1).otherwise(0)).alias("ok"),
        F.sum(F.coalesce(F.col("prompt_tokens"), F.lit(0))).alias("prompt_tokens"),
        F.sum(F.coalesce(F.col("completion_tokens"), F.lit(0))).alias("completion_tokens"),
        F.sum(F.col("attempts")).alias("attempts"),
    ]


def _summary(metrics: Mapping[str, Any], seconds: float, tasks: int, sink: str) -> RunSummary:
    rows = int(metrics.get("rows") or 0)
    ok = int(metrics.get("ok") or 0)
    return RunSummary(
        rows=rows,
        ok=ok,
        errors=rows - ok,
        prompt_tokens=int(metrics.get("prompt_tokens") or 0),
        completion_tokens=int(metrics.get("completion_tokens") or 0),
        attempts=int(metrics.get("attempts") or 0),
        seconds=seconds,
        tasks=tasks,
        sink=sink,
    )


def _cols(names: set[str]) -> str:
    return "columns: " + ", ".join(sorted(names))
