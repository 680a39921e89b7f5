"""Input rows a merge run need not key in Python: the sink answers them, as the JVM can tell from
their values alone.

Every row the job writes carries `config_hash` (see `RequestBuilder.config_hash`): the fingerprint
of everything besides a row's own values that makes its `request_id` and `request_hash` (the
source's column roles, template and system prompt, the request parameters, the endpoint and its
API, the version of the request builder). An input row whose request columns hold exactly the
values of a sink row stamped with this run's `config_hash` would be given that row's id and hash,
so a join finds the answered rows of a nightly rerun without building one request.

Copies count as they do in planning (see `pipeline.spark.chunks`): input values held n times take
at most n such sink rows. Most values are held once: those rows are found with one anti-join of
the input with the sink, the pass that also counts the input rows of each hash (the join
partitions the input by the hash anyway); only the rows whose hash the input holds more than once
are counted against the sink.
The rows left (new values, changed ones, surplus copies, rows of a sink written under another
config) are keyed in Python and planned as before, against the sink rows the recognised ones
did not take. Values compare exactly: text by its bytes, floating point by its spelling (so -0.0
and 0.0 are two values, as they are two requests); a request column whose type cannot be
compared that way (a map, floating point inside a nested value) leaves every row to the keying
pass. An input under `sink.recognise_from_rows` rows is keyed in full: the join's
few Spark jobs cost more than keying it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DoubleType,
    FloatType,
    MapType,
    StructType,
)

from pipeline.spark.columns import CONFIG_HASH, IDENTITY_COLUMNS
from pipeline.spark.crossing import column
from pipeline.spark.session import cached

VALUES = "_values"  # a row's request columns, as one comparable value
HASH = "_values_hash"
HELD = "_held"  # sink rows that hold those values
ASKED = "_asked"  # input rows that hold them
TAKEN = "_taken"  # sink rows of a key that recognised input rows took
_SHARED = "_shared"  # input rows that share a row's hash
_COPY = "_value_copy"
# Types a row's values hold by their spelling (-0.0 and 0.0 are two requests), not as they are.
_SPELLED = (FloatType, DoubleType)
_IN, _SINK = "_in", "_sink"  # aliases of the two sides of a join


@dataclass(frozen=True)
class Recognised:
    """The input split by what the sink answers."""

    # The input rows to key and plan (the source's columns).
    rest: DataFrame
    # The input, and the sink rows stamped with this run's config, each with the hash and the
    # struct of its request columns (see `values_of`).
    _asked: DataFrame
    _stamped: DataFrame
    # Kept while the run plans: the rows the join left (until `rest` is read, see `read`), the
    # values the sink holds fewer times than the input, then what `taken` looked up.
    kept: list[DataFrame]

    def read(self) -> None:
        """`rest` was read into a frame of its own (keyed, kept): the rows the join left need
        not be kept any longer."""
        left = self.kept.pop(0)
        left.unpersist()

    def taken(self, ids: DataFrame) -> DataFrame:
        """request_id, request_hash, _taken: how many sink rows of a key the recognised input
        rows took, for the keys whose request_id is in `ids` (the plan's keys, few in a
        nightly rerun: this reads both tables once more rather than keeping the split)."""
        keys = [HASH, VALUES]
        held = filled(
            self._stamped.join(ids.select("request_id").distinct(), "request_id", "left_semi")
            .groupBy(*keys, *IDENTITY_COLUMNS)
            .agg(F.count(F.lit(1)).alias(HELD)),
            self.kept,
        )
        asked = (
            self._asked.join(held.select(*keys), keys, "left_semi")
            .groupBy(*keys)
            .agg(F.count(F.lit(1)).alias(ASKED))
        )
        took = F.least(F.col(ASKED), F.col(HELD))
        return held.join(asked, keys).groupBy(*IDENTITY_COLUMNS).agg(F.sum(took).alias(TAKEN))


def recognise(
    frame: DataFrame,
    answers: DataFrame,
    columns: Sequence[str],
    config_hash: str,
) -> Recognised | None:
    """Split `frame` (the input) by the sink rows `answers` (those that count as answered: `ok`
    ones, or every row when errors are not retried) stamped with `config_hash`, comparing the
    request columns `columns`; None when the sink cannot tell (no row stamped with this
    `config_hash`, no request column, or one that cannot be compared exactly)."""
    if not {CONFIG_HASH, "request_hash"} <= set(answers.columns) or not columns:
        return None
    asked_values = values_of(frame, columns)
    held_values = values_of(answers, columns)
    if asked_values is None or held_values is None:
        return None
    keys = [HASH, VALUES]
    # Each input value travels once through the join: a column the values hold as it is (not
    # floating point, held by its spelling) is read back from them (see `restore`).
    inside = _held_as_is(frame, columns)
    carried = [column(name) for name in frame.columns if name not in inside]

    def restore(rows: DataFrame, *more: str) -> DataFrame:
        """`rows` of `asked` with the input's columns again (and `more`)."""
        values = F.col(VALUES)
        return rows.select(*[
            values.getField(name).alias(name) if name in inside else column(name)
            for name in frame.columns
        ], *more)  # fmt: skip

    asked = frame.select(*carried, F.xxhash64(asked_values).alias(HASH), asked_values.alias(VALUES))
    # A row is stamped in the write that records its request_hash (see `columns.stamp`), so a
    # stamped row has one: the column's long digests need not be read to find those rows.
    stamped = answers.filter(F.col(CONFIG_HASH) == config_hash).select(
        *IDENTITY_COLUMNS, F.xxhash64(held_values).alias(HASH), held_values.alias(VALUES)
    )
    if stamped.isEmpty():  # another config (file statistics say so at once): nothing to find
        return None
    kept: list[DataFrame] = []
    # One pass over both tables: the join partitions and sorts the input by the hash anyway, so
    # each row also learns how many input rows share its hash. A value held once is answered
    # when a stamped row holds it; rows of a hash held more than once (copies of one value, or
    # values that share a hash: few or none) all stay, to be counted below.
    shared = asked.withColumn(_SHARED, F.count(F.lit(1)).over(Window.partitionBy(HASH)))
    # The hash is the join's key and the values are compared in its condition, under a CASE
    # (which Spark does not take for a key): keyed by the values too, the join would shuffle and
    # sort the input a second time, by its values (10 s of 25 at 10M rows).
    alone = _side(_IN, _SHARED) == 1
    answered = (_side(_IN, HASH) == _side(_SINK, HASH)) & F.when(
        alone, _side(_IN, VALUES) == _side(_SINK, VALUES)
    )
    left = shared.alias(_IN).join(stamped.select(*keys).alias(_SINK), answered, "left_anti")
    # Kept (first in `kept`) until the rest is keyed: filled by counting the copies among them.
    left = cached(left)
    kept.append(left)
    try:
        copied = left.filter(F.col(_SHARED) > 1)
        rest = restore(left.filter(F.col(_SHARED) == 1))
        if copied.count():
            repeated = copied.select(HASH).distinct()
            held = stamped.join(repeated, HASH, "left_semi")
            surplus = _surplus(frame, restore(copied, *keys), held, kept)
            rest = rest.unionByName(surplus.select(*map(column, frame.columns)))
    except BaseException:
        release(kept)
        raise
    return Recognised(rest, asked.select(*keys), stamped, kept)


def _same() -> Column:
    """Rows of `_IN` and `_SINK` (aliases) that hold the same values. Spark keys the join by
    both the hash and the values: for frames grouped by them (so partitioned by them)."""
    return (_side(_IN, HASH) == _side(_SINK, HASH)) & F.coalesce(
        _side(_IN, VALUES) == _side(_SINK, VALUES), F.lit(False)
    )


def _side(alias: str, name: str) -> Column:
    return F.col(f"{alias}.{name}")


def _surplus(
    frame: DataFrame, asked: DataFrame, stamped: DataFrame, kept: list[DataFrame]
) -> DataFrame:
    """The rows of `asked` (rows of `frame` with their values, see `recognise`) beyond the
    number of times `stamped` holds their values."""
    keys = [HASH, VALUES]
    held = stamped.groupBy(*keys).agg(F.count(F.lit(1)).alias(HELD)).alias(_SINK)
    counts = asked.groupBy(*keys).agg(F.count(F.lit(1)).alias(ASKED)).alias(_IN)
    # Values the sink holds fewer times than the input (most often: not at all), found first.
    short = filled(
        counts.join(held, _same(), "left")
        .filter(F.col(HELD).isNull() | (F.col(ASKED) > F.col(HELD)))
        .select(f"{_IN}.{HASH}", f"{_IN}.{VALUES}", F.coalesce(F.col(HELD), F.lit(0)).alias(HELD)),
        kept,
    )
    others = [column(f.name) for f in frame.schema.fields if not _holds(f.dataType, (MapType,))]
    order = F.xxhash64(*others) if others else F.lit(0)
    copy = F.row_number().over(Window.partitionBy(*keys).orderBy(order))
    return asked.join(short, keys).withColumn(_COPY, copy).filter(F.col(_COPY) > F.col(HELD))


def filled(frame: DataFrame, kept: list[DataFrame]) -> DataFrame:
    """`frame`, computed now and kept (added to `kept`): a later join then knows its size and
    looks its rows up while it scans a table, rather than shuffling the table (and stages that
    run at once never compute it twice)."""
    frame = cached(frame)
    kept.append(frame)
    frame.count()
    return frame


def values_of(frame: DataFrame, columns: Sequence[str]) -> Column | None:
    """`columns` of `frame` as one struct that is equal for two rows exactly when their
    values are (floating point by its spelling); None when a column cannot be compared so."""
    types = {f.name: f.dataType for f in frame.schema.fields}
    parts = []
    for name in columns:
        kind = types.get(name)
        if kind is None or _holds(kind, (MapType,)):
            return None
        if isinstance(kind, _SPELLED):
            parts.append(column(name).cast("string").alias(name))
        elif _holds(kind, _SPELLED):
            return None
        else:
            parts.append(column(name).alias(name))
    return F.struct(*parts)


def _held_as_is(frame: DataFrame, columns: Sequence[str]) -> set[str]:
    """Which of `columns` `values_of` holds with their own type (all but floating point)."""
    types = {f.name: f.dataType for f in frame.schema.fields}
    return {name for name in columns if not isinstance(types[name], _SPELLED)}


def _holds(kind: DataType, types: tuple[type[DataType], ...]) -> bool:
    """Whether `kind` is one of `types` or holds one (in arrays and structs)."""
    if isinstance(kind, types):
        return True
    if isinstance(kind, ArrayType):
        return _holds(kind.elementType, types)
    if isinstance(kind, StructType):
        return any(_holds(f.dataType, types) for f in kind.fields)
    return False


def release(frames: list[DataFrame]) -> None:
    for frame in frames:
        frame.unpersist()
