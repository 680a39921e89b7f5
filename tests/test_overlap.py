"""Chunks answered side by side: which chunks may run beside earlier ones, that at most as many
as the run's layout says do, and that the next one starts as soon as any of them has committed.
The chunk jobs here are plain functions (the scheduling is what is tested); the lease is a real
one on a temp sink. Then how a run lays its chunks out over the slots, and how several chunks'
rows are spread over the tasks.

Also: the archives on a Spark worker's import path are read once, not at every task."""

from __future__ import annotations

import importlib
import io
import itertools
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.core.loader import config_from_dict
from pipeline.spark.archives import read_once
from pipeline.spark.chunks import CHUNK, WorkPlan, chunk_of, numbered
from pipeline.spark.job import _overlapped, _Run
from pipeline.spark.layout import Layout, lay_out, one_executor
from pipeline.spark.lease import SinkLease

WAIT_S = 20.0  # for a chunk that must be running beside another: a deadline, not a pause


@contextmanager
def a_run(
    spark: SparkSession, tmp_path: Path, sink_format: str, chunks_at_once: int = 2
) -> Iterator[_Run]:
    raw = {
        "source": {"path": str(tmp_path / "in"), "prompt_column": "prompt"},
        "endpoint": {"name": "echo", "host": "http://127.0.0.1:1"},
        "sink": {"path": str(tmp_path / "out"), "format": sink_format},
    }
    config = config_from_dict(raw, env={})
    with SinkLease(spark, config.sink, "overlap-run") as lease:
        layout = Layout(1, 1, 64, chunks_at_once, 2)
        yield _Run(config, "overlap-run", layout, lease, spark.range(1).schema)


def work_of(spark: SparkSession, chunks: int, replaced: DataFrame | None = None) -> WorkPlan:
    return WorkPlan(spark.range(1), chunks, [1] * chunks, replaced=replaced)


class Chunks:
    """Chunk jobs that note which chunks run at once; `hold[i]`: chunk i waits (with a
    deadline) until chunk hold[i] has started, so it can only finish when both overlap;
    `after[i]`: chunk i waits until chunk after[i] has finished."""

    def __init__(
        self,
        hold: dict[int, int] | None = None,
        fail: int | None = None,
        after: dict[int, int] | None = None,
    ) -> None:
        self.hold = hold or {}
        self.after = after or {}
        self.fail = fail
        self.lock = threading.Lock()
        self.running: set[int] = set()
        self.beside: dict[int, set[int]] = {}  # chunk: the chunks that ran while it started
        self.started = {i: threading.Event() for i in range(64)}
        self.finished = {i: threading.Event() for i in range(64)}
        self.committed: list[int] = []
        self.modes: dict[int, str] = {}
        self.table_made: list[str] = []  # `make_table`'s metadata, if it was called

    def make_table(self, metadata: str) -> None:
        assert not self.started_any(), "the table is made before any chunk starts"
        self.table_made.append(metadata)

    def started_any(self) -> bool:
        return any(event.is_set() for event in self.started.values())

    def answer(self, index: int, metadata: str, mode: str) -> dict[str, Any]:
        assert f'"chunk": "{index + 1}/' in metadata
        self.modes[index] = mode
        with self.lock:
            self.beside[index] = set(self.running)
            self.running.add(index)
        self.started[index].set()
        try:
            if index in self.hold and not self.started[self.hold[index]].wait(WAIT_S):
                raise AssertionError(f"chunk {self.hold[index]} never started beside {index}")
            if index in self.after and not self.finished[self.after[index]].wait(WAIT_S):
                raise AssertionError(f"chunk {self.after[index]} never finished beside {index}")
            if index == self.fail:
                raise RuntimeError(f"chunk {index} failed")
            return {"rows": 1, "ok": 1}
        finally:
            with self.lock:
                self.running.discard(index)
            self.finished[index].set()

    def on_commit(self) -> Callable[[int, dict[str, Any]], None]:
        return lambda index, counts: self.committed.append(index)


@pytest.mark.parametrize(
    ("at_once", "hold"),
    [(2, {0: 1, 3: 4}), (3, {0: 2, 1: 2, 3: 5, 4: 5})],
)
def test_delta_chunks_overlap_as_many_at_a_time_as_the_layout_says_once_the_table_is_made(
    spark: SparkSession, tmp_path: Path, at_once: int, hold: dict[int, int]
) -> None:
    # `hold`: each held chunk finishes only once the other runs beside it; three at once, chunk
    # 2 must start while 0 and 1 both still run.
    chunks = Chunks(hold=hold)
    with a_run(spark, tmp_path, "delta", at_once) as run:
        _overlapped(spark, run, work_of(spark, 6), chunks.answer, chunks.on_commit(),
                    chunks.make_table)  # fmt: skip
    assert len(chunks.table_made) == 1 and '"chunk": "0/6"' in chunks.table_made[0]
    assert sorted(chunks.committed) == [0, 1, 2, 3, 4, 5]
    assert set(chunks.modes.values()) == {"append"}  # the table exists for every chunk
    assert max(len(b) + 1 for b in chunks.beside.values()) <= at_once
    assert all(held in chunks.beside[other] or other in chunks.beside[held]
               for held, other in hold.items())  # fmt: skip


@pytest.mark.parametrize("count", [0, 1])
def test_one_chunk_makes_the_table_itself_and_none_makes_nothing(
    spark: SparkSession, tmp_path: Path, count: int
) -> None:
    chunks = Chunks()
    with a_run(spark, tmp_path, "delta") as run:
        _overlapped(spark, run, work_of(spark, count), chunks.answer, chunks.on_commit(),
                    chunks.make_table)  # fmt: skip
    assert (chunks.table_made, chunks.committed) == ([], list(range(count)))


def test_the_next_chunk_starts_when_any_running_one_has_committed(
    spark: SparkSession, tmp_path: Path
) -> None:
    # Chunk 1 finishes only once chunk 3 runs: 3 must start when 2 commits, not wait for 1
    # (Spark may run a later chunk's tasks first: the slots would idle while 1 commits).
    chunks = Chunks(hold={1: 3})
    with a_run(spark, tmp_path, "delta") as run:
        _overlapped(spark, run, work_of(spark, 5), chunks.answer, chunks.on_commit(),
                    chunks.make_table)  # fmt: skip
    assert 1 in chunks.beside[3]
    assert chunks.committed.index(2) < chunks.committed.index(1)
    assert sorted(chunks.committed) == [0, 1, 2, 3, 4]


def test_parquet_chunks_run_alone(spark: SparkSession, tmp_path: Path) -> None:
    chunks = Chunks()
    with a_run(spark, tmp_path, "parquet") as run:
        _overlapped(spark, run, work_of(spark, 4), chunks.answer, chunks.on_commit(),
                    chunks.make_table)  # fmt: skip
    assert chunks.committed == [0, 1, 2, 3] and chunks.table_made == []
    assert all(beside == set() for beside in chunks.beside.values())


@pytest.mark.parametrize("count", [1, 4])
def test_the_rows_a_run_replaces_go_in_one_commit_before_any_chunk(
    spark: SparkSession, tmp_path: Path, count: int
) -> None:
    """A real Delta sink of four rows, two of them replaced (a stale answer, an error row):
    deleted in one commit before the first chunk starts (and before the table is made), and
    the chunks still run two at a time."""
    sink = tmp_path / "out"
    rows = [("0", "h0", "ok"), ("1", "h1", "ok"), ("2", "h2", "error"), ("3", "h3", "ok")]
    spark.createDataFrame(rows, "request_id string, request_hash string, status string") \
        .write.format("delta").save(str(sink))  # fmt: skip
    replaced = spark.createDataFrame(
        [("1", "h1", True), ("2", "h2", False)],
        "request_id string, request_hash string, stale boolean",
    )
    left_at_start: dict[int, list[str]] = {}
    chunks = Chunks(hold={0: 1, 1: 0} if count > 1 else {})  # 0 and 1 each wait for the other

    def answer(index: int, metadata: str, mode: str) -> dict[str, Any]:
        ids = spark.read.format("delta").load(str(sink)).select("request_id").collect()
        left_at_start[index] = sorted(r.request_id for r in ids)
        return chunks.answer(index, metadata, mode)

    with a_run(spark, tmp_path, "delta") as run:
        _overlapped(spark, run, work_of(spark, count, replaced), answer, chunks.on_commit(),
                    chunks.make_table)  # fmt: skip
    assert left_at_start == {i: ["0", "3"] for i in range(count)}
    history = spark.sql(f"DESCRIBE HISTORY delta.`{sink}`").orderBy("version").collect()
    assert [h.operation for h in history] == ["WRITE", "MERGE"]  # one commit deletes both
    assert '"chunk": "replace"' in history[1].userMetadata
    assert sorted(chunks.committed) == list(range(count))
    if count > 1:  # the chunks overlap as ever
        assert chunks.table_made and (0 in chunks.beside[1] or 1 in chunks.beside[0])


def test_a_failed_chunk_lets_the_running_one_finish_and_starts_no_other(
    spark: SparkSession, tmp_path: Path
) -> None:
    chunks = Chunks(hold={1: 2}, fail=1, after={2: 1})  # 2 still runs when 1 fails
    with a_run(spark, tmp_path, "delta") as run, pytest.raises(RuntimeError, match="chunk 1"):
        _overlapped(spark, run, work_of(spark, 5), chunks.answer, chunks.on_commit(),
                    chunks.make_table)  # fmt: skip
    assert chunks.committed == [0]
    assert set(chunks.beside) == {0, 1, 2}  # 2 ran (and finished); 3 and 4 never started
    assert chunks.running == set()


@pytest.mark.parametrize(
    ("slots", "partitions", "sizes", "overlap", "expected"),
    [
        # One chunk: every slot.
        ((2, 2), None, [500], True, (2, 2, 1, 2)),
        # Delta chunks: half the slots each, twice as many at once as fill the slots; the last
        # of an odd count of them takes every slot (it would run beside an idle one).
        ((2, 2), None, [100] * 6, True, (1, 1, 4, 2)),
        ((2, 2), None, [100] * 5, True, (1, 2, 4, 2)),
        ((2, 2), None, [100] * 3, True, (1, 2, 3, 2)),
        ((8, 8), None, [100] * 9, True, (4, 8, 4, 8)),
        ((3, 3), None, [100] * 9, True, (1, 1, 6, 3)),
        ((1, 1), None, [100] * 3, True, (1, 1, 2, 1)),
        # Dynamic allocation may add slots: the budgets are shared by every task started.
        ((2, 20), None, [100] * 4, True, (1, 1, 4, 4)),
        # Parquet chunks run one after another, on every slot.
        ((2, 2), None, [100] * 4, False, (2, 2, 1, 2)),
        # source.partitions as set, two chunks at once: every task running shares the budgets
        # (one task a chunk: two of them, not one).
        ((2, 2), 1, [100] * 4, True, (1, 1, 2, 2)),
        ((2, 2), 8, [100] * 4, True, (8, 8, 2, 2)),
        # No chunk in more tasks than it has rows.
        ((8, 8), None, [3, 3, 1], True, (3, 1, 3, 8)),
    ],
)  # fmt: skip
def test_a_run_lays_its_chunks_out_over_the_slots(
    slots: tuple[int, int],
    partitions: int | None,
    sizes: list[int],
    overlap: bool,
    expected: tuple[int, int, int, int],
) -> None:
    layout = lay_out(*slots, partitions, sizes, overlap, one_executor=True)
    assert (layout.tasks, layout.last_tasks, layout.chunks_at_once, layout.at_once) == expected
    assert [layout.tasks_of(i) for i in range(len(sizes))][-1] == expected[1]


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [([100] * 6, (2, 2, 2, 2)), ([100], (2, 2, 1, 2)), ([1, 1], (1, 1, 2, 2))],
)
def test_on_a_cluster_every_chunk_takes_every_slot_two_at_once(
    sizes: list[int], expected: tuple[int, int, int, int]
) -> None:
    # A chunk of fewer tasks would wait for the executor holding its rows while another idles.
    layout = lay_out(2, 2, None, sizes, True, one_executor=False)
    assert (layout.tasks, layout.last_tasks, layout.chunks_at_once, layout.at_once) == expected


def test_a_local_master_runs_its_tasks_in_one_executor(spark: SparkSession) -> None:
    assert one_executor(spark)  # local[2]


def test_archives_on_the_import_path_are_read_once(tmp_path: Path) -> None:
    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("zipped_first.py", "VALUE = 1\n")
        zipped.writestr("zipped_second.py", "VALUE = 2\n")
    sys.path.insert(0, str(archive))
    try:
        assert importlib.import_module("zipped_first").VALUE == 1
        read_once()
        index = sys.path_importer_cache[str(archive)]._files  # type: ignore[union-attr]
        importlib.invalidate_caches()  # what a PySpark worker does at every task
        if sys.version_info < (3, 13):
            assert sys.path_importer_cache[str(archive)]._files is index  # type: ignore[union-attr]
        assert importlib.import_module("zipped_second").VALUE == 2  # still imports from it
    finally:
        sys.path.remove(str(archive))
        sys.path_importer_cache.pop(str(archive), None)
        for name in ("zipped_first", "zipped_second"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("rerun", [False, True])
def test_several_chunks_are_spread_over_the_tasks_once(spark: SparkSession, rerun: bool) -> None:
    # Identical requests (equal hashes) share a task and sit next to each other in it; each
    # chunk reads its rows of the kept spread, with no shuffle of its own, in as many tasks as
    # it is given (here one, one, then two). A rerun's plan (rows the sink answers left out:
    # here the odd ids) is spread once too.
    hashes = [f"h{i % 37:02d}" for i in range(200)]
    keyed = spark.createDataFrame(
        [(str(i), h) for i, h in enumerate(hashes)], "request_id string, request_hash string"
    ).persist()
    todo = None
    if rerun:
        todo = numbered(keyed).filter(F.col("request_id").cast("int") % 2 == 0)
        todo = todo.withColumn(CHUNK, chunk_of(3))
    work = WorkPlan(keyed, 200, [70, 60, 70], todo=todo)
    work.spread_once(2, dedupe=True)
    assert work.spread is not None
    seen: list[str] = []
    for index, tasks in enumerate((1, 1, 2)):
        sent = work.sent(index, tasks, dedupe=True)
        with redirect_stdout(io.StringIO()) as plan:
            sent.explain()
        above_the_kept_rows = plan.getvalue().split("InMemoryTableScan")[0]
        assert "Exchange" not in above_the_kept_rows
        parts = sent.rdd.glom().map(lambda rows: [r["request_hash"] for r in rows]).collect()
        assert len(parts) == tasks
        for part in parts:
            runs = [h for h, _ in itertools.groupby(part)]
            assert len(runs) == len(set(runs)), part  # each hash's rows next to each other
        owners = {h: i for i, part in enumerate(parts) for h in part}
        assert all(owners[h] == i for i, part in enumerate(parts) for h in part)
        seen.extend(r["request_id"] for r in sent.collect())
    every = range(0, 200, 2) if rerun else range(200)
    assert sorted(seen) == sorted(str(i) for i in every)  # every row to send, once
    work.release()
