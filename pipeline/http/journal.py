"""Answers kept durably while a task works, so a lost task or a lost driver does not pay twice.

A commit is a chunk's only record in the sink, and a chunk can be large (`sink.chunk_rows`). So
each task attempt also writes every answer it paid for to small Parquet files in a folder every
executor reaches (`sink.inflight_path`, `<sink path>_inflight` by default), one file per
`flush_s` seconds or `FLUSH_ROWS` answers, whichever comes first, written by a thread of its own
so the requests never wait on storage. A retried attempt of the same task reads its folder first
(`read_answers`) and sends only what no earlier attempt answered; a run after a lost driver reads
the folders of earlier runs through Spark (`pipeline.spark.inflight`). A committed chunk removes
its folder. What a lost attempt paid in its last `flush_s`, and the requests it had in flight,
are paid again: that is the bound.

Layout: `<folder>/run=<run id>/chunk=<n>/part=<task>/attempt<id>-<seq>.parquet`, and
`attempt<id>.started`, which marks an attempt's start (see `AnswerJournal`). A file appears
whole or not at all: on a local or mounted disk it is written under a hidden name (which Spark
skips) and renamed; on an object store a write is atomic by itself.

Knows nothing of Spark; files go through `pyarrow.fs`, which speaks local disks and mounts
(`/dbfs`, `/Volumes`), S3, GCS, Azure and HDFS.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.core.chat import Completion, RowResult
from pipeline.core.timing import Clock
from pipeline.core.tools import ToolCall

log = logging.getLogger(__name__)

# A file is written once this many answers wait, even before `flush_s` has passed.
FLUSH_ROWS = 1000

# One row per paid answer. The counts are columns of their own so Spark can add up what a run
# paid without decoding `result` (see `pipeline.spark.inflight`).
SCHEMA = pa.schema([
    ("request_id", pa.string()),
    ("request_hash", pa.string()),
    ("status", pa.string()),
    ("attempts", pa.int64()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("result", pa.string()),  # the whole `RowResult`, as `encode_result` writes it
])  # fmt: skip

# Every file of a task attempt is named `attempt<id>...`; `attempt<id>.started` marks its start,
# `attempt<id>.stopped` its end (its last answers written).
ATTEMPT = "attempt"
STARTED = ".started"
STOPPED = ".stopped"
_ATTEMPT_NAME = re.compile(rf"{ATTEMPT}(\d+)")
# An older attempt with no file newer than this many flush intervals is gone (a lost executor).
STALE_FLUSHES = 3
# A newer attempt waits for older ones at most this many flush intervals.
WAIT_FLUSHES = 5
# Object-store schemes as Hadoop spells them, and as pyarrow does.
_SCHEMES = {"s3a://": "s3://", "s3n://": "s3://", "gcs://": "gs://"}


def encode_result(result: RowResult) -> str:
    """`result` as JSON; `decode_result` reads it back. (What `dataclasses.asdict` would give,
    at a quarter of its cost: it copies every value deeply, and this runs once per answer.)"""
    plain: dict[str, Any] = {name: getattr(result, name) for name in _RESULT_FIELDS}
    completion = result.completion
    if completion is not None:
        answer = {name: getattr(completion, name) for name in _COMPLETION_FIELDS}
        answer["tool_calls"] = [
            {name: getattr(call, name) for name in _CALL_FIELDS} for call in completion.tool_calls
        ]
        plain["completion"] = answer
    return _COMPACT.encode(plain)


# What `json.dumps` would build at every call with these arguments.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_RESULT_FIELDS = tuple(f.name for f in fields(RowResult))
_COMPLETION_FIELDS = tuple(f.name for f in fields(Completion))
_CALL_FIELDS = tuple(f.name for f in fields(ToolCall))


def decode_result(text: str) -> RowResult:
    plain = json.loads(text)
    completion = plain.pop("completion")
    completion = None if completion is None else Completion.from_plain(completion)
    return RowResult(completion=completion, **plain)


def recovered_result(text: str) -> RowResult:
    """A kept answer (`encode_result`'s JSON), as recovered: paid for once already."""
    return replace(decode_result(text), reused=True)


def arrow_location(folder: str) -> tuple[pafs.FileSystem, str]:
    """The file system and path pyarrow uses for `folder`, a path as Spark names it.

    Raises:
        ValueError: pyarrow cannot open that kind of path (the message names it).
    """
    if folder.startswith("dbfs:/"):  # Databricks' mount of DBFS on every node
        return pafs.LocalFileSystem(), "/dbfs/" + folder.removeprefix("dbfs:").lstrip("/")
    if folder.startswith("file:"):
        folder = "/" + folder.removeprefix("file:").lstrip("/")
    for hadoop, arrow in _SCHEMES.items():
        if folder.startswith(hadoop):
            folder = arrow + folder.removeprefix(hadoop)
    try:
        fs, path = pafs.FileSystem.from_uri(folder)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ValueError(f"cannot keep in-flight answers in {folder}: {err}") from err
    return fs, str(path)


@dataclass(frozen=True)
class TaskFolder:
    """Where one task of one chunk of one run keeps its answers."""

    root: str  # the journal folder, as Spark names it
    run_id: str
    chunk: int
    task: int

    @property
    def path(self) -> str:
        return f"{self.root.rstrip('/')}/run={self.run_id}/chunk={self.chunk}/part={self.task}"


def wait_for_older(
    folder: str,
    attempt: int,
    *,
    flush_s: float,
    clock: Clock = time.time,  # wall time: compared with the files' times
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until every attempt older than `attempt` that wrote to `folder` has stopped (its
    stop mark is there) or is gone (nothing written for `STALE_FLUSHES` intervals), at most
    `WAIT_FLUSHES` intervals; whether they all had. A still-running older attempt notices this
    one's start mark within an interval, stops sending, finishes what it has in flight and
    writes it: reading after that leaves nothing of it to pay for again."""
    fs, path = arrow_location(folder)
    deadline = clock() + WAIT_FLUSHES * flush_s
    while True:
        newest: dict[int, float] = {}
        stopped: set[int] = set()
        for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            found = _ATTEMPT_NAME.match(info.base_name)
            if not found or int(found.group(1)) >= attempt:
                continue
            older = int(found.group(1))
            if info.base_name.endswith(STOPPED):
                stopped.add(older)
            written = info.mtime.timestamp() if info.mtime is not None else 0.0
            newest[older] = max(newest.get(older, 0.0), written)
        now = clock()
        running = [a for a, t in newest.items()
                   if a not in stopped and now - t < STALE_FLUSHES * flush_s]  # fmt: skip
        if not running:
            return True
        if now >= deadline:
            log.warning("older attempts %s of this task still write to %s", running, path)
            return False
        sleep(flush_s / 4)


def read_answers(folder: str) -> dict[str, RowResult]:
    """The answers the files in `folder` hold (none when it does not exist), by request hash."""
    fs, path = arrow_location(folder)
    found: dict[str, RowResult] = {}
    selector = pafs.FileSelector(path, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        table = pq.read_table(info.path, filesystem=fs, columns=["request_hash", "result"])
        for key, text in zip(*(table.column(n).to_pylist() for n in ("request_hash", "result")),
                             strict=True):  # fmt: skip
            found[key] = recovered_result(text)
    return found


class AnswerJournal:
    """Writes the answers `record`ed into `folder`, every `flush_s` seconds or `FLUSH_ROWS`
    answers, from a thread of its own; `close` writes what is left. A file that cannot be
    written is logged, never raised: the answers still reach the sink with the chunk's commit,
    only their protection against a lost task is gone.

    `attempt` orders the task's attempts (Spark's task attempt id grows). On entering, the
    journal marks the folder with its attempt; at every write it looks for a newer attempt's
    mark and, once one is there, says `superseded`: an older attempt that still runs (a stage
    run again after a lost executor leaves the old attempts running) stops paying for the rows
    the newer one answers. `close` marks the attempt stopped, once its last answers are
    written: a newer attempt waits for that mark (see `wait_for_older`) before it reads them."""

    def __init__(self, folder: str, attempt: int, *, flush_s: float) -> None:
        self._fs, self._path = arrow_location(folder)
        self._attempt = attempt
        self._prefix = f"{ATTEMPT}{attempt}"
        self.superseded = False
        self._flush_s = flush_s
        self._local = self._fs.type_name == "local"
        self._waiting: list[RowResult] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._seq = 0
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="answer-journal", daemon=True)

    def __enter__(self) -> AnswerJournal:
        self._mark(STARTED)
        self._thread.start()
        return self

    def _mark(self, suffix: str) -> None:
        try:
            self._fs.create_dir(self._path, recursive=True)
            with self._fs.open_output_stream(f"{self._path}/{self._prefix}{suffix}"):
                pass
        except Exception as err:  # storage trouble must not fail the task
            self._warn(err)

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def record(self, result: RowResult) -> None:
        """Keep `result` (a paid answer); any thread."""
        with self._lock:
            self._waiting.append(result)
            full = len(self._waiting) >= FLUSH_ROWS
        if full:
            self._wake.set()

    def close(self) -> None:
        """Write what is left, and mark the attempt stopped."""
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self._flush()
        self._mark(STOPPED)

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self._flush_s)
            self._wake.clear()
            self._flush()
            if not self.superseded and self._newer_attempt():
                log.warning(
                    "a newer attempt of this task started (%s); this one stops sending",
                    self._path,
                )
                self.superseded = True

    def _newer_attempt(self) -> bool:
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(self._path, allow_not_found=True))
        except Exception:  # the next look may succeed
            return False
        for info in infos:
            found = _ATTEMPT_NAME.match(info.base_name)
            if found and int(found.group(1)) > self._attempt:
                return True
        return False

    def _warn(self, err: Exception) -> None:
        if not self._failed:
            log.warning("cannot keep in-flight answers in %s: %s", self._path, err)
        self._failed = True

    def _flush(self) -> None:
        with self._lock:
            results, self._waiting = self._waiting, []
        if not results:
            return
        self._seq += 1
        name = f"{self._prefix}-{self._seq:06d}.parquet"
        try:
            self._write(name, _table(results))
        except Exception as err:  # storage trouble must not fail the task
            self._warn(err)

    def _write(self, name: str, table: pa.Table) -> None:
        final = f"{self._path}/{name}"
        if not self._local:
            pq.write_table(table, final, filesystem=self._fs)
            return
        self._fs.create_dir(self._path, recursive=True)
        hidden = f"{self._path}/.{name}.tmp"
        pq.write_table(table, hidden, filesystem=self._fs)
        self._fs.move(hidden, final)


def _table(results: list[RowResult]) -> pa.Table:
    def usage(result: RowResult, name: str) -> int | None:
        return None if result.completion is None else getattr(result.completion, name)

    columns: dict[str, list[Any]] = {
        "request_id": [r.request_id for r in results],
        "request_hash": [r.request_hash for r in results],
        "status": [r.status for r in results],
        "attempts": [r.attempts for r in results],
        "prompt_tokens": [usage(r, "prompt_tokens") for r in results],
        "completion_tokens": [usage(r, "completion_tokens") for r in results],
        "result": [encode_result(r) for r in results],
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)
