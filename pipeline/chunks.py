"""What a run still has to send, cut into chunks that are answered and committed one at a time.

Resume and incremental runs are one mechanism, built from Spark's own parts: each input row gets
its `request_id` (and its request's content key) in a first pass that sends nothing; a left
anti-join against the `request_id`s already in the sink leaves the rows still to answer; a hash
of the content key spreads them over chunks of about `sink.chunk_rows` rows, identical requests
always in the same chunk. Each chunk is one Spark job ending in one commit, so a crash loses at
most the chunk in flight, and the next run's anti-join skips everything committed before it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.config import SinkConfig
from pipeline.errors import ConfigError
from pipeline.io import read_existing_sink
from pipeline.mapper import REQUEST_KEY, BatchMapper, key_schema

log = logging.getLogger(__name__)


@dataclass
class WorkPlan:
    """The rows a run must answer, and how they are cut into chunks."""

    keyed: DataFrame  # the input with request_id and the content key (cached)
    pending: DataFrame  # the rows of `keyed` the sink does not answer yet
    input_rows: int
    chunk_sizes: list[int]
    # Delete the sink's earlier error rows for a chunk's request_ids before committing it.
    replace_errors: bool

    @property
    def pending_rows(self) -> int:
        return sum(self.chunk_sizes)

    @property
    def chunks(self) -> int:
        return len(self.chunk_sizes)

    def chunk(self, index: int) -> DataFrame:
        """The pending rows of chunk `index` (input columns, request_id, content key)."""
        if self.chunks == 1:
            return self.pending
        return self.pending.filter(chunk_of(self.chunks) == index)

    def release(self) -> None:
        self.keyed.unpersist()


def plan_work(
    spark: SparkSession, frame: DataFrame, key_mapper: BatchMapper, sink: SinkConfig
) -> WorkPlan:
    """Key every input row (`key_mapper`, see `make_key_mapper`), find those the sink lacks
    and cut them into chunks.

    Raises:
        ConfigError: naming `sink`, when the existing sink is not this job's output.
    """
    keyed = _cached(frame.mapInPandas(key_mapper, key_schema(frame.schema)))
    existing = read_existing_sink(spark, sink) if sink.mode == "merge" else None
    pending = keyed
    replace_errors = False
    if existing is not None:
        _check_is_output(existing, sink)
        answered = existing.filter(F.col("status") == "ok") if sink.retries_errors else existing
        pending = keyed.join(answered.select("request_id").distinct(), "request_id", "left_anti")
        replace_errors = sink.retries_errors and _has_errors(existing)
    input_rows = keyed.count()
    pending_rows = pending.count() if existing is not None else input_rows
    chunks = math.ceil(pending_rows / sink.chunk_rows)
    if chunks == 0 and (existing is None or sink.mode != "merge"):
        chunks = 1  # one empty chunk, so the run still creates (or replaces) the table
    sizes = _chunk_sizes(pending, chunks, pending_rows)
    log.info(
        "plan: %d input rows, %d already answered in the sink, %d to send%s",
        input_rows, input_rows - pending_rows, pending_rows,
        f" in {len(sizes)} chunks of {min(sizes)}-{max(sizes)} rows" if pending_rows else "",
    )  # fmt: skip
    return WorkPlan(keyed, pending, input_rows, sizes, replace_errors)


def chunk_of(chunks: int) -> Column:
    """The chunk a row belongs to: identical requests share one (so they are sent once)."""
    key = F.coalesce(F.col(REQUEST_KEY), F.col("request_id"))
    return F.pmod(F.xxhash64(key), F.lit(chunks))


def spread(chunk: DataFrame, tasks: int, dedupe: bool) -> DataFrame:
    """A chunk over `tasks` Spark tasks; when deduping, identical requests go to the same
    task, one after the other (so a task needs to remember only recent answers)."""
    if dedupe:
        spread = chunk.repartition(tasks, REQUEST_KEY).sortWithinPartitions(REQUEST_KEY)
    else:
        spread = chunk.repartition(tasks)
    return spread.drop("request_id", REQUEST_KEY)


def _chunk_sizes(pending: DataFrame, chunks: int, pending_rows: int) -> list[int]:
    if chunks <= 1:
        return [pending_rows] * chunks
    counts = pending.groupBy(chunk_of(chunks).alias("chunk")).count().collect()
    by_chunk = {int(row["chunk"]): int(row["count"]) for row in counts}
    return [by_chunk.get(index, 0) for index in range(chunks)]


def _cached(frame: DataFrame) -> DataFrame:
    # Keying runs Python over every row; keep its result for the counts and every chunk.
    try:
        return frame.persist()
    except Exception as err:  # e.g. serverless compute, which has no cache
        log.warning("cannot cache the keyed input (%s); each chunk recomputes it", err)
        return frame


def _check_is_output(existing: DataFrame, sink: SinkConfig) -> None:
    missing = {"request_id", "status"} - set(existing.columns)
    if missing:
        where = sink.table or sink.path
        raise ConfigError(
            "sink",
            f"{where} exists but has no {', '.join(sorted(missing))} column: it is not an output "
            "of this job; choose another sink, or sink.mode=overwrite to replace it",
        )


def _has_errors(existing: DataFrame) -> bool:
    return bool(existing.filter(F.col("status") == "error").limit(1).count())
