"""What a run still has to send, cut into chunks that are answered and committed one at a time.

Resume, incremental runs and change detection are one mechanism, built from Spark's own parts.
Each input row gets its `request_id` and `request_hash` (see `core.identity`) in a first pass
that sends nothing. A row is answered when the sink, as it was when the run started, holds an
`ok` row with the same id and the same hash; when the input holds the same (id, hash) n times,
the sink must hold it n times (duplicate ids are never dropped: each copy gets its row). The
rest is sent:
- `new`: no row of that id in the sink (or fewer copies than the input has);
- `retry`: the sink holds it as an error (replaced when `sink.retry_errors`);
- `changed`: the sink answers that id, but a request no longer asked (another prompt, template,
  parameters, response format, API or endpoint name). Sent again and the old rows replaced
  (`sink.on_change: resend`), or left as they are (`keep`).
A hash of the request spreads the rows over chunks of about `sink.chunk_rows` rows, identical
requests always in the same chunk. Each chunk is one Spark job ending in one commit, so a crash
loses at most the chunks in flight, and the next run finds everything committed before it. The
sink rows the run replaces are deleted first, all in one commit (see `WorkPlan.replaced`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import MapType

from pipeline.core.config import SinkConfig
from pipeline.core.errors import ConfigError
from pipeline.spark.columns import IDENTITY_COLUMNS, REQUEST
from pipeline.spark.crossing import column
from pipeline.spark.recognised import HELD, TAKEN
from pipeline.spark.session import cached
from pipeline.spark.summary import counted

log = logging.getLogger(__name__)

# Planning columns, never written.
COPY = "_copy"  # which copy of an (id, hash) pair this row is: 1, 2, ...
KIND = "_kind"  # why a pending row is sent: new | retry | changed
CHUNK = "_chunk"
KINDS = ("new", "retry", "changed")

# For keys whose request_id is in a frame: how many of their sink rows recognised input rows
# took (see `pipeline.spark.recognised`).
Taken = Callable[[DataFrame], DataFrame]
# Computes request_id and request_hash, as this run would, for sink rows written before the
# sink recorded request_hash (from the input columns they carry).
Identify = Callable[[DataFrame], DataFrame]


@dataclass(frozen=True)
class Changes:
    """How the rows to send differ from the sink, and the changed rows a run left alone."""

    new: int = 0
    retry: int = 0
    changed: int = 0
    kept: int = 0  # changed, but kept as they are (sink.on_change=keep)

    def describe(self) -> str:
        parts = [f"{self.new} new", f"{self.changed} changed", f"{self.retry} errors retried"]
        kept = f"; {self.kept} changed rows kept (sink.on_change=keep)" if self.kept else ""
        return ", ".join(parts) + kept


@dataclass
class WorkPlan:
    """The rows a run must answer, and how they are cut into chunks."""

    keyed: DataFrame  # the input (text as bytes) with request_id and request_hash (cached)
    input_rows: int
    chunk_sizes: list[int]
    # The (id, hash, copy) keys still to answer, with their kind; None: every keyed row.
    todo: DataFrame | None = None
    # Sink rows the run replaces (request_id, request_hash, stale; Delta only), deleted in one
    # commit before the first chunk; None: none.
    replaced: DataFrame | None = None
    changes: Changes = field(default_factory=Changes)
    cached: list[DataFrame] = field(default_factory=list)
    # Stamped on the rows written (see `RequestBuilder.config_hash`); None: not stamped.
    config_hash: str | None = None
    # Input rows the sink answers that were recognised by their values, not keyed (see
    # `pipeline.spark.recognised`).
    recognised: int = 0
    # Every row to send, spread over the tasks once for all chunks (see `spread_once`), and
    # over how many.
    spread: DataFrame | None = None
    spread_tasks: int = 0
    # Rows are cut by `chunk_of(modulus)` (None: one bucket a chunk), and chunk i is bucket
    # `buckets[i]` (empty: bucket i). A bucket no row falls in is no chunk: a Spark job and a
    # commit for nothing (many, when identical requests are many and chunks small).
    modulus: int | None = None
    buckets: list[int] = field(default_factory=list)

    @property
    def pending_rows(self) -> int:
        return sum(self.chunk_sizes)

    @property
    def chunks(self) -> int:
        return len(self.chunk_sizes)

    def chunk(self, index: int) -> DataFrame:
        """The pending rows of chunk `index` (input columns, request_id, request_hash)."""
        if self.chunks == 1:
            return self.pending()
        rows = self.keyed.filter(chunk_of(self._modulus) == self._bucket(index))
        if self.todo is None:
            return rows
        return _wanted(rows, self.todo.filter(F.col(CHUNK) == self._bucket(index)))

    @property
    def _modulus(self) -> int:
        return self.chunks if self.modulus is None else self.modulus

    def _bucket(self, index: int) -> int:
        """The hash bucket (`chunk_of(self._modulus)`) of chunk `index`."""
        return self.buckets[index] if self.buckets else index

    def spread_once(self, tasks: int, dedupe: bool) -> None:
        """For a plan of several chunks: spread the rows it sends over `tasks` tasks once for
        all chunks (see `spread`), kept in place of `keyed`. Each chunk is then its rows of each
        kept partition (of several partitions, for a chunk of fewer tasks), with no shuffle of
        its own: a chunk's job is one stage, whose tasks start reading at once (a shuffle per
        chunk cost a job and a wait for slots at every chunk's start, and 0.1-0.2 s of the cores
        per chunk; a rerun whose config changed, in 1,000-row chunks at 0.2 s a request, reached
        0.80-0.81 of the rate into a new sink)."""
        if self.chunks <= 1 or self.spread is not None:
            return
        # The chunk of a row, as `todo` has it too.
        bucket = chunk_of(self._modulus)
        rows = spread(self.pending().withColumn(CHUNK, bucket), tasks, dedupe, CHUNK)
        try:
            kept = rows.persist()
        except Exception:  # no cache (serverless compute): each chunk spreads its own rows
            return
        self.cached.append(kept)
        kept.count()  # filled from `keyed`, which is then let go
        self.keyed.unpersist()
        self.spread, self.spread_tasks = kept, tasks

    def sent(
        self, index: int, tasks: int, dedupe: bool, earlier: DataFrame | None = None
    ) -> DataFrame:
        """Chunk `index` as its Spark tasks take it: spread over `tasks` tasks (see `spread`);
        with `earlier` (request_hash and an earlier run's answer) joined, when given."""
        if earlier is None and self.spread is not None:
            rows = self.spread.filter(F.col(CHUNK) == self._bucket(index)).drop(CHUNK)
            # Kept partitions taken whole by fewer tasks: identical requests stay in one task,
            # next to each other.
            return rows.coalesce(tasks) if tasks < self.spread_tasks else rows
        rows = self.chunk(index)
        if earlier is not None:
            rows = rows.join(earlier, "request_hash", "left")
        return spread(rows, tasks, dedupe)

    def pending(self) -> DataFrame:
        """Every row the run must answer, all chunks together."""
        return self.keyed if self.todo is None else _wanted(self.keyed, self.todo)

    def release(self) -> None:
        for frame in (self.keyed, *self.cached):
            frame.unpersist()


def plan_work(
    keyed: DataFrame,
    input_rows: int,
    existing: DataFrame | None,
    sink: SinkConfig,
    identify: Identify | None,
    taken: Taken | None = None,
) -> WorkPlan:
    """Find which rows of `keyed` (the input with its identity columns, see `make_key_mapper`;
    cached, `input_rows` of them) the sink snapshot `existing` does not answer yet, and cut them
    into chunks. `taken`: the rest of the input was recognised as answered in the sink, and took
    the sink rows it counts (see `Recognised.taken`): they answer nothing in `keyed`.

    Raises:
        ConfigError: naming `sink`, when the existing sink is not this job's output, or
            `sink.on_change`, when changed rows would need replacing in a Parquet sink.
    """
    if existing is None:  # one chunk at least: it makes the table, even of no rows
        plan = _all_new(keyed, input_rows, input_rows, max(1, _chunks(input_rows, sink)))
    else:
        check_is_output(existing, sink)
        answers = identified(existing, identify)
        # Rows keyed again in Python are read more than once: kept. Otherwise each step reads
        # only the sink rows of the keys it needs, from the pinned snapshot.
        kept = [] if identify is None else [answers := cached(answers)]
        try:
            plan = _against(keyed, input_rows, answers, sink, taken)
        except BaseException:
            for frame in kept:
                frame.unpersist()
            raise
        plan.cached.extend(kept)
    sizes = plan.chunk_sizes
    log.info(
        "plan: %d input rows, %d already answered in the sink, %d to send (%s)%s",
        input_rows, input_rows - plan.pending_rows, plan.pending_rows, plan.changes.describe(),
        f" in {_sized(sizes)}" if plan.pending_rows else "",
    )  # fmt: skip
    return plan


def _against(
    keyed: DataFrame,
    input_rows: int,
    answers: DataFrame,
    sink: SinkConfig,
    taken: Taken | None = None,
) -> WorkPlan:
    """The plan for `keyed` against a sink whose rows' identity and status are `answers`, less
    the rows `taken` by input rows recognised as answered."""
    keys = list(IDENTITY_COLUMNS)
    # All the plan reads of the sink: the rows of the ids asked (read once; a rerun that asks
    # few reads few).
    answers = cached(
        answers.join(keyed.select("request_id").distinct(), "request_id", "left_semi")
    )
    if answers.count() == 0:
        # No sink row has an id still asked (a nightly run over a grown table): every row left
        # is new, nothing is replaced, and nothing more is read of the sink.
        answers.unpersist()
        pending = keyed.count()
        return _all_new(keyed, input_rows, pending, _chunks(pending, sink))
    answered = answers.filter(F.col("status") == "ok") if sink.retries_errors else answers
    # Copy n of a key is answered when the sink holds n rows of it.
    asked = keyed.select(*keys).distinct()
    held = answered.join(asked, keys, "left_semi").groupBy(*keys).agg(F.count(F.lit(1)).alias(HELD))
    if taken is not None:
        took = F.coalesce(F.col(TAKEN), F.lit(0))
        held = held.join(taken(asked), keys, "left").select(*keys, (F.col(HELD) - took).alias(HELD))
    todo = (
        numbered(keyed.select(*keys))
        .join(held, keys, "left")
        .filter(F.col(COPY) > F.coalesce(F.col(HELD), F.lit(0)))
        .select(*keys, COPY)
    )
    classified = todo = cached(_classified(todo, answers))
    counts = Counter({str(r[KIND]): int(r["count"]) for r in todo.groupBy(KIND).count().collect()})
    changes = Changes(counts["new"], counts["retry"], counts["changed"])
    if counts["changed"] and sink.on_change == "keep":
        todo = todo.filter(F.col(KIND) != "changed")
        changes = Changes(counts["new"], counts["retry"], 0, kept=counts["changed"])
    elif counts["changed"] and sink.format == "parquet":
        classified.unpersist()
        answers.unpersist()
        raise ConfigError(
            "sink.on_change",
            f"is resend, and {counts['changed']} input rows ask another request than the one "
            f"their row in {sink.table or sink.path} answers; Parquet files cannot replace a "
            "row: set sink.on_change=keep to keep those answers, sink.mode=overwrite to answer "
            "everything again, or use sink.format=delta",
        )
    pending = sum(counts[k] for k in KINDS) - changes.kept
    chunks = _chunks(pending, sink)
    modulus = max(1, chunks)
    todo = todo.withColumn(CHUNK, chunk_of(modulus))
    sizes, buckets = _chunk_sizes(todo, chunks, pending)
    plan = WorkPlan(
        keyed, input_rows, sizes, todo=todo, changes=changes, cached=[classified, answers],
        modulus=modulus, buckets=buckets,
    )  # fmt: skip
    if sink.format == "delta" and (changes.changed or (changes.retry and sink.retries_errors)):
        replaced = cached(_replaced(keyed, answers, todo, sink, taken))
        plan.cached.append(replaced)
        if replaced.count():
            plan.replaced = replaced
    return plan


def _all_new(keyed: DataFrame, input_rows: int, pending: int, chunks: int) -> WorkPlan:
    """The plan when every one of the `pending` rows of `keyed` is sent, as new."""
    sizes, buckets = _chunk_sizes(keyed.select("request_hash"), chunks, pending)
    return WorkPlan(
        keyed, input_rows, sizes, changes=Changes(new=pending), modulus=max(1, chunks),
        buckets=buckets,
    )  # fmt: skip


def _chunks(rows: int, sink: SinkConfig) -> int:
    return math.ceil(rows / sink.chunk_rows)


def _wanted(rows: DataFrame, todo: DataFrame) -> DataFrame:
    # The copies `todo` names of each (id, hash) in `rows` (all copies of one are in one chunk).
    wanted = todo.select(*IDENTITY_COLUMNS, COPY)
    return numbered(rows).join(wanted, [*IDENTITY_COLUMNS, COPY], "left_semi").drop(COPY)


def identified(existing: DataFrame, identify: Identify | None) -> DataFrame:
    """`request_id`, `request_hash` and `status` of every sink row. Rows written before the sink
    recorded `request_hash` get the identity this run would give their input columns (they count
    as unchanged while those columns still hold what is asked); `identify` None: the sink has
    no such rows (a Delta sink that records the column: see `pipeline.spark.legacy`)."""
    columns = [*IDENTITY_COLUMNS, "status"]
    if "request_hash" not in existing.columns:
        assert identify is not None
        return identify(existing).select(*columns)
    if identify is None:
        return existing.select(*columns)
    recorded = existing.filter(F.col("request_hash").isNotNull()).select(*columns)
    legacy = existing.filter(F.col("request_hash").isNull())
    return recorded.unionByName(identify(legacy).select(*columns))


def numbered(frame: DataFrame) -> DataFrame:
    """`frame` with `_copy`: 1, 2, ... among its rows of equal (request_id, request_hash).

    The order among such rows is a hash of all their other values, so recomputing a partition
    numbers them the same way (rows equal in every value are interchangeable anyway)."""
    others = [
        column(f.name) for f in frame.schema.fields
        if f.name not in (*IDENTITY_COLUMNS, REQUEST) and not isinstance(f.dataType, MapType)
    ]  # fmt: skip
    order = F.xxhash64(*others) if others else F.lit(0)
    window = Window.partitionBy(*IDENTITY_COLUMNS).orderBy(order)
    return frame.withColumn(COPY, F.row_number().over(window))


def _classified(todo: DataFrame, answers: DataFrame) -> DataFrame:
    answers = answers.join(todo.select("request_id").distinct(), "request_id", "left_semi")
    ids = answers.select("request_id").distinct().withColumn("_known_id", F.lit(True))
    keys = answers.groupBy(*IDENTITY_COLUMNS).agg(
        F.max(F.col("status") == "error").alias("_had_error")
    )
    kind = (
        F.when(F.col("_had_error"), "retry")
        .when(F.col("_known_id") & F.col("_had_error").isNull(), "changed")
        .otherwise("new")
    )
    joined = todo.join(ids, "request_id", "left").join(keys, list(IDENTITY_COLUMNS), "left")
    return joined.select(*IDENTITY_COLUMNS, COPY, kind.alias(KIND))


def _replaced(
    keyed: DataFrame,
    answers: DataFrame,
    todo: DataFrame,
    sink: SinkConfig,
    taken: Taken | None,
) -> DataFrame:
    """Sink rows to delete before the run's first chunk: error rows of a request sent again
    (`sink.retry_errors`), and rows of a changed id whose request is no longer asked (stale: by
    a row of `keyed`, or by a recognised one, whose keys `taken` holds)."""
    keys = list(IDENTITY_COLUMNS)
    changed = todo.filter(F.col(KIND) == "changed").select("request_id").distinct()
    asked = keyed.select(*keys)
    if taken is not None:
        asked = asked.unionByName(taken(changed).select(*keys))
    asked = asked.join(changed, "request_id", "left_semi").distinct()
    stale = answers.select(*keys).distinct().join(changed, "request_id").join(
        asked, keys, "left_anti"
    )
    replaced = stale.withColumn("stale", F.lit(True))
    if sink.retries_errors:
        retried = todo.filter(F.col(KIND) == "retry").select(*keys).distinct()
        replaced = retried.withColumn("stale", F.lit(False)).unionByName(replaced)
    return replaced


def _sized(sizes: list[int]) -> str:
    """The chunks of `sizes` rows as the plan's log line names them."""
    rows = f"{sizes[0]}" if len(sizes) == 1 else f"{min(sizes)}-{max(sizes)}"
    return f"{counted(len(sizes), 'chunk')} of {rows} rows"


def chunk_of(chunks: int) -> Column:
    """The chunk a row belongs to: identical requests share one (so they are sent once)."""
    return F.pmod(F.xxhash64(F.col("request_hash")), F.lit(chunks))


def spread(chunk: DataFrame, tasks: int, dedupe: bool, *grouped_by: str) -> DataFrame:
    """A chunk over `tasks` Spark tasks; when deduping, identical requests go to the same
    task, one after the other (so a task needs to remember only recent answers), sorted
    first by the `grouped_by` columns within each task."""
    if dedupe:
        by_hash = chunk.repartition(tasks, "request_hash")
        return by_hash.sortWithinPartitions(*grouped_by, "request_hash")
    return chunk.repartition(tasks)


def _chunk_sizes(keys: DataFrame, chunks: int, pending_rows: int) -> tuple[list[int], list[int]]:
    """The rows of each chunk when `keys` are cut into `chunks` hash buckets, and each chunk's
    bucket (empty: chunk i is bucket i). A bucket no row falls in is left out: identical
    requests share one, so many copies of few requests leave most of them empty."""
    if chunks <= 1:
        return [pending_rows] * chunks, []
    counts = keys.groupBy(chunk_of(chunks).alias("chunk")).count().collect()
    by_bucket = {int(row["chunk"]): int(row["count"]) for row in counts}
    if len(by_bucket) == chunks:
        return [by_bucket[index] for index in range(chunks)], []
    buckets = sorted(by_bucket)
    log.info("%d chunks: %d of the %d hash buckets hold no row", len(buckets),
             chunks - len(buckets), chunks)  # fmt: skip
    return [by_bucket[bucket] for bucket in buckets], buckets


def check_is_output(existing: DataFrame, sink: SinkConfig) -> None:
    """Refuse a sink that holds a table this job did not write.

    Raises:
        ConfigError: naming `sink`.
    """
    missing = {"request_id", "status"} - set(existing.columns)
    if missing:
        where = sink.table or sink.path
        raise ConfigError(
            "sink",
            f"{where} exists but has no {', '.join(sorted(missing))} column: it is not an output "
            "of this job; choose another sink, or sink.mode=overwrite to replace it",
        )
