"""Table I/O and the Spark session: the only module that reads or writes tables.

Sources and sinks are a Parquet path, a Delta path or a catalog table (`catalog.schema.table`).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Literal, TypeVar

from pyspark.sql import DataFrame, SparkSession

from pipeline.core.config import SinkConfig, SourceConfig, normal_path
from pipeline.core.errors import ConfigError
from pipeline.spark.conditions import MISSING, NOT_DELTA, has_condition, read_error

log = logging.getLogger(__name__)

DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.1"
DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# A speculative copy of a task would send every one of its requests again, and pay for them.
# The job shows its own progress (rows, not stages): Spark's console bar would fight with it.
BASE_CONF = {"spark.speculation": "false", "spark.ui.showConsoleProgress": "false"}
JOB_CONF = {**BASE_CONF, **DELTA_CONF}

T = TypeVar("T")


def spark_session(
    app_name: str = "batch-chat", conf: Mapping[str, str] | None = None
) -> SparkSession:
    """The active session (Databricks, a notebook), else a new one with Delta configured.

    Under `spark-submit` the JVM is already running, so Delta's jars must come from
    `--packages`; launched from plain Python, `configure_spark_with_delta_pip` fetches them.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        _warn_if_speculative(active)
        return active
    # Executors must run the same interpreter (and so see the same packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit launched the JVM
    with_delta = not under_submit or _delta_on_classpath()
    settings = {**(JOB_CONF if with_delta else BASE_CONF), **(conf or {})}
    if not under_submit:
        settings.setdefault("spark.master", os.environ.get("SPARK_MASTER", "local[*]"))
    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    if not under_submit:
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)
    session = builder.getOrCreate()
    _warn_if_speculative(session)
    return session


def driver_host(spark: SparkSession) -> str:
    """The address executors reach the driver at (loopback when they run inside it)."""
    try:
        master = spark.conf.get("spark.master", "") or ""
        if master.startswith("local"):
            return "127.0.0.1"
        return spark.conf.get("spark.driver.host", "127.0.0.1") or "127.0.0.1"
    except Exception:  # a runtime that hides its confs
        return "127.0.0.1"


def _delta_on_classpath() -> bool:
    # Under spark-submit, Delta is there only when --packages (or --jars) brought it; without
    # it, a Parquet-only job must still start, so the Delta extension is left out.
    from py4j.protocol import Py4JJavaError
    from pyspark import SparkContext

    SparkContext._ensure_initialized()
    jvm = SparkContext._jvm
    assert jvm is not None
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    try:
        jvm.java.lang.Class.forName(DELTA_CONF["spark.sql.extensions"], False, loader)
    except Py4JJavaError:
        return False
    return True


def _warn_if_speculative(spark: SparkSession) -> None:
    try:
        speculative = spark.conf.get("spark.speculation", "false") == "true"
    except Exception:  # some runtimes hide cluster confs; nothing to warn about then
        return
    if speculative:
        log.warning("spark.speculation is on: duplicate task attempts will pay for requests twice")


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
    frame: DataFrame, sink: SinkConfig, mode: SaveMode, metadata: str | None = None
) -> None:
    """Write `frame` to `sink.table` or `sink.path` in `sink.format`: one commit.

    `metadata` goes into the Delta commit's `userMetadata`; Parquet has nowhere to keep it.
    """
    writer = frame.write.format(sink.format).mode(mode)
    if sink.format == "delta":
        # New columns join the table (see `sink_schema`); an overwrite replaces its schema.
        evolve = "overwriteSchema" if mode == "overwrite" else "mergeSchema"
        writer = writer.option(evolve, "true")
        if any(set(name) & DELTA_UNSAFE_NAME_CHARS for name in frame.columns):
            # Delta keeps such names only with column mapping (set when the table is made).
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


@contextmanager
def session_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """`settings` in the session's SQL conf while the context is open; restored after."""
    previous = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, before in previous.items():
            if before is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, before)


def sink_exists(spark: SparkSession, sink: SinkConfig) -> bool:
    """Whether the sink table or path is already there."""
    if sink.table is not None:
        return bool(spark.catalog.tableExists(sink.table))
    try:
        jvm = spark.sparkContext._jvm
        assert jvm is not None
        path = jvm.org.apache.hadoop.fs.Path(sink.path)
        return bool(path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(path))
    except Exception:  # no JVM access (Spark Connect): Spark's own check still applies
        return False


def sink_snapshot(spark: SparkSession, sink: SinkConfig) -> DataFrame | None:
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
        return spark.sql(f"SELECT * FROM {sink_ident(sink)} VERSION AS OF {version}")
    if not sink_exists(spark, sink):
        return None
    try:
        current = read_sink(spark, sink)
        files = current.inputFiles()
    except Exception as err:
        if has_condition(err, "UNABLE_TO_INFER_SCHEMA"):
            return None  # a folder without data files yet
        problem = read_error(err, "sink", table=sink.table, path=sink.path, fmt=sink.format)
        if problem is None:
            raise
        raise problem from None
    if not files:
        return None
    # The files listed now, and only those: this run's own appends stay out of the plan.
    base = sink.path if sink.table is None else _location(spark, sink.table, None)
    return spark.read.schema(current.schema).option("basePath", base or "").parquet(*files)


def read_sink(spark: SparkSession, sink: SinkConfig) -> DataFrame:
    """The output table as written (Parquet files written before a column was added read it as
    null)."""
    if sink.table is not None:
        return spark.table(sink.table)
    return spark.read.format(sink.format).option("mergeSchema", "true").load(sink.path)


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
