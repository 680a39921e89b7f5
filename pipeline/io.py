"""Table I/O and the Spark session: the only module that reads or writes tables.

Sources and sinks are a Parquet path, a Delta path or a catalog table (`catalog.schema.table`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Literal, TypeVar

from pyspark.sql import DataFrame, SparkSession

from pipeline.config import SinkConfig, SourceConfig
from pipeline.errors import ConfigError

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
    """The input rows: `source.table` from the catalog, or `source.path` in `source.format`."""
    if source.table is not None:
        table = source.table
        return _delta_hint("source", source.format, lambda: spark.table(table))
    return _delta_hint(
        "source", source.format, lambda: spark.read.format(source.format).load(source.path)
    )


SaveMode = Literal["overwrite", "append", "errorifexists"]
# Delta commits carry this run's metadata (see `DESCRIBE HISTORY`).
COMMIT_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"


def write_sink(
    frame: DataFrame, sink: SinkConfig, mode: SaveMode, metadata: str | None = None
) -> None:
    """Write `frame` to `sink.table` or `sink.path` in `sink.format`: one commit.

    `metadata` goes into the Delta commit's `userMetadata`; Parquet has nowhere to keep it.
    """
    writer = frame.write.format(sink.format).mode(mode)
    if metadata is not None and sink.format == "delta":
        writer = writer.option("userMetadata", metadata)
    if sink.table is not None:
        table = sink.table
        _delta_hint("sink", sink.format, lambda: writer.saveAsTable(table))
    else:
        path = sink.path
        _delta_hint("sink", sink.format, lambda: writer.save(path))


def delete_error_rows(
    spark: SparkSession, sink: SinkConfig, ids: DataFrame, metadata: str | None = None
) -> None:
    """Delete the Delta sink's `error` rows whose `request_id` is in `ids`: one commit."""
    from delta.tables import DeltaTable

    if sink.table is not None:
        target = DeltaTable.forName(spark, sink.table)
    else:
        assert sink.path is not None  # one of the two, by SinkConfig
        target = DeltaTable.forPath(spark, sink.path)
    merge = target.alias("t").merge(
        ids.select("request_id").distinct().alias("s"),
        "t.request_id = s.request_id AND t.status = 'error'",
    )
    with session_conf(spark, {} if metadata is None else {COMMIT_METADATA_CONF: metadata}):
        merge.whenMatchedDelete().execute()


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


def check_sink_writable(spark: SparkSession, sink: SinkConfig) -> None:
    """Refuse up front a sink that `mode: error` would refuse only after every request was paid.

    Raises:
        ConfigError: naming `sink.mode`, when the table or path already exists.
    """
    if sink.mode != "error":
        return
    where = sink.table or sink.path
    if sink_exists(spark, sink):
        raise ConfigError(
            "sink.mode", f"is 'error' and {where} already exists; use overwrite or append"
        )


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


def read_existing_sink(spark: SparkSession, sink: SinkConfig) -> DataFrame | None:
    """The sink's rows so far, or None when it holds no table yet.

    A path where a first write died before committing holds no table: Delta without a
    `_delta_log`, or Parquet without data files.
    """
    if not sink_exists(spark, sink):
        return None
    if sink.path is not None and sink.format == "delta":
        from delta.tables import DeltaTable

        if not DeltaTable.isDeltaTable(spark, sink.path):
            return None
    try:
        return read_sink(spark, sink)
    except Exception as err:
        if "UNABLE_TO_INFER_SCHEMA" in str(err):
            return None
        raise


def read_sink(spark: SparkSession, sink: SinkConfig) -> DataFrame:
    """The output table as written."""
    if sink.table is not None:
        return spark.table(sink.table)
    return spark.read.format(sink.format).load(sink.path)


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
