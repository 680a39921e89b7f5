"""Sinks written before rows recorded `request_hash`: what their rows asked, worked out again.

Such a row carries its input columns, so the request it answered can be rebuilt the way this run
builds requests: its identity is the one this run would give those columns (the rows count as
unchanged while they still hold what is asked, under the config of this run). A Delta sink is
then rewritten once with `request_hash` filled in (one commit; older versions stay readable by
time travel), so later changes of the config are seen; Parquet files cannot be rewritten in
place, so a Parquet sink's older rows are worked out again on every run.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession

from pipeline.core.config import SinkConfig, SourceConfig
from pipeline.core.errors import ConfigError
from pipeline.spark.columns import IDENTITY_COLUMNS, REQUEST, stamp
from pipeline.spark.crossing import BatchMapper, as_text, column
from pipeline.spark.mapper import with_identity
from pipeline.spark.tables import write_sink

log = logging.getLogger(__name__)


def identify_rows(
    frame: DataFrame, key_mapper: BatchMapper, source: SourceConfig, sink: SinkConfig
) -> DataFrame:
    """`frame`'s rows with `request_id` and `request_hash` as this run computes them from the
    input columns the rows carry (replacing what is stored).

    Raises:
        ConfigError: naming `sink`, when the rows lack an input column this run reads.
    """
    missing = [name for name in source.input_columns() if name not in frame.columns]
    if missing:
        raise ConfigError(
            "sink",
            f"{sink.table or sink.path} has rows written before request_hash was recorded, and "
            f"no column {', '.join(map(repr, missing))} to tell what they asked; set "
            "sink.mode=overwrite to answer everything again",
        )
    rows = frame.drop(*(name for name in IDENTITY_COLUMNS if name in frame.columns))
    return as_text(with_identity(rows, key_mapper).drop(REQUEST), rows.schema)


def needs_adopting(existing: DataFrame) -> bool:
    """Whether `adopt` would rewrite a Delta sink whose rows are `existing`."""
    return "request_hash" not in existing.columns


def adopt(
    spark: SparkSession,
    sink: SinkConfig,
    existing: DataFrame,
    key_mapper: BatchMapper,
    source: SourceConfig,
    metadata: str,
    config_hash: str,
) -> None:
    """Rewrite a Delta sink that has no `request_hash` column (see `needs_adopting`) once, with
    it filled in for every row (and the content `request_id` of this version when there is no id
    column), stamped with this run's `config_hash`. Every later writer records the column, so a
    Delta sink that has it needs no second look."""
    rows = identify_rows(existing, key_mapper, source, sink)
    order = [name for name in existing.columns if name != "request_hash"]
    order.insert(order.index("request_id") + 1, "request_hash")
    write_sink(stamp(rows.select(*map(column, order)), config_hash), sink, "overwrite", metadata)
    log.info(
        "the rows of %s were written before request_hash was recorded: filled in from their "
        "input columns (one commit)", sink.table or sink.path,
    )  # fmt: skip
