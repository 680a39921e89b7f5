"""How a run's chunks take the cluster's task slots: Spark tasks per chunk, chunks answered at
once, and how many tasks share the job's rate budgets at once.

A task costs a fixed part (its Python worker's batches, its client, its first and last requests
with fewer than its concurrency in flight) however many rows it has. A run of one chunk spreads
it over every slot. On a local master, a run of several Delta chunks gives each chunk half the
slots, and answers twice as many chunks at once as fill the slots: a chunk's tasks are twice as
long, and when the running chunks end together (chunks of one size, started together) the
queued ones take every slot they free while they commit. At 0.2 s a request, 64 in flight a
task, 1,000-row chunks (two runs each, 2026-12-05): 0.909-0.955 of the one-chunk rate with four
chunks at once of 5,000, 6,000 and 7,000 rows, 0.865-0.945 with three at once, against
0.845-0.881 in as many tasks as slots two chunks at once, 0.865-0.886 three at once. The last
chunk takes every slot when the chunks before it would leave some of them idle beside it (an
odd count of half-slot chunks): 0.80-0.92 of the one-chunk rate at 5 and 7 chunks against
0.78-0.84 in half the slots (three at once, three runs each). On a cluster, chunks take every
slot, two at once (see `lay_out`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipeline.spark.session import is_connect, local_slots

# Chunks answered at once when the user sets the tasks per chunk (`source.partitions`).
CHUNKS_AT_ONCE = 2

UNBOUNDED = 2**31 - 1  # Spark's "no maximum" for executors


@dataclass(frozen=True)
class Layout:
    """Tasks per chunk, chunks at once, and the tasks that share the budgets at once."""

    tasks: int  # Spark tasks of every chunk but the last
    last_tasks: int  # the last chunk's
    chunks: int
    chunks_at_once: int  # Spark jobs from as many driver threads (1: one after another)
    at_once: int  # the most tasks running at once: each keeps 1/at_once of a budget alone

    def tasks_of(self, index: int) -> int:
        return self.last_tasks if index == self.chunks - 1 else self.tasks

    @property
    def widest(self) -> int:
        return max(self.tasks, self.last_tasks)


def lay_out(
    slots: int,
    most_slots: int,
    partitions: int | None,
    chunk_sizes: list[int],
    overlap: bool,
    one_executor: bool,
) -> Layout:
    """The layout of chunks of `chunk_sizes` rows on `slots` task slots (`most_slots`: the most
    dynamic allocation may give), `overlap`: whether chunks may run beside each other (see
    `job._may_overlap`). `partitions` (`source.partitions`) sets the tasks of every chunk.
    A chunk never gets more tasks than it has rows (an empty task would hold a share of the
    budgets).

    Half-slot chunks only where every task runs in `one_executor` (a local master): a chunk's
    fewer tasks each read kept partitions that sit in several executors of a cluster, and Spark
    holds such a task for the executor it prefers (`spark.locality.wait`, 3 s) while another
    executor's slot idles: on a standalone cluster of two 1-core workers, 0.667-0.760 of the
    one-chunk rate against 0.825-0.951 in a task a slot (0.900 with the wait at 0)."""
    chunks = len(chunk_sizes)
    largest = max(chunk_sizes, default=1)
    if partitions is None and overlap and chunks > 1 and one_executor:
        tasks = last = max(1, min(slots // 2, largest))
        if (chunks * tasks) % slots:  # the last one would run beside idle slots
            last = max(1, min(slots, chunk_sizes[-1]))
        at_once = min(chunks, 2 * -(-slots // tasks))  # as many queued as fill the slots
    else:
        tasks = last = max(1, min(partitions or slots, largest))
        at_once = max(1, min(chunks, CHUNKS_AT_ONCE)) if overlap else 1
    running = min(max(tasks, last) * at_once, most_slots)
    return Layout(tasks, last, chunks, at_once, max(1, running))


def one_executor(spark: SparkSession) -> bool:
    """Whether all of the session's tasks run in one executor: a local master, classic or
    behind Spark Connect."""
    try:
        master = spark.conf.get("spark.master", "") or ""
    except Exception:  # a runtime that hides its confs
        return False
    return local_slots(master) is not None


def default_parallelism(spark: SparkSession) -> int:
    """The cluster's task slots as Spark counts them (`defaultParallelism`). Spark Connect has
    no `SparkContext` to ask: there, a DataFrame says (`range` without a partition count gets
    one partition per slot)."""
    if not is_connect(spark):
        return max(1, int(spark.sparkContext.defaultParallelism))
    ids = spark.range(1 << 16).select(F.spark_partition_id().alias("partition"))
    row = ids.agg(F.max("partition").alias("last")).first()
    return 1 if row is None or row["last"] is None else int(row["last"]) + 1


def task_slots(spark: SparkSession, slots: int | None = None) -> int:
    """The most tasks that may run at once on this session's cluster (see `most_at_once`);
    `slots`: its `default_parallelism`, when already asked."""
    if slots is None:
        slots = default_parallelism(spark)
    return most_at_once(slots, lambda key: spark.conf.get(key, None))


def most_at_once(slots: int, conf: Callable[[str], str | None]) -> int:
    """The most tasks that may run at once: the `slots` there are now; under dynamic allocation
    (`conf` reads the session's settings), the most its executors could give, no bound when
    they have none."""
    if (conf("spark.dynamicAllocation.enabled") or "false").lower() != "true":
        return slots
    executors = int(conf("spark.dynamicAllocation.maxExecutors") or UNBOUNDED)
    cores = int(conf("spark.executor.cores") or 0)
    per_task = max(1, int(conf("spark.task.cpus") or 1))
    if executors >= UNBOUNDED or cores <= 0:
        return UNBOUNDED
    return max(slots, executors * cores // per_task)
