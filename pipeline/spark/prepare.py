"""Everything a run settles before its first request: the input read and checked, the sink
checked against it, and the work planned. A run and a dry run share it.

The order matters for the promises: the sink must not be the source, the configured columns must
be in the input, the sink must be able to take this run's rows (see `sink_schema`), and what the
sink already answers is read once, pinned, before anything is sent or written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipeline.core.config import JobConfig, SinkConfig, SourceConfig
from pipeline.core.errors import ConfigError
from pipeline.core.prompts import RequestBuilder
from pipeline.spark.chunks import WorkPlan, check_is_output, plan_work
from pipeline.spark.columns import output_schema, parsed_type
from pipeline.spark.legacy import adopt, identify_rows, needs_adopting
from pipeline.spark.mapper import make_key_mapper, with_identity
from pipeline.spark.recognised import recognise, release
from pipeline.spark.session import cached, session_conf
from pipeline.spark.sink_schema import added_columns, check_appendable
from pipeline.spark.tables import (
    Snapshot,
    add_columns,
    check_sink_is_not_source,
    read_source,
    reading_source,
    sink_exists,
    sink_snapshot,
    sink_state,
)

log = logging.getLogger(__name__)

# Rows per Arrow batch handed to the mapper, at most: the request window needs no more, and a
# task's memory stays the same whatever the size of the input.
ARROW_BATCH_ROWS = 500
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"


def read_input(spark: SparkSession, config: JobConfig) -> DataFrame:
    """The source, checked against the config and the sink.

    Raises:
        ConfigError: the source cannot be read as configured, lacks a configured column, or is
            the sink.
    """
    check_sink_is_not_source(spark, config.source, config.sink)
    frame = read_source(spark, config.source)
    check_columns(frame.schema, config.source)
    output_schema(frame.schema)  # raises on an input column named like a result column
    return frame


def result_schema(frame: DataFrame, config: JobConfig) -> StructType:
    """The sink's schema for rows of `frame` (see `output_schema`), `config_hash` included."""
    return output_schema(frame.schema, parsed_type(config.request.output_format), stamped=True)


class Lease(Protocol):
    """The sink's lease, being taken while the run plans (see `lease.SinkLease`)."""

    def wait(self) -> None:
        """Block until it is this run's (raises when it cannot be)."""


@contextmanager
def planned(
    spark: SparkSession,
    config: JobConfig,
    frame: DataFrame,
    *,
    metadata: dict[str, Any] | None,
    lease: Lease | None = None,
) -> Iterator[WorkPlan]:
    """The rows a run must answer (see `plan_work`), released on leaving; small Arrow batches
    for every Python pass over them. `metadata` (None in a dry run, which writes nothing) goes
    with the one commit planning may make: filling in `request_hash` on an older Delta sink.

    `lease`, when the run takes the sink's lease while it plans: planning waits for it before
    that commit, and at its end; a sink another run committed to meanwhile (it held the lease
    then) is planned again, under the lease.

    Raises:
        ConfigError: the sink cannot take this run's rows, or is not an output of this job.
        SinkBusy: from `lease`.
    """
    with session_conf(spark, {ARROW_BATCH_CONF: str(arrow_batch_rows(spark))}):
        # Only a merge plans against what the sink holds.
        guarded = lease is not None and config.sink.mode == "merge"
        while True:
            work, planned_against = _plan(spark, config, frame, metadata, lease)
            if lease is None:
                break
            try:
                lease.wait()
                changed = guarded and sink_state(spark, config.sink) != planned_against
            except BaseException:
                work.release()
                raise
            if not changed:
                break
            log.info("the sink changed while this run planned (another run committed): "
                     "planning again")  # fmt: skip
            work.release()
            guarded = False  # the lease is this run's now: nobody else commits
        try:
            yield work
        finally:
            work.release()


def _plan(
    spark: SparkSession,
    config: JobConfig,
    frame: DataFrame,
    metadata: dict[str, Any] | None,
    lease: Lease | None,
) -> tuple[WorkPlan, tuple[object, ...] | None]:
    """The plan, and the sink state it was made against (see `sink_state`)."""
    sink = config.sink
    key_mapper = make_key_mapper(config.source, config.request, config.endpoint)
    stamp_with = config_hash(config)

    def identify(rows: DataFrame) -> DataFrame:
        return identify_rows(rows, key_mapper, config.source, sink)

    snapshot = _existing(spark, config, frame)
    if (
        snapshot is not None and sink.mode == "merge" and sink.format == "delta"
        and metadata is not None and needs_adopting(snapshot.frame)
    ):  # fmt: skip
        if lease is not None:
            lease.wait()  # a commit: under the lease (otherwise taken while the run plans)
        adopt(
            spark, sink, snapshot.frame, key_mapper, config.source,
            json.dumps(metadata, default=str), stamp_with,
        )  # fmt: skip
        snapshot = sink_snapshot(spark, sink)
    existing = None if snapshot is None else snapshot.frame
    # Counted from the source (its files' metadata, where the format keeps counts).
    input_rows = reading_source(config.source, frame.count)
    known = None
    if existing is not None and sink.mode == "merge" and input_rows >= sink.recognise_from_rows:
        answered = existing.filter(F.col("status") == "ok") if sink.retries_errors else existing
        known = recognise(frame, answered, config.source.input_columns(), stamp_with)
    keyed = with_identity(frame if known is None else known.rest, key_mapper)
    if metadata is None or (existing is not None and sink.mode == "merge") or (
        input_rows > sink.chunk_rows
    ):
        # Read more than once (the anti-join, chunk sizes, each chunk; a dry run's two sums):
        # kept, filled by the first job that reads it. One chunk into a new sink reads it once,
        # in the job that answers it: nothing is kept (the driver's memory stays flat).
        keyed = cached(keyed)
    if known is not None:
        # Filled now: the plan then knows how few rows are left, and reads the sink for them
        # alone (a lookup while it scans, not a shuffle of every sink row).
        try:
            work_rows = keyed.count()
        except BaseException:
            keyed.unpersist()
            release(known.kept)
            raise
        known.read()
        log.info("%d input rows recognised as answered by their values", input_rows - work_rows)
    # A Delta sink with the column records it in every row (see `pipeline.spark.legacy`).
    recorded = sink.format == "delta" and existing is not None and (
        "request_hash" in existing.columns
    )
    try:
        work = plan_work(
            keyed,
            input_rows,
            existing if sink.mode == "merge" else None,
            sink,
            None if recorded else identify,
            None if known is None else known.taken,
        )
    except BaseException:  # refused before sending: nothing stays cached in the session
        keyed.unpersist()
        if known is not None:
            release(known.kept)
        raise
    if known is not None:
        work.cached.extend(known.kept)
        work.recognised = input_rows - work_rows
    work.config_hash = stamp_with
    return work, None if snapshot is None else snapshot.state


def config_hash(config: JobConfig) -> str:
    """The `config_hash` this run's rows carry (see `RequestBuilder.config_hash`)."""
    return RequestBuilder(config.source, config.request, config.endpoint).config_hash


def _existing(spark: SparkSession, config: JobConfig, frame: DataFrame) -> Snapshot | None:
    """The sink's rows now (pinned), after checking it can take this run's rows; None when
    there is no sink yet, or the run replaces it."""
    sink = config.sink
    if sink.mode == "error" and sink_exists(spark, sink):
        raise ConfigError(
            "sink.mode",
            f"is 'error' and {sink.table or sink.path} already exists; use overwrite or append",
        )
    if sink.mode in ("overwrite", "error"):
        return None
    snapshot = sink_snapshot(spark, sink)
    if snapshot is None:
        return None
    if sink.mode == "merge":
        check_is_output(snapshot.frame, sink)
    rows = result_schema(frame, config)
    check_appendable(snapshot.frame.schema, rows, sink.table or sink.path or "")
    if sink.table is not None and not _can_add_columns(sink):
        add_columns(spark, sink.table, added_columns(snapshot.frame.schema, rows))
    return snapshot


def _can_add_columns(sink: SinkConfig) -> bool:
    return sink.format == "delta" or sink.table is None


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
        "image_column",
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


def arrow_batch_rows(spark: SparkSession) -> int:
    """The session's Arrow batch size, lowered to ARROW_BATCH_ROWS."""
    try:
        configured = int(spark.conf.get(ARROW_BATCH_CONF, "10000") or 10000)
    except ValueError:
        configured = ARROW_BATCH_ROWS
    return min(configured, ARROW_BATCH_ROWS) if configured > 0 else ARROW_BATCH_ROWS


def _cols(names: set[str]) -> str:
    return "columns: " + ", ".join(sorted(names))

