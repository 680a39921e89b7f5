"""The Spark adapter: the `mapInPandas` functions. Deliberately thin.

Two passes read the input. The keying pass (`make_key_mapper`) builds each row's request once
and adds its `request_id`, `request_hash` and the request itself (`_request`, encoded); planning
and the answering pass only read those. Each answering task runs one `Engine` (one event loop,
one HTTP session) across all its Arrow batches, reading a little ahead so the request window
never drains at a batch boundary. Every input row comes out exactly once, with the result
columns of `pipeline.spark.columns` appended.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass

import pandas as pd
from pyspark import TaskContext
from pyspark.sql import DataFrame
from pyspark.sql.types import BinaryType, DataType, StringType, StructField, StructType

from pipeline.core.chat import EncodedRequest, RowResult
from pipeline.core.config import EndpointConfig, RequestConfig, SourceConfig
from pipeline.core.errors import JobAborted, TaskSuperseded
from pipeline.core.prompts import RequestBuilder
from pipeline.http.engine import Engine, recovered
from pipeline.http.journal import (
    AnswerJournal,
    TaskFolder,
    read_answers,
    recovered_result,
    wait_for_older,
)
from pipeline.http.settings import ClientSettings
from pipeline.spark.columns import (
    IDENTITY_COLUMNS,
    OUTPUT_COLUMNS,
    PARSED,
    REQUEST,
    parsed_type,
)
from pipeline.spark.crossing import BatchMapper, as_bytes, map_in_pandas
from pipeline.spark.inflight import EARLIER, JournalPlan

# Read ahead while fewer than this many windows' worth of rows are waiting for answers.
READ_AHEAD_WINDOWS = 2
# The columns the keying pass adds; the answering pass takes its requests from them.
KEYED_COLUMNS = (*IDENTITY_COLUMNS, REQUEST)


@dataclass(frozen=True)
class TaskPlan:
    """What every task needs; pickled into the Spark closure (the token stays a `Secret`)."""

    request: RequestConfig
    client: ClientSettings
    # Where tasks keep the answers they pay for until their chunk commits; None: not kept.
    journal: JournalPlan | None = None


def make_batch_mapper(plan: TaskPlan, chunk: int = 0) -> BatchMapper:
    """The function to give `DataFrame.mapInPandas`: keyed rows (see `make_key_mapper`; with
    `_earlier`, see `inflight.EARLIER`, when earlier runs left answers) in, the input columns
    with the result columns appended out. Answers of an earlier attempt of the same task (of
    chunk `chunk`) are used, not paid for again."""

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        parsed = parsed_type(plan.request.output_format)
        window = plan.client.limits.concurrency * READ_AHEAD_WINDOWS
        pending: deque[tuple[pd.DataFrame, Future[list[RowResult]]]] = deque()
        waiting_rows = 0
        with ExitStack() as stack:
            engine = stack.enter_context(_engine(plan, chunk, stack))
            for frame in frames:
                _stop_if_aborted(engine)
                items = carried_items(frame)
                rows = frame.drop(columns=[c for c in (*KEYED_COLUMNS, EARLIER) if c in frame])
                pending.append((rows, engine.submit(items)))
                waiting_rows += len(rows)
                while pending and (
                    pending[0][1].done() or (waiting_rows >= window and len(pending) > 1)
                ):
                    head, future = pending.popleft()
                    waiting_rows -= len(head)
                    results = future.result()
                    _stop_if_aborted(engine)
                    yield with_results(head, results, parsed)
            engine.input_ended()
            while pending:
                head, future = pending.popleft()
                results = future.result()
                _stop_if_aborted(engine)
                yield with_results(head, results, parsed)
            _stop_if_aborted(engine)

    return map_batches


def _engine(plan: TaskPlan, chunk: int, stack: ExitStack) -> Engine:
    """This task attempt's engine: with its journal, and the answers its earlier attempts
    journaled, when the run keeps one and this runs in a Spark task."""
    context = TaskContext.get()
    if context is None:
        return Engine(plan.client, dedupe=plan.request.dedupe)
    task = context.partitionId()
    # Unique in the application and growing: a retried attempt, in a stage run again or not,
    # has a larger one.
    attempt = context.taskAttemptId()
    run_id = plan.journal.run_id if plan.journal else f"stage{context.stageId()}"
    report_as = (f"{run_id}/{chunk}/{task}", attempt)
    if plan.journal is None:
        return Engine(plan.client, dedupe=plan.request.dedupe, report_as=report_as)
    folder = TaskFolder(plan.journal.folder, plan.journal.run_id, chunk, task).path
    flush_s = plan.journal.flush_s
    journal = stack.enter_context(AnswerJournal(folder, attempt, flush_s=flush_s))
    wait_for_older(folder, attempt, flush_s=flush_s)
    known = read_answers(folder)
    return Engine(
        plan.client, dedupe=plan.request.dedupe, known=known, journal=journal, report_as=report_as
    )


def key_schema(input_schema: StructType) -> StructType:
    """The input columns followed by `request_id`, `request_hash` and `_request`."""
    keys = [StructField(name, StringType(), nullable=True) for name in IDENTITY_COLUMNS]
    request = StructField(REQUEST, BinaryType(), nullable=False)
    return StructType([*input_schema.fields, *keys, request])


def with_identity(frame: DataFrame, key_mapper: BatchMapper) -> DataFrame:
    """`frame` as bytes (see `as_bytes`) with each row's `request_id`, `request_hash` and
    built request from `key_mapper` (see `make_key_mapper`) appended."""
    as_sent = as_bytes(frame)
    return map_in_pandas(as_sent, key_mapper, key_schema(as_sent.schema))


def make_key_mapper(
    source: SourceConfig, request: RequestConfig, endpoint: EndpointConfig
) -> BatchMapper:
    """A `mapInPandas` function adding each row's `request_id` and `request_hash` (see
    `pipeline.core.identity`) and its request, built here once for the run; sends nothing."""

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        builder = RequestBuilder(source, request, endpoint)
        for frame in frames:
            columns = {name: frame[name].tolist() for name in builder.columns}
            items = builder.build_all(columns, len(frame))
            out = frame.reset_index(drop=True)
            out["request_id"] = [item.request_id for item in items]
            out["request_hash"] = [item.request_hash for item in items]
            out[REQUEST] = [
                encode_item(item if isinstance(item, RowResult) else builder.encoded(item))
                for item in items
            ]
            yield out

    return map_batches


ESTIMATE_SCHEMA = "key string, prompt_tokens long, output_tokens long, images long"


def make_estimate_mapper() -> BatchMapper:
    """A `mapInPandas` function giving, for each keyed row that is a request, its fingerprint,
    estimated prompt and output tokens (see `ChatRequest.estimated_tokens`) and its images;
    sends nothing."""

    def map_batches(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            built = [i for i in carried_items(frame) if isinstance(i, EncodedRequest)]
            yield pd.DataFrame({
                "key": pd.Series([r.request_hash for r in built], dtype=object),
                "prompt_tokens": pd.Series([r.prompt_tokens for r in built], dtype="int64"),
                "output_tokens": pd.Series([r.output_tokens for r in built], dtype="int64"),
                "images": pd.Series([r.images for r in built], dtype="int64"),
            })

    return map_batches


def encode_item(item: EncodedRequest | RowResult) -> bytes:
    """A keyed request (or the error row of a row that is none), to travel with its row from
    the keying pass to the answering pass; `decode_item` reads it back. A request is one line
    of its estimates (prompt tokens, output tokens, images), then its wire body as sent: the
    answering pass sends those bytes as they are."""
    if isinstance(item, RowResult):
        return b"!" + (item.error or "").encode("utf-8")
    return b"%d %d %d\n%b" % (item.prompt_tokens, item.output_tokens, item.images, item.body)


def decode_item(encoded: bytes, request_id: str, request_hash: str) -> EncodedRequest | RowResult:
    """What `encode_item` encoded, for the row with that id and hash."""
    if encoded[:1] == b"!":
        error = encoded[1:].decode("utf-8")
        return RowResult(request_id, "error", error=error, request_hash=request_hash)
    head, _, body = encoded.partition(b"\n")
    prompt_tokens, output_tokens, images = head.split()
    return EncodedRequest(
        request_id, body, int(prompt_tokens), int(output_tokens), int(images), request_hash
    )


def carried_items(frame: pd.DataFrame) -> list[EncodedRequest | RowResult]:
    """The requests the keying pass built for the rows of `frame` (a keyed batch); a row whose
    `_earlier` holds an earlier run's answer gets that answer instead."""
    items = [
        decode_item(encoded, request_id, request_hash)
        for encoded, request_id, request_hash in zip(
            frame[REQUEST], frame["request_id"], frame["request_hash"], strict=True
        )
    ]
    if EARLIER not in frame:
        return items
    return [
        item if not isinstance(earlier, str) or isinstance(item, RowResult)
        else recovered(recovered_result(earlier), item.request_id)
        for item, earlier in zip(items, frame[EARLIER], strict=True)
    ]  # fmt: skip


def _stop_if_aborted(engine: Engine) -> None:
    # Failing the task fails the job: the rows answered so far are not worth writing when
    # every remaining row would get the same refusal.
    if engine.stop_reason is not None:
        raise JobAborted(engine.stop_reason)
    # Failing the task, not the job: Spark keeps the newer attempt's rows.
    if engine.superseded:
        raise TaskSuperseded("a newer attempt of this task runs; this one stopped sending")


def with_results(
    frame: pd.DataFrame, results: list[RowResult], parsed: DataType | None = None
) -> pd.DataFrame:
    """`frame` with the result columns appended, row for row (and `parsed`, of that type)."""
    if len(results) != len(frame):  # a lost row must never pass silently
        raise RuntimeError(f"{len(results)} results for {len(frame)} rows")
    out = frame.reset_index(drop=True)
    for column in OUTPUT_COLUMNS:
        values = [column.value(r) for r in results]
        out[column.name] = values if column.pandas_dtype is None else pd.array(
            values, dtype=column.pandas_dtype
        )
    if parsed is not None:
        as_text = isinstance(parsed, StringType)
        out[PARSED] = [
            json.dumps(r.parsed, ensure_ascii=False) if as_text and r.parsed is not None
            else r.parsed
            for r in results
        ]  # fmt: skip
    return out
