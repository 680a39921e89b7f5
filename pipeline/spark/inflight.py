"""A run's in-flight answers, seen from the driver: what earlier runs paid for, what this run
paid for, and their removal once committed (the tasks write them: `pipeline.http.journal`).

Everything goes through Spark (a read of the folder, one tiny task to remove files), so it works
under Spark Connect and wherever only the executors reach the folder; on a local master (the
executors are this process's JVM, on this machine) the driver removes files itself: a removal
task would wait for a slot, and take it from the next chunk's tasks.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pandas as pd
import pyarrow.fs as pafs
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from pipeline.core.config import SinkConfig
from pipeline.core.errors import ConfigError
from pipeline.http.journal import arrow_location
from pipeline.spark.conditions import MISSING, has_condition
from pipeline.spark.session import files_here, is_connect

log = logging.getLogger(__name__)

T = TypeVar("T")

# The files' columns, then the folder names Spark reads as columns (see `journal.TaskFolder`).
SCHEMA = (
    "request_id string, request_hash string, status string, attempts long, "
    "prompt_tokens long, completion_tokens long, result string, run string, chunk int, part int"
)
# What the files say a run paid; named as `summary.chunk_metrics` names them.
PAID = ("attempts", "prompt_tokens", "completion_tokens")
# A planning column: an earlier run's answer (`journal.encode_result`) to the row's request.
EARLIER = "_earlier"


@dataclass(frozen=True)
class JournalPlan:
    """Where this run's tasks keep their answers; pickled into every task."""

    folder: str
    run_id: str
    flush_s: float


def journal_plan(sink: SinkConfig, run_id: str) -> JournalPlan | None:
    """The run's journal, or None when the sink keeps none (a table without
    `sink.inflight_path`, or "off").

    Raises:
        ConfigError: naming `sink.inflight_path`, when pyarrow cannot open that kind of path.
    """
    folder = sink.inflight_folder
    if folder is None:
        return None
    try:
        arrow_location(folder)
    except ValueError as err:
        raise ConfigError("sink.inflight_path", str(err)) from None
    return JournalPlan(folder, run_id, sink.inflight_flush_s)


class Inflight:
    """The journal folder of `plan`, read and cleaned through `spark`."""

    def __init__(self, spark: SparkSession, plan: JournalPlan) -> None:
        self._spark = spark
        self.plan = plan
        self._removing: threading.Thread | None = None
        self._committed: list[str] = []  # committed chunks' folders not removed yet
        self._lock = threading.Lock()
        self._found = False  # whether the folder was there at the start (earlier runs' files)
        # Whether this process sees the executors' files (a local master, classic or Connect).
        self._here = files_here(spark)

    def _query(self, answer: Callable[[DataFrame], T]) -> T | None:
        """`answer` of the folder's rows (an action), or None when there is no folder yet."""
        if not self._may_exist():
            return None
        try:
            return answer(self._spark.read.schema(SCHEMA).parquet(self.plan.folder))
        except Exception as err:
            if has_condition(err, *MISSING):
                return None
            raise

    def _may_exist(self) -> bool:
        """False when the folder surely does not exist: asked of the file system here, not by a
        Spark read that fails (Spark logs such a failure at length). A Spark Connect client may
        not see the cluster's files: only Spark can say there."""
        if not self._here and is_connect(self._spark):
            return True
        try:
            fs, path = arrow_location(self.plan.folder)
            return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)
        except (ValueError, OSError):
            return True  # pyarrow cannot say: Spark will

    def earlier_answers(self) -> DataFrame | None:
        """`request_hash` and `_earlier`: the answers earlier runs paid for and did not commit
        (they stopped before), one per request; None when there are none."""

        def ok_of_earlier_runs(frame: DataFrame) -> DataFrame | None:
            self._found = True
            answers = frame.filter(
                (F.col("run") != self.plan.run_id) & (F.col("status") == "ok")
            ).select("request_hash", F.col("result").alias(EARLIER))
            answers = answers.dropDuplicates(["request_hash"])
            return None if answers.isEmpty() else answers

        return self._query(ok_of_earlier_runs)

    def paid(self, chunk: int) -> Counter[str]:
        """What this run's attempts (lost ones too) paid for in chunk `chunk`: requests and
        tokens, as far as their files say."""

        def sums(frame: DataFrame) -> Row | None:
            mine = frame.filter((F.col("run") == self.plan.run_id) & (F.col("chunk") == chunk))
            return mine.agg(*(F.sum(name).alias(name) for name in PAID)).first()

        row = self._query(sums)
        return Counter({name: int((row[name] if row else 0) or 0) for name in PAID})

    def committed(self, chunk: int) -> None:
        """Chunk `chunk` is committed: its files go, on a thread while the next chunks run
        (one Spark task at a time removes every chunk committed since the last one started)."""
        root = self.plan.folder.rstrip("/")
        with self._lock:
            self._committed.append(f"{root}/run={self.plan.run_id}/chunk={chunk}")
            if self._removing is None:
                self._removing = threading.Thread(
                    target=self._remove_committed, name="inflight-removal", daemon=True
                )
                self._removing.start()

    def finish(self, chunks: int) -> None:
        """All `chunks` chunks are committed: remove every run's files (every answer an
        earlier run left that this run's input still asks is committed too)."""
        with self._lock:
            removing = self._removing
        if removing is not None:
            removing.join()
        if self._found or chunks:
            self._remove([self.plan.folder])

    def _remove_committed(self) -> None:
        while True:
            with self._lock:
                folders, self._committed = self._committed, []
                if not folders:
                    self._removing = None
                    return
            self._remove(folders)

    def _remove(self, folders: list[str]) -> None:
        def remove(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for _ in frames:
                _delete(folders)
                yield pd.DataFrame({"removed": [len(folders)]})

        try:
            if self._here:
                _delete(folders)
                return
            tasks = self._spark.range(1, numPartitions=1)
            tasks.mapInPandas(remove, "removed long").collect()
        except Exception as err:  # left behind: the next run reads and then removes them
            log.warning("could not remove in-flight answers in %s (%s)", self.plan.folder, err)


def _delete(folders: list[str]) -> None:
    for folder in folders:
        fs, path = arrow_location(folder)
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            pass
