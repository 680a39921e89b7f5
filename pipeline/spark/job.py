"""The batch chat job: read the source, answer every row inside `mapInPandas`, write the sink.

The rows still to answer are planned first (see `spark.chunks`), then answered and committed
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
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql.types import StructType

from pipeline.control.budget import JobBudget
from pipeline.control.progress import Board, ProgressStyle, Tally
from pipeline.control.server import DriverServer
from pipeline.core.config import JobConfig, LimitsConfig
from pipeline.core.errors import JobAborted
from pipeline.core.secrets import Credentials, resolve_credentials
from pipeline.http.settings import ClientSettings
from pipeline.spark.chunks import WorkPlan
from pipeline.spark.columns import output_schema, parsed_type, stamp
from pipeline.spark.crossing import as_text, map_in_pandas
from pipeline.spark.daemon import start_early
from pipeline.spark.inflight import EARLIER, Inflight, journal_plan
from pipeline.spark.layout import (
    Layout,
    default_parallelism,
    lay_out,
    one_executor,
    task_slots,
)
from pipeline.spark.lease import SinkLease
from pipeline.spark.mapper import KEYED_COLUMNS, TaskPlan, make_batch_mapper
from pipeline.spark.prepare import planned, read_input
from pipeline.spark.reach import is_loopback, tasks_reach
from pipeline.spark.session import driver_host, is_connect, spark_session
from pipeline.spark.summary import (
    ChunkTotals,
    RunSummary,
    chunk_metrics,
    counted,
    image_count,
    write_summary,
)
from pipeline.spark.tables import SaveMode, delete_rows, write_sink

log = logging.getLogger(__name__)

_ABORTED = re.compile(r"JobAborted: (.+)")


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
    """Run the whole job once: take the sink's lease, plan, then answer and commit chunk after
    chunk.

    Raises:
        ConfigError: before anything is sent: the token is missing, the source cannot be read
            as configured or lacks a configured column, the sink is the source or cannot take
            this run's rows.
        SinkBusy: another run holds the sink's lease (nothing was sent).
        JobAborted: a task stopped on answers that every row would get, or the lease was lost
            (chunks committed before stay committed).
    """
    credentials = resolve_credentials(config.endpoint, os.environ if env is None else env)
    run_id = uuid.uuid4().hex[:12]
    log.info("run %s config: %s", run_id, json.dumps(config.to_dict(), default=str))
    spark = spark or spark_session()
    start_early(spark)  # the Python workers start while the driver plans
    frame = read_input(spark, config)
    started = time.monotonic()
    metadata = {"batch_chat_run": run_id, "chunk": "adopt", "config": config.to_dict()}
    with (
        SinkLease(spark, config.sink, run_id, background=True) as lease,
        planned(spark, config, frame, metadata=metadata, lease=lease) as work,
    ):
        slots = default_parallelism(spark)
        layout = lay_out(
            slots,
            task_slots(spark, slots),
            config.source.partitions,
            work.chunk_sizes,
            _may_overlap(config),
            one_executor(spark),
        )
        if work.chunks > 1:
            last = "" if layout.last_tasks == layout.tasks else f" (the last {layout.last_tasks})"
            tasks, at_once = counted(layout.tasks, "task"), layout.chunks_at_once
            log.info("%d chunks of %s%s, %d at once", work.chunks, tasks, last, at_once)
        board = Board(work.pending_rows, style=progress)
        inflight = _inflight(spark, config, run_id)
        run = _Run(config, run_id, layout, lease, frame.schema, inflight)
        totals, seen = _answer_chunks(spark, run, work, credentials, board)
        if inflight is not None:
            inflight.finish(work.chunks)
        counts = totals.counts
        summary = RunSummary.of(
            totals,
            config.pricing.cost(counts["prompt_tokens"], counts["completion_tokens"]),
            seconds=round(time.monotonic() - started, 3),
            tasks=layout.tasks,
            sink=config.sink.table or config.sink.path or "",
            skipped=work.input_rows - work.pending_rows,
            recognised=work.recognised,
            chunks=work.chunks,
            run_id=run_id,
            config=config.to_dict(),
            progress=seen,
            changes=asdict(work.changes),
        )
        where = write_summary(spark, config.sink, summary)
    log.info("run summary written to %s", where)
    return summary


@dataclass(frozen=True)
class _Run:
    """What every chunk of one run shares."""

    config: JobConfig
    run_id: str
    layout: Layout
    lease: SinkLease
    source_schema: StructType  # the input's own types (the chunks carry text as bytes)
    inflight: Inflight | None = None  # where tasks keep answers until committed


def _inflight(spark: SparkSession, config: JobConfig, run_id: str) -> Inflight | None:
    plan = journal_plan(config.sink, run_id)
    if plan is None:
        log.warning(
            "in-flight answers are not kept (sink.inflight_path): a lost executor pays again "
            "for its task's answers of the chunk in flight, a lost driver for the whole chunk"
        )
        return None
    return Inflight(spark, plan)


def _answer_chunks(
    spark: SparkSession,
    run: _Run,
    work: WorkPlan,
    credentials: Credentials,
    board: Board,
) -> tuple[ChunkTotals, Tally]:
    """Answer and commit every chunk of `work`, in order; the chunks' counts, and what the live
    progress saw."""
    config, at_once = run.config, run.layout.at_once
    limits = config.limits
    # Each task's share of the budgets, over the tasks that run at once: its own budget when
    # the tasks cannot reach the driver, what it falls back on when the driver stops answering.
    client = ClientSettings(
        endpoint=config.endpoint,
        limits=limits,
        request=config.request,
        token=credentials.current(),
        headers=credentials.headers,
        requests_per_minute=_share(limits.requests_per_minute, at_once),
        tokens_per_minute=_share(limits.tokens_per_minute, at_once),
        tasks=at_once,
        run_id=run.run_id,
    )
    totals = ChunkTotals()
    with _driver_server(spark, limits, board, credentials) as server, _showing(board):
        live = _reachable(spark, server, limits)
        if live:
            client = replace(client, progress_url=server.progress_url)
            if credentials.renewable:
                client = replace(client, token_url=server.token_url)
            if server.budget is not None:
                client = replace(client, budget_url=server.url)
        else:  # each task keeps its part of the budgets: the job's over the tasks at once
            client = replace(client, alone=True)
            if at_once == 1:
                log.info("one task runs at a time: it keeps the whole rate budgets")
            else:
                log.info("at most %d tasks run at once: each keeps 1/%d of the rate budgets",
                         at_once, at_once)  # fmt: skip
        journal = None if run.inflight is None else run.inflight.plan
        plan = TaskPlan(config.request, client, journal)
        earlier = None if run.inflight is None else run.inflight.earlier_answers()
        if earlier is None:
            work.spread_once(run.layout.widest, config.request.dedupe)

        def answer(index: int, metadata: str, mode: SaveMode) -> dict[str, Any]:
            rows, observe = _chunk_rows(run, work, plan, index, earlier)
            try:
                write_sink(rows, config.sink, mode, metadata, observe=observe)
            except Exception as err:
                _raise_if_aborted(err)
                raise
            return dict(observe[0].get)

        def make_table(metadata: str) -> None:
            rows, _ = _chunk_rows(run, work, plan, 0, earlier)
            write_sink(rows.limit(0), config.sink, FIRST_SAVE_MODE[config.sink.mode], metadata)

        def committed(index: int, chunk: dict[str, Any]) -> None:
            if run.inflight is not None:
                if not live:  # what lost task attempts paid: only their files say
                    chunk.update(run.inflight.paid(index))
                if index < work.chunks - 1:  # the last chunk's go with the rest at the end
                    run.inflight.committed(index)
            totals.add(chunk)
            log.info(
                "chunk %d/%d committed: %d rows (%d ok, %d requests sent)%s",
                index + 1, work.chunks, int(chunk.get("rows") or 0), int(chunk.get("ok") or 0),
                int(chunk.get("attempts") or 0), _rate_note(server.budget if live else None),
            )  # fmt: skip

        _overlapped(spark, run, work, answer, committed, make_table)
    if run.inflight is not None and live:
        # The written rows say what their answers cost, whoever paid (an earlier run whose
        # answers were recovered too); the tasks' reports say what this run paid, lost
        # attempts included.
        paid = board.tally
        totals.counts["attempts"] = paid.requests
        totals.counts["prompt_tokens"] = paid.prompt_tokens
        totals.counts["completion_tokens"] = paid.completion_tokens
    return totals, board.tally


@contextmanager
def _driver_server(
    spark: SparkSession, limits: LimitsConfig, board: Board, credentials: Credentials
) -> Iterator[DriverServer]:
    """The driver's server for the tasks: progress, and the job's shared budget when there is
    one to keep."""
    budgets = (limits.requests_per_minute, limits.tokens_per_minute)
    budget = None
    if limits.adaptive or budgets != (None, None):
        budget = JobBudget(
            limits.requests_per_minute,
            limits.tokens_per_minute,
            adaptive=limits.adaptive,
        )
    advertise = limits.driver_address or driver_host(spark)
    with DriverServer(budget, board=board, credentials=credentials, advertise=advertise) as server:
        yield server


def _reachable(spark: SparkSession, server: DriverServer, limits: LimitsConfig) -> bool:
    """Whether the tasks reach `server`: asked of one task, unless they run on this machine.
    When they do not, the run goes on without it, said once here."""
    if limits.driver_address is None and is_loopback(server.advertise):
        return True
    if tasks_reach(spark, server.health_url):
        return True
    log.warning(
        "Spark tasks cannot reach this process at %s (limits.driver_address): the rate budgets "
        "are split evenly across the tasks running at once, each adapting to its own 429s (a "
        "slot's next task goes on from its rate); progress shows per "
        "committed chunk; a token that expires is not renewed",
        server.advertise,
    )
    return False


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


def _overlapped(
    spark: SparkSession,
    run: _Run,
    work: WorkPlan,
    answer: Callable[[int, str, SaveMode], dict[str, Any]],
    committed: Callable[[int, dict[str, Any]], None],
    make_table: Callable[[str], None],
) -> None:
    """Run `answer(index, metadata, mode)` (one chunk's Spark job, ending in its commit) for
    every chunk, and `committed(index, counts)` after each, as each commits.

    A chunk may start while the one before is still answered or committed (`chunks_at_once` of
    the run's `Layout`: Spark jobs from as many driver threads): its tasks take the slots the
    earlier chunks' tasks free, so the endpoint does not idle while a chunk commits or the next
    one starts.
    The next chunk starts as soon as any running one has committed: Spark may run the later
    one's tasks first (whichever job reaches its scheduler first), and waiting on the earlier
    one would leave the slots idle while it commits. Only where commits commute (see
    `_may_overlap`); any other chunk waits for every earlier one. When a chunk fails, the
    chunks already running finish (their answers are paid for and get committed), and the
    first failure is raised; on Ctrl-C they are cancelled.

    The sink rows the run replaces (`work.replaced`) are deleted first, in a commit of their
    own: a crash after it leaves those rows without any row until a run answers them again
    (answers paid for meanwhile are kept, see `pipeline.spark.inflight`); never two rows.

    The first write makes or replaces the table (or adds new columns to it), which no other
    write may do beside it. Where chunks overlap, `make_table` does that with no row first, in a
    commit of its own, and every chunk appends (chunk 0 ran alone before: a second or more of
    idle endpoint on a run of several chunks); else chunk 0 writes first, alone.
    """
    config = run.config
    saved_config = config.to_dict()  # holds the token's variable name, never the token
    running: dict[Future[dict[str, Any]], int] = {}

    def commit_metadata(chunk: str) -> str:
        return json.dumps(
            {"batch_chat_run": run.run_id, "chunk": chunk, "config": saved_config},
            default=str,
        )

    def settle(at_most: int) -> None:
        while len(running) > at_most:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=running.__getitem__):
                committed(running.pop(future), future.result())

    if work.replaced is not None:
        # Every row the run replaces, deleted in one commit before any chunk: a delete beside a
        # chunk's append is refused (Delta's isolation outside Databricks, `Serializable`), and
        # a delete per chunk rewrote, each time, every file still holding the rows it replaces
        # (a 20k-row sink whose every prompt changed, in 10 chunks: 90k rows copied; now none).
        run.lease.check()
        delete_rows(spark, config.sink, work.replaced, commit_metadata("replace"))
    overlap = _may_overlap(config)
    # One chunk makes the table itself; no chunk writes nothing.
    first_alone = work.chunks <= 1 or not overlap
    if not first_alone:
        run.lease.check()
        make_table(commit_metadata(f"0/{work.chunks}"))
    at_once = run.layout.chunks_at_once if overlap else 1
    with ThreadPoolExecutor(at_once, thread_name_prefix="chunk") as pool:
        try:
            for index in range(work.chunks):
                settle(at_once - 1)
                run.lease.check()  # never commit over another run's work
                metadata = commit_metadata(f"{index + 1}/{work.chunks}")
                first = index == 0 and first_alone
                mode = FIRST_SAVE_MODE[config.sink.mode] if first else "append"
                running[pool.submit(answer, index, metadata, mode)] = index
                if first:
                    settle(0)  # it makes or replaces the table, which later chunks append to
            settle(0)
        except BaseException as err:
            if not isinstance(err, Exception) and is_connect(spark):
                spark.interruptAll()  # Ctrl-C (classic pyspark cancels its jobs itself)
            wait(running)
            raise


def _may_overlap(config: JobConfig) -> bool:
    """Whether chunks may run beside earlier ones: Delta appends of one schema commute; not
    Parquet's, whose concurrent writes to one folder share its `_temporary` folder (one job's
    commit removes the other's files)."""
    return config.sink.format == "delta"


def _chunk_rows(
    run: _Run,
    work: WorkPlan,
    plan: TaskPlan,
    index: int,
    earlier: DataFrame | None = None,
) -> tuple[DataFrame, tuple[Observation, list[Column]]]:
    """Chunk `index`'s rows as the sink takes them, answered as they are written, and what to
    observe on them. Rows whose request `earlier` answers (earlier runs' in-flight answers) get
    that answer."""
    config = run.config
    as_sent = work.sent(index, run.layout.tasks_of(index), config.request.dedupe, earlier)
    parsed = parsed_type(config.request.output_format)
    answered_schema = output_schema(as_sent.drop(*KEYED_COLUMNS, EARLIER).schema, parsed)
    answered = map_in_pandas(as_sent, make_batch_mapper(plan, index), answered_schema)
    text_schema = output_schema(run.source_schema, parsed)
    observation = Observation(f"batch_chat_chunk_{index}")
    images = config.source.image_column
    metrics = chunk_metrics(None if images is None else image_count(images, run.source_schema))
    rows = as_text(answered, text_schema)
    if work.config_hash is not None:
        rows = stamp(rows, work.config_hash)
    return rows, (observation, metrics)


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


def _share(per_minute: float | None, tasks: int) -> float | None:
    return None if per_minute is None else per_minute / tasks
