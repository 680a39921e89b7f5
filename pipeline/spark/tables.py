"""Table I/O: the only module that reads or writes tables (the session: `spark.session`).

Sources and sinks are a Parquet path, a Delta path or a catalog table (`catalog.schema.table`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql.types import StructField

from pipeline.core.config import SinkConfig, SourceConfig, normal_path
from pipeline.core.errors import ConfigError
from pipeline.spark.conditions import MISSING, NOT_DELTA, conditions, has_condition, read_error
from pipeline.spark.session import DELTA_PACKAGE, session_conf

log = logging.getLogger(__name__)

T = TypeVar("T")


def read_source(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """The input rows: `source.table` from the catalog, or `source.path` in `source.format`.

    Raises:
        ConfigError: naming `source.path`/`source.table`/`source.format` when the source is
            missing, is not in the format named, or is a Delta table named as Parquet.
    """
    if source.format == "parquet" and source.path is not None and is_delta(spark, source.path):
        raise ConfigError(
            "source.format",
            f"is parquet, but {source.path} is a Delta table (read as Parquet it would include "
            "the files the table has removed); set source.format=delta",
        )
    if source.table is not None:
        table = source.table
        return reading_source(source, lambda: _delta_hint(
            "source", source.format, lambda: spark.table(table)
        ))  # fmt: skip
    return reading_source(source, lambda: _delta_hint(
        "source", source.format, lambda: spark.read.format(source.format).load(source.path)
    ))  # fmt: skip


def reading_source(source: SourceConfig, action: Callable[[], T]) -> T:
    """`action`, which reads the source; a failure that is about the source (missing, not the
    format named, a stray file among the data) becomes one `ConfigError`."""
    try:
        return action()
    except ConfigError:
        raise
    except Exception as err:
        problem = read_error(
            err, "source", table=source.table, path=source.path, fmt=source.format
        )
        if problem is None:
            raise
        raise problem from None


def is_delta(spark: SparkSession, path: str) -> bool:
    """Whether `path` holds a Delta table (False too when Delta is not on the classpath)."""
    return delta_version(spark, delta_path(path)) is not None


def delta_version(spark: SparkSession, table: str) -> int | None:
    """The latest version of the Delta table `table` (a name, or delta.`path`); None when it is
    not a Delta table (or does not exist)."""
    try:
        rows = spark.sql(f"DESCRIBE HISTORY {table} LIMIT 1").collect()
    except Exception as err:
        if has_condition(err, *MISSING, *NOT_DELTA, "DATA_SOURCE_NOT_FOUND", "PARSE_SYNTAX_ERROR"):
            return None
        raise
    return int(rows[0]["version"]) if rows else None


def quoted(name: str) -> str:
    """`name` as one SQL identifier (a path, or a column with dots or spaces)."""
    return "`" + name.replace("`", "``") + "`"


def delta_path(path: str) -> str:
    """The Delta table at `path` (absolute: see `config.absolute`) as a SQL table reference."""
    return f"delta.{quoted(path)}"


def sink_ident(sink: SinkConfig) -> str:
    """The sink as a SQL table reference: its name, or delta.`path`."""
    return sink.table if sink.table is not None else delta_path(sink.path or "")


SaveMode = Literal["overwrite", "append", "errorifexists"]
# Characters Delta refuses in a column name unless the table maps column names.
DELTA_UNSAFE_NAME_CHARS = frozenset(" ,;{}()\n\t=")
# Delta commits carry this run's metadata (see `DESCRIBE HISTORY`).
COMMIT_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"


def write_sink(
    frame: DataFrame,
    sink: SinkConfig,
    mode: SaveMode,
    metadata: str | None = None,
    *,
    observe: tuple[Observation, Sequence[Column]] | None = None,
) -> None:
    """Write `frame` to `sink.table` or `sink.path` in `sink.format`: one commit.

    `metadata` goes into the Delta commit's `userMetadata`; Parquet has nowhere to keep it.
    `observe`: an `Observation` and its metrics, computed on the rows as they are written.
    It is attached here, after every question to `frame`: under Spark Connect, asking an
    observed frame for its columns analyses it again, and the write then reports no metrics.
    """
    # Delta keeps such names only with column mapping (set when the table is made).
    map_names = sink.format == "delta" and any(
        set(name) & DELTA_UNSAFE_NAME_CHARS for name in frame.columns
    )
    if observe is not None:
        observation, metrics = observe
        frame = frame.observe(observation, *metrics)
    writer = frame.write.format(sink.format).mode(mode)
    if sink.format == "delta":
        # New columns join the table (see `sink_schema`); an overwrite replaces its schema.
        evolve = "overwriteSchema" if mode == "overwrite" else "mergeSchema"
        writer = writer.option(evolve, "true")
        if map_names:
            writer = writer.option("delta.columnMapping.mode", "name")
        if metadata is not None:
            writer = writer.option("userMetadata", metadata)
    if sink.table is not None:
        table = sink.table
        _delta_hint("sink", sink.format, lambda: writer.saveAsTable(table))
    else:
        path = sink.path
        _delta_hint("sink", sink.format, lambda: writer.save(path))


def delete_rows(
    spark: SparkSession, sink: SinkConfig, keys: DataFrame, metadata: str | None = None
) -> None:
    """Delete the Delta sink's rows that `keys` names: one commit, in SQL (so it works under
    Spark Connect too).

    `keys` has `request_id`, `request_hash` and `stale`: a stale key deletes every row with that
    id and hash (an answer to a request no longer asked); any other deletes only its `error`
    rows (about to be answered again).
    """
    view = f"batch_chat_delete_{uuid.uuid4().hex[:12]}"
    keys.select("request_id", "request_hash", "stale").distinct().createOrReplaceTempView(view)
    try:
        with session_conf(spark, {} if metadata is None else {COMMIT_METADATA_CONF: metadata}):
            spark.sql(
                f"MERGE INTO {sink_ident(sink)} AS t USING {view} AS s "
                "ON t.request_id = s.request_id AND t.request_hash <=> s.request_hash "
                "AND (s.stale OR t.status = 'error') WHEN MATCHED THEN DELETE"
            )
    finally:
        spark.catalog.dropTempView(view)


def sink_exists(spark: SparkSession, sink: SinkConfig) -> bool:
    """Whether the sink table or path is already there (asked of Spark, not of a JVM in this
    process: the same under Spark Connect).

    Raises:
        ConfigError: naming `sink.path`, when Spark cannot tell (never assumed absent).
    """
    if sink.table is not None:
        return bool(spark.catalog.tableExists(sink.table))
    try:
        # Listing the folder (as text: no file is opened, no schema inferred) fails when it
        # is not there.
        spark.read.format("text").load(sink.path).schema  # noqa: B018 (analysis is the check)
    except Exception as err:
        if has_condition(err, *MISSING):
            return False
        why = ", ".join(conditions(err)) or type(err).__name__
        raise ConfigError(
            "sink.path", f"Spark cannot tell whether {sink.path} exists ({why}); nothing was sent"
        ) from err
    return True


@dataclass(frozen=True)
class Snapshot:
    """The sink's rows, pinned (`frame`), and what it held then (`state`, see `sink_state`)."""

    frame: DataFrame
    state: tuple[object, ...]


def sink_snapshot(spark: SparkSession, sink: SinkConfig) -> Snapshot | None:
    """The sink's rows as they are now, pinned: later commits (this run's chunks) do not change
    what the returned frame reads. None when the sink holds no table yet (nothing there, or a
    first write that died before committing: files without a `_delta_log`).

    Raises:
        ConfigError: naming `sink`, when the sink cannot be read.
    """
    if sink.format == "delta":
        version = delta_version(spark, sink_ident(sink))
        if version is None:
            return None
        pinned = spark.sql(f"SELECT * FROM {sink_ident(sink)} VERSION AS OF {version}")
        return Snapshot(pinned, (version,))
    listed = _parquet_files(spark, sink)
    if listed is None:
        return None
    current, files = listed
    # The files listed now, and only those: this run's own appends stay out of the plan.
    base = sink.path if sink.table is None else _location(spark, sink.table, None)
    pinned = spark.read.schema(current.schema).option("basePath", base or "").parquet(*files)
    return Snapshot(pinned, files)


def sink_state(spark: SparkSession, sink: SinkConfig) -> tuple[object, ...] | None:
    """What the sink holds now, in a form every commit changes: its Delta version, or its
    Parquet files; None when it holds no table (as `sink_snapshot` says).

    Raises:
        ConfigError: naming `sink`, when the sink cannot be read.
    """
    if sink.format == "delta":
        version = delta_version(spark, sink_ident(sink))
        return None if version is None else (version,)
    listed = _parquet_files(spark, sink)
    return None if listed is None else listed[1]


def _parquet_files(
    spark: SparkSession, sink: SinkConfig
) -> tuple[DataFrame, tuple[str, ...]] | None:
    """The Parquet sink as read now, and its files (sorted); None when it has none."""
    try:
        current = read_sink(spark, sink)
        files = current.inputFiles()
    except Exception as err:
        if has_condition(err, *MISSING, "UNABLE_TO_INFER_SCHEMA"):
            return None  # nothing there, or a folder without data files yet
        problem = read_error(err, "sink", table=sink.table, path=sink.path, fmt=sink.format)
        if problem is None:
            raise
        raise problem from None
    return (current, tuple(sorted(files))) if files else None


def read_sink(spark: SparkSession, sink: SinkConfig) -> DataFrame:
    """The output table as written (Parquet files written before a column was added read it as
    null)."""
    if sink.table is not None:
        return spark.table(sink.table)
    return spark.read.format(sink.format).option("mergeSchema", "true").load(sink.path)


def add_columns(spark: SparkSession, table: str, fields: Sequence[StructField]) -> None:
    """Add `fields` to the catalog table `table` (nullable; its rows read them as null), for a
    table whose writes cannot add a column themselves (a Parquet table: Delta's `mergeSchema`
    does it on the append)."""
    if not fields:
        return
    columns = ", ".join(
        f"`{field.name.replace('`', '``')}` {field.dataType.simpleString()}" for field in fields
    )
    spark.sql(f"ALTER TABLE {table} ADD COLUMNS ({columns})")
    log.info("added column(s) %s to %s", ", ".join(f.name for f in fields), table)


def check_sink_is_not_source(spark: SparkSession, source: SourceConfig, sink: SinkConfig) -> None:
    """Refuse a sink that is the source under another name: a table and the path it lives at,
    or two spellings of one table (`JobConfig` already refuses equal paths and names).

    Raises:
        ConfigError: naming the sink key.
    """
    source_at, sink_at = _location(spark, source.table, source.path), _location(
        spark, sink.table, sink.path
    )
    if source_at is not None and source_at == sink_at:
        key = "sink.table" if sink.table is not None else "sink.path"
        raise ConfigError(key, f"is the source ({source.table or source.path}, at {source_at})")


def _location(spark: SparkSession, table: str | None, path: str | None) -> str | None:
    if table is None:
        return normal_path(path) if path is not None else None
    try:
        rows = spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect()
    except Exception as err:
        if has_condition(err, *MISSING):
            return None  # not there yet: it cannot be the other one
        raise
    found = {str(r["col_name"]).strip(): r["data_type"] for r in rows}
    if found.get("Location"):
        return normal_path(str(found["Location"]))
    return str(found.get("Catalog", "")) + "." + str(found.get("Database", "")) + "." + str(
        found.get("Table", table)
    )


def _delta_hint(section: str, fmt: str, action: Callable[[], T]) -> T:
    try:
        return action()
    except Exception as err:
        if fmt == "delta" and "DATA_SOURCE_NOT_FOUND" in str(err):
            raise ConfigError(
                f"{section}.format",
                "delta is not on Spark's classpath; with spark-submit add "
                f"--packages {DELTA_PACKAGE}",
            ) from err
        raise
